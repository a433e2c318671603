"""Scoring an evaluation's samples: one problem's completions → a row (answers, correct, lengths,
truncated, gold), rows → a benchmark's pass@k, mean and majority-vote accuracy, lengths and truncation.

    pass@k = E_problems[ 1 − C(n − c, k) / C(n, k) ],   c = correct completions out of n

(Chen et al. 2021, the unbiased estimator; arXiv 2602.02555 reports pass@1 … pass@256 on AIME24/25
and other math sets). The ratio of binomials is computed as the product Π_{i=n−c+1}^{n} (1 − k/i),
so n in the thousands never builds a giant integer or a float overflow.

Truncated completions count as wrong and do not vote, as in training (rewards/__init__.py). Majority vote
groups all correct answers as one (each is equivalent to the gold answer) and wrong ones by the
verifier's normalised spelling; a tie scores the chance a random tie-break picks the right group.

When every row carries a `kind` (the mixed synthetic task's final and steps questions), `summarize`
adds the same numbers per kind ("kinds") next to the benchmark's totals.
"""
from __future__ import annotations

import math
import operator
from collections import Counter

from minipsn.rewards import answer_rewards
from minipsn.verify import EXTRACTS, VERIFIERS, extract_answers
from minipsn.verify import normalise as normalise_answer  # the verifier's canonical spelling

_ANSWER_CHARS = 200  # stored answers are cut here: enough to vote on, keeps samples files small


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples: 1 − C(n−c, k)/C(n, k)."""
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if n < 1 or c < 0 or k < 1:
        raise ValueError(f"pass@k needs n >= 1, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if c > n or k > n:
        raise ValueError(f"pass@k needs c <= n and k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(n: int) -> list[int]:
    """k = 1, 2, 4, ... <= n, and n itself."""
    ks = [2**j for j in range(n.bit_length()) if 2**j <= n]
    return ks if ks[-1] == n else [*ks, n]


def majority_correct(answers: list[str | None], correct: list[int], truncated: list[bool]) -> float:
    """Majority-vote accuracy of one problem in [0, 1] (see the module docstring for the grouping)."""
    right, wrong = 0, Counter()
    for answer, ok, cut in zip(answers, correct, truncated):
        if ok:
            right += 1
        elif answer is not None and not cut:
            wrong[normalise_answer(answer)] += 1
    top = max(wrong.values(), default=0)
    if right == 0 or right < top:
        return 0.0
    return 1.0 if right > top else 1.0 / (1 + sum(v == top for v in wrong.values()))


def summarize(rows: list[dict]) -> dict:
    """Per-problem rows (answers, correct, lengths, truncated) → one benchmark's numbers; when every row
    carries a `kind` (the mixed synthetic task), also "kinds": {kind: the same numbers over its rows}."""
    numbers = _numbers(rows)
    if all("kind" in r for r in rows):
        numbers["kinds"] = {kind: _numbers([r for r in rows if r["kind"] == kind])
                            for kind in sorted({r["kind"] for r in rows})}
    return numbers


def _numbers(rows: list[dict]) -> dict:
    """A set of problems' numbers; problems may hold different n (eval.n_by_kind): pass@k is then reported up to
    the smallest n (each problem's estimate from its own n), and the means are over problems (each problem's own
    mean first), so a kind sampled more often does not weigh more."""
    if not rows:
        raise ValueError("no problems to summarize")
    n = min(len(r["correct"]) for r in rows)
    mean = lambda key: sum(sum(r[key]) / len(r[key]) for r in rows) / len(rows)  # noqa: E731
    return {"n": n, "problems": len(rows),
            "pass@k": {str(k): sum(pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in rows) / len(rows)
                       for k in ks_for(n)},
            "mean_acc": mean("correct"),
            "maj_acc": sum(majority_correct(r["answers"], r["correct"], r["truncated"]) for r in rows) / len(rows),
            "mean_len": mean("lengths"), "trunc_rate": mean("truncated")}


def average(results: dict[str, dict]) -> dict:
    """Unweighted mean over benchmarks (as the paper's "avg" column); pass@k over the shared ks."""
    vals = list(results.values())
    ks = [k for k in vals[0]["pass@k"] if all(k in v["pass@k"] for v in vals)]
    mean = lambda key: sum(v[key] for v in vals) / len(vals)
    return {"n": vals[0]["n"], "problems": sum(v["problems"] for v in vals),
            "pass@k": {k: sum(v["pass@k"][k] for v in vals) / len(vals) for k in ks},
            **{key: mean(key) for key in ("mean_acc", "maj_acc", "mean_len", "trunc_rate")}}


def score_rows(texts: list[str], truncated: list[bool], lengths: list[int], answer: str,
               timeout: float = 3.0, last_number: bool = True, unboxed: bool = True,
               verifier: str = VERIFIERS[0], extract: str = EXTRACTS[0]) -> dict:
    """One problem's completions → {answers, correct, lengths, truncated, gold}, scored like training rewards."""
    answers = extract_answers(texts, extract, last_number, unboxed, timeout)
    correct = [int(c) for c in answer_rewards(answers, [answer] * len(texts), truncated, 0.0, timeout,
                                              verifier=verifier)]
    return {"answers": [a[:_ANSWER_CHARS] if a else None for a in answers], "correct": correct,
            "lengths": [int(x) for x in lengths], "truncated": [bool(x) for x in truncated], "gold": answer}
