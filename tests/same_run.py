"""Same run, same numbers: train a checkout's `cli.py` on one process or K under torchrun, and compare two run
folders exactly: every metrics.jsonl value but perf/* (timings), samples.jsonl, and the adapter's bits.

    python tests/same_run.py run REPO OUT [--procs 2] [--variant a|b]     # train REPO's code into OUT
    python tests/same_run.py compare RUN_A RUN_B [--close]                 # exit 1 and list what differs

A refactor that must not change behaviour is checked by running the checkout before and after it with the same
variant and comparing (docs/RESULTS.md). A digest cannot be kept in the repository for this: the tiny model is
built on the machine, so another CPU gives other numbers. tests/test_same_run.py keeps what any checkout can check.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

# a: the defaults of `tiny` (step noise, the adaptive controller) with periodic evaluation; b: what a is not: one
# draw per group, a controller that moves σ every step, non-dyadic rewards (soft overlong penalty), N = 48, M = 2
VARIANTS = {
    "a": ["--model", "tiny", "--steps", "6", "--seed", "0", "--set", "eval.every=3", "--set", "eval.problems=8",
          "--set", "eval.n=4"],
    "b": ["--model", "tiny", "--steps", "4", "--seed", "1", "--set", "eval.every=2", "--set", "eval.problems=4",
          "--set", "eval.n=4", "--set", "noise.granularity=group", "--set", "noise.control=paper",
          "--set", "reward.overlong=soft", "--set", "reward.overlong_window=16", "--set", "grpo.prompts_per_step=6",
          "--set", "grpo.mini_batches=2", "--set", "run.log_samples=48"],
}


def train(repo: Path, out: Path, procs: int = 1, args: list[str] = (), timeout: float = 3600) -> Path:
    """`cli.py train … --out OUT` with REPO's code; under `python -m torch.distributed.run` when procs > 1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(repo),
           "MINIPSN_DIST_TIMEOUT": "600"}
    launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
                                 if procs > 1 else [])
    proc = subprocess.run([*launch, str(repo / "cli.py"), "train", *args, "--out", str(out)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"train in {repo} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _differs(x, y, close: bool) -> bool:
    if close and isinstance(x, float) and isinstance(y, (int, float)):
        return not math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5)
    return x != y


def differences(a: Path, b: Path, close: bool = False) -> list[str]:
    """What differs between run folders a and b: metrics (every key but perf/*), samples.jsonl, adapter weights.
    Exact by default; `close`: floats within rel 1e-4 / abs 1e-5 and weights too (processes sum in another order)."""
    import torch
    from safetensors.torch import load_file

    out = []
    rows_a, rows_b = _rows(a / "metrics.jsonl"), _rows(b / "metrics.jsonl")
    if not rows_a or [r["step"] for r in rows_a] != [r["step"] for r in rows_b]:
        return [f"steps {[r['step'] for r in rows_a]} vs {[r['step'] for r in rows_b]}"]
    for x, y in zip(rows_a, rows_b):
        keys = {k for k in x.keys() | y.keys() if not k.startswith("perf/")}
        out += [f"step {x['step']} {k}: {x.get(k)!r} vs {y.get(k)!r}" for k in sorted(keys)
                if k not in x or k not in y or _differs(x[k], y[k], close)]
    if _rows(a / "samples.jsonl") != _rows(b / "samples.jsonl"):
        out.append("samples.jsonl differs")
    wa = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    if wa.keys() != wb.keys():
        return out + ["adapter keys differ"]
    differ = [k for k in sorted(wa) if not (torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5) if close else
                                            wa[k].dtype == wb[k].dtype and torch.equal(wa[k], wb[k]))]
    if differ:
        gap = max((wa[k].double() - wb[k].double()).abs().max().item() for k in differ)
        out.append(f"adapter: {len(differ)} of {len(wa)} tensors differ (max |Δ| {gap:.3g}), e.g. {differ[0]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("repo", type=Path)
    run.add_argument("out", type=Path)
    run.add_argument("--procs", type=int, default=1)
    run.add_argument("--variant", choices=sorted(VARIANTS), default="a")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    cmp.add_argument("--close", action="store_true")
    ns = parser.parse_args()
    if ns.cmd == "run":
        print(train(ns.repo.resolve(), ns.out.resolve(), ns.procs, VARIANTS[ns.variant]))
        return 0
    diff = differences(ns.a, ns.b, ns.close)
    print("\n".join(diff) if diff else f"same: {ns.a} and {ns.b}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
