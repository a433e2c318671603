"""The route task (`data.answer=route`): one question, two ways to work it, and which way a completion took.

The question is the steps task's ("Start at 3, subtract 5, add 2, subtract 7, add 4. What number do you get after
each step?", gold "(-2, 0, -7, -3)": a guess is almost never right). The warm start (sft.py) teaches two routes:

    common  the plain lines with a shortcut that drops a negative result's sign and goes on from |v|:
            "3 - 5 = 2", "2 + 2 = 4", …, the values it wrote boxed. Right exactly when no value goes negative.
    rare    the offset ledger: "Shift by 10: 3 + 10 = 13", then every operation on shifted values, "13 - 5 = 8",
            "8 + 2 = 10", …, and each shifted result minus 10 boxed. Right everywhere, but only if it is kept on
            every line: a line written from an unshifted value breaks the box, on every kind of problem (but by
            chance, where that line's |v| lands back on the ledger: v = -offset/2).

This module writes the routes (pure text in, text out) and reads them back: `route_of` names the route a completion
took (ROUTES) and `route_counts` counts them over a problem's samples, what a probe reads besides pass@k. The task's
records and splits are synthetic.route_split's: a record's `kind` is "neg" when a value on the way is negative (only
the rare route is right), else "pos", and chains never go below 1 - data.route_offset, so every shifted value is >= 1.
"""
from __future__ import annotations

import re

KINDS = ("pos", "neg")  # a record's kind: no negative value on the way / at least one
ROUTES = ("rare-kept", "rare-broken", "common", "other")
_VERB = {"add": "+", "subtract": "-", "multiply by": "*"}
_STEP = re.compile(r"(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)")
_SHIFT = re.compile(r"Shift by (-?\d+):\s*(-?\d+)\s*\+\s*(-?\d+)\s*=\s*(-?\d+)")
_ANSWER = re.compile(r"The answer is \\boxed\{\(\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*\)\}\.?")


def parse_chain(problem: str) -> tuple[int, list[tuple[str, int]]]:
    """"Start at 3, subtract 5, add 2. …" → (3, [("-", 5), ("+", 2)])."""
    start = re.match(r"Start at (-?\d+)", problem)
    ops = re.findall(r", (add|subtract|multiply by) (\d+)", problem)
    if start is None or not ops:
        raise ValueError(f"not a synthetic chain problem (\"Start at N, add x, …\"): {problem[:60]!r}")
    return int(start[1]), [(_VERB[verb], int(x)) for verb, x in ops]


def _apply(value: int, sym: str, x: int) -> int:
    return value + x if sym == "+" else value - x if sym == "-" else value * x


def chain_values(start: int, ops: list[tuple[str, int]]) -> list[int]:
    """The value after each operation, in order."""
    values = []
    for sym, x in ops:
        values.append(_apply(values[-1] if values else start, sym, x))
    return values


def _boxed(values: list[int]) -> str:
    return "The answer is \\boxed{(" + ", ".join(map(str, values)) + ")}."


def common_route(start: int, ops: list[tuple[str, int]]) -> str:
    """The common route: plain lines, a negative result written (and carried on) as its absolute value."""
    lines, value, wrote = [], start, []
    for sym, x in ops:
        new = abs(_apply(value, sym, x))
        lines.append(f"{value} {sym} {x} = {new}")
        value = new
        wrote.append(new)
    return "\n".join(lines + [_boxed(wrote)])


def rare_route(start: int, ops: list[tuple[str, int]], offset: int, slip_at: int = 0) -> str:
    """The rare route: the shift line, each operation on shifted values, each result minus `offset` boxed.
    `slip_at` = j in 1..len(ops): a slip at operation j, where the writer forgets the shift: line j starts from the
    unshifted value (the ledger's value minus the offset) and it and every later line go on in the common route's
    form (a negative result's sign dropped), while the box still takes the offset off every result: wrong, but where
    line j's true value is -offset/2 (its |v| is then the shifted value, and the lines after it are the ledger's)."""
    if not 0 <= slip_at <= len(ops):
        raise ValueError(f"slip_at={slip_at} must be 0 (no slip) or an operation in 1..{len(ops)}")
    lines = [f"Shift by {offset}: {start} + {offset} = {start + offset}"]
    value, results = start + offset, []
    for i, (sym, x) in enumerate(ops, 1):
        if i == slip_at:
            value -= offset
        new = _apply(value, sym, x)
        new = abs(new) if slip_at and i >= slip_at else new
        lines.append(f"{value} {sym} {x} = {new}")
        value = new
        results.append(new)
    return "\n".join(lines + [_boxed([r - offset for r in results])])


def ledger_offset(solution: str) -> int:
    """The offset of a rare route's shift line ("Shift by 10: …" → 10)."""
    m = _SHIFT.match(solution)
    if m is None:
        raise ValueError(f"not a rare-route solution (it opens with \"Shift by K: …\"): {solution[:40]!r}")
    return int(m[1])


def _steps(lines: list[str]) -> list[tuple[int, str, int, int]] | None:
    """Each line as (a, op, x, result), or None when one is not such a line."""
    steps = [_STEP.fullmatch(line) for line in lines]
    return None if not all(steps) else [(int(m[1]), m[2], int(m[3]), int(m[4])) for m in steps]


def _kept(lines: list[str], start: int, ops: list[tuple[str, int]]) -> bool:
    """The ledger held to the box: the shift line right, one line per operation in order, each from the previous
    result and right, then the answer line boxing each result minus the offset, and nothing after it."""
    shift = _SHIFT.fullmatch(lines[0])
    if shift is None or len(lines) != len(ops) + 2:
        return False
    k, shifted_from, added, r = map(int, shift.groups())
    steps, box = _steps(lines[1:-1]), _ANSWER.fullmatch(lines[-1])
    if (shifted_from, added, r) != (start, k, start + k) or steps is None or box is None:
        return False
    value = r
    for (a, sym, x, new), (want_sym, want_x) in zip(steps, ops):
        if (a, sym, x, new) != (value, want_sym, want_x, _apply(value, sym, x)):
            return False
        value = new
    return [int(v) for v in box[1].split(",")] == [s[3] - k for s in steps]


def route_of(completion: str, problem: str) -> str:
    """Which route a completion took (ROUTES): "rare-kept" (it opens with the shift line and keeps the ledger to the
    box: then its answer is right), "rare-broken" (it opens with "Shift by" and does not: a line from an unshifted
    value, an operation skipped or changed, an arithmetic slip, a box off the ledger, no box), "common" (it opens
    with a plain line "a op x = v" from the start value, whatever follows) or "other" (anything else)."""
    start, ops = parse_chain(problem)
    lines = [line.strip() for line in completion.strip().split("\n") if line.strip()]
    if not lines:
        return "other"
    if lines[0].startswith("Shift by"):
        return "rare-kept" if _kept(lines, start, ops) else "rare-broken"
    first = _STEP.fullmatch(lines[0])
    return "common" if first is not None and int(first[1]) == start else "other"


def route_counts(completions: list[str], problem: str) -> dict[str, int]:
    """{route: how many of `completions` took it} over every route of ROUTES, in that order (zeros kept)."""
    counts = dict.fromkeys(ROUTES, 0)
    for text in completions:
        counts[route_of(text, problem)] += 1
    return counts
