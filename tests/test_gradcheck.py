"""The policy gradient of `learner_step` matches central finite differences of its loss.

The objective differentiated is the learner's loss with the TIS weight w = min(π_θ/π_θ̃, C) and the PPO
ratio's denominator π_θ_old held at their values at θ (both are detached by design), plus β·k3 KL to the
base model. Checked in float64 on a few scalar LoRA entries (lora_A and lora_B, picked by a fixed seed),
over two micro-batches, for every loss aggregation, with sampler log-probs off the learner's so w ≠ 1.
"""
import dataclasses

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from minipsn.method import algo
from minipsn.run.config import GRPOConfig
from minipsn.sampling.rollout import Rollouts
from minipsn.training.train import completion_logprobs, learner_step, micro_batches

EPS = 1e-5   # central difference step; truncation error O(EPS²) is below float64 rounding / EPS here
RTOL = 1e-5  # observed error ≤ 1e-7; a gradient off by 1 % (or the KL term's 0.5 %) fails
N, TP, T = 4, 5, 6  # P = 2 prompts × G = 2, prompt width, completion width


def _rmsnorm_keep_dtype(self, hidden_states):
    # transformers' Qwen2RMSNorm casts to float32; the same formula in the input's dtype keeps float64 exact
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _chunk_logp_keep_dtype(hidden, weight, targets, temperature, other_temperature):
    # algo._chunk_logp up to its `.float()`, which would round float64 logits to float32
    z = hidden.to(weight.dtype) @ weight.T
    logits = z / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():
        entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        other = (z / other_temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, entropy, logp.detach() if other_temperature == temperature else other


@pytest.fixture
def float64(monkeypatch):
    """Remove the two float32 casts on the learner's path; each replacement is checked to be the
    original in float32, so only the precision changes."""
    g = torch.Generator().manual_seed(0)
    h, w, t = torch.randn(2, 3, 8, generator=g), torch.randn(16, 8, generator=g), torch.randint(16, (2, 3), generator=g)
    for other in (0.8, 1.3):
        for mine, theirs, atol in zip(_chunk_logp_keep_dtype(h, w, t, 0.8, other), algo._chunk_logp(h, w, t, 0.8, other),
                                      (1e-6, 1e-5, 1e-6)):
            assert torch.allclose(mine, theirs, rtol=0, atol=atol)  # log-probs, entropies, at the other temperature
    norm = Qwen2RMSNorm(8)
    assert torch.equal(_rmsnorm_keep_dtype(norm, h), norm(h))
    monkeypatch.setattr(algo, "_chunk_logp", _chunk_logp_keep_dtype)
    monkeypatch.setattr(Qwen2RMSNorm, "forward", _rmsnorm_keep_dtype)


def make_rollouts(model, temperature: float) -> Rollouts:
    """Left-padded prompts and completions of different lengths; sampler log-probs off the learner's."""
    g = torch.Generator().manual_seed(0)
    prompt_mask = (torch.arange(TP) >= TP - torch.tensor([5, 3, 4, 2])[:, None]).long()  # (N, Tp)
    completion_mask = (torch.arange(T) < torch.tensor([6, 2, 4, 5])[:, None]).long()    # (N, T)
    prompt_ids = torch.randint(2, 64, (N, TP), generator=g) * prompt_mask
    completion_ids = torch.randint(2, 64, (N, T), generator=g) * completion_mask
    ro = Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(N, T, dtype=torch.float64),
                  torch.zeros(N), torch.zeros(N, dtype=torch.bool), [""] * N)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro, torch.arange(N), temperature)
    ro.sampler_logp = (logp + 0.3 * torch.randn(N, T, generator=g, dtype=logp.dtype)) * completion_mask
    return ro


class GradRecorder:
    """An optimizer for `learner_step` that keeps the accumulated gradients of each step (the last in
    `grads`) and the parameters it saw; with `lr` it takes a plain gradient step, else it stays put."""

    def __init__(self, named, lr=0.0):
        self.named, self.grads, self.lr, self.seen = named, {}, lr, []

    def step(self):
        self.seen.append({n: p.detach().clone() for n, p in self.named.items()})
        self.grads = {n: p.grad.detach().clone() for n, p in self.named.items()}
        with torch.no_grad():
            for p in self.named.values():
                p.sub_(self.lr * p.grad)

    def zero_grad(self, set_to_none=True):
        for p in self.named.values():
            p.grad = None


def frozen_loss(model, ro, adv, cfg: GRPOConfig, frozen=None):
    """learner_step's loss from the public pieces, with w and π_θ_old taken from `frozen` (one (w, old)
    per micro-batch) when given, else computed here at the current θ. Returns the loss and that list."""
    total, held = 0.0, []
    for i, rows in enumerate(micro_batches(ro, cfg.micro_batch_tokens)):
        mask = ro.completion_mask[rows]
        logp, _ = completion_logprobs(model, ro, rows, cfg.temperature)
        if frozen is None:
            w, _ = algo.tis_weights(logp, ro.sampler_logp[rows], cfg.tis_cap, mask)
            held.append((w.detach(), logp.detach()))
        w, old = (frozen or held)[i]
        token_loss, _ = algo.policy_loss(logp, old, adv[rows], mask, w, cfg.clip_eps)
        loss = algo.aggregate(token_loss, mask, cfg.loss_agg, ro.n_tokens, N, T)
        with model.disable_adapter():
            ref_logp, _ = completion_logprobs(model, ro, rows, cfg.temperature)
        total = total + loss + cfg.kl_beta * algo.aggregate(algo.kl_k3(logp, ref_logp), mask, cfg.loss_agg,
                                                            ro.n_tokens, N, T)
    return total, held


def picked_entries(named, seed=0, per_kind=3):
    """`per_kind` (name, flat index) pairs from lora_A weights and as many from lora_B, by a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for kind in ("lora_A", "lora_B"):
        names = sorted(n for n in named if kind in n)
        for j in torch.randperm(len(names), generator=g)[:per_kind].tolist():
            out.append((names[j], int(torch.randint(named[names[j]].numel(), (1,), generator=g))))
    return out


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean", "dr-grpo"])
def test_learner_gradient_matches_finite_differences(small_policy, float64, loss_agg):
    model = small_policy.double()
    cfg = dataclasses.replace(GRPOConfig(), group_size=2, loss_agg=loss_agg, kl_beta=0.1, tis_cap=1.3,
                              temperature=0.8, max_grad_norm=0.0, micro_batch_tokens=2 * (TP + T))
    assert cfg.loss_agg == loss_agg and cfg.tis
    ro = make_rollouts(model, cfg.temperature)
    assert len(micro_batches(ro, cfg.micro_batch_tokens)) == 2  # gradients accumulate over micro-batches
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)  # (N,)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}

    recorder = GradRecorder(named)
    stats = learner_step(model, recorder, ro, adv, cfg, T).stats
    with torch.no_grad():
        loss0, frozen = frozen_loss(model, ro, adv, cfg)
    # the objective below is the learner's loss, and the TIS weights are far from 1 (some at the cap C)
    assert loss0.dtype == torch.float64 and loss0.item() == pytest.approx(stats["loss/total"], rel=1e-12)
    w = torch.cat([w_mb[ro.completion_mask[rows].bool()] for (w_mb, _), rows in zip(frozen, micro_batches(ro, cfg.micro_batch_tokens))])
    assert (w - 1).abs().max() > 0.2 and stats["tis/clip_frac"] > 0

    for name, idx in picked_entries(named):
        p, grad = named[name], recorder.grads[name].view(-1)[idx].item()
        with torch.no_grad():
            orig = p.view(-1)[idx].item()
            p.view(-1)[idx] = orig + EPS
            up = frozen_loss(model, ro, adv, cfg, frozen)[0].item()
            p.view(-1)[idx] = orig - EPS
            down = frozen_loss(model, ro, adv, cfg, frozen)[0].item()
            p.view(-1)[idx] = orig
        fd = (up - down) / (2 * EPS)
        assert abs(fd) > 1e-6, f"{name}[{idx}]: gradient {fd:.2e} too small to check; pick other entries"
        assert abs(grad - fd) <= RTOL * abs(fd), f"{name}[{idx}]: autograd {grad:.10e} vs finite differences {fd:.10e}"


def test_second_epoch_gradient_matches_the_clipped_objective_against_pi_old(small_policy, float64):
    """μ = 2: the second update differentiates −w·min(ρA, clip(ρ)A) at θ1 with w and π_θold frozen at θ0, the
    policy before the first update; tokens whose clip binds (both bounds, checked) contribute no gradient."""
    model = small_policy.double()
    cfg = dataclasses.replace(GRPOConfig(), group_size=2, epochs=2, clip_eps=0.05, kl_beta=0.1, tis_cap=1.3,
                              temperature=0.8, max_grad_norm=0.0, micro_batch_tokens=2 * (TP + T))
    ro = make_rollouts(model, cfg.temperature)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        _, frozen = frozen_loss(model, ro, adv, cfg)  # (w, log π_θold) per micro-batch, at θ0
    recorder = GradRecorder(named, lr=2.0)
    stats = learner_step(model, recorder, ro, adv, cfg, T).stats
    assert len(recorder.seen) == 2 and stats["loss/clip_high_frac"] > 0 and stats["loss/clip_low_frac"] > 0
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(recorder.seen[1][n])  # θ1, where the second update's gradient was taken
    for name, idx in picked_entries(named):
        p, grad = named[name], recorder.grads[name].view(-1)[idx].item()
        with torch.no_grad():
            orig = p.view(-1)[idx].item()
            p.view(-1)[idx] = orig + EPS
            up = frozen_loss(model, ro, adv, cfg, frozen)[0].item()
            p.view(-1)[idx] = orig - EPS
            down = frozen_loss(model, ro, adv, cfg, frozen)[0].item()
            p.view(-1)[idx] = orig
        fd = (up - down) / (2 * EPS)
        assert abs(fd) > 1e-6, f"{name}[{idx}]: gradient {fd:.2e} too small to check; pick other entries"
        assert abs(grad - fd) <= RTOL * abs(fd), f"{name}[{idx}]: autograd {grad:.10e} vs finite differences {fd:.10e}"
