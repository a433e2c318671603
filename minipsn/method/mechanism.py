"""What the noise does to a step's learning signal: the mechanism metrics, per step, as pure tensor functions.

    signal groups      groups with a non-zero advantage (the rest give no gradient: all right or all wrong)
    noise-owed groups  signal groups whose right rows all came from one noisy draw: σ > 0, at least one right row,
                       and every right row sampled under the same noise seed
    kl per completion  Σ_t KL(π_θ̃ ‖ π_clean) over a completion's tokens (the per-token noise KL, summed)
    per-draw accuracy  with noise.draws = D > 1, the accuracy of the G/D rows of every group that draw d sampled

"Noise-owed" by granularity: every row is sampled with noise when σ > 0, so the question is which draw a group's
right answers came from. With one draw per group (granularity step and D = 1, or group) every right row shares the
draw, so every signal group with a right row counts (1 under the verifier's 0/1 reward): whether the clean policy
would have found it is then read against the grpo arm of the same seed, which samples the same prompts with the same
generators (compare the two arms' explore/signal_frac). With D > 1 draws a group counts when its right rows lie in
one draw's G/D rows (the other draws found none); with rollout granularity (a draw per row) when it has exactly one
right row. At σ = 0 no draw is noisy and nothing counts. train.py calls these; metrics.py reduces them over ranks.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def signal_groups(adv: torch.Tensor) -> torch.Tensor:
    """(P, G) advantages → (P,) bool: the group has a non-zero advantage (it contributes a gradient)."""
    return (adv != 0).any(1)


def noise_owed(correct: torch.Tensor, adv: torch.Tensor, seeds: torch.Tensor, sigma: float) -> torch.Tensor:
    """(P, G) correctness, advantages and noise seeds → (P,) bool: a signal group whose right rows (at least one)
    were all sampled under one noisy draw (module docstring). All False at σ = 0."""
    right = correct > 0  # (P, G)
    if sigma == 0:
        return torch.zeros(adv.shape[0], dtype=torch.bool)
    seeds = seeds.to(torch.int64)
    lo = seeds.masked_fill(~right, torch.iinfo(torch.int64).max).min(1).values  # (P,) smallest seed of a right row
    hi = seeds.masked_fill(~right, torch.iinfo(torch.int64).min).max(1).values  # (P,) largest
    return signal_groups(adv) & right.any(1) & (lo == hi)


def draw_index(rows: int, G: int, draws: int) -> torch.Tensor:
    """(rows,) the draw each row of whole groups was sampled under with noise.draws = D: row p of a group takes draw
    p·D // G (noise.row_seeds's split)."""
    return (torch.arange(rows) % G) * draws // G


def kl_per_completion(noise_kl: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """(N, T) per-position noise KL (None at σ = 0) and the completion mask → (N,) its sum over each completion."""
    if noise_kl is None:
        return torch.zeros(mask.shape[0])
    return (noise_kl.float() * mask.float()).sum(1).cpu()


def step_tensors(correct: torch.Tensor, adv: torch.Tensor, seeds: list[int], sigma: float, ro) -> dict:
    """A step's mechanism tensors for metrics.step_means: correct (N_r,), adv (P_r, G), the rows' noise seeds (N_r,)
    and σ, the rollouts → {"signal", "owed": (P_r,) bool, "kl_seq": (N_r,)}."""
    G = adv.shape[1]
    owed = noise_owed(correct.view(-1, G), adv, torch.tensor(seeds, dtype=torch.int64).view(-1, G), sigma)
    return {"signal": signal_groups(adv), "owed": owed, "kl_seq": kl_per_completion(ro.noise_kl, ro.completion_mask)}


KEYS = ("explore/signal_frac", "explore/noise_owed_frac", "noise/kl_seq", "noise/kl_noise", "reward/accuracy")


def summary(run_dirs: dict[str, list[Path]], ref: str = "grpo") -> dict[str, dict[str, float]]:
    """{arm: [run folder per seed]} → {arm: mean over seeds and steps of each mechanism metric, and "signal_vs_ref":
    the mean over seeds of its signal groups' share minus the `ref` arm's of the same seed (same prompts and
    generators: the groups the noise gave a signal, or took one from)}."""
    per_seed = {}
    for arm, folders in run_dirs.items():
        per_seed[arm] = []
        for folder in folders:
            rows = [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r.get("step", 0) > 0
                    and "reward/accuracy" in r]
            if not rows:
                raise ValueError(f"{folder} logged no training steps")
            per_seed[arm].append({k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in KEYS})
    out = {}
    for arm, seeds in per_seed.items():
        out[arm] = {k: sum(s[k] for s in seeds) / len(seeds) for k in KEYS}
        if ref in per_seed:
            pairs = list(zip(seeds, per_seed[ref]))
            out[arm]["signal_vs_ref"] = sum(a[KEYS[0]] - b[KEYS[0]] for a, b in pairs) / len(pairs)
    return out


def markdown(table: dict[str, dict[str, float]], ref: str = "grpo") -> str:
    """The mechanism summary as a markdown table (means over seeds and steps)."""
    lines = [f"| arm | signal groups | Δ against {ref} (same seed) | noise-owed of those | noise KL / completion | "
             "noise KL / token | accuracy |", "|---|---|---|---|---|---|---|"]
    for arm, m in table.items():
        delta = f"{m['signal_vs_ref']:+.3f}" if "signal_vs_ref" in m else ""
        lines.append(f"| {arm} | {m['explore/signal_frac']:.3f} | {delta} | {m['explore/noise_owed_frac']:.3f} | "
                     f"{m['noise/kl_seq']:.3g} | {m['noise/kl_noise']:.3g} | {m['reward/accuracy']:.3f} |")
    return "\n".join(lines) + "\n"
