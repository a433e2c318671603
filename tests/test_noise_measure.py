"""Noise in policy and weight terms: one perturbation function behind every noise path, the
relative weight perturbation ‖ΔW‖/‖W‖ against a dense computation, and the teacher-forced rescore
that gives log π_clean (so the noise's KL can be told apart from numerics)."""
import pytest
import torch

from minipsn.method import algo, noise
from minipsn.method.noise import lora_pairs, noise_context, perturbation_size, row_seeds
from minipsn.run.config import RolloutConfig
from minipsn.sampling.engine import CopyEngine, UnmergedEngine
from minipsn.sampling.rollout import rescore, sample
from tests.test_noise import model  # noqa: F401  (the random-init Qwen2 + LoRA fixture, B ≠ 0)


class _Tok:
    """Just enough tokenizer for `rollout.sample` on integer prompts."""
    eos_token_id, pad_token_id, stop_ids = 1, 0, [1]

    def __call__(self, prompts, **kw):
        ids = torch.tensor([[int(t) for t in p.split()] for p in prompts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def batch_decode(self, rows, **kw):
        return [" ".join(map(str, r.tolist())) for r in rows]


def test_every_noise_path_goes_through_noise_perturb(model, monkeypatch):  # noqa: F811
    # replace the one perturbation by a marker: in-place, per-row and folded paths must all show it
    calls = []

    def marked(p, name, sigma, seed):
        calls.append(name)
        return p.detach().clone() + 0.5

    monkeypatch.setattr(noise, "perturb", marked)
    name, p = next(iter(noise.lora_parameters(model, "mlp").items()))
    clean = p.detach().clone()
    with noise.perturbed(model, 0.1, 3, "mlp"):
        assert torch.equal(p, clean + 0.5)
    with noise_context(model, 0.1, row_seeds(3, 2, 1, "rollout"), "mlp") as rn:
        stacked = [n for layer in rn.layers.values() for n in layer]
        assert torch.equal(stacked[0].A[0], dict(noise.lora_parameters(model, "mlp"))[lora_pairs(model, "mlp")[0][2][0]] + 0.5)
    calls.clear()
    engine = CopyEngine(model, max_new_tokens=4, static_cache=False, compile_step=False)
    with engine.policy(0.1, [3], "mlp"):
        pass
    assert set(calls) == set(noise.lora_parameters(model, "mlp"))  # the fold asked for every noised weight


def test_perturbation_size_matches_a_dense_computation(model):  # noqa: F811
    sigma, seed = 0.05, 11
    delta_sq = base_sq = 0.0
    for module, adapter, (na, a), (nb, b) in lora_pairs(model, "mlp"):
        s = module.scaling[adapter]
        dw = s * (noise.perturb(b, nb, sigma, seed) @ noise.perturb(a, na, sigma, seed) - b @ a)
        delta_sq += float(dw.detach().double().pow(2).sum())
        base_sq += float(module.get_base_layer().weight.double().pow(2).sum())
    got = perturbation_size(model, sigma, seed, "mlp")
    assert got == pytest.approx((delta_sq / base_sq) ** 0.5, rel=1e-6)
    assert perturbation_size(model, 0.0, seed, "mlp") == 0.0
    assert perturbation_size(model, 2 * sigma, seed, "mlp") > got  # more σ, larger ΔW


@pytest.mark.parametrize("engine_name", ["lean", "fast"])
def test_rescore_gives_the_samplers_own_logp_at_sigma_zero_and_the_clean_logp_under_noise(model, engine_name):  # noqa: F811
    cfg = RolloutConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=8)
    engine = (UnmergedEngine(model) if engine_name == "lean"
              else CopyEngine(model, max_new_tokens=6, static_cache=False, compile_step=False))
    prompts = ["5 9 13", "7 2 40"]
    with engine.policy(0.0, [0], "mlp") as (m, rn):
        ro = sample(m, _Tok(), prompts, 4, cfg, torch.Generator().manual_seed(0), row_noise=rn)
    again = engine.rescore(ro, cfg, "mlp", budget_tokens=20)  # several chunks
    mask = ro.completion_mask.bool()
    assert torch.allclose(again[mask], ro.raw_logp[mask], atol=2e-5)  # cached decode = full pass, before top-p
    assert (ro.sampler_logp[mask] > ro.raw_logp[mask]).any()  # top-p renormalised what was drawn: another tensor
    with engine.policy(0.2, [5], "mlp") as (m, rn):
        noisy = sample(m, _Tok(), prompts, 4, cfg, torch.Generator().manual_seed(0), row_noise=rn)
    clean = engine.rescore(noisy, cfg, "mlp", budget_tokens=1000)
    kl = algo.masked_mean(algo.kl_k3(noisy.raw_logp, clean), noisy.completion_mask).item()
    assert kl > 1e-3  # σ = 0.2 on this model moves the policy; rescore saw the clean weights, not the noisy ones
    with engine.policy(0.2, [5], "mlp") as (m, rn):  # and with the noisy weights the rescore reproduces the sampler
        noisy_again = rescore(m if engine_name == "lean" else engine.plain, noisy, cfg)
    nmask = noisy.completion_mask.bool()
    assert torch.allclose(noisy_again[nmask], noisy.raw_logp[nmask], atol=2e-5)


def _exact_kl(model, ro, cfg, sigma, seeds):  # noqa: F811
    """(KL(π_θ̃ ‖ π_clean) per position over the vocabulary, and the expectation of the sampled k3 estimate the kit
    used before: k3 = e^r − 1 − r, r = log π_clean − log π_θ̃, averaged over the noisy nucleus it samples from), row by
    row through `noise.perturbed` on the peft model itself: another route than the engines' (no hooks, no copy)."""
    import torch.nn.functional as F

    from minipsn.sampling.rollout import sampling_logp

    kl, old = torch.zeros_like(ro.sampler_logp), torch.zeros_like(ro.sampler_logp)
    T = ro.completion_ids.shape[1]
    for r in range(ro.completion_ids.shape[0]):
        ids = torch.cat([ro.prompt_ids[r:r + 1], ro.completion_ids[r:r + 1]], 1)
        mask = torch.cat([ro.prompt_mask[r:r + 1], ro.completion_mask[r:r + 1]], 1)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        with torch.no_grad():
            with noise.perturbed(model, sigma, seeds[r], "mlp"):
                nucleus, lp_n = sampling_logp(model(**kwargs).logits[:, -T - 1:-1], cfg)
            lp_c = F.log_softmax(model(**kwargs).logits[:, -T - 1:-1].float() / cfg.temperature, -1)
        kl[r] = (lp_n.exp() * (lp_n - lp_c)).sum(-1)[0] * ro.completion_mask[r]
        k3 = torch.expm1(lp_c - lp_n) - (lp_c - lp_n)
        old[r] = (nucleus.exp() * k3).nan_to_num().sum(-1)[0] * ro.completion_mask[r]
    return kl, old


@pytest.mark.parametrize("engine_name, granularity", [("lean", "step"), ("fast", "step"), ("lean", "rollout")])
def test_the_noise_kl_is_exact_over_the_vocabulary_even_under_top_p(model, engine_name, granularity):  # noqa: F811
    """engine.measure gives the per-position KL of the whole distributions (the same as a direct computation); the
    sampled k3 estimate it replaced sees only the nucleus under top-p, so even in expectation it is not that KL."""
    cfg = RolloutConfig(max_new_tokens=6, temperature=1.0, top_p=0.5, batch_size=8)
    engine = (UnmergedEngine(model) if engine_name == "lean"
              else CopyEngine(model, max_new_tokens=6, static_cache=False, compile_step=False))
    seeds = row_seeds(5, 2, 4, granularity)
    with engine.policy(0.2, seeds, "mlp") as (m, rn):
        ro = sample(m, _Tok(), ["5 9 13", "7 2 40"], 4, cfg, torch.Generator().manual_seed(0), row_noise=rn)
    clean, noisy, kl = engine.measure(ro, cfg, "mlp", 20, 0.2, seeds)  # several chunks
    mask = ro.completion_mask.bool()
    exact, old = _exact_kl(model, ro, cfg, 0.2, seeds)
    assert torch.allclose(kl[mask], exact[mask], atol=1e-5)
    assert torch.allclose(clean, engine.rescore(ro, cfg, "mlp", 1000), atol=2e-5)
    assert torch.allclose(noisy[mask], ro.raw_logp[mask], atol=2e-5)  # the decode path = a full pass of the noisy policy
    # what the sampled estimate measured instead, in expectation over the nucleus, is another number at each position
    assert exact[mask].mean() > 1e-3 and ((old[mask] - exact[mask]).abs() > 0.05 * exact[mask]).float().mean() > 0.5


def test_copy_bytes_counts_what_the_copy_allocates(model):  # noqa: F811
    from minipsn.sampling.dense_copy import copy_bytes

    engine = CopyEngine(model, max_new_tokens=4, static_cache=False, compile_step=False)
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in [*engine.plain.parameters(), *engine.plain.buffers()]}
    for side, _ in engine.sides:  # the side buffers are not persistent, but allocated
        for buf in side.buffers():
            tensors[buf.data_ptr()] = buf.numel() * buf.element_size()
    assert copy_bytes(model, engine.dtype) == sum(tensors.values())
