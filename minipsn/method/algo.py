"""The math of PSN-GRPO as pure functions: tensors in, tensors (+ a small stats dict) out.

Shapes: P prompts, G completions each, N = P·G rows laid out prompt-major (row i belongs to
prompt i // G), T completion tokens, V vocabulary.

    advantage   A_i   = (r_i − mean_g r) / (std_g r + eps)               (group_advantages)
    TIS weight  w_t   = min(π_θold(a_t) / π_θ̃(a_t), C), detached        (tis_weights)
    token loss  l_t   = −w_t · min(ρ_t A, clip(ρ_t, 1−ε, 1+ε_high) A) [+ β k3]  (policy_loss)

π_θ̃ is the policy with parameter-space noise that sampled the rollouts, π_θ the clean policy
that learns (arXiv 2602.02555, Sec. 3), π_θold the clean policy before the batch's first update
(= π_θ with one update per batch); ρ_t = π_θ/π_θold is the usual PPO ratio. Ratios are
formed in log space and the log-ratio is clamped before exp, so a token that the noisy policy
found very unlikely cannot overflow.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOG_RATIO_MIN = -20.0  # exp(-20) ≈ 2e-9: weights below this are zero for any practical purpose


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(P, G) rewards → (P, G) advantages, centred per group, optionally divided by the group std.

    A group whose rewards are all equal carries no signal and gets exactly 0 (no 0/0)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (P, G), got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)
    flat = (rewards.max(dim=1, keepdim=True).values == rewards.min(dim=1, keepdim=True).values)
    return centred.masked_fill(flat, 0.0)


def passk_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """(P, G) binary rewards → (P, G) Pass@k-training advantages (Chen et al. 2025, analytical form).

    With N = G and N_neg failures: R̄ = 1 − C(N_neg, k)/C(N, k), σ = √(R̄(1−R̄)),
    A_pos = (1 − R̄)/σ and A_neg = (1 − R̄ − C(N_neg−1, k−1)/C(N−1, k−1))/σ."""
    P, G = rewards.shape
    if not 1 <= k <= G:
        raise ValueError(f"pass@k training needs 1 <= k <= G={G}, got k={k}")
    out = torch.zeros_like(rewards, dtype=torch.float64)
    for p in range(P):
        n_neg = int((rewards[p] <= 0.5).sum())
        r_bar = 1.0 - math.comb(n_neg, k) / math.comb(G, k)
        std = math.sqrt(r_bar * (1.0 - r_bar))
        if std == 0.0:
            continue
        a_pos = (1.0 - r_bar) / std
        a_neg = (1.0 - r_bar - (math.comb(n_neg - 1, k - 1) / math.comb(G - 1, k - 1) if n_neg > 0 else 0.0)) / std
        out[p] = torch.where(rewards[p] > 0.5, a_pos, a_neg)
    return out.to(rewards.dtype)


def _chunk_logp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float,
                other_temperature: float):
    # k-bit training keeps the head in fp32 while the body runs in bf16: compute in the head's dtype
    z = (hidden.to(weight.dtype) @ weight.T).float()  # (B, t, V), one chunk at a time
    logits = z / temperature
    lse = torch.logsumexp(logits, dim=-1)  # (B, t)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    with torch.no_grad():  # entropy H = logsumexp(z) − Σ p·z is a metric: no gradient; so is the other temperature
        entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        if other_temperature == temperature:
            return logp, entropy, logp.detach()
        other = z / other_temperature
        return logp, entropy, other.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(other, dim=-1)


def token_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 1.0, chunk: int = 128,
                               other_temperature: float | None = None):
    """(B, T) log π(targets) and (B, T) entropy of π (detached), both at `temperature`, from final hidden
    states (B, T, H) and the LM head (V, H), from the same logits; with `other_temperature`, also the
    (B, T) log-probs at that temperature (detached; the first ones when it is the same).

    Works in chunks of `chunk` positions and recomputes each chunk's logits in backward, so a
    float32 (B, T, V) tensor never exists."""
    other_t = temperature if other_temperature is None else other_temperature
    logps, entropies, others = [], [], []
    for s in range(0, hidden.shape[1], chunk):
        h, t = hidden[:, s : s + chunk], targets[:, s : s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            logp, entropy, other = checkpoint(_chunk_logp, h, weight, t, temperature, other_t, use_reentrant=False)
        else:
            logp, entropy, other = _chunk_logp(h, weight, t, temperature, other_t)
        logps.append(logp)
        entropies.append(entropy)
        others.append(other)
    out = torch.cat(logps, dim=1), torch.cat(entropies, dim=1)
    return out if other_temperature is None else (*out, torch.cat(others, dim=1))


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0, chunk: int = 128) -> torch.Tensor:
    """(B, T) log π(targets) at `temperature`: `token_logprobs_and_entropy` without the entropy."""
    return token_logprobs_and_entropy(hidden, weight, targets, temperature, chunk)[0]


def token_self_certainty(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits → (...) KL(U ‖ softmax(z)) = logsumexp(z) − mean(z) − log V (≥ 0)."""
    z = logits.float()
    return torch.logsumexp(z, dim=-1) - z.mean(dim=-1) - math.log(z.shape[-1])


def self_certainty(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T, V) logits and (N, T) mask → (N,) mean self-certainty over each row's tokens (Kang et al. 2025)."""
    return masked_mean(token_self_certainty(logits), mask, dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def tis_weights(learner_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float = 10.0,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """(N, T) log π_θ and log π_θ̃ → detached (N, T) weights min(π_θ/π_θ̃, C) and stats.

    Exactly 1 where the two log-probs agree. The log-ratio is clamped to [LOG_RATIO_MIN, log C]
    before exp, which equals min(exp(·), C) without ever overflowing."""
    if cap <= 0:
        raise ValueError(f"TIS cap C must be > 0, got {cap}")
    log_ratio = (learner_logp.detach() - sampler_logp.detach()).float()
    clipped = log_ratio > math.log(cap)
    w = torch.exp(log_ratio.clamp(LOG_RATIO_MIN, math.log(cap)))
    mask = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.bool()
    stats = {"tis/weight_mean": masked_mean(w, mask).item(),
             "tis/weight_sq_mean": masked_mean(w * w, mask).item(),
             "tis/clip_frac": masked_mean(clipped.float(), mask).item(),
             "tis/ratio_max": math.exp(min(float(log_ratio.masked_fill(~mask, -math.inf).max()), 50.0))
             if mask.any() else 1.0}
    return w, stats


def effective_sample_size(weight_mean: float, weight_sq_mean: float) -> float:
    """Kish's ESS of token weights as a fraction of the tokens: (Σw)² / (n·Σw²) = E[w]² / E[w²], in (0, 1]."""
    return weight_mean**2 / weight_sq_mean if weight_sq_mean > 0 else 1.0


def seq_mis_keep(learner_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, low: float = 0.5,
                 high: float = 2.0) -> torch.Tensor:
    """(N, T) log π_θ, log π_θ̃, mask → (N,) bool: the rows whose sequence ratio π_θ(y)/π_θ̃(y) = exp Σ_t (log π_θ −
    log π_θ̃) lies in [low, high] (C3PO's Seq-MIS: a rollout its own draw made far likelier or rarer than the clean
    policy would leaves the loss). Compared in log space, so a long sequence never overflows."""
    log_ratio = ((learner_logp.detach() - sampler_logp) * mask).sum(-1)  # (N,)
    return (log_ratio >= math.log(low)) & (log_ratio <= math.log(high))


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref): exp(ref − logp) − (ref − logp) − 1 (≥ 0)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return torch.exp(d) - d - 1.0


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, agg: str, n_tokens: int, n_seqs: int,
              max_len: int) -> torch.Tensor:
    """Sum a micro-batch's (n, T) token losses with a normaliser of the *whole* batch.

    token-mean: Σ l / tokens;  seq-mean: Σ_i mean_t l_i / N;  dr-grpo: Σ l / (N · T_max).
    Because the normaliser is global, the sum over micro-batches is independent of the split."""
    mask = mask.to(token_loss.dtype)
    if agg == "token-mean":
        return (token_loss * mask).sum() / max(n_tokens, 1)
    elif agg == "seq-mean":
        return ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1.0)).sum() / n_seqs
    elif agg == "dr-grpo":
        return (token_loss * mask).sum() / (n_seqs * max_len)
    else:
        raise ValueError(f"unknown loss aggregation {agg!r}; use token-mean, seq-mean or dr-grpo")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                tis_w: torch.Tensor | None, clip_eps: float,
                clip_eps_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """(n, T) per-token clipped surrogate loss −w·min(ρA, clip(ρ, 1−ε, 1+ε_high)A) (not yet aggregated)
    and token sums over `mask`: where each clip bound binds, and k3 of KL(π_old ‖ π), (ρ − 1) − log ρ.

    `advantages` is (n,), broadcast over tokens; `tis_w` is None when TIS is off; ε_high None = ε.
    A bound binds where the min takes its clipped branch, A > 0 with ρ > 1 + ε_high (high) or A < 0
    with ρ < 1 − ε (low): there the token's gradient is zero."""
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp((logp - old_logp).clamp(LOG_RATIO_MIN, -LOG_RATIO_MIN))  # (n, T)
    adv = advantages.unsqueeze(1).to(logp.dtype)  # (n, 1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + high) * adv)
    loss = -surrogate if tis_w is None else -tis_w * surrogate
    r, m = ratio.detach(), mask.to(logp.dtype)
    return loss, {"clip_low": (((r < 1 - clip_eps) & (adv < 0)) * m).sum().item(),
                  "clip_high": (((r > 1 + high) & (adv > 0)) * m).sum().item(),
                  "kl_old": (kl_k3(old_logp.detach(), logp.detach()) * m).sum().item()}


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """Learning-rate multiplier of 0-based step `step` of `total`: linear warm-up from 0 (step / warmup)
    for the first `warmup` steps, then 1 (constant) or a decay that reaches 0 at `total`: linear
    1 − p, cosine (1 + cos πp)/2, p = (step − warmup)/(total − warmup). transformers' convention."""
    if step < warmup:
        return step / warmup
    p = min((step - warmup) / max(total - warmup, 1), 1.0)
    if schedule == "constant":
        return 1.0
    elif schedule == "linear":
        return 1.0 - p
    elif schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use constant, linear or cosine")


def group_diversity(pooled: torch.Tensor, G: int) -> torch.Tensor:
    """(N, H) per-row embeddings (prompt-major) → (P,) mean pairwise cosine distance within each group.

    Written as ‖e_i − e_j‖²/2 of unit vectors (= 1 − cos), so identical completions give exactly 0."""
    N, H = pooled.shape
    if N % G:
        raise ValueError(f"{N} rows is not a multiple of G={G}")
    e = F.normalize(pooled.float(), dim=-1).view(N // G, G, H)  # (P, G, H)
    dist = (e.unsqueeze(2) - e.unsqueeze(1)).pow(2).sum(-1) / 2  # (P, G, G), zero diagonal
    return dist.sum((1, 2)) / (G * (G - 1))


def ngram_diversity(rows: list[list[int]], G: int, n: int = 2) -> torch.Tensor:
    """Token rows (prompt-major) → (P,) mean pairwise Jaccard distance of the rows' n-gram sets."""
    sets = [{tuple(r[i : i + n]) for i in range(max(len(r) - n + 1, 1))} for r in rows]
    out = []
    for p in range(len(rows) // G):
        group = sets[p * G : (p + 1) * G]
        d = [1 - len(a & b) / max(len(a | b), 1) for i, a in enumerate(group) for b in group[i + 1 :]]
        out.append(sum(d) / len(d))
    return torch.tensor(out)
