"""The learner with several updates per batch: μ = 1 is bit-for-bit the learner before epochs and mini-batches
existed (kept below as `previous_learner_step`); with μ = 2 or M = 2, ρ = π_θ/π_θold moves, the clip
statistics count where the bounds bind, TIS reads π_θold; `keep` drops rows from the gradient; entropy."""
import copy
import dataclasses
import math

import pytest
import torch

from minipsn.method import algo
from minipsn.run.config import GRPOConfig
from minipsn.sampling.rollout import Rollouts
from minipsn.training import train as T
from minipsn.training.learner import completion_forward, completion_logprobs, learner_step
from tests.test_train import tiny_cfg

N, TP, TW = 8, 5, 6  # rows, prompt width, completion width


# ------------------------------------------------------------ the learner as it was (one update, ρ ≡ 1)

def _previous_chunk_logp(hidden, weight, targets, temperature):
    logits = (hidden.to(weight.dtype) @ weight.T).float() / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _previous_completion_logprobs(model, ro, rows, temperature):
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model()
    body, head = base.model, base.lm_head.weight
    Tp = ro.prompt_ids.shape[1]
    ids = torch.cat([ro.prompt_ids[rows], ro.completion_ids[rows]], dim=1)
    mask = torch.cat([ro.prompt_mask[rows], ro.completion_mask[rows]], dim=1)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    h = body(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, Tp - 1 : -1]
    targets, logps = ro.completion_ids[rows], []
    for s in range(0, h.shape[1], 128):
        hc, t = h[:, s : s + 128], targets[:, s : s + 128]
        if torch.is_grad_enabled() and hc.requires_grad:
            logps.append(checkpoint(_previous_chunk_logp, hc, head, t, temperature, use_reentrant=False))
        else:
            logps.append(_previous_chunk_logp(hc, head, t, temperature))
    cmask = ro.completion_mask[rows].unsqueeze(-1).to(h.dtype)
    h = body(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, Tp:]  # pooled: the completion's
    return torch.cat(logps, dim=1), ((h.detach() * cmask).sum(1) / cmask.sum(1).clamp(min=1)).float()  # own states


def _previous_policy_loss(logp, old_logp, advantages, mask, tis_w, clip_eps):
    ratio = torch.exp((logp - old_logp).clamp(algo.LOG_RATIO_MIN, -algo.LOG_RATIO_MIN))
    adv = advantages.unsqueeze(1).to(logp.dtype)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -surrogate if tis_w is None else -tis_w * surrogate


def previous_learner_step(model, optimizer, ro, advantages, cfg, max_len, keep=None, shard=None, sample_temperature=None):
    """minipsn.training.train.learner_step before grpo.epochs, mini_batches, entropy and overlong (commit 7a50089), with
    the diversity pooling fixed since (the completion's own positions, not one position early)."""
    assert keep is None and shard in (None, (0, ro.completion_ids.shape[0]))  # one process: every row is its own
    n_tokens = ro.n_tokens
    totals = {"loss/policy": 0.0, "loss/kl": 0.0, "loss/total": 0.0}
    means = {"tis/weight_mean": 0.0, "tis/weight_sq_mean": 0.0, "tis/clip_frac": 0.0,
             "noise/kl_total": 0.0, "noise/kl_numerics": 0.0, "noise/kl_noise": 0.0}
    pooled, ratio_max = [], 1.0
    width = ro.prompt_ids.shape[1] + ro.completion_ids.shape[1]
    for rows in torch.arange(ro.completion_ids.shape[0]).split(max(1, cfg.micro_batch_tokens // width)):
        mask = ro.completion_mask[rows]
        logp, pool = _previous_completion_logprobs(model, ro, rows, cfg.temperature)
        w, tis = algo.tis_weights(logp, ro.sampler_logp[rows], cfg.tis_cap, mask) if cfg.tis else (None, None)
        token_loss = _previous_policy_loss(logp, logp.detach(), advantages[rows], mask, w, cfg.clip_eps)
        loss = algo.aggregate(token_loss, mask, cfg.loss_agg, n_tokens, ro.completion_ids.shape[0], max_len)
        totals["loss/policy"] += loss.item()
        if cfg.kl_beta > 0:
            with torch.no_grad(), model.disable_adapter():
                ref_logp, _ = _previous_completion_logprobs(model, ro, rows, cfg.temperature)
            kl = algo.aggregate(algo.kl_k3(logp, ref_logp), mask, cfg.loss_agg, n_tokens, ro.completion_ids.shape[0], max_len)
            loss = loss + cfg.kl_beta * kl
            totals["loss/kl"] += kl.item()
        loss.backward()
        totals["loss/total"] += loss.item()
        share = int(mask.sum()) / max(n_tokens, 1)
        if tis is not None:
            for key in ("tis/weight_mean", "tis/weight_sq_mean", "tis/clip_frac"):
                means[key] += tis[key] * share
            ratio_max = max(ratio_max, tis["tis/ratio_max"])
        learner = logp.detach()
        clean = ro.sampler_logp[rows] if ro.clean_logp is None else ro.clean_logp[rows]
        means["noise/kl_total"] += algo.masked_mean(ro.sampler_logp[rows] - learner, mask).item() * share
        means["noise/kl_numerics"] += algo.masked_mean(clean - learner, mask).item() * share
        if ro.noise_kl is not None:  # exact per position since the k3 estimate was biased under top-p
            means["noise/kl_noise"] += algo.masked_mean(ro.noise_kl[rows], mask).item() * share
        pooled.append(pool)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
    skipped = not (math.isfinite(totals["loss/total"]) and torch.isfinite(grad_norm))
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if not cfg.tis:
        means.update({"tis/weight_mean": 1.0, "tis/weight_sq_mean": 1.0})
    stats = {**totals, "loss/grad_norm": float(grad_norm), "tis/weight_mean": means["tis/weight_mean"],
             "tis/clip_frac": means["tis/clip_frac"], "tis/ratio_max": ratio_max,
             "tis/ess": algo.effective_sample_size(means["tis/weight_mean"], means["tis/weight_sq_mean"]),
             "noise/kl_total": means["noise/kl_total"], "noise/kl_numerics": means["noise/kl_numerics"],
             "noise/kl_noise": means["noise/kl_noise"], "guard/skipped": float(skipped),
             "guard/sampler_gap": math.nan}  # did not exist: the trainer reads it, the comparison skips it
    return T.LearnerOut(stats, torch.cat(pooled))


# ------------------------------------------------------------ helpers

def make_rollouts(model, temperature=1.0) -> Rollouts:
    """Left-padded prompts, completions of different lengths, sampler and clean log-probs off the learner's."""
    g = torch.Generator().manual_seed(0)
    prompt_mask = (torch.arange(TP) >= TP - torch.tensor([5, 3, 4, 2, 5, 1, 3, 4])[:, None]).long()
    completion_mask = (torch.arange(TW) < torch.tensor([6, 2, 4, 5, 6, 3, 6, 1])[:, None]).long()
    prompt_ids = torch.randint(2, 64, (N, TP), generator=g) * prompt_mask
    completion_ids = torch.randint(2, 64, (N, TW), generator=g) * completion_mask
    ro = Rollouts(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(N, TW), torch.zeros(N),
                  completion_mask.sum(1) == TW, [""] * N)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro, torch.arange(N), temperature)
    ro.sampler_logp = (logp + 0.3 * torch.randn(N, TW, generator=g)) * completion_mask
    ro.clean_logp = (logp + 0.1 * torch.randn(N, TW, generator=g)) * completion_mask
    ro.noisy_logp = (ro.sampler_logp + 1e-3 * torch.randn(N, TW, generator=g)) * completion_mask
    ro.noise_kl = 0.01 * torch.rand(N, TW, generator=g) * completion_mask
    return ro


ADV = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.8, -0.8])  # (N,)


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class Spy:
    """Records what the learner hands to algo.policy_loss on each call."""

    def __init__(self, monkeypatch):
        self.calls, real = [], algo.policy_loss

        def spy(logp, old_logp, advantages, mask, tis_w, *args, **kwargs):
            self.calls.append({"logp": logp.detach().clone(), "old": old_logp.clone(), "mask": mask.clone(),
                               "w": None if tis_w is None else tis_w.clone(), "adv": advantages.clone()})
            return real(logp, old_logp, advantages, mask, tis_w, *args, **kwargs)

        monkeypatch.setattr(algo, "policy_loss", spy)


class StepCounter(torch.optim.SGD):
    """SGD that records the gradients of every step it takes."""

    def __init__(self, model, lr):
        self.model, self.named = model, trainable(model)
        super().__init__(list(self.named.values()), lr=lr)
        self.grads = []

    def step(self, closure=None):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.named.items()})
        return super().step(closure)


# ------------------------------------------------------------ μ = 1 is today's step

@pytest.mark.parametrize("tis, kl_beta, loss_agg", [(True, 0.1, "token-mean"), (False, 0.0, "seq-mean"),
                                                     (True, 0.0, "dr-grpo")])
def test_one_update_is_bit_for_bit_the_previous_learner(small_policy, tis, kl_beta, loss_agg):
    cfg = GRPOConfig(tis=tis, tis_cap=1.3, kl_beta=kl_beta, loss_agg=loss_agg, micro_batch_tokens=3 * (TP + TW),
                     temperature=0.9, max_grad_norm=0.05)
    assert (cfg.epochs, cfg.mini_batches, cfg.clip_eps_high) == (1, 1, 0.0)
    ro = make_rollouts(small_policy, cfg.temperature)
    results = []
    for fn in (previous_learner_step, learner_step):
        model = copy.deepcopy(small_policy)
        opt = torch.optim.AdamW(list(trainable(model).values()), lr=1e-2, weight_decay=0.01)
        out = fn(model, opt, ro, ADV, cfg, TW)
        out = fn(model, opt, ro, ADV, cfg, TW)  # a second step: AdamW's moments from the first one
        results.append((out, trainable(model)))
    (old, old_w), (new, new_w) = results
    assert old.stats["loss/grad_norm"] > cfg.max_grad_norm  # the clip acted, so its arithmetic is compared too
    for key, value in old.stats.items():
        if key not in ("guard/sampler_gap", "guard/decode_gap"):  # new since
            assert new.stats[key] == value, (key, new.stats[key], value)  # exactly, not approximately
    assert torch.equal(old.pooled, new.pooled)
    for name in old_w:
        assert torch.equal(old_w[name], new_w[name]), name
    assert new.stats["loss/clip_low_frac"] == new.stats["loss/clip_high_frac"] == new.stats["loss/approx_kl_old"] == 0.0


def test_a_trainer_step_is_bit_for_bit_the_previous_step(tmp_path, monkeypatch):
    runs = []
    for name, fn in (("old", previous_learner_step), ("new", learner_step)):
        monkeypatch.setattr(T, "learner_step", fn)
        tr = T.Trainer(tiny_cfg(tmp_path / name, **{"noise.sigma": "0.02", "grpo.kl_beta": "0.05",
                                                    "grpo.micro_batch_tokens": "256"}))
        metrics = [tr.step(0), tr.step(1)]
        runs.append((metrics, trainable(tr.model)))
    (old, old_w), (new, new_w) = runs
    for a, b in zip(old, new):
        for key, value in a.items():
            if not key.startswith("perf/") and key not in ("guard/sampler_gap", "guard/decode_gap"):
                assert b[key] == value, key
    for name in old_w:
        assert torch.equal(old_w[name], new_w[name]), name


# ------------------------------------------------------------ several updates per batch

def test_second_epoch_ratio_moves_the_clip_binds_and_tis_reads_pi_old(small_policy, monkeypatch):
    cfg = GRPOConfig(epochs=2, clip_eps=0.05, tis_cap=1.3, max_grad_norm=0.0, micro_batch_tokens=4 * (TP + TW))
    ro = make_rollouts(small_policy)
    rows = torch.arange(N)
    with torch.no_grad():
        logp0, _ = completion_logprobs(small_policy, ro, rows, 1.0)
    one = copy.deepcopy(small_policy)  # θ1: the same first update alone
    learner_step(one, torch.optim.SGD(list(trainable(one).values()), lr=3.0), ro, ADV,
                 dataclasses.replace(cfg, epochs=1), TW)
    with torch.no_grad():
        logp1, _ = completion_logprobs(one, ro, rows, 1.0)
    spy = Spy(monkeypatch)
    opt = StepCounter(small_policy, lr=3.0)
    stats = learner_step(small_policy, opt, ro, ADV, cfg, TW).stats
    assert len(opt.grads) == 2 and len(spy.calls) == 4  # 2 epochs × 1 block, 2 micro-batches each
    first, second = spy.calls[:2], spy.calls[2:]
    m = ro.completion_mask.bool()
    old = torch.cat([c["old"] for c in second])
    logp = torch.cat([c["logp"] for c in second])
    assert all(torch.equal(c["logp"], c["old"]) for c in first)  # epoch 1: ρ ≡ 1
    assert torch.allclose(old[m], logp0[m], atol=1e-6)  # epoch 2 divides by π_θold ...
    assert torch.allclose(logp[m], logp1[m], atol=1e-6)  # ... and is at θ after exactly one update
    rho = torch.exp(logp - old)
    adv = ADV[:, None].expand(N, TW)
    high, low = m & (adv > 0) & (rho > 1 + cfg.clip_eps), m & (adv < 0) & (rho < 1 - cfg.clip_eps)
    assert high.any() and low.any() and (rho[m] - 1).abs().max() > 0.1  # the clip binds both ways
    n = 2 * int(m.sum())  # two epochs' tokens
    assert stats["loss/clip_high_frac"] == pytest.approx(int(high.sum()) / n)
    assert stats["loss/clip_low_frac"] == pytest.approx(int(low.sum()) / n)
    assert stats["loss/approx_kl_old"] == pytest.approx(float(((rho - 1 - rho.log()) * m).sum()) / n, rel=1e-5)
    # TIS: min(π_θold/π_θ̃, C) in both epochs, not min(π_θ/π_θ̃, C)
    w_old = torch.exp((logp0 - ro.sampler_logp).clamp(max=math.log(cfg.tis_cap)))
    w_now = torch.exp((logp1 - ro.sampler_logp).clamp(max=math.log(cfg.tis_cap)))
    w = torch.cat([c["w"] for c in second])
    assert torch.allclose(w[m], w_old[m], atol=1e-5) and not torch.allclose(w[m], w_now[m], atol=1e-3)


def test_mini_batches_divide_by_pi_old_and_share_the_batch_normaliser(small_policy, monkeypatch):
    cfg = GRPOConfig(mini_batches=2, tis_cap=1.3, kl_beta=0.1, max_grad_norm=0.0, micro_batch_tokens=2 * (TP + TW))
    ro = make_rollouts(small_policy)
    with torch.no_grad():
        logp0, _ = completion_logprobs(small_policy, ro, torch.arange(N), 1.0)
    # lr 0: θ stays at θold, so the blocks' gradients must add up to the one-block gradient
    opt0, opt1 = StepCounter(copy.deepcopy(small_policy), lr=0.0), StepCounter(copy.deepcopy(small_policy), lr=0.0)
    learner_step(opt0.model, opt0, ro, ADV, cfg, TW)
    learner_step(opt1.model, opt1, ro, ADV, dataclasses.replace(cfg, mini_batches=1), TW)
    assert len(opt0.grads) == 2 and len(opt1.grads) == 1
    for name, g in opt1.grads[0].items():
        assert torch.allclose(opt0.grads[0][name] + opt0.grads[1][name], g, atol=1e-6), name
    # lr > 0: the second block is learnt at a moved θ, against π_θold recorded before the first update
    spy = Spy(monkeypatch)
    opt = StepCounter(small_policy, lr=3.0)
    stats = learner_step(small_policy, opt, ro, ADV, cfg, TW).stats
    assert len(opt.grads) == 2 and len(spy.calls) == 4  # 2 blocks of 4 rows, 2 micro-batches each
    late = spy.calls[2:]  # rows 4 … 7, learnt after the first block's update
    old, logp = torch.cat([c["old"] for c in late]), torch.cat([c["logp"] for c in late])
    m = ro.completion_mask[N // 2 :].bool()
    assert torch.allclose(old[m], logp0[N // 2 :][m], atol=1e-6) and (logp[m] - old[m]).abs().max() > 1e-3
    assert stats["loss/approx_kl_old"] > 0


# ------------------------------------------------------------ keep: truncated rows leave the loss

@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean"])
def test_keep_removes_rows_from_the_gradient(small_policy, loss_agg):
    cfg = GRPOConfig(loss_agg=loss_agg, tis_cap=1.3, kl_beta=0.1, max_grad_norm=0.0, micro_batch_tokens=3 * (TP + TW))
    ro = make_rollouts(small_policy)
    keep = torch.tensor([True, False, True, True, False, True, False, True])
    opt = StepCounter(copy.deepcopy(small_policy), lr=0.0)
    learner_step(opt.model, opt, ro, ADV, cfg, TW, keep)
    other = ADV.clone()
    other[~keep] *= -7.0  # what the dropped rows would say cannot matter
    opt2 = StepCounter(copy.deepcopy(small_policy), lr=0.0)
    learner_step(opt2.model, opt2, ro, other, cfg, TW, keep)
    kept = keep.nonzero().flatten()
    sub = Rollouts(*(getattr(ro, f.name)[kept] for f in dataclasses.fields(Rollouts)
                     if f.name not in ("texts", "clean_logp", "top_p_raw_logp", "noisy_logp", "noise_kl")),
                   texts=[""] * len(kept), clean_logp=ro.clean_logp[kept], noisy_logp=ro.noisy_logp[kept],
                   noise_kl=ro.noise_kl[kept])
    opt3 = StepCounter(copy.deepcopy(small_policy), lr=0.0)
    learner_step(opt3.model, opt3, sub, ADV[kept], cfg, TW)
    for name, g in opt3.grads[0].items():
        assert g.abs().sum() > 0
        assert torch.allclose(opt.grads[0][name], g, atol=1e-6), name
        assert torch.allclose(opt2.grads[0][name], g, atol=1e-6), name


# ------------------------------------------------------------ entropy

def test_policy_entropy_is_the_mean_token_entropy_of_the_learner(small_policy):
    cfg = GRPOConfig(temperature=0.7, micro_batch_tokens=3 * (TP + TW))
    ro = make_rollouts(small_policy, cfg.temperature)
    stats = learner_step(small_policy, torch.optim.SGD(list(trainable(small_policy).values()), lr=0.0), ro, ADV, cfg, TW).stats
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1)
    with torch.no_grad():
        logits = small_policy(input_ids=ids, attention_mask=mask,
                              position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, TP - 1 : -1] / cfg.temperature
        p = logits.softmax(-1)
        h = -(p * p.log()).sum(-1)  # (N, T)
        _, entropy, _, _ = completion_forward(small_policy, ro, torch.arange(N), cfg.temperature)
    m = ro.completion_mask.bool()
    assert torch.allclose(entropy[m], h[m], atol=1e-5)
    assert stats["policy/entropy"] == pytest.approx(float(h[m].mean()), rel=1e-5)


# ------------------------------------------------------------ the trainer's wiring: overlong and the LR schedule

def test_trainer_adds_the_soft_penalty_masks_truncated_rows_and_follows_the_lr_schedule(tmp_path, monkeypatch):
    from minipsn.rewards import overlong_penalty

    seen = {}
    real_advantages, real_learner = T.advantages, T.learner_step

    def spy_advantages(rewards, correct, cfg):
        seen["rewards"] = rewards.flatten().clone()
        return real_advantages(rewards, correct, cfg)

    def spy_learner(model, optimizer, ro, adv, cfg, max_len, keep=None, **kw):
        seen.update(ro=ro, keep=keep, lr=optimizer.param_groups[0]["lr"])
        return real_learner(model, optimizer, ro, adv, cfg, max_len, keep, **kw)

    monkeypatch.setattr(T, "advantages", spy_advantages)
    monkeypatch.setattr(T, "learner_step", spy_learner)
    sets = {"rollout.max_new_tokens": "12", "reward.overlong_window": "6", "run.steps": "6",
            "grpo.lr_schedule": "linear", "grpo.warmup_steps": "2"}
    tr = T.Trainer(tiny_cfg(tmp_path / "soft", **sets, **{"reward.overlong": "soft"}), reward_fn=lambda c, r, t: [0.0] * len(c))
    lrs = []
    for step in range(3):
        m = tr.step(step)
        lrs.append(m["optim/lr"])
        assert seen["lr"] == m["optim/lr"] and seen["keep"] is None
        lengths = seen["ro"].completion_mask.sum(1).float()
        assert torch.equal(seen["rewards"], overlong_penalty(lengths, 12, 6))  # the reward (0) plus the penalty
    assert (seen["rewards"] < 0).any() and m["reward/mean"] == pytest.approx(float(seen["rewards"].mean()))
    lr = tr.cfg.grpo.lr
    assert lrs == [0.0, lr / 2, lr]  # warm-up 0, ½; then the linear decay starts at the full rate

    tr = T.Trainer(tiny_cfg(tmp_path / "mask", **sets, **{"reward.overlong": "mask"}))
    tr.step(0)
    assert seen["ro"].truncated.any() and torch.equal(seen["keep"], ~seen["ro"].truncated)
