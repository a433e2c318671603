"""The learner: clean-policy log-probs, TIS weights and the clipped loss over micro-batches; the updates, at the
step's learning rate (`set_learning_rate`, grpo.lr_schedule).

    w_t  = min(π_θold(a_t) / π_θ̃(a_t), C), detached      TIS: the batch was sampled by the noisy π_θ̃
    ρ_t  = π_θ(a_t) / π_θold(a_t), clipped to [1 − ε, 1 + ε_high]
    loss = aggregate(−w_t · min(ρ_t A, clip(ρ_t) A)) [+ β · k3 to the base]

A batch takes μ·M optimizer steps: μ = `grpo.epochs` passes (TRL's num_iterations), each over M =
`grpo.mini_batches` contiguous blocks of rows, one step per block. π_θold is the clean policy before
the first update, so w stays fixed for the batch (verl's decoupled PPO + TIS). With μ = M = 1 (the
default) π_θold = π_θ: ρ ≡ 1 and w = min(π_θ/π_θ̃, C), the paper's TIS. With M > 1 a no-grad pass
records log π_θold first (later blocks see an updated θ); with M = 1 the first epoch's own forward is
at θold. `aggregate` divides by the whole batch's tokens (or rows), so a block's loss is its share of
the batch loss: an epoch's M gradients at θold add up to the full-batch gradient, and the split into
micro-batches never changes a gradient. Under torchrun (`distributed.py`) each rank holds a contiguous
share of the batch's rows: the normaliser counts every rank's tokens, the adapter's gradients are
summed over the ranks before each update, a block is the rows of the whole batch's block that the rank
holds, and the statistics are summed over the ranks, so each update is the one-process update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from minipsn.method import algo
from minipsn.run import distributed as dist
from minipsn.run.config import Config, GRPOConfig
from minipsn.sampling.rollout import Rollouts


@dataclass
class LearnerOut:
    stats: dict
    pooled: torch.Tensor        # (N, H) mean final hidden state over completion tokens, at θold


def body_and_head(model):
    """The decoder stack and the LM head weight of a (peft-wrapped) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head.weight


def completion_forward(model, ro: Rollouts, rows: torch.Tensor, temperature: float,
                       sample_temperature: float | None = None):
    """log π of the completion tokens (n, T), π's entropy there (n, T, detached), pooled final hidden
    states (n, H) of `rows`, and log π at the rollout's `sample_temperature` (n, T, detached: what the
    sampler's raw log-probs are compared with), from one forward pass."""
    body, head = body_and_head(model)
    Tp = ro.prompt_ids.shape[1]
    ids = torch.cat([ro.prompt_ids[rows], ro.completion_ids[rows]], dim=1)
    mask = torch.cat([ro.prompt_mask[rows], ro.completion_mask[rows]], dim=1)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    h = hidden[:, Tp - 1 : -1]  # the state at position t predicts token t + 1
    logp, entropy, at_sample_t = algo.token_logprobs_and_entropy(
        h, head, ro.completion_ids[rows], temperature, other_temperature=sample_temperature or temperature)
    # the completion's own states (positions Tp … Tp + T − 1), not the last prompt state all rows of a group share
    cmask = ro.completion_mask[rows].unsqueeze(-1).to(hidden.dtype)
    pooled = ((hidden[:, Tp:].detach() * cmask).sum(1) / cmask.sum(1).clamp(min=1)).float()
    return logp, entropy, pooled, at_sample_t


def completion_logprobs(model, ro: Rollouts, rows: torch.Tensor, temperature: float):
    """log π(completion tokens) (n, T) and pooled final hidden states (n, H) of `rows`."""
    logp, _, pooled, _ = completion_forward(model, ro, rows, temperature)
    return logp, pooled


def micro_batches(ro: Rollouts, budget_tokens: int, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Chunks of `rows` (default: all) whose padded size (rows × (Tp + T)) stays within the token budget."""
    width = ro.prompt_ids.shape[1] + ro.completion_ids.shape[1]
    per = max(1, budget_tokens // width)
    return list((torch.arange(ro.completion_ids.shape[0]) if rows is None else rows).split(per))


class OldPolicy:
    """What the learner keeps of π_θold, the clean policy before the batch's first update: log π_θold
    and the TIS weights min(π_θold/π_θ̃, C) (N, T), the base model's log-probs for the KL term, the pooled
    hidden states, and the step's TIS, noise-KL, sampler/learner and entropy statistics (token means over
    the batch). The noise KL and the sampler/learner gap compare log-softmaxes at the rollout temperature
    before top-p (`Rollouts.raw_logp`): finite for every sampled token, whatever top-p cut."""

    def __init__(self, ro: Rollouts, cfg: GRPOConfig, n_tokens: int | None = None):
        self.ro, self.cfg = ro, cfg
        self.n_tokens = ro.n_tokens if n_tokens is None else n_tokens  # the whole batch's, over all ranks
        self.logp = self.w = self.ref = None  # (N, T) each, filled block by block
        self.keep = torch.ones(ro.completion_ids.shape[0], dtype=torch.bool)  # (N,) Seq-MIS: rows left in the loss
        self.rows = ro.completion_ids.shape[0]  # the whole batch's, over all ranks (reduce)
        self.pooled: list[torch.Tensor] = []
        self.means = dict.fromkeys(("tis/weight_mean", "tis/weight_sq_mean", "tis/clip_frac", "noise/kl_total",
                                    "noise/kl_numerics", "noise/kl_noise", "guard/sampler_gap", "guard/decode_gap",
                                    "policy/entropy"), 0.0)
        self.ratio_max = 1.0

    def put(self, name: str, rows: torch.Tensor, part: torch.Tensor) -> None:
        full = getattr(self, name)
        if full is None:
            full = part.new_zeros(self.ro.completion_ids.shape[0], *part.shape[1:])
            setattr(self, name, full)
        full[rows] = part

    def record(self, rows: torch.Tensor, logp: torch.Tensor, entropy: torch.Tensor, pooled: torch.Tensor,
               at_sample_t: torch.Tensor) -> None:
        """Keep rows' log π_θold (n, T) and TIS weights, and add their share of the statistics."""
        ro, cfg, mask, learner = self.ro, self.cfg, self.ro.completion_mask[rows], logp.detach()
        self.put("logp", rows, learner)
        if cfg.seq_mis:  # C3PO's sequence-level mask, from π_θold and the rollout's own draw
            self.keep[rows] = algo.seq_mis_keep(learner, ro.sampler_logp[rows], mask, cfg.seq_mis_low, cfg.seq_mis_high).cpu()
        share = int(mask.sum()) / max(self.n_tokens, 1)  # token means over the batch, a block at a time
        if cfg.tis:
            w, tis = algo.tis_weights(learner, ro.sampler_logp[rows], cfg.tis_cap, mask)
            self.put("w", rows, w)
            for key in ("tis/weight_mean", "tis/weight_sq_mean", "tis/clip_frac"):
                self.means[key] += tis[key] * share
            self.ratio_max = max(self.ratio_max, tis["tis/ratio_max"])
        clean = ro.raw_logp[rows] if ro.clean_logp is None else ro.clean_logp[rows]  # σ = 0: the sampler is clean
        gap = clean - at_sample_t  # the sampler without noise against the learner, same temperature: numerics only
        self.means["noise/kl_total"] += algo.masked_mean(ro.sampler_logp[rows] - learner, mask).item() * share
        self.means["noise/kl_numerics"] += algo.masked_mean(gap, mask).item() * share
        self.means["guard/sampler_gap"] += algo.masked_mean(gap.abs(), mask).item() * share
        if ro.noise_kl is not None:  # KL(π_θ̃ ‖ π_clean) over the vocabulary at each sampled position (exact, ≥ 0)
            self.means["noise/kl_noise"] += algo.masked_mean(ro.noise_kl[rows], mask).item() * share
        if ro.noisy_logp is not None:  # the decode path (KV cache, static or compiled step) against a full pass
            self.means["guard/decode_gap"] += algo.masked_mean((ro.raw_logp[rows] - ro.noisy_logp[rows]).abs(), mask).item() * share
        self.means["policy/entropy"] += algo.masked_mean(entropy, mask).item() * share
        self.pooled.append(pooled)

    def reduce(self) -> None:
        """Under torchrun: each rank's shares of the token means → the means over all ranks' tokens."""
        self.masked = int((~self.keep).sum())
        if dist.active():
            self.means = dict(zip(self.means, dist.all_sum(list(self.means.values()))))
            self.ratio_max = dist.all_max(self.ratio_max)
            self.masked, self.rows = dist.all_sum_ints([self.masked, self.rows])

    def stats(self) -> dict:
        m = self.means if self.cfg.tis else {**self.means, "tis/weight_mean": 1.0, "tis/weight_sq_mean": 1.0}
        return {"tis/weight_mean": m["tis/weight_mean"], "tis/clip_frac": m["tis/clip_frac"], "tis/ratio_max": self.ratio_max,
                "tis/ess": algo.effective_sample_size(m["tis/weight_mean"], m["tis/weight_sq_mean"]),
                "noise/kl_total": m["noise/kl_total"], "noise/kl_numerics": m["noise/kl_numerics"],
                "noise/kl_noise": m["noise/kl_noise"], "guard/sampler_gap": m["guard/sampler_gap"],
                **({"guard/decode_gap": m["guard/decode_gap"]} if self.ro.noisy_logp is not None else {}),
                **({"tis/seq_masked_frac": self.masked / max(self.rows, 1)} if self.cfg.seq_mis else {}),
                "policy/entropy": m["policy/entropy"]}


def _micro_loss(model, old: OldPolicy, rows: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, norm: tuple[int, int, int], first_epoch: bool) -> tuple[torch.Tensor, dict]:
    """A micro-batch's share of the batch loss, policy + β·KL, and its sums for the statistics."""
    cfg = old.cfg
    if cfg.seq_mis:  # the rows Seq-MIS leaves out count 0 (the normaliser is the batch's, as for a TIS weight of 0)
        mask = mask * old.keep[rows].to(mask.device)[:, None].to(mask.dtype)
    token_loss, sums = algo.policy_loss(logp, old.logp[rows], advantages[rows], mask, None if old.w is None else old.w[rows],
                                        cfg.clip_eps, cfg.clip_eps_high or cfg.clip_eps)
    loss = algo.aggregate(token_loss, mask, cfg.loss_agg, *norm)
    sums["loss/policy"] = loss.item()
    if cfg.kl_beta > 0:
        if first_epoch:  # the base does not move: later epochs reuse its log-probs
            with torch.no_grad(), model.disable_adapter():
                old.put("ref", rows, completion_logprobs(model, old.ro, rows, cfg.temperature)[0])
        kl = algo.aggregate(algo.kl_k3(logp, old.ref[rows]), mask, cfg.loss_agg, *norm)
        loss = loss + cfg.kl_beta * kl
        sums["loss/kl"] = kl.item()
    return loss, sums


def _update(model, optimizer, cfg: GRPOConfig, loss_total: float) -> tuple[float, bool]:
    """Clip the gradient and take the optimizer step; returns the norm before clipping and whether it stepped."""
    params = [p for p in model.parameters() if p.requires_grad]
    dist.all_reduce_grads(params)  # torchrun: the whole batch's gradient on every rank (no-op on one process)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
    # a non-finite loss or gradient would poison the adapter and AdamW's moments: skip the update
    ok = math.isfinite(loss_total) and bool(torch.isfinite(grad_norm))
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), ok


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: Config, step: int) -> float:
    """The step's learning rate (grpo.lr_schedule), set on every parameter group: a function of the step, so a
    resumed run needs no scheduler state."""
    lr = cfg.grpo.lr * algo.lr_factor(step, cfg.grpo.lr_schedule, cfg.grpo.warmup_steps, cfg.run.steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def learner_step(model, optimizer, ro: Rollouts, advantages: torch.Tensor, cfg: GRPOConfig, max_len: int,
                 keep: torch.Tensor | None = None, shard: tuple[int, int] | None = None,
                 sample_temperature: float | None = None) -> LearnerOut:
    """μ·M optimizer steps on one batch (module docstring). `keep` (N,) bool: the rows that take part in the
    loss (None: all). `shard` (torchrun): (index of this rank's first row, rows over all ranks).
    `sample_temperature`: the rollout's, for the sampler/learner comparison (None: the learner's). Losses are
    means over the μ epochs, the grad norm over the updates, clip fractions and approx_kl_old over the
    updates' tokens; TIS, noise KL, entropy and pooled states are π_θold's. Out of memory after an update was
    applied is a MemoryError: θ and AdamW's moments have moved, so the batch cannot simply run again."""
    applied = [0]  # optimizer steps begun: a retry after one would apply this batch's updates twice
    try:
        return _learner_step(model, optimizer, ro, advantages, cfg, max_len, keep, shard, sample_temperature, applied)
    except torch.OutOfMemoryError:
        if not applied[0]:
            raise  # nothing applied yet: the trainer may halve the micro-batch and run the batch again
        optimizer.zero_grad(set_to_none=True)
        raise MemoryError(f"out of memory in the update after {applied[0]} of {cfg.epochs * cfg.mini_batches} "
                          f"optimizer steps were applied, so the batch cannot be retried; lower "
                          f"grpo.micro_batch_tokens (now {cfg.micro_batch_tokens}) and --resume from the last "
                          "checkpoint") from None


def _learner_step(model, optimizer, ro: Rollouts, advantages: torch.Tensor, cfg: GRPOConfig, max_len: int,
                  keep: torch.Tensor | None, shard: tuple[int, int] | None, sample_temperature: float | None,
                  applied: list[int]) -> LearnerOut:
    N, M = ro.completion_ids.shape[0], cfg.mini_batches
    loss_mask = ro.completion_mask if keep is None else ro.completion_mask * keep[:, None].to(ro.completion_mask)
    norm = (int(loss_mask.sum()), N if keep is None else max(int(keep.sum()), 1), max_len)  # the whole batch's
    offset, total_rows = shard or (0, N)
    n_tokens = ro.n_tokens
    if dist.active():  # the whole batch is every rank's rows
        tokens, kept, n_tokens = dist.all_sum_ints([norm[0], N if keep is None else int(keep.sum()), n_tokens])
        norm = (tokens, total_rows if keep is None else max(kept, 1), max_len)
    old = OldPolicy(ro, cfg, n_tokens)
    forward = lambda rows: completion_forward(model, ro, rows, cfg.temperature, sample_temperature)  # noqa: E731
    if M > 1:  # later blocks would see an updated θ: record π_θold before the first update
        with torch.no_grad():
            for rows in micro_batches(ro, cfg.micro_batch_tokens):
                old.record(rows, *forward(rows))
    sums = dict.fromkeys(("loss/policy", "loss/kl", "loss/total", "loss/grad_norm", "clip_low", "clip_high", "kl_old"), 0.0)
    skipped = False
    for epoch in range(cfg.epochs):
        for block in torch.arange(total_rows).tensor_split(M):
            block = block[(block >= offset) & (block < offset + N)] - offset  # this rank's rows of it (all: one process)
            total = 0.0
            for rows in micro_batches(ro, cfg.micro_batch_tokens, block):
                if rows.numel() == 0:  # torchrun: this rank holds none of the block
                    continue
                logp, entropy, pooled, at_sample_t = forward(rows)
                if M == 1 and epoch == 0:  # θ has not moved yet: this forward is π_θold's
                    old.record(rows, logp, entropy, pooled, at_sample_t)
                loss, part = _micro_loss(model, old, rows, logp, advantages, loss_mask[rows], norm, epoch == 0)
                loss.backward()
                total += loss.item()
                for key, value in part.items():
                    sums[key] += value
            total = dist.all_sum([total])[0]  # the whole batch's loss: every rank skips or steps alike
            sums["loss/total"] += total
            applied[0] += 1
            grad_norm, stepped = _update(model, optimizer, cfg, total)
            sums["loss/grad_norm"] += grad_norm
            skipped = skipped or not stepped
    if dist.active():
        summed = ("loss/policy", "loss/kl", "clip_low", "clip_high", "kl_old")
        sums.update(zip(summed, dist.all_sum([sums[k] for k in summed])))
    old.reduce()
    tokens = max(norm[0], 1) * cfg.epochs
    stats = {"loss/policy": sums["loss/policy"] / cfg.epochs, "loss/kl": sums["loss/kl"] / cfg.epochs,
             "loss/total": sums["loss/total"] / cfg.epochs, "loss/grad_norm": sums["loss/grad_norm"] / (cfg.epochs * M),
             "loss/clip_low_frac": sums["clip_low"] / tokens, "loss/clip_high_frac": sums["clip_high"] / tokens,
             "loss/approx_kl_old": sums["kl_old"] / tokens, **old.stats(), "guard/skipped": float(skipped)}
    return LearnerOut(stats, torch.cat(old.pooled))
