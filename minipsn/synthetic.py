"""The seeded synthetic arithmetic task and the mixed task built on its chains.

The synthetic task is a seeded chain of integer operations ("Start at 7, add 5, subtract 3.
What number do you get?") with a worked solution ending in `\\boxed{}`. Its knobs
(`n_ops`, `ops`, `max_operand`) set the difficulty; it lets the whole PSN-GRPO loop run offline on
a laptop with the same code path as GSM8K or MATH. The mixed task (`answer=mixed`) asks two kinds of
question about the same chains, the last value (`kind` "final") or every value ("steps"); its records
carry their `kind`, so evaluation reports each kind apart.

Records have the shape of every dataset (data.py): `{"id", "problem", "answer", "solution"}`, plus
`kind` in the mixed task. The same settings and seed give the same problems, in the same order.
"""
from __future__ import annotations

import random

from minipsn.config import DataConfig

_VERBS = {"+": "add", "-": "subtract", "*": "multiply by"}


def synthetic_problem(rng: random.Random, n_ops: int, max_operand: int, ops: str = "+-", max_start: int = 0,
                      min_ops: int = 0, answer: str = "final") -> dict:
    """One chain of `n_ops` operations (min_ops > 0: a uniform number in min_ops..n_ops) drawn from `ops`
    on integers in 1..max_operand, left to right, from a start value in 1..max_start (0: 1..max_operand).
    answer="final" asks for the last value; "steps" for the tuple of every value on the way, in order."""
    if min_ops:
        n_ops = rng.randint(min_ops, n_ops)
    value = rng.randint(1, max_start or max_operand)
    words, lines = [f"Start at {value}"], []
    for _ in range(n_ops):
        sym = rng.choice(sorted(set(ops)))
        verb = _VERBS[sym]
        x = rng.randint(1, max_operand)
        new = value + x if sym == "+" else value - x if sym == "-" else value * x
        words.append(f"{verb} {x}")
        lines.append(f"{value} {sym} {x} = {new}")
        value = new
    if answer == "steps":
        gold = "(" + ", ".join(line.split("= ")[-1] for line in lines) + ")"
        problem = ", ".join(words) + ". What number do you get after each step?"
    else:
        gold, problem = str(value), ", ".join(words) + ". What number do you get?"
    solution = "\n".join(lines) + f"\nThe answer is \\boxed{{{gold}}}."
    return {"problem": problem, "answer": gold, "solution": solution}


def synthetic_split(cfg: DataConfig, split: str, seed: int = 0) -> list[dict]:
    """The seeded synthetic task; `test` never repeats a `train` problem."""
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be train or test, got {split!r}")
    if cfg.answer == "mixed":
        return mixed_split(cfg, split, seed)
    # absent by default: the same problems as before these knobs existed
    start = (f"-start{cfg.max_start}" if cfg.max_start else "") + (f"-min{cfg.min_ops}" if cfg.min_ops else "") + (
        f"-{cfg.answer}" if cfg.answer != "final" else "")
    rng = random.Random(f"synthetic-{seed}-{cfg.n_ops}-{cfg.max_operand}-{''.join(sorted(set(cfg.ops)))}{start}")
    seen: set[str] = set()
    records: dict[str, list[dict]] = {"train": [], "test": []}
    for name, size in (("train", cfg.n_train), ("test", cfg.n_test)):
        tries = 0
        while len(records[name]) < size:
            rec = synthetic_problem(rng, cfg.n_ops, cfg.max_operand, cfg.ops, cfg.max_start, cfg.min_ops, cfg.answer)
            tries += 1
            if tries > 50 * size + 1000:
                raise ValueError(f"synthetic task too small for n_{name}={size}: raise data.max_operand, data.n_ops or data.ops")
            if rec["problem"] in seen:
                continue
            seen.add(rec["problem"])
            rec["id"] = f"synthetic-{name}-{len(records[name]):05d}"
            records[name].append(rec)
        if name == split:
            return records[name]
    raise AssertionError("unreachable")


def _chain(problem: str) -> str:
    """The operations of a synthetic problem without its question: the two kinds share these."""
    return problem.rsplit(". ", 1)[0]


def mixed_split(cfg: DataConfig, split: str, seed: int = 0) -> list[dict]:
    """The mixed task: `test` alternates final/steps questions (n_test in all), drawn first, so it does not
    move with n_train or steps_share; `train` holds round(steps_share·n_train) steps questions, the rest
    final, in a seeded order, and never a chain of the test split, whichever kind asks about it."""
    name = f"mixed-{seed}-{cfg.n_ops}-{cfg.min_ops}-{cfg.max_operand}-{cfg.max_start}-{''.join(sorted(set(cfg.ops)))}"
    n_steps = round(cfg.steps_share * cfg.n_train)
    kinds = {"test": [("final", "steps")[i % 2] for i in range(cfg.n_test)],
             "train": ["steps"] * n_steps + ["final"] * (cfg.n_train - n_steps)}
    random.Random(f"{name}-order-{cfg.n_train}-{n_steps}").shuffle(kinds["train"])
    seen: set[str] = set()
    for part in ("test", "train"):
        rng, records = random.Random(f"{name}-{part}"), []
        for kind in kinds[part]:
            for _ in range(1000):
                rec = synthetic_problem(rng, cfg.n_ops, cfg.max_operand, cfg.ops, cfg.max_start, cfg.min_ops, kind)
                if _chain(rec["problem"]) not in seen:
                    break
            else:
                raise ValueError(f"synthetic task too small for {len(kinds['test']) + len(kinds['train'])} chains: "
                                 "raise data.max_operand, data.n_ops or data.ops")
            seen.add(_chain(rec["problem"]))
            records.append({"id": f"mixed-{part}-{len(records):05d}", **rec, "kind": kind})
        if part == split:
            return records
    raise AssertionError("unreachable")
