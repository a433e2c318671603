"""Several processes with torch.distributed (`torchrun --nproc_per_node K cli.py train …`).

Without torchrun's environment (RANK, WORLD_SIZE, …) nothing here does anything: every helper
returns its input, so the single-process run is the code path it always was. Under torchrun each
process (rank) holds the whole model and adapter and samples, scores and learns on its share of the
step's prompts; the few numbers that must be the same everywhere are summed across ranks here:
the loss normaliser, the adapter's gradients, the metrics' sums and counts, the σ controller's
signals. Collectives time out (MINIPSN_DIST_TIMEOUT seconds, default 600), so a rank that died
ends the job with an error instead of a hang.
"""
from __future__ import annotations

import datetime
import os
import sys

import torch

_state = {"on": False, "rank": 0, "world": 1}


def init() -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); False without torchrun.
    Ranks other than 0 print nothing (stdout goes to /dev/null); errors still reach stderr."""
    if _state["on"]:
        return True
    if not launched():
        return False
    import torch.distributed as td

    timeout = datetime.timedelta(seconds=float(os.environ.get("MINIPSN_DIST_TIMEOUT", "600")))
    if not td.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            td.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
        else:
            td.init_process_group("gloo", timeout=timeout)
    _state.update(on=True, rank=td.get_rank(), world=td.get_world_size())
    if _state["rank"] != 0:
        sys.stdout = open(os.devnull, "w")
    return True


def launched() -> bool:
    """True in a process torchrun started (its RANK and WORLD_SIZE are set), before or without `init`."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """True under torchrun (even with one process), after `init`."""
    return _state["on"]


def rank() -> int:
    return _state["rank"]


def world() -> int:
    return _state["world"]


def is_main() -> bool:
    """Rank 0, the one that writes metrics, samples, checkpoints and the adapter (True on one process)."""
    return _state["rank"] == 0


def shard(n: int) -> tuple[int, int]:
    """[lo, hi): this rank's contiguous share of n items (all of them on one process)."""
    r, k = _state["rank"], _state["world"]
    return n * r // k, n * (r + 1) // k


def check_world(cfg) -> None:
    """Under torchrun: settings that cannot be split over the K processes are errors that say so."""
    K, P = world(), cfg.grpo.prompts_per_step
    if P < K:
        raise ValueError(f"grpo.prompts_per_step={P} is fewer than the {K} processes (each samples at least one "
                         "prompt's group); raise it or start fewer processes")
    if cfg.rollout.rng == "batch" and K > 1:
        raise ValueError("rollout.rng=batch draws every row from one generator, which cannot be split over "
                         "processes; use rollout.rng=prompt (the default) under torchrun")


def _reduce(values: list, op: str) -> list:
    import torch.distributed as td

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    td.all_reduce(t, op=td.ReduceOp.SUM if op == "sum" else td.ReduceOp.MAX)
    return t.tolist()


def all_sum(values: list) -> list:
    """Element-wise sums over the ranks of a list of numbers (float64; the list itself on one process)."""
    return _reduce(values, "sum") if _state["on"] else values


def all_sum_ints(values: list[int]) -> list[int]:
    """Sums over the ranks of a list of integers (exact below 2**53)."""
    return [int(round(v)) for v in _reduce(values, "sum")] if _state["on"] else values


def all_max(value: float) -> float:
    return _reduce([value], "max")[0] if _state["on"] else value


def any_true(flag: bool) -> bool:
    """True when any rank's flag is (e.g. a Ctrl-C seen by one rank only): all ranks stop together."""
    return bool(_reduce([float(flag)], "max")[0]) if _state["on"] else flag


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the gradients of `params` over the ranks in place, as one flat buffer (a missing gradient
    counts as zeros). Each rank's loss is already its share of the global loss, so the sum is the
    gradient of the whole batch."""
    if not _state["on"]:
        return
    import torch.distributed as td

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
    td.all_reduce(flat)
    for p, part in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = part.view_as(p).to(p.dtype)


def broadcast_params(params: list[torch.Tensor]) -> None:
    """Copy rank 0's values of `params` to every rank (one flat buffer)."""
    if not _state["on"]:
        return
    import torch.distributed as td

    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).float() for p in params])
        td.broadcast(flat, src=0)
        for p, part in zip(params, flat.split([p.numel() for p in params])):
            p.copy_(part.view_as(p))


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] on one process)."""
    if not _state["on"]:
        return [obj]
    import torch.distributed as td

    out = [None] * _state["world"]
    td.all_gather_object(out, obj)
    return out


def from_main(obj):
    """Rank 0's `obj` on every rank (`obj` itself on one process): a decision made once, on rank 0."""
    if not _state["on"]:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _state["on"]:
        import torch.distributed as td

        td.barrier()


def close() -> None:
    """Leave the process group (end of a run); a no-op on one process. `train` and `evaluate` close
    only a group they joined, so a caller (`compare`) can init once and run several of them."""
    if _state["on"]:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
        _state.update(on=False, rank=0, world=1)
