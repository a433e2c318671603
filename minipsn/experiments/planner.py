"""The time planner: before a grid runs, time its pieces on this machine and project the whole experiment's hours.

    training     arms × seeds runs:        load + first step + (steps − 1) × step
    evaluation   (base + arms × seeds):    load + problems × (one problem at n)
    frontier     arms × seeds × points:    the same per kept adapter
    selection    the base on the pool:     load + pool × (one problem at n)     (when the subset is not chosen yet)

`measure` times what it can on the machine: the model's load and two training steps of the dearest arm (the first
pays warm-up, compilation and the guard's extra pass, the second is every later step), and a 20-problem evaluation
(one problem's time at the evaluation's n). Phases already done enter with their measured seconds. The projection is
an estimate: completions grow or shrink during training, and trained policies answer at other lengths than the base.
`check` refuses a plan over the budget in one line naming the phase to shrink and by how much.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from minipsn.run.config import Config

TIMED_PROBLEMS = 20


@dataclass(frozen=True)
class Timings:
    """What `measure` timed here."""
    device: str            # where (the card's name, or the CPU)
    load_s: float          # loading the model and building the sampler: every job pays it
    first_step_s: float    # a run's first training step (warm-up, compilation, the guard's noisy pass)
    step_s: float          # every later training step (the second one timed)
    problem_s: float       # one evaluation problem at n samples
    n: int                 # the n the evaluation was timed at
    tokens: float          # mean completion tokens of the timed steps


@dataclass(frozen=True)
class Grid:
    """The work an experiment has left (counts of jobs), and what is done (seconds per phase)."""
    trainings: int          # runs to train (arms × seeds, less the finished ones)
    steps: int              # training steps per run
    evaluations: int        # final evaluations left (the base and every run)
    frontier: int           # kept adapters left to evaluate (arms × seeds × points)
    problems: int           # problems every evaluation samples
    pool: int = 0           # problems the subset selection has left to evaluate (0: chosen already)
    done: dict[str, float] = field(default_factory=dict)  # {phase: seconds} of the phases finished


def project(grid: Grid, t: Timings, n: int | None = None) -> list[dict]:
    """The plan: one row per phase, {phase, jobs, hours, knob}, done phases first. A phase left has a knob (what
    shrinks it, its value, and its hours as fixed + per·value); `n` projects evaluations at another n than the timed
    one (sampling time ∝ n: an approximation)."""
    per_problem = t.problem_s * (n or t.n) / t.n
    evaluation = t.load_s + grid.problems * per_problem
    rows = [{"phase": f"{name} (done)", "jobs": 0, "hours": s / 3600, "knob": None} for name, s in grid.done.items()]

    def row(phase: str, jobs: int, knob: str, value: int, fixed_s: float, per_s: float) -> dict:
        return {"phase": phase, "jobs": jobs, "hours": (fixed_s + per_s * value) / 3600,
                "knob": {"name": knob, "value": value, "fixed_h": fixed_s / 3600, "per_h": per_s / 3600}}

    if grid.pool:
        rows.append(row("subset selection (the base on the pool)", 1, "the pool's problems", grid.pool, t.load_s,
                        per_problem))
    runs = grid.trainings
    return rows + [
        row(f"training ({grid.steps} steps a run)", runs, "--steps", grid.steps, runs * (t.load_s + t.first_step_s - t.step_s),
            runs * t.step_s),
        row(f"evaluation ({grid.problems} problems)", grid.evaluations, "the subset's problems", grid.problems,
            grid.evaluations * t.load_s, grid.evaluations * per_problem),
        row("frontier (kept adapters)", grid.frontier, "the frontier's evaluations (a larger --frontier-every)",
            grid.frontier, 0.0, evaluation)]


def total_hours(rows: list[dict]) -> float:
    return sum(r["hours"] for r in rows)


def _h(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours:.2g} h"


def check(rows: list[dict], budget_h: float) -> None:
    """A plan over `budget_h` is an error, in one line: its total, the largest phase left and the value of its knob
    that makes the plan fit."""
    total = total_hours(rows)
    if total <= budget_h:
        return
    left = [r for r in rows if r["knob"] is not None and r["hours"] > 0]
    if not left:
        raise ValueError(f"the phases done already take {_h(total)}, over the budget of {budget_h:g} h; raise "
                         "--budget-h to go on")
    worst = max(left, key=lambda r: r["hours"])
    knob = worst["knob"]
    fits = math.floor((budget_h - (total - worst["hours"]) - knob["fixed_h"]) / knob["per_h"])
    fix = (f"shrink {knob['name']} from {knob['value']} to {fits}" if fits >= 1 else
           f"not even 1 of {knob['name']} fits beside the other phases' {_h(total - worst['hours'])}: shrink several "
           "(fewer seeds or arms, fewer problems, fewer steps)")
    raise ValueError(f"the plan takes {_h(total)}, over the budget of {budget_h:g} h; its largest phase is "
                     f"{worst['phase']} ({_h(worst['hours'])}): {fix}, or raise --budget-h")


def table(rows: list[dict], t: Timings, budget_h: float, title: str):
    """The plan as a rich table, with what was timed in the caption."""
    from rich.table import Table

    tab = Table(title=title)
    for col, justify in (("phase", "left"), ("jobs", "right"), ("hours", "right")):
        tab.add_column(col, justify=justify)
    for r in rows:
        tab.add_row(r["phase"], str(r["jobs"]) if r["jobs"] else "", f"{r['hours']:.2f}")
    total = total_hours(rows)
    tab.add_row("total", "", f"{total:.2f}", style="bold", end_section=True)
    tab.caption = (f"timed on {t.device}: load {t.load_s:.1f} s, first step {t.first_step_s:.1f} s, step {t.step_s:.1f} s "
                   f"({t.tokens:.0f} tokens a completion), one problem at n = {t.n} {t.problem_s:.2f} s; budget "
                   f"{budget_h:g} h: {'fits' if total <= budget_h else 'OVER'}. An estimate: completion lengths change "
                   "as a policy trains.")
    return tab


def measure(train_cfg: Config, eval_cfg: Config, benchmark: str, out: str | Path) -> Timings:
    """Time two training steps of `train_cfg` (the dearest arm) and a TIMED_PROBLEMS-problem evaluation of
    `eval_cfg` on `benchmark` here, in OUT/timing (removed afterwards)."""
    from minipsn.run import folders

    scratch = folders.check_writable(out) / "timing"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        load_s, first, second, tokens = _time_steps(dataclasses.replace(
            train_cfg, run=dataclasses.replace(train_cfg.run, out=str(scratch / "train"), steps=2),
            eval=dataclasses.replace(train_cfg.eval, every=0)))
        problem_s = _time_problems(eval_cfg, benchmark, scratch / "eval")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    import torch

    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"the CPU ({threads} torch thread{'s' if threads > 1 else ''})"
    return Timings(device, load_s, first, second, problem_s, eval_cfg.eval.n, tokens)


def _time_steps(cfg: Config) -> tuple[float, float, float, float]:
    """(load s, first step s, second step s, mean completion tokens) of a trainer on `cfg`."""
    from minipsn.run import folders
    from minipsn.training.train import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    load_s = time.perf_counter() - t0
    try:
        steps = [trainer.step(s) for s in range(2)]
    finally:
        folders.release(trainer.run_dir)
    return load_s, steps[0]["perf/step_s"], steps[1]["perf/step_s"], sum(m["completion/len_mean"] for m in steps) / 2


def _time_problems(cfg: Config, benchmark: str, out: Path) -> float:
    """Seconds per problem of an evaluation at cfg.eval.n, its model load left out (evaluate's own steps)."""
    from minipsn.evaluation.evaluate import benchmark_records, eval_rollout_config, evaluate_benchmark
    from minipsn.sampling.engine import make_engine
    from minipsn.tasks.models import load_policy

    records = benchmark_records(benchmark, cfg)[:TIMED_PROBLEMS]
    model, tok = load_policy(cfg)
    clean = dataclasses.replace(cfg, rollout=eval_rollout_config(cfg.rollout, cfg.eval),
                                noise=dataclasses.replace(cfg.noise, sigma=0.0))
    engine = make_engine(model, clean)
    with engine.policy(0.0, [0], cfg.noise.targets) as (sampler, _):
        t0 = time.perf_counter()
        evaluate_benchmark(sampler, tok, benchmark, records, cfg, out / "samples.jsonl", None, None, engine.name)
        return (time.perf_counter() - t0) / len(records)


def save(path: str | Path, rows: list[dict], t: Timings, budget_h: float) -> None:
    Path(path).write_text(json.dumps({"timings": dataclasses.asdict(t), "rows": rows, "total_hours": total_hours(rows),
                                      "budget_hours": budget_h}, indent=2))
