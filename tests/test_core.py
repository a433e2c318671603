"""Perturb/restore, rollout log-probs, learner micro-batching and config parsing on a small random policy."""
import dataclasses

import pytest
import torch

from minipsn.method.noise import noise_for, perturbed
from minipsn.run import config as C
from minipsn.run import overrides as O
from minipsn.run.presets import PRESETS
from minipsn.sampling.rollout import sample
from minipsn.training.train import completion_logprobs, learner_step


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_perturb_restore_is_bit_exact_and_touches_only_target_lora(small_policy):
    before = _snapshot(small_policy)
    with perturbed(small_policy, sigma=0.1, seed=7, targets="mlp"):
        during = _snapshot(small_policy)
    after = _snapshot(small_policy)
    for name in before:
        assert torch.equal(before[name], after[name]), name
        changed = not torch.equal(before[name], during[name])
        is_target = "lora_" in name and any(t in name for t in ("gate_proj", "up_proj", "down_proj"))
        assert changed == is_target, name
    # the perturbation is exactly σ·ε(seed, name)
    name = next(n for n in before if "lora_A" in n and "up_proj" in n)
    p = dict(small_policy.named_parameters())[name]
    assert torch.allclose(during[name] - before[name], 0.1 * noise_for(p, 7, name), atol=1e-7)


def test_perturb_restores_on_exception_and_sigma_zero_is_noop(small_policy):
    before = _snapshot(small_policy)
    with pytest.raises(RuntimeError):
        with perturbed(small_policy, sigma=0.5, seed=1, targets="all"):
            raise RuntimeError("boom")
    assert all(torch.equal(before[n], p) for n, p in small_policy.named_parameters())
    with perturbed(small_policy, sigma=0.0, seed=1, targets="all"):
        assert all(torch.equal(before[n], p) for n, p in small_policy.named_parameters())
    with pytest.raises(ValueError):
        with perturbed(small_policy, sigma=-1.0, seed=1):
            pass


def test_same_seed_same_noise_different_seed_different_noise(small_policy):
    with perturbed(small_policy, 0.1, seed=3):
        a = _snapshot(small_policy)
    with perturbed(small_policy, 0.1, seed=3):
        b = _snapshot(small_policy)
    with perturbed(small_policy, 0.1, seed=4):
        c = _snapshot(small_policy)
    lora = [n for n in a if "lora_B" in n and "down_proj" in n]
    assert all(torch.equal(a[n], b[n]) for n in lora)
    assert not any(torch.equal(a[n], c[n]) for n in lora)


def test_rollout_sampler_logprobs_equal_fresh_forward_of_perturbed_model(small_policy, toy_tok):
    cfg = C.RolloutConfig(max_new_tokens=12, temperature=0.9, batch_size=3)
    gen = torch.Generator().manual_seed(0)
    with perturbed(small_policy, 0.2, seed=11):
        ro = sample(small_policy, toy_tok, ["abc", "hello world"], G=4, cfg=cfg, gen=gen)
        fresh, _ = completion_logprobs(small_policy, ro, torch.arange(8), temperature=0.9)
    mask = ro.completion_mask.bool()
    assert ro.completion_ids.shape[0] == 8 and mask.any()
    assert torch.allclose(ro.sampler_logp[mask], fresh[mask], atol=1e-4)
    clean, _ = completion_logprobs(small_policy, ro, torch.arange(8), temperature=0.9)
    assert not torch.allclose(ro.sampler_logp[mask], clean[mask], atol=1e-4)  # the noise mattered
    # prompt-major: the G rows of a prompt share its prompt ids
    assert torch.equal(ro.prompt_ids[0], ro.prompt_ids[3]) and not torch.equal(ro.prompt_ids[3], ro.prompt_ids[4])
    assert ro.certainty.shape == (8,) and (ro.certainty >= 0).all()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean", "dr-grpo"])
def test_loss_and_gradients_do_not_depend_on_micro_batch_split(small_policy, toy_tok, agg):
    cfg = C.RolloutConfig(max_new_tokens=10, batch_size=8)
    ro = sample(small_policy, toy_tok, ["abc", "xyz"], G=4, cfg=cfg, gen=torch.Generator().manual_seed(1))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 1.0, -1.0, 0.0])
    width = ro.prompt_ids.shape[1] + ro.completion_ids.shape[1]
    results = []
    for budget in (8 * width, 2 * width):  # 1 micro-batch, then 4
        model = small_policy
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: grads only
        grpo = C.GRPOConfig(micro_batch_tokens=budget, loss_agg=agg, max_grad_norm=0.0)
        opt.zero_grad()
        captured = {}

        def step_and_capture(captured=captured, model=model, orig_step=opt.step):
            captured.update(_grads(model))
            orig_step()

        opt.step = step_and_capture
        out = learner_step(model, opt, ro, adv, grpo, max_len=10)
        results.append((out.stats["loss/policy"], captured))
    (l1, g1), (l4, g4) = results
    assert l1 == pytest.approx(l4, abs=1e-6)
    assert g1.keys() == g4.keys() and len(g1) > 0
    for n in g1:
        assert torch.allclose(g1[n], g4[n], atol=1e-6), n


def test_config_overrides_are_typed_and_unknown_keys_fail():
    cfg = O.apply_overrides(C.Config(), {"noise.sigma": "0.01", "grpo.tis": "false", "grpo.group_size": "4"})
    assert cfg.noise.sigma == 0.01 and cfg.grpo.tis is False and cfg.grpo.group_size == 4
    with pytest.raises(ValueError, match="did you mean noise.sigma"):
        O.apply_overrides(C.Config(), {"noise.sigmaa": "1"})
    with pytest.raises(ValueError, match="unknown config section"):
        O.apply_overrides(C.Config(), {"nosie.sigma": "1"})
    with pytest.raises(ValueError, match="expects int"):
        O.apply_overrides(C.Config(), {"grpo.group_size": "eight"})
    for bad, msg in [({"noise.sigma": "-1"}, "sigma"), ({"grpo.group_size": "1"}, "G"), ({"grpo.tis_cap": "0"}, "C")]:
        with pytest.raises(ValueError, match=msg):
            O.apply_overrides(C.Config(), bad)
    with pytest.raises(ValueError, match="section.key=value"):
        O.parse_sets(["sigma0.1"])
    assert dataclasses.is_dataclass(cfg) and O.config_from_dict(cfg.to_dict()) == cfg


def test_build_config_layers_preset_method_and_sets(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[noise]\nsigma = 0.02\n[run]\nsteps = 7\n")
    cfg = O.build_config(model="tiny", method="psn", file=str(f), sets={"run.steps": "9"})
    assert cfg.model.name == "tiny" and cfg.lora.rank == PRESETS["tiny"]["lora.rank"]
    assert cfg.noise.sigma == 0.02 and cfg.run.steps == 9 and cfg.noise.control == "fixed"
    with pytest.raises(ValueError, match="--method grpo fixes noise.sigma"):  # a file can't make a baseline PSN
        O.build_config(model="tiny", method="grpo", file=str(f))
    with pytest.raises(ValueError, match="unknown method"):
        O.build_config(model="tiny", method="psn-magic")
    plain = O.build_config(model="qwen-1.5b")  # without --method a run is PSN-GRPO with the adaptive scheduler
    assert (plain.noise.sigma, plain.noise.control, plain.grpo.tis) == (0.003, "adaptive", True)
    assert O.build_config(model="qwen-1.5b", method="grpo").noise.sigma == 0.0


def test_one_update_raises_logprob_of_positive_advantage_rows(small_policy, toy_tok):
    cfg = C.RolloutConfig(max_new_tokens=8, batch_size=8)
    ro = sample(small_policy, toy_tok, ["abc", "xyz"], G=4, cfg=cfg, gen=torch.Generator().manual_seed(2))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    rows = torch.arange(8)
    mask = ro.completion_mask.bool()
    with torch.no_grad():
        before, _ = completion_logprobs(small_policy, ro, rows, 1.0)
    opt = torch.optim.SGD([p for p in small_policy.parameters() if p.requires_grad], lr=0.5)
    learner_step(small_policy, opt, ro, adv, C.GRPOConfig(max_grad_norm=0.0), max_len=8)
    with torch.no_grad():
        after, _ = completion_logprobs(small_policy, ro, rows, 1.0)
    delta = ((after - before) * mask).sum(1)  # (N,) change of each row's sequence log-prob
    assert delta[adv > 0].sum() > 0 > delta[adv < 0].sum()
