"""The difference of a method's pass@k from a reference's, with a 95 % interval that keeps the grid's pairing.

    D_sp = pass@k(method, seed s, problem p) − pass@k(reference, s, p),     Δ = mean over s and p of D_sp

pass@k per (seed, problem) is the unbiased estimator 1 − C(n − c, k)/C(n, k) of c right answers out of that
side's own n. In a `compare` grid, seed s of every method shares the data order, the LoRA init and the
sampling and evaluation generators: the seeds are common random numbers, so D is taken cell by cell, paired
on seeds and on problems. Its variance follows the two-way random-effects model D_sp = Δ + a_p + b_s + e_sp
(problem, seed, residual):

    Var(Δ̂) = σ_b²/S + σ_a²/P + σ_e²/(S·P),   estimated from the mean squares of the S × P table of D

and the interval is Δ̂ ± t·SE with t on Satterthwaite's degrees of freedom, which fall to S − 1 when the
seed part dominates (a percentile bootstrap over 5 seeds has normal tails and under-covers). Where the two
sides hold different seeds, or the reference is the one-evaluation base model, the seeds are not paired:
each side's seed part enters on its own (its own S − 1 degrees of freedom) and only the problems pair.
Coverage, measured by simulation under data like the grid's (`coverage`, `python -m minipsn.experiments.stats`): the
README states it. Pure functions on counts; reading samples files is the caller's (paired.py).
"""
from __future__ import annotations

import math

import numpy as np

from minipsn.evaluation.scoring import pass_at_k


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
    for p in picked[1:]:
        if sorted(p) != ids:
            first = next(i for i, j in zip([*ids, None], [*sorted(p), None]) if i != j)
            raise ValueError(f"the evaluations hold different problems (first differing id {first}): pair them on "
                             "the same ones (same eval.problems)")
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


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` (> 0, any real) degrees of freedom: safeguarded Newton on its CDF
    (the regularized incomplete beta function, by continued fraction), as numpy has no t distribution."""
    if q < 0.5:
        return -t_quantile(1 - q, df)
    if math.isinf(df) or df > 1e7:
        return math.sqrt(2) * _erfinv(2 * q - 1)
    lo, hi, x = 0.0, 1e6, math.sqrt(2) * _erfinv(2 * q - 1)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    for _ in range(200):
        f = _t_cdf(x, df) - q
        if abs(f) < 1e-14:
            break
        lo, hi = (x, hi) if f < 0 else (lo, x)
        step = x - f / math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))
        x = step if lo < step < hi else (lo + hi) / 2
    return x


def _t_cdf(x: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + x * x))
    return 1 - tail if x > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b) (Numerical Recipes' continued fraction, Lentz's method)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > 1e-300 else 1e-300)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1 + num / c
            c = c if abs(c) > 1e-300 else 1e-300
            f *= c * d
            if num < 0 and abs(c * d - 1) < 1e-14:
                return front * f / a
    return front * f / a


def _erfinv(y: float) -> float:
    x = 0.0
    for _ in range(60):  # Newton on erf
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


def _two_way(table: np.ndarray) -> dict:
    """(S, P) values → the mean squares of a two-way table without replication: seed rows (df S − 1), problem
    columns (df P − 1), residual (df (S − 1)(P − 1)); each as a variance of means (var of the row means, …)."""
    S, P = table.shape
    rows, cols, grand = table.mean(1), table.mean(0), table.mean()
    row_var = rows.var(ddof=1) if S > 1 else 0.0
    col_var = cols.var(ddof=1) if P > 1 else 0.0
    resid = table - rows[:, None] - cols[None, :] + grand
    mse = float((resid ** 2).sum() / ((S - 1) * (P - 1))) if S > 1 and P > 1 else 0.0
    return {"S": S, "P": P, "row_var": float(row_var), "col_var": float(col_var), "mse": mse}


def _satterthwaite(terms: list[tuple[float, float]]) -> float:
    """df of Σ c_i·MS_i from its terms (c_i·MS_i, df_i)."""
    total = sum(v for v, _ in terms)
    denom = sum(v * v / df for v, df in terms if df > 0 and v != 0)
    return total * total / denom if denom > 0 else math.inf


def difference_interval(method: np.ndarray, reference: np.ndarray, paired_seeds: bool,
                        level: float = 0.95) -> dict:
    """Δ = mean(method) − mean(reference) of (S, P) tables of one statistic (pass@k for one k) with its interval.

    `paired_seeds`: row s of both tables is the same seed (S equal), so D_sp is formed cell by cell; else the
    sides' seeds are independent (or one side is a single evaluation) and only the columns (problems) pair.
    Var(Δ̂) is estimated without bias from the mean squares (rows/S + columns/P − residual/(S·P)), not clamped
    part by part: clamping a part at 0 biases it up, and measured coverage then reached 99-100 % at k = n. Where
    that sum is ≤ 0 (near pass@k = 1 the residual can outweigh both margins) the largest single part stands in,
    so no interval has zero width.
    Returns {"diff", "low", "high", "se", "df", "components", "cell"}: components are the variance parts of Δ̂
    (seed, problem, residual; each clamped at 0 for display, so they may sum to a little more than SE²); `cell`
    (paired seeds) the variances of one cell's D_sp, σ_b², σ_a², σ_e², which size another design:
    SE² ≈ σ_b²/S + σ_a²/P + σ_e²/(S·P)."""
    method, reference = np.asarray(method, float), np.asarray(reference, float)
    P, cell = method.shape[1], None
    if paired_seeds:
        m = _two_way(method - reference)
        S = m["S"]
        rows, cols, resid = m["row_var"] / S, m["col_var"] / P, m["mse"] / (S * P)
        terms = [(rows, S - 1), (cols, P - 1), (-resid, (S - 1) * (P - 1))]
        cell = {"seed": max(m["row_var"] - m["mse"] / P, 0.0), "residual": m["mse"],
                "problem": max(m["col_var"] - m["mse"] / S, 0.0) if S > 1 else m["col_var"]}
        components = {"seed": cell["seed"] / S, "problem": cell["problem"] / P, "residual": resid}
    else:  # the columns' differences hold both sides' residuals; each side's seeds add their own part
        terms = [(float(np.var(method.mean(0) - reference.mean(0), ddof=1)) / P, P - 1)]
        components = {"seed": 0.0, "problem": terms[0][0], "residual": 0.0}
        for side in (_two_way(method), _two_way(reference)):
            S = side["S"]
            if S > 1:
                terms += [(side["row_var"] / S, S - 1), (-side["mse"] / (S * P), (S - 1) * (P - 1))]
                components["seed"] += max(side["row_var"] - side["mse"] / P, 0.0) / S
    var = sum(v for v, _ in terms)
    df = _satterthwaite(terms) if var > 0 else math.inf
    if var <= 0:  # the residual outweighs both margins: rather than a zero-width interval, the largest single part
        var, df = max(((abs(v), d) for v, d in terms), default=(0.0, math.inf))  # (each ≤ Var(Δ̂) in expectation)
    se = math.sqrt(var)
    t = t_quantile(0.5 + level / 2, max(df, 1.0))
    diff = float(method.mean() - reference.mean())
    return {"diff": diff, "low": diff - t * se, "high": diff + t * se, "se": se, "df": df,
            "components": components, "cell": cell}


def minimum_detectable(se: float, df: float, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true |Δ| a two-sided test at 1 − level detects with probability `power`: (t_{1−α/2} + t_power)·SE."""
    df = max(df, 1.0)
    return (t_quantile(0.5 + level / 2, df) + t_quantile(power, df)) * se


def paired_difference(method: np.ndarray, reference: np.ndarray, n_method: int, ks: list[int],
                      n_reference: int | None = None, paired_seeds: bool = False, level: float = 0.95) -> dict:
    """Δ pass@k of `method` minus `reference` with its interval, for each k (module docstring).

    method (S_m, P), reference (S_r, P): correct counts per (seed, problem) out of each side's own n, the same
    P problems in the same order on both sides. `paired_seeds`: row s is the same seed on both sides (a compare
    grid's common random numbers). Returns lists over k: "diff", "low", "high", "se", "df", "mde" (the minimum
    detectable effect at 80 % power), "components" ({seed, problem, residual} variance parts), each side's
    pass@k ("method", "reference"); and "k", "seeds" [S_m, S_r], "problems" P, "n" [n_m, n_r], "level",
    "pairing" (what pairs) and "covers" (which spreads the interval holds)."""
    method, reference = np.asarray(method), np.asarray(reference)
    n_reference = n_method if n_reference is None else n_reference
    if method.ndim != 2 or reference.ndim != 2 or method.shape[1] != reference.shape[1]:
        raise ValueError(f"method and reference must be (seeds, problems) on the same problems, got shapes "
                         f"{method.shape} and {reference.shape}")
    if method.shape[1] < 2:
        raise ValueError("a difference with an interval needs at least 2 problems")
    if paired_seeds and method.shape[0] != reference.shape[0]:
        raise ValueError(f"paired seeds need the same seeds on both sides, got {method.shape[0]} and {reference.shape[0]}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    bad = [k for k in ks if not 1 <= k <= min(n_method, n_reference)]
    if bad or not ks:
        raise ValueError(f"every k must be in 1..n = {min(n_method, n_reference)}, got {list(ks)}")
    t_m, t_r = pass_at_k_table(method, n_method, ks), pass_at_k_table(reference, n_reference, ks)
    per_k = [difference_interval(t_m[:, :, j], t_r[:, :, j], paired_seeds, level) for j in range(len(ks))]
    out = {key: [r[key] for r in per_k] for key in ("diff", "low", "high", "se", "df", "components", "cell")}
    out["mde"] = [minimum_detectable(r["se"], r["df"], level) for r in per_k]
    S_m, S_r = method.shape[0], reference.shape[0]
    one = [side for side, s in (("method", S_m), ("reference", S_r)) if s == 1]
    covers = ("problems and each seed's evaluation (one seed on each side: no run-to-run spread)" if len(one) == 2
              else f"problems and seeds (one {one[0]} seed: its run-to-run spread is not in the interval)" if one
              else "problems and seeds")
    return {"k": list(ks), **out, "method": t_m.mean(axis=(0, 1)).tolist(), "reference": t_r.mean(axis=(0, 1)).tolist(),
            "seeds": [S_m, S_r], "problems": int(method.shape[1]), "n": [n_method, n_reference], "level": level,
            "pairing": "seeds and problems" if paired_seeds else "problems (seeds drawn apart)", "covers": covers}


def across_builds(diffs: list[float], ses: list[float], level: float = 0.95) -> dict:
    """B builds' Δ (each with its paired SE) → one Δ with the build a random effect: the DerSimonian-Laird between-
    build variance τ², weights 1/(SE_b² + τ²), and the Hartung-Knapp interval (the weighted spread of the builds
    around the mean, t with B − 1 df), which holds its level with few builds where a normal one does not.
    Returns {"diff", "low", "high", "tau2", "builds", "df"}."""
    d, v = np.asarray(diffs, float), np.asarray(ses, float) ** 2
    B = len(d)
    if B < 2 or len(v) != B or (v <= 0).any():
        raise ValueError(f"across_builds needs at least 2 builds, each with a positive SE, got {B} and {list(ses)}")
    w = 1 / v
    fixed = (w * d).sum() / w.sum()
    q = (w * (d - fixed) ** 2).sum()
    tau2 = max(0.0, (q - (B - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
    w = 1 / (v + tau2)
    mean = float((w * d).sum() / w.sum())
    se = math.sqrt(float((w * (d - mean) ** 2).sum() / ((B - 1) * w.sum())))
    t = t_quantile(0.5 + level / 2, B - 1)
    return {"diff": mean, "low": mean - t * se, "high": mean + t * se, "tau2": tau2, "builds": B, "df": B - 1}


# ---------------------------------------------------------------- coverage, by simulation

# Data models like a compare grid's (a logit per (seed, problem) → c ~ Binomial(n, sigmoid)): problem effect
# a_p ~ N(mu, 1.5) shared by both sides; the reference's run effect u_s and seed × problem effect v_sp; the
# method's run effect u_s + ξ_s and seed × problem v_sp + η_sp when the seeds are shared (the same data order,
# init and generators), fresh ones when not; a method × problem effect w_p; the method's shift δ. Against the base
# model ("base"), the reference is one evaluation of a model no seed trained: a_p alone, and only problems pair.
DATA_MODELS = {
    "shared seeds": {"u": 1.0, "v": 0.3, "xi": 0.1, "eta": 0.1, "w": 0.0, "shared": True},
    "seed × problem": {"u": 0.3, "v": 0.8, "xi": 0.1, "eta": 0.4, "w": 0.0, "shared": True},
    "method × problem": {"u": 0.5, "v": 0.3, "xi": 0.1, "eta": 0.1, "w": 0.6, "shared": True},
    "seeds not shared": {"u": 0.5, "v": 0.3, "xi": 0.0, "eta": 0.0, "w": 0.3, "shared": False},
    "against the base": {"u": 0.5, "v": 0.3, "xi": 0.0, "eta": 0.0, "w": 0.3, "shared": False, "base": True},
}


def _expected_pass_at_k(mean: float, sd: float, ks: list[int]) -> np.ndarray:
    """E[1 − (1 − q)^k], q = sigmoid(L), L ~ N(mean, sd²): the population pass@k (Gauss-Hermite)."""
    x, w = np.polynomial.hermite_e.hermegauss(120)
    q = 1 / (1 + np.exp(-(mean + sd * x)))
    return np.array([(w * (1 - (1 - q) ** k)).sum() / w.sum() for k in ks])


def simulate(model: dict, seeds: int, rng: np.random.Generator, problems: int = 100, n: int = 64,
             mu: float = -1.5, delta: float = -0.3) -> tuple[np.ndarray, np.ndarray]:
    """One grid's counts (method (S, P), reference (S, P)) under a data model of DATA_MODELS."""
    a = rng.normal(mu, 1.5, problems)
    u, v = rng.normal(0, model["u"], (seeds, 1)), rng.normal(0, model["v"], (seeds, problems))
    if model["shared"]:
        um, vm = u + rng.normal(0, model["xi"], (seeds, 1)), v + rng.normal(0, model["eta"], (seeds, problems))
    else:
        um, vm = rng.normal(0, model["u"], (seeds, 1)), rng.normal(0, model["v"], (seeds, problems))
    w = rng.normal(0, model["w"], problems)
    side = lambda logit: rng.binomial(n, 1 / (1 + np.exp(-logit)))
    return side(a + w + delta + um + vm), side(a[None] if model.get("base") else a + u + v)


def truth(model: dict, ks: list[int], mu: float = -1.5, delta: float = -0.3) -> np.ndarray:
    """The population Δ pass@k the interval is for, under `model`."""
    ref_sd = 1.5 if model.get("base") else math.sqrt(1.5 ** 2 + model["u"] ** 2 + model["v"] ** 2)
    if model["shared"]:
        m_sd = math.sqrt(1.5 ** 2 + model["w"] ** 2 + model["u"] ** 2 + model["xi"] ** 2 + model["v"] ** 2 + model["eta"] ** 2)
    else:
        m_sd = math.sqrt(1.5 ** 2 + model["w"] ** 2 + model["u"] ** 2 + model["v"] ** 2)
    return _expected_pass_at_k(mu + delta, m_sd, ks) - _expected_pass_at_k(mu, ref_sd, ks)


def coverage(model: dict, seeds: int, reps: int = 1000, ks: tuple[int, ...] = (1, 8, 64), seed: int = 0,
             problems: int = 100, n: int = 64) -> dict:
    """{"coverage": share of `reps` simulated grids whose interval holds the truth, per k; "width": mean width}.
    Seeds are paired as compare pairs them: method against method by seed index, against the base not at all."""
    paired_seeds = not model.get("base")
    rng, ks = np.random.default_rng(seed), list(ks)
    target, hits, width = truth(model, ks), np.zeros(len(ks)), np.zeros(len(ks))
    for _ in range(reps):
        method, reference = simulate(model, seeds, rng, problems, n)
        r = paired_difference(method, reference, n, ks, paired_seeds=paired_seeds)
        low, high = np.array(r["low"]), np.array(r["high"])
        hits += (low <= target) & (target <= high)
        width += high - low
    return {"k": ks, "coverage": (hits / reps).tolist(), "width": (width / reps).tolist()}


if __name__ == "__main__":  # python -m minipsn.experiments.stats: the coverage table the README states
    print("| data model | S | " + " | ".join(f"coverage @{k}" for k in (1, 8, 64)) + " | width @64 (points) |")
    print("|---|---|---|---|---|---|")
    for name, spec in DATA_MODELS.items():
        for S in (2, 3, 5, 10):
            c = coverage(spec, S)
            print(f"| {name} | {S} | " + " | ".join(f"{x:.3f}" for x in c["coverage"]) + f" | {100 * c['width'][-1]:.1f} |")
