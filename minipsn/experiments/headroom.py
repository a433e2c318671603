"""Is there room at large k, and is it reasoning or luck? `python cli.py headroom --model testbed`.

Evaluates the clean starting policy at n samples per held-out problem (pass@k up to k = n) and
measures how often a *guess* is right, per sample:

    mode       always answer the most frequent gold answer of the training split
    shuffled   answer what the policy answered on another problem: for problem i, every sample of
               every problem j ≠ i scored against i's gold answer (answers of the right form and of
               the policy's own distribution, with the reasoning for i removed); answers compare as the
               verifier's cheap stage compares them (`answer_key`: "(12,9,13)" is "(12, 9, 13)")
    uniform    a uniformly random integer from the range of the gold answers, or for tuple answers
               ("(12, 9, 13)") one per position from that position's range (analytic: the share of
               problems whose answer lies in the box, over the box's size)

If a guess succeeded with probability g per sample, it would alone give pass@k ≈ 1 − (1 − g)^k; the
report prints that next to the policy's pass@k, so the headroom can be read as reasoning. On a task with
kinds of question (the mixed task) each kind gets its own pass@k and guesses (its own training answers,
its own problems' answers), and a kind whose best guess exceeds GUESSABLE per sample is flagged: its
large-k numbers are partly luck, so a ceiling is measured on the other kinds.
"""
from __future__ import annotations

import collections
import json
import math
import time
from fractions import Fraction
from pathlib import Path

from minipsn.run.config import Config
from minipsn.tasks.problems import load_problems
from minipsn.verify.normalise import normalise

GUESSABLE = 1e-3  # a best guess above this per sample gives pass@256 above 1 − (1 − 1e-3)^256 ≈ 23 %


def guess_rates(test: list[dict], rows: list[dict], train: list[dict]) -> dict[str, float]:
    """Per-sample success of the three guesses (see the module docstring); `rows[i]["answers"]` are the
    policy's extracted answers for `test[i]`."""
    if len(test) != len(rows) or len(test) < 2:
        raise ValueError("guess_rates needs one row of samples per problem, and at least two problems")
    mode = collections.Counter(r["answer"] for r in train).most_common(1)[0][0]
    counts = [collections.Counter(answer_key(a) for a in row["answers"] if a is not None) for row in rows]
    total = collections.Counter()
    for c in counts:
        total.update(c)
    n_other = sum(len(row["answers"]) for row in rows)
    hits = sum(total[answer_key(rec["answer"])] - counts[i][answer_key(rec["answer"])] for i, rec in enumerate(test))
    others = sum(n_other - len(row["answers"]) for row in rows)
    values = [v for v in map(_integers, (r["answer"] for r in train + test)) if v is not None]
    width = collections.Counter(map(len, values)).most_common(1)[0][0]
    box = [(min(v[j] for v in values if len(v) == width), max(v[j] for v in values if len(v) == width))
           for j in range(width)]
    size = math.prod(hi - lo + 1 for lo, hi in box)
    inside = lambda v: v is not None and len(v) == width and all(lo <= x <= hi for x, (lo, hi) in zip(v, box))
    in_range = sum(inside(_integers(r["answer"])) for r in test)
    return {"mode": sum(answer_key(r["answer"]) == answer_key(mode) for r in test) / len(test), "shuffled": hits / others,
            "uniform": in_range / len(test) / size, "mode_answer": mode, "range": [list(b) for b in box]}


def benchmark_guesses(test: list[dict], rows: list[dict]) -> dict:
    """Guess rates on a real benchmark, which has no training split to take a mode from: `mode`, how often the most
    common gold answer of the *other* problems is right (leave-one-out: no problem guesses its own), `shuffled` as in
    guess_rates (the policy's answers to the other problems), each per sample; `per_problem`, each problem's best
    guess, max(its shuffled rate, 1 when its answer is the others' mode), which `subset` leaves out above GUESSABLE;
    `guessable` flags the benchmark as the synthetic kinds are flagged."""
    if len(test) != len(rows) or len(test) < 2:
        raise ValueError("benchmark_guesses needs one row of samples per problem, and at least two problems")
    keys = [answer_key(r["answer"]) for r in test]
    golds = collections.Counter(keys)
    counts = [collections.Counter(answer_key(a) for a in row["answers"] if a is not None) for row in rows]
    total = sum(counts, collections.Counter())
    n_all = sum(len(row["answers"]) for row in rows)
    shuffled = [(total[key] - own[key]) / max(n_all - len(row["answers"]), 1) for key, own, row in zip(keys, counts, rows)]
    mode_hit = []
    for key in keys:  # the others' mode: this problem's answer counted once less
        golds[key] -= 1
        mode_hit.append(max(golds.items(), key=lambda kv: kv[1])[0] == key and golds[key] > 0)
        golds[key] += 1
    others = sum(n_all - len(row["answers"]) for row in rows)
    hits = sum(total[key] - own[key] for key, own in zip(keys, counts))
    rates = {"mode": sum(mode_hit) / len(test), "shuffled": hits / max(others, 1)}
    mode = golds.most_common(1)[0][0]
    return {**rates, "mode_answer": next(r["answer"] for r, k in zip(test, keys) if k == mode),
            "guessable": max(rates.values()) > GUESSABLE,
            "per_problem": [max(s, float(m)) for s, m in zip(shuffled, mode_hit)]}


def answer_key(answer: str) -> tuple | str:
    """An answer as the verifier's cheap stage compares it: its normal form (verify.normalise), then numbers and
    tuples of numbers by value ("(12,9,13)" = "(12, 9, 13)", "12.0" = "12"), else the normalised text."""
    norm = normalise(answer)
    try:
        return tuple(Fraction(p) for p in norm.removeprefix("(").removesuffix(")").split(","))
    except (ValueError, ZeroDivisionError):
        return norm


def _integers(answer: str) -> tuple[int, ...] | None:
    """"-7" → (-7,); "(12, 9, 13)" → (12, 9, 13); anything else → None."""
    parts = answer.strip().removeprefix("(").removesuffix(")").split(",")
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        return None


def headroom(cfg: Config, out: str | Path) -> dict:
    """Evaluate the starting policy on the synthetic test split (cfg.eval: n, problems, temperature) and
    measure the guess rates; write OUT/headroom.json (and OUT/eval.json, OUT/samples/)."""
    from minipsn.evaluation.evaluate import evaluate

    t0 = time.perf_counter()
    out = Path(out)
    report = evaluate(cfg, ["synthetic"], out)
    lines = (out / "samples" / "synthetic.jsonl").read_text().splitlines()[1:]
    by_id = {row["id"]: row for row in map(json.loads, lines)}
    test = load_problems(cfg.data, "test")
    test = test[: cfg.eval.problems] if cfg.eval.problems else test
    rows = [by_id[r["id"]] for r in test]
    train = load_problems(cfg.data, "train")
    bench = report["benchmarks"]["synthetic"]
    result = {"model": cfg.model.name, "n": cfg.eval.n, "problems": len(test), "temperature": cfg.eval.temperature,
              **_with_guesses(bench, test, rows, train)}
    if "kinds" in bench:
        of = lambda recs, kind: [r for r in recs if r["kind"] == kind]
        result["kinds"] = {kind: {"problems": numbers["problems"],
                                  **_with_guesses(numbers, of(test, kind), of(rows, kind), of(train, kind))}
                           for kind, numbers in bench["kinds"].items()}
    result["seconds"] = time.perf_counter() - t0
    (out / "headroom.json").write_text(json.dumps(result, indent=2))
    return result


def _with_guesses(numbers: dict, test: list[dict], rows: list[dict], train: list[dict]) -> dict:
    """pass@k, mean accuracy and length of an evaluation, its guess rates, the pass@k the best guess alone
    would give, and whether that guess is right often enough to flag (GUESSABLE)."""
    guesses = guess_rates(test, rows, train)
    g = max(guesses["mode"], guesses["shuffled"], guesses["uniform"])
    passk = {str(k): v for k, v in numbers["pass@k"].items()}  # as in eval.json
    return {"pass@k": passk, "mean_acc": numbers["mean_acc"], "mean_len": numbers["mean_len"], "guess": guesses,
            "guess_pass@k": {k: 1 - (1 - g) ** int(k) for k in passk}, "guessable": g > GUESSABLE}


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"headroom: {result['model']}, {result['problems']} held-out problems × {result['n']} samples, "
                    f"T = {result['temperature']:g}")
    ks = list(result["pass@k"])
    t.add_column("")
    for k in ks:
        t.add_column(f"@{k}", justify="right")
    kinds = result.get("kinds", {})
    if kinds:  # the totals' guesses are printed by the caller; each kind's, and its flag, here
        t.caption = "\n".join(
            f"guess per sample ({kind}): mode {r['guess']['mode']:.2g}, shuffled policy {r['guess']['shuffled']:.2g}, "
            f"uniform {r['guess']['uniform']:.2g}" + (f" | GUESSABLE (> {GUESSABLE:g}): its large-k pass@k is partly luck"
                                                      if r["guessable"] else "") for kind, r in kinds.items())
    for name, r in [("", result), *((f" ({kind})", r) for kind, r in kinds.items())]:
        t.add_row(f"policy pass@k %{name}", *[f"{100 * r['pass@k'][k]:.1f}" for k in ks])
        t.add_row(f"best guess pass@k %{name}", *[f"{100 * r['guess_pass@k'][k]:.2f}" for k in ks],
                  end_section=True)
    return t
