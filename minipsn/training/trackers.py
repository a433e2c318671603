"""Where a run's records go: metrics.jsonl, samples.jsonl, summary.json and the trackers that `run.log_to` names;
the status line.

metrics.jsonl (one JSON object per step) is always written and is what every reader uses; tensorboard
writes event files in RUN/tensorboard/, wandb a W&B run (RUN/wandb/, offline with WANDB_MODE=offline).
Both are imported lazily: one asked for but not installed prints one line, and the run goes on with
the others. samples.jsonl holds `run.log_samples` completions per step with their answer, reward and
advantage, so what the policy wrote at step 120 can be read back. summary.json, rewritten when a run ends (or
stops), says in one place what the run did: held-out pass@1 before → after where it evaluated, the rollouts'
accuracy at the start and the end, the steps its last checkpoint holds, wall time and the command of each
invocation (printlog.py keeps what it printed in log.txt).
Under torchrun rank 0 writes them all (every rank's picked samples gathered), the other ranks nothing.
A resume first cuts metrics.jsonl and samples.jsonl back to the checkpoint's step (train.py);
TensorBoard is told the same (purge_step), W&B drops steps it has already seen.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Protocol

import torch

from minipsn.run import checkpoint, printlog
from minipsn.run import distributed as dist
from minipsn.run.config import Config
from minipsn.sampling.rollout import Rollouts
from minipsn.verify import extract_answers


class Sink(Protocol):
    def log(self, metrics: dict) -> None: ...
    def close(self) -> None: ...


def scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics line, without `step`: what a tracker plots (lists stay in metrics.jsonl)."""
    return {k: float(v) for k, v in metrics.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}


class JsonlSink:
    """metrics.jsonl: flushed every line, so a kill loses at most the line being written."""

    def __init__(self, path: Path):
        self.file = open(path, "a")

    def log(self, metrics: dict) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardSink:
    def __init__(self, run_dir: Path, purge_step: int):
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError without the tensorboard package

        # events from a killed run's steps after the checkpoint are dropped when TensorBoard reads the folder
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, metrics: dict) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, metrics["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        id_file = run_dir / "wandb" / "run_id"  # a resume continues the same W&B run
        id_file.parent.mkdir(exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "minipsn"), name=run_dir.name,
                                  dir=str(run_dir), config=config, id=run_id, resume="allow")
        except wandb.errors.Error as e:
            raise ValueError(f"wandb could not start ({e}); run `wandb login`, set WANDB_MODE=offline, "
                             "or drop wandb from run.log_to") from None
        id_file.write_text(self.run.id)

    def log(self, metrics: dict) -> None:
        self.run.log(scalars(metrics), step=metrics["step"])

    def close(self) -> None:
        self.run.finish()


def truncate(run_dir: Path, step: int) -> None:
    """On resume: keep the lines of metrics.jsonl and samples.jsonl up to `step` (later ones are redone)."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        checkpoint.truncate_metrics(run_dir / name, step)


INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def open_sinks(cfg: Config, run_dir: Path, start: int) -> list[Sink]:
    """metrics.jsonl plus each tracker of `run.log_to` that imports; `start` is the step the run resumes
    after (0 for a new run), so step start + 1 is the first one logged."""
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl")]
    for name in dict.fromkeys(cfg.run.log_to):  # in order, each once
        try:
            if name == "jsonl":
                pass  # always on
            elif name == "tensorboard":
                sinks.append(TensorBoardSink(run_dir, start + 1 if start else 0))
            elif name == "wandb":
                sinks.append(WandbSink(run_dir, cfg.to_dict()))
            else:
                raise ValueError(f"unknown tracker {name!r} in run.log_to")
        except ImportError:
            print(f"run.log_to: {name} is not installed ({INSTALL[name]}); logging without it")
    return sinks


def status_line(m: dict, steps: int) -> str:
    """The one line printed per step, in a fixed order."""
    held_out = f" | pass@1 {m['eval/pass@1']:.2f}" if "eval/pass@1" in m else ""
    return (f"step {m['step']}/{steps} | reward {m['reward/mean']:.2f} | acc {m['reward/accuracy']:.2f}{held_out} | "
            f"σ {m['noise/sigma']:.1e} | tis_clip {m['tis/clip_frac']:.2f} | "
            f"tok/s {m['perf/tokens_per_s'] / 1e3:.1f}k | {m['perf/step_s']:.1f} s")


def eval_summary(run_dir: Path, cfg: Config) -> str | None:
    """One line comparing the first and last held-out evaluations of the run, when there are two."""
    held_out = _held_out(checkpoint.read_metrics(run_dir / "metrics.jsonl"), cfg)
    if held_out is None:
        return None
    (before, after), (first, last) = held_out["pass@1"], held_out["steps"]
    return (f"held-out pass@1: {before:.3f} at step {first} → {after:.3f} at step {last} "
            f"({held_out['problems']} problems × {held_out['n']} samples)")


def _held_out(rows: list[dict], cfg: Config) -> dict | None:
    """{"pass@1": [first, last], "steps": [its step, its step], "problems", "n"} of the held-out evaluations, or None
    with fewer than two."""
    evals = [r for r in rows if "eval/pass@1" in r]
    if len(evals) < 2:
        return None
    return {"pass@1": [evals[0]["eval/pass@1"], evals[-1]["eval/pass@1"]], "steps": [evals[0]["step"], evals[-1]["step"]],
            "problems": cfg.eval.problems or "all", "n": cfg.eval.n}


SUMMARY_FILE = "summary.json"
EDGE = 10  # steps averaged at each end of the rollouts' accuracy in summary.json (at most half the run's)


def write_summary(run_dir: Path, cfg: Config, started: float, first_step: int) -> dict:
    """RUN/summary.json after an invocation of the run (which started at `started`, time.time(), after
    `first_step` finished steps): the numbers read from metrics.jsonl and the checkpoint, and this invocation
    appended to the ones before (a resume's). Returns it."""
    path = run_dir / SUMMARY_FILE
    before = json.loads(path.read_text()) if path.is_file() else {}
    rows = checkpoint.read_metrics(run_dir / "metrics.jsonl")
    ckpt = checkpoint.latest(run_dir)
    saved = int(ckpt.name.split("-")[-1]) if ckpt is not None else 0
    acc = [r["reward/accuracy"] for r in rows if "reward/accuracy" in r]
    edge = max(1, min(EDGE, len(acc) // 2))  # a short run: its first and second half
    wall = time.time() - started
    invocation = {"command": printlog.command_line(), "started": time.strftime("%Y-%m-%d %H:%M:%S",
                                                                               time.localtime(started)),
                  "wall_s": round(wall, 1), "steps": [first_step, saved]}
    runs = [*before.get("invocations", []), invocation]
    summary = {
        "model": cfg.model.name, "steps_done": saved, "steps": cfg.run.steps, "finished": saved >= cfg.run.steps,
        "held_out": _held_out(rows, cfg),  # None: fewer than two held-out evaluations (eval.every)
        "rollout_accuracy": ({"first": sum(acc[:edge]) / edge, "last": sum(acc[-edge:]) / edge, "steps_averaged": edge}
                             if acc else None),
        "wall_s": round(sum(r["wall_s"] for r in runs), 1), "command": invocation["command"], "invocations": runs}
    path.write_text(json.dumps(summary, indent=2))
    return summary


def open_log(cfg: Config, run_dir: Path, start: int) -> RunLog | NoLog:
    """Where a step's records go: the run's sinks on rank 0 (one process: always), nowhere on the other ranks."""
    return RunLog(cfg, run_dir, start) if dist.is_main() else NoLog()


class NoLog:
    """What ranks other than 0 write records to under torchrun: nothing."""

    def write(self, metrics: dict, samples: list[dict] = ()) -> None:
        pass

    def __enter__(self) -> NoLog:
        return self

    def __exit__(self, *exc) -> None:
        pass


class RunLog:
    """The run's sinks and samples.jsonl, as one context manager: `write(metrics, samples)` per step."""

    def __init__(self, cfg: Config, run_dir: Path, start: int):
        self.sinks = open_sinks(cfg, run_dir, start)
        self.samples = open(run_dir / "samples.jsonl", "a") if cfg.run.log_samples else None

    def write(self, metrics: dict, samples: list[dict] = ()) -> None:
        if self.samples is not None and samples:  # before the metrics line: a resume cuts both to its step
            self.samples.write("".join(json.dumps(s) + "\n" for s in samples))
            self.samples.flush()
        for sink in self.sinks:
            sink.log(metrics)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        for sink in self.sinks:
            sink.close()
        if self.samples is not None:
            self.samples.close()


def pick_samples(step: int, cfg: Config, prompts: list[str], recs: list[dict], ro: Rollouts, rewards: torch.Tensor,
                 correct: torch.Tensor, adv: torch.Tensor, seeds: list[int], offset: int = 0,
                 total: int | None = None) -> list[dict]:
    """`run.log_samples` of a step's N = P·G rollouts as samples.jsonl lines, spread evenly over the rows
    and so over the prompts. Rows are prompt-major (row i belongs to prompt i // G); `recs`, `rewards`,
    `correct`, `adv` and `seeds` have one entry per row (N,), `prompts` one per prompt (P,). Under torchrun
    they are this rank's rows, `offset` … `offset` + N − 1 of the step's `total`: it returns the picked rows
    it holds, numbered in the step."""
    N, G, k, r = len(ro.texts), cfg.grpo.group_size, cfg.run.log_samples, cfg.reward
    total = N if total is None else total
    rows = [j - offset for j in sorted({i * total // k for i in range(min(k, total))}) if offset <= j < offset + N]
    # the answer the verifier graded (reward.extract's reading; a truncated completion is not read)
    read = extract_answers([ro.texts[i] for i in rows], r.extract, r.last_number, r.unboxed_answer, r.timeout)
    answers = {i: None if bool(ro.truncated[i]) else a for i, a in zip(rows, read)}
    return [{"step": step, "row": i + offset, "group": (i + offset) // G, "prompt": prompts[i // G],
             "completion": ro.texts[i], "answer": answers[i],
             "gold": recs[i]["answer"], "reward": float(rewards[i]), "correct": bool(correct[i]),
             "advantage": float(adv[i]), "truncated": bool(ro.truncated[i]), "noise_seed": int(seeds[i])}
            for i in rows]


def step_samples(step: int, cfg: Config, prompts: list[str], recs: list[dict], ro: Rollouts, rewards: torch.Tensor,
                 correct: torch.Tensor, adv: torch.Tensor, seeds: list[int], offset: int, total: int) -> list[dict]:
    """`pick_samples` of this rank's rows (`offset` … of the step's `total`), gathered from every rank in row order
    (rank 0 writes them; one process: its own)."""
    mine = pick_samples(step, cfg, prompts, recs, ro, rewards, correct, adv, seeds, offset, total)
    return [s for part in dist.gather(mine) for s in part]
