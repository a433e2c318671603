"""Verifier checks/s on MATH-500 (data/math500_test.jsonl, or the one in --data-dir), by `verify.bench_verifier`.

Two mixes: (boxed answer of each gold solution, gold answer) pairs, nearly all decided on the cheap exact path;
and "symbolic" (`symbolic_pairs`), pairs the cheap stages cannot decide, so every one reaches the sympy worker:
each expression gold against sympy's LaTeX spelling of it, of it expanded, of 15 digits of it (equal) and of it
plus 1 (unequal). --verifier-pairs N times the first N pairs of each mix (0: all). Under "completions", whole
completions through the default reward (rewards.correctness_rewards: extraction and check): each solution as it
is (boxed: read in the caller) and without its boxes (read by Math-Verify in the worker), completions/s.
"""
from __future__ import annotations

import json
from pathlib import Path


def symbolic_pairs(golds: list[str]) -> list[tuple[str, str]]:
    """(pred, gold) pairs that the cheap stages cannot decide, so every one reaches the sympy worker:
    each expression gold against sympy's LaTeX spelling of it, of it expanded, and of 15 digits of it
    (equal), and of it plus 1 (unequal)."""
    import sympy

    from minipsn.verify import _cheap_verdict, normalise
    from minipsn.verify.parse import LatexError, TooLarge, parse_answer

    pairs = []
    for gold in golds:
        try:
            value = parse_answer(normalise(gold))
        except (LatexError, TooLarge, RecursionError):
            continue
        if not isinstance(value, sympy.Expr) or isinstance(value, sympy.MatrixBase) or value.has(sympy.I):
            continue
        spellings = (sympy.latex(value), sympy.latex(sympy.expand(value)), sympy.latex(value + 1),
                     *((str(sympy.N(value, 15)),) if value.is_number else ()))
        for pred in dict.fromkeys(spellings):
            if _cheap_verdict(pred, gold)[0] is None:
                pairs.append((pred, gold))
    return pairs


def bench_verify(data_dir: Path, limit: int) -> dict:
    """Verifier checks/s on MATH-500: (boxed answer of the gold solution, gold answer) pairs, nearly all
    decided on the cheap exact path, and under "symbolic" a mix that reaches the sympy stage (symbolic_pairs)."""
    from minipsn.verify import bench_verifier, boxed_contents

    path = data_dir / "math500_test.jsonl"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # the last box's content: one solution boxes two spellings of its answer, which the reward reads together
    pairs = [(([c for c in boxed_contents(r["solution"]) if c] or [""])[-1], r["answer"])
             for r in rows if r.get("solution")]
    hard = symbolic_pairs([r["answer"] for r in rows])
    cut = (lambda xs: xs[:limit]) if limit > 0 else (lambda xs: xs)
    return {"source": str(path), **bench_verifier(cut(pairs)), "symbolic": bench_verifier(cut(hard)),
            "completions": bench_completions(cut([r for r in rows if r.get("solution")]))}


def bench_completions(rows: list[dict]) -> dict:
    """completions/s of the default reward on each row's solution, boxed and with its boxes removed."""
    import time

    from minipsn.rewards import correctness_rewards
    from minipsn.rewards.field import unbox
    from minipsn.verify import warm_up

    warm_up()
    out = {}
    for mix, texts in (("boxed", [r["solution"] for r in rows]), ("unboxed", [unbox(r["solution"]) for r in rows])):
        start = time.perf_counter()
        right = sum(correctness_rewards(texts, [r["answer"] for r in rows], [False] * len(rows)))
        seconds = time.perf_counter() - start
        out[mix] = {"completions": len(rows), "right": int(right), "seconds": seconds,
                    "completions_per_s": len(rows) / seconds if seconds > 0 else float("inf")}
    return out
