"""The seeded synthetic arithmetic task and the mixed and route tasks built on its chains.

The synthetic task is a seeded chain of integer operations ("Start at 7, add 5, subtract 3.
What number do you get?") with a worked solution ending in `\\boxed{}`. Its knobs
(`n_ops`, `ops`, `max_operand`) set the difficulty; it lets the whole PSN-GRPO loop run offline on
a laptop with the same code path as GSM8K or MATH. The mixed task (`answer=mixed`) asks two kinds of
question about the same chains, the last value (`kind` "final") or every value ("steps"); its records
carry their `kind`, so evaluation reports each kind apart. The route task (`answer=route`; its routes in route.py) asks
the steps question, worked in two ways: its records' kind says which way is right, pos (both) or neg (the rare one).

Records have the shape of every dataset (data.py): `{"id", "problem", "answer", "solution"}`, plus
`kind` in the mixed and route tasks. The same settings and seed give the same problems, in the same order. Each task
has a fixed held-out pool (HELD_OUT problems, or a tenth of a smaller task's chains), drawn first from a stream of its
own: the test split is its first `n_test`, whatever n_test or n_train, and no training split (RL's or a warm
start's) ever holds one of them.
"""
from __future__ import annotations

import random

from minipsn.run.config import DataConfig
from minipsn.tasks.route import KINDS, chain_values, parse_chain, rare_route

_VERBS = {"+": "add", "-": "subtract", "*": "multiply by"}
HELD_OUT = 500  # problems in a task's held-out pool (a tenth of a smaller task's chains): data.n_test is at most this


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


def pool_size(cfg: DataConfig) -> int:
    """The task's held-out pool: HELD_OUT problems, or a tenth of its distinct chains when that is fewer."""
    lengths = range(cfg.min_ops or cfg.n_ops, cfg.n_ops + 1)
    chains = (cfg.max_start or cfg.max_operand) * sum((len(set(cfg.ops)) * cfg.max_operand) ** n for n in lengths)
    return min(HELD_OUT, chains // 10)


def _check_test_size(cfg: DataConfig) -> int:
    pool = pool_size(cfg)
    if cfg.n_test > pool:
        raise ValueError(f"data.n_test={cfg.n_test} is beyond this task's held-out pool of {pool} problems, which no "
                         f"training split draws from; use data.n_test <= {pool}")
    return pool


def _unique(rng: random.Random, size: int, draw, key, seen: set[str], what: str) -> list[dict]:
    """`size` records from `draw(rng)` whose key(record) is not in `seen` (which they join)."""
    out, tries = [], 0
    while len(out) < size:
        rec, tries = draw(rng), tries + 1
        if tries > 50 * size + 1000:
            raise ValueError(f"synthetic task too small for {what}: raise data.max_operand, data.n_ops or data.ops")
        if key(rec) not in seen:
            seen.add(key(rec))
            out.append(rec)
    return out


def synthetic_split(cfg: DataConfig, split: str, seed: int = 0) -> list[dict]:
    """The seeded synthetic task: `test` is the first n_test of the task's held-out pool, which `train` never
    draws from."""
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be train or test, got {split!r}")
    pool_n = _check_test_size(cfg)
    if cfg.answer == "mixed":
        return mixed_split(cfg, split, seed)
    if cfg.answer == "route":
        return route_split(cfg, split, seed)
    # absent by default: the same stream names as before these knobs existed
    task = f"{seed}-{cfg.n_ops}-{cfg.max_operand}-{''.join(sorted(set(cfg.ops)))}" + (
        f"-start{cfg.max_start}" if cfg.max_start else "") + (f"-min{cfg.min_ops}" if cfg.min_ops else "") + (
        f"-{cfg.answer}" if cfg.answer != "final" else "")
    draw = lambda rng: synthetic_problem(rng, cfg.n_ops, cfg.max_operand, cfg.ops, cfg.max_start, cfg.min_ops, cfg.answer)  # noqa: E731
    seen: set[str] = set()
    pool = _unique(random.Random(f"synthetic-held-out-{task}"), pool_n, draw, lambda r: r["problem"], seen,
                   f"a held-out pool of {pool_n}")
    records = pool[: cfg.n_test] if split == "test" else _unique(
        random.Random(f"synthetic-train-{task}"), cfg.n_train, draw, lambda r: r["problem"], seen,
        f"n_train={cfg.n_train} besides the held-out pool of {pool_n}")
    return [{**rec, "id": f"synthetic-{split}-{i:05d}"} for i, rec in enumerate(records)]


def _chain(problem: str) -> str:
    """The operations of a synthetic problem without its question: the two kinds share these."""
    return problem.rsplit(". ", 1)[0]


def _kinded_split(cfg: DataConfig, split: str, name: str, pool_kinds: tuple[str, str], rare: str, share: float,
                  draw, prefix: str, too_small: str) -> list[dict]:
    """A task of two kinds: the held-out pool alternates `pool_kinds` (its first 2m hold m of each), drawn first, so
    `test` (its first n_test) does not move with n_test, n_train or the share; `train` holds round(share·n_train) of
    kind `rare`, the rest of the other kind, in a seeded order, and never a chain of the pool. `draw(rng, kind)` is a
    record of that kind or None (drawn again, up to 1,000 times)."""
    n_rare = round(share * cfg.n_train)
    other = next(k for k in pool_kinds if k != rare)
    kinds = {"test": [pool_kinds[i % 2] for i in range(pool_size(cfg))],
             "train": [rare] * n_rare + [other] * (cfg.n_train - n_rare)}
    random.Random(f"{name}-order-{cfg.n_train}-{n_rare}").shuffle(kinds["train"])
    seen: set[str] = set()
    for part in ("test", "train"):
        rng, records = random.Random(f"{name}-{part}"), []
        for kind in kinds[part]:
            for _ in range(1000):
                rec = draw(rng, kind)
                if rec is not None and _chain(rec["problem"]) not in seen:
                    break
            else:
                raise ValueError(f"{too_small} for {len(kinds['test']) + len(kinds['train'])} chains: raise "
                                 "data.max_operand, data.n_ops or " + ("data.route_offset" if prefix == "route" else "data.ops"))
            seen.add(_chain(rec["problem"]))
            records.append({"id": f"{prefix}-{part}-{len(records):05d}", **rec, "kind": kind})
        if part == split:
            return records[: cfg.n_test] if part == "test" else records
    raise AssertionError("unreachable")


def mixed_split(cfg: DataConfig, split: str, seed: int = 0) -> list[dict]:
    """The mixed task (_kinded_split): final and steps questions, round(steps_share·n_train) steps ones in training,
    and no chain of the pool trained on, whichever kind asks about it."""
    name = f"mixed-{seed}-{cfg.n_ops}-{cfg.min_ops}-{cfg.max_operand}-{cfg.max_start}-{''.join(sorted(set(cfg.ops)))}"
    draw = lambda rng, kind: synthetic_problem(rng, cfg.n_ops, cfg.max_operand, cfg.ops, cfg.max_start,  # noqa: E731
                                               cfg.min_ops, kind)
    return _kinded_split(cfg, split, name, ("final", "steps"), "steps", cfg.steps_share, draw, "mixed",
                         "synthetic task too small")


def route_problem(rng: random.Random, cfg: DataConfig) -> dict | None:
    """One steps-question chain as a route record without its id ({"problem", "answer", "solution", "kind"}), or None
    when a value falls below 1 - route_offset (the rare route's shifted values must stay >= 1)."""
    rec = synthetic_problem(rng, cfg.n_ops, cfg.max_operand, cfg.ops, cfg.max_start, cfg.min_ops, "steps")
    start, ops = parse_chain(rec["problem"])
    values = chain_values(start, ops)
    if min(values) < 1 - cfg.route_offset:
        return None
    return {"problem": rec["problem"], "answer": rec["answer"], "solution": rare_route(start, ops, cfg.route_offset),
            "kind": "neg" if min(values) < 0 else "pos"}


def route_split(cfg: DataConfig, split: str, seed: int = 0) -> list[dict]:
    """The route task (_kinded_split): pos and neg problems, round(neg_share·n_train) neg ones in training."""
    name = (f"route-{seed}-{cfg.n_ops}-{cfg.min_ops}-{cfg.max_operand}-{cfg.max_start}-"
            f"{''.join(sorted(set(cfg.ops)))}-{cfg.route_offset}")

    def draw(rng, kind):
        rec = route_problem(rng, cfg)
        return rec if rec is not None and rec["kind"] == kind else None

    return _kinded_split(cfg, split, name, KINDS, "neg", cfg.neg_share, draw, "route", "route task too small")
