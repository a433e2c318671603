"""A step's row and group metrics, one code path for one process and for K under torchrun; its perf/* timings.

Each process reduces its own rows (N_r of them) and groups (P_r): for every quantity x its count n_r and its
sum n_r·mean_r, with torch's own mean_r = x.mean() (n_r·mean_r is exact in float64). One all-reduce adds them
over the ranks (`distributed.all_sum`; on one process it returns them as they are), and

    mean = Σ n_r·mean_r / n                         rounded to float32, the precision of the tensors
    std  = sqrt(Σ [(n_r − 1)·std_r² + n_r·(mean_r − mean)²] / (n − 1))     (Chan et al.; a second all-reduce)

On one process mean_r is the mean and the sum of squares is (n − 1)·std², so each metric is bit for bit torch's
`x.mean()` or `x.std()` of the step's tensor, on whatever device it is (tests/test_same_run.py). Under torchrun
they are the means over all ranks' rows: a group never spans ranks, so the group means are too.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from minipsn.method.mechanism import draw_index
from minipsn.run import distributed as dist
from minipsn.sampling.rollout import Rollouts

PER_GROUP = ("zero_adv", "diversity", "signal", "owed")  # means over the groups; the others over the rows


def _f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


@dataclass
class StepMeans:
    metrics: dict[str, float]    # reward/*, verify/*, completion/*: over every rank's rows and groups
    signals: dict[str, float]    # the σ controller's inputs: diversity (mean over groups), certainty (over rows)
    tokens: int                  # completion tokens sampled by every rank


def step_means(rewards: torch.Tensor, correct: torch.Tensor, adv: torch.Tensor, ro: Rollouts,
               diversity: torch.Tensor, verified: dict[str, int], explore: dict | None = None) -> StepMeans:
    """rewards, correct (N_r,), adv and diversity (P_r, G) and (P_r,), this rank's rollouts and verifier counts, and
    the mechanism's tensors (`mechanism.step_tensors`) → the step's means over all ranks (module docstring)."""
    x = {"reward": rewards, "correct": correct, "zero_adv": (adv == 0).all(1), "len": ro.completion_mask.sum(1),
         "truncated": ro.truncated, "certainty": ro.certainty, "diversity": diversity, **(explore or {})}
    rows, groups = rewards.numel(), adv.shape[0]
    local = {"rows": rows, "groups": groups, "tokens": ro.n_tokens, **verified,
             **{k: (groups if k in PER_GROUP else rows) * v.float().mean().item() for k, v in x.items()}}
    t = dict(zip(local, dist.all_sum(list(local.values()))))
    mean = {k: _f32(t[k] / t["groups" if k in PER_GROUP else "rows"]) for k in x}
    std_r, mean_r = rewards.std().item(), local["reward"] / rows
    squares = dist.all_sum([(rows - 1) * std_r * std_r + rows * (mean_r - mean["reward"]) ** 2])[0]
    metrics = {"reward/mean": mean["reward"], "reward/std": _f32((squares / max(t["rows"] - 1, 1)) ** 0.5),
               "reward/accuracy": mean["correct"],
               **{f"verify/{k}": int(t[k]) for k in verified},
               "reward/zero_adv_frac": mean["zero_adv"], "completion/len_mean": mean["len"],
               "completion/truncated_frac": mean["truncated"]}
    if explore is not None:  # the noise-owed share is over the signal groups (group counts, summed over ranks)
        metrics.update({"explore/signal_frac": mean["signal"], "noise/kl_seq": mean["kl_seq"],
                        "explore/noise_owed_frac": _f32(t["owed"] / t["signal"]) if t["signal"] else 0.0})
    return StepMeans(metrics, {"diversity": mean["diversity"], "certainty": mean["certainty"]}, int(t["tokens"]))


def draw_accuracy(correct: torch.Tensor, G: int, draws: int) -> dict[str, object]:
    """With noise.draws = D > 1: the accuracy of each draw's rows over every rank (`explore/draw_acc`, a list) and
    its range; nothing with one draw. correct (N_r,) holds whole groups, so row p of a group took draw p·D // G."""
    if draws == 1:
        return {}
    draw = draw_index(correct.numel(), G, draws)
    t = dist.all_sum([float(correct[draw == d].sum()) for d in range(draws)] + [float((draw == d).sum()) for d in range(draws)])
    acc = [_f32(t[d] / t[draws + d]) for d in range(draws)]
    return {"explore/draw_acc": acc, "explore/draw_acc_range": max(acc) - min(acc)}


class Stopwatch:
    """The step's perf/* timings: `mark(name)` the seconds since the step began, `timed(name)` a phase's own."""

    def __init__(self):
        self.t0, self.s = time.perf_counter(), {}

    def mark(self, name: str) -> None:
        self.s[name] = time.perf_counter() - self.t0

    @contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        yield
        self.s[name] = time.perf_counter() - t

    def perf(self, tokens: int, device: torch.device) -> dict[str, float]:
        """perf/*: the step, sampling (perturb included), learner, verifier, noise + σ controller and clean rescore
        seconds, completion tokens per second of sampling (every rank's), and the peak GPU memory."""
        s = self.s
        return {"perf/step_s": time.perf_counter() - self.t0, "perf/sample_s": s["sample"], "perf/learn_s": s["learn"],
                "perf/verify_s": s["verify"], "perf/noise_sched_s": s["noise"] + s["sched"],
                "perf/rescore_s": s["rescore"], "perf/tokens_per_s": tokens / max(s["sample"], 1e-9),
                **({"perf/peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30} if device.type == "cuda" else {})}
