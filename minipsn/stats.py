"""Paired bootstrap of a pass@k difference: a method against a reference, on the same problems.

    Δ(k) = mean over seeds and problems of pass@k(method) − the same of the reference

pass@k per (seed, problem) is the unbiased estimator 1 − C(n − c, k)/C(n, k) (scoring.pass_at_k)
of the c correct samples out of n. The 95 % interval is the percentile interval of a bootstrap that
resamples problems and seeds. Δ splits into a problem part, the mean over problems of d_p (problem p's
pass@k averaged over the method's seeds, minus the same for the reference), and a seed part, each
side's mean of its seed effects e_s (seed s's mean over problems, minus the side's grand mean). A
resample draws the problems with replacement once, for both sides (the pairing: a hard problem drawn
twice is hard for both, so the spread of difficulty cancels from Δ), and each side's seeds apart (seed
s of one method and of the other are separate runs), scaling the seed effects by √(S/(S − 1)) so
their resampled mean has the unbiased spread; with S = 5 the plain resample's is 11 % too narrow. On
synthetic data the 95 % interval covered the truth in 92–98 % of runs with 5 seeds (tests/test_stats.py).
With one seed on a side there is no run-to-run spread to resample on that side, and the result says
so ("resampled").

Pure functions on counts: reading samples files (RUN/eval/samples/<benchmark>.jsonl, each problem's
`correct` list) is the caller's job.
"""
from __future__ import annotations

import numpy as np

from minipsn.scoring import pass_at_k


def count_matrix(runs: list[list[dict]], kind: str | None = None) -> tuple[np.ndarray, int, list[str]]:
    """Sample rows of S evaluations of the same problems (each a samples file's lines after its meta line:
    `id`, `correct`, and `kind` on the mixed task) → (counts (S, P), n, problem ids): correct samples per
    problem, in sorted id order, only the problems of `kind` when given. Different problems or n is an error."""
    if not runs:
        raise ValueError("no evaluations given")
    picked = [{r["id"]: r["correct"] for r in rows if kind is None or r.get("kind") == kind} for rows in runs]
    ids = sorted(picked[0])
    if not ids:
        raise ValueError(f"no problems of kind {kind!r} in the first evaluation")
    if any(sorted(p) != ids for p in picked):
        raise ValueError("the evaluations hold different problems: pair them on the same ones (same eval.problems)")
    ns = {len(c) for p in picked for c in p.values()}
    if len(ns) != 1:
        raise ValueError(f"the evaluations hold different numbers of samples per problem {sorted(ns)}: use one n")
    return np.array([[sum(p[i]) for i in ids] for p in picked]), ns.pop(), ids


def pass_at_k_table(counts: np.ndarray, n: int, ks: list[int]) -> np.ndarray:
    """counts (S, P) of correct samples out of n → pass@k (S, P, K), for each k of `ks`."""
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.size == 0:
        raise ValueError(f"counts must be (seeds, problems) and not empty, got shape {counts.shape}")
    if counts.min() < 0 or counts.max() > n:
        raise ValueError(f"counts must lie in 0..n = {n}, got {counts.min()}..{counts.max()}")
    lookup = np.array([[pass_at_k(n, c, k) for k in ks] for c in range(n + 1)])  # (n + 1, K): the estimator once per c
    return lookup[counts]


def _resampled_seed_effects(table: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """table (S, P, K) → (B, K): the mean of S seed effects drawn with replacement, scaled by √(S/(S − 1));
    0 with one seed."""
    S = table.shape[0]
    if S == 1:
        return np.zeros((resamples, table.shape[2]))
    effects = table.mean(axis=1) - table.mean(axis=(0, 1))  # (S, K)
    seed_weights = rng.multinomial(S, np.full(S, 1.0 / S), size=resamples) / S  # (B, S)
    return np.sqrt(S / (S - 1)) * seed_weights @ effects


def paired_bootstrap(method: np.ndarray, reference: np.ndarray, n: int, ks: list[int], resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> dict:
    """Δ pass@k of `method` minus `reference` with a paired bootstrap interval (module docstring).

    method (S_m, P), reference (S_r, P): correct counts out of n per (seed, problem), the same P
    problems in the same order on both sides; any number of seeds on each side (the base model before
    RL has one). Returns {"k", "diff", "low", "high", "method", "reference"} (lists, one per k: Δ, the
    interval, each side's pass@k), "seeds" [S_m, S_r], "problems" P, "resamples", "level", and
    "resampled": what the interval covers ("seeds and problems", or "problems only" with one seed on both
    sides)."""
    method, reference = np.asarray(method), np.asarray(reference)
    if method.ndim != 2 or reference.ndim != 2 or method.shape[1] != reference.shape[1]:
        raise ValueError(f"method and reference must be (seeds, problems) on the same problems, got shapes "
                         f"{method.shape} and {reference.shape}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level must be in (0, 1) and resamples >= 1, got {level} and {resamples}")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad or not ks:
        raise ValueError(f"every k must be in 1..n = {n}, got {list(ks)}")
    t_m, t_r = pass_at_k_table(method, n, ks), pass_at_k_table(reference, n, ks)
    P = method.shape[1]
    rng = np.random.default_rng(seed)
    problem_weights = rng.multinomial(P, np.full(P, 1.0 / P), size=resamples) / P  # (B, P), shared: the pairing
    per_problem = t_m.mean(axis=0) - t_r.mean(axis=0)  # (P, K): d_p
    diffs = (problem_weights @ per_problem + _resampled_seed_effects(t_m, resamples, rng)
             - _resampled_seed_effects(t_r, resamples, rng))  # (B, K)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail], axis=0)
    m, r = t_m.mean(axis=(0, 1)), t_r.mean(axis=(0, 1))
    one_seed = [side for side, s in (("method", method.shape[0]), ("reference", reference.shape[0])) if s == 1]
    resampled = ("problems only (one seed on each side: no run-to-run spread)" if len(one_seed) == 2 else
                 f"seeds and problems (one {one_seed[0]} seed: its run-to-run spread is not in the interval)"
                 if one_seed else "seeds and problems")
    return {"k": list(ks), "diff": (m - r).tolist(), "low": low.tolist(), "high": high.tolist(),
            "method": m.tolist(), "reference": r.tolist(), "seeds": [method.shape[0], reference.shape[0]],
            "problems": P, "resamples": resamples, "level": level, "resampled": resampled}
