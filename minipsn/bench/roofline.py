"""What bounds a phase on this machine: its matrix products against the same products timed alone.

`phase_bound(fn, wall_s)` runs fn once more under torch.profiler (FLOPs and input shapes recorded) and sums its
matrix products (aten::mm, addmm, bmm, baddbmm): their own time, FLOPs and rate. `alone` then times each of those
products again by itself, at the same shapes and thread count (best of 5): the rate this core reaches on that work.
Read the result as a floor: if everything but the products took no time, the phase would take `floor_s` (its
products at the alone rate). Where the products already run near that rate and make most of the phase, the phase
cannot get much faster without less work; where they make a small share, the rest (its top operators by own time,
listed) is what there is to trim. bench applies it to the learner step and to evaluation sampling.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

import torch

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def _product(op: str, shapes: list[list[int]]):
    """A closure computing `op` on random tensors of the recorded input shapes (scalars and empties dropped)."""
    ts = [torch.randn(s) for s in shapes if s]
    fns = {"aten::mm": lambda: torch.mm(*ts[:2]), "aten::bmm": lambda: torch.bmm(*ts[:2]),
           "aten::addmm": lambda: torch.addmm(*ts[:3]), "aten::baddbmm": lambda: torch.baddbmm(*ts[:3])}
    if op not in fns:
        raise ValueError(f"no standalone timing for {op}; MATMULS lists {', '.join(fns)}")
    return fns[op]


def alone_seconds(op: str, shapes: list[list[int]], reps: int = 5) -> float:
    """Best-of-`reps` seconds of one `op` at these input shapes, on this thread count, after a warm-up."""
    fn = _product(op, shapes)
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@contextlib.contextmanager
def _no_stderr_lines():
    """This torch build's profiler writes a line to file descriptor 2 when it starts and when it stops
    ("USDT: … profiler_start"); only those two calls run with fd 2 pointed at /dev/null, never the profiled phase."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def phase_bound(fn, wall_s: float, top: int = 5) -> dict:
    """Profile one call of fn (CPU) and compare its matrix products with the same products alone. `wall_s` is the
    phase's time measured without the profiler (its own overhead would inflate the rest). Returns the products'
    seconds and their share of the profiled phase (every operator's own time), GFLOP/s in the phase and alone,
    `floor_s` (the products alone; `floor_share` of wall_s), and the `top` other operators by own time and share."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True)
    with _no_stderr_lines():
        prof.start()
    try:
        fn()
    finally:
        with _no_stderr_lines():
            prof.stop()
    events = prof.key_averages(group_by_input_shape=True)
    products = [e for e in events if e.key in MATMULS and e.flops]
    if not products:
        raise ValueError("the profiled phase ran no matrix product (aten::mm/addmm/bmm/baddbmm): nothing to bound")
    profiled = sum(e.self_cpu_time_total for e in events) / 1e6  # every operator's own time: the profiled phase
    in_phase = sum(e.self_cpu_time_total for e in products) / 1e6
    flops = sum(e.flops for e in products)
    floor = sum(e.count * alone_seconds(e.key, e.input_shapes) for e in products)
    others: dict[str, float] = {}
    for e in events:
        if e.key not in MATMULS:
            others[e.key] = others.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
    rest = sorted(others.items(), key=lambda kv: -kv[1])[:top]
    # shares of the profiled phase (the profiler slows every operator a little); the floor against the plain wall time
    return {"wall_s": wall_s, "profiled_s": profiled, "matmul_s": in_phase, "matmul_share": in_phase / profiled,
            "gflop": flops / 1e9, "gflops": flops / in_phase / 1e9, "alone_gflops": flops / floor / 1e9,
            "floor_s": floor, "floor_share": floor / wall_s,
            "top_other": [{"op": k, "s": v, "share": v / profiled} for k, v in rest],
            "threads": torch.get_num_threads()}
