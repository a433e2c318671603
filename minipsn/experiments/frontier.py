"""The frontier: what an arm reaches at large k against how much it has learned, along its training.

    x = pass@1 on the training mix (the held-out kinds weighted as RL trains on them: 70/30 final/steps)
    y = pass@k_max on the kind that measures the ceiling (the ceiling's steps questions at k = 256)

At equal steps an arm that learns the mix more slowly also narrows less, so "explores more" and "learns less" look
alike in a table at the last step. Along the frontier they do not: an arm that only learns less sits on the same
curve as GRPO, earlier on it; an arm that explores more sits above it. `frontier` evaluates the adapters a compare
grid kept (`run.keep_adapters`, e.g. steps 20 and 40; the final adapter is the grid's own evaluation, the base model
is step 0) and writes compare_frontier.json (each point's mean and std over seeds, and every seed's) and
compare_frontier.png/.pdf (one line per arm, a marker per step, ±1 std over seeds as error bars).
"""
from __future__ import annotations

import json
from pathlib import Path

from minipsn.experiments.jobs import Evaluation, in_workers, job_config

# a task with kinds of question: (the other kind, the kind whose training share is the setting, that setting)
MIXES = {frozenset({"final", "steps"}): ("final", "steps", "steps_share"),
         frozenset({"pos", "neg"}): ("pos", "neg", "neg_share")}


def mix_pass1(report: dict, benchmark: str = "synthetic") -> float:
    """pass@1 on the training mix: on the mixed task (1 − s)·final + s·steps, s = data.steps_share (the share of steps
    questions RL trains on), on the route task (1 − s)·pos + s·neg, s = data.neg_share, from the held-out kinds'
    pass@1; else pass@1 over every problem."""
    bench = report["benchmarks"][benchmark]
    kinds = bench.get("kinds", {})
    if frozenset(kinds) not in MIXES:
        return bench["pass@k"]["1"]
    other, kind, share = MIXES[frozenset(kinds)]
    s = report["config"]["data"][share]
    return (1 - s) * kinds[other]["pass@k"]["1"] + s * kinds[kind]["pass@k"]["1"]


def _point(report: dict, kind: str, k: int, benchmark: str = "synthetic") -> tuple[float, float]:
    """(the training mix's pass@1, pass@k on `kind`, or on every problem when no kind is named so) of one evaluation."""
    bench = report["benchmarks"][benchmark]
    kinds = bench.get("kinds", {})
    return mix_pass1(report, benchmark), (kinds[kind] if kind in kinds else bench)["pass@k"][str(k)]


def read_grid(out: Path) -> dict:
    """A finished compare grid's compare.json, or a one-line error."""
    if not (Path(out) / "compare.json").is_file():
        raise ValueError(f"{out} holds no compare.json; give --out a finished compare grid (run compare first, with "
                         "--set run.keep_adapters=20,40)")
    return json.loads((Path(out) / "compare.json").read_text())


def frontier(model: str, arms: list[str], seeds: int, out: str | Path, steps: list[int], sets: dict,
             kind: str = "steps", k: int = 256, workers: int = 1, benchmark: str = "synthetic") -> dict:
    """Evaluate each (arm, seed)'s adapters kept at `steps` in a finished compare grid `out` (with the grid's own
    `sets`: compare.json's "overrides") on `benchmark` (the grid's; `heldout`: a subset, subset.py), into
    RUN/<arm>-s<seed>/eval-step<N>/ (reused when done); write and return the frontier (module docstring)."""
    out = Path(out)
    grid = read_grid(out)
    labels = list(arms)  # the grid's arm names (a method, or a LABEL of LABEL=METHOD)
    missing = [a for a in labels if a not in grid["methods"]]
    if missing:
        raise ValueError(f"{', '.join(missing)} not in the grid of {out} ({', '.join(grid['methods'])})")
    jobs = []
    for arm in labels:
        for s in range(seeds):
            run = out / f"{arm}-s{s}"
            for step in steps:
                adapter = run / "adapters" / f"step-{step}" / "adapter"
                if not (adapter / "adapter_config.json").is_file():
                    raise ValueError(f"{run} kept no adapter at step {step}: train the grid with "
                                     f"--set run.keep_adapters={','.join(map(str, steps))}")
                jobs.append(Evaluation(arm, s, run, run / f"eval-step{step}", adapter))
    reports = (in_workers(model, jobs, sets, [benchmark], workers) if workers > 1
               else _one_by_one(model, jobs, sets, benchmark))
    base = json.loads((out / "base" / "eval" / "eval.json").read_text())
    last = grid["overrides"].get("run.steps")
    points = {}
    for arm in labels:
        by_step = {0: [_point(base, kind, k, benchmark)] * seeds}
        for step in steps:
            by_step[step] = [_point(r, kind, k, benchmark) for j, r in zip(jobs, reports) if j.arm == arm and
                             j.eval_dir.name == f"eval-step{step}"]
        by_step[int(last) if last else "final"] = [
            _point(json.loads((out / f"{arm}-s{s}" / "eval" / "eval.json").read_text()), kind, k, benchmark)
            for s in range(seeds)]
        points[arm] = {str(step): {"x": [p[0] for p in ps], "y": [p[1] for p in ps]} for step, ps in by_step.items()}
    mix = benchmark == "synthetic"  # another benchmark (a subset) has no training mix: its own pass@1
    result = {"x": "pass@1, the training mix" if mix else f"pass@1, {benchmark}",
              "y": f"pass@{k}, {kind} questions" + ("" if mix else f" of {benchmark}"), "seeds": seeds, "points": points}
    (out / "compare_frontier.json").write_text(json.dumps(result, indent=2))
    fig = figure(result)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"compare_frontier.{ext}", dpi=120)
    return result


def _one_by_one(model: str, jobs: list[Evaluation], sets: dict, benchmark: str = "synthetic") -> list[dict]:
    from minipsn.evaluation.evaluate import evaluate

    reports = []
    for job in jobs:
        done = job.eval_dir / "eval.json"
        reports.append(json.loads(done.read_text()) if done.is_file() else evaluate(
            job_config(model, job.arm, job.seed, sets, job.run_dir), [benchmark], job.eval_dir, str(job.adapter)))
    return reports


def figure(result: dict):
    """One line per arm through its steps' mean points, ±1 std over seeds as error bars, the step beside each point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from minipsn.experiments.plot import MARKERS, palette

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = palette(list(result["points"]))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    std = lambda xs: (sum((x - mean(xs)) ** 2 for x in xs) / len(xs)) ** 0.5  # noqa: E731
    for i, (arm, by_step) in enumerate(result["points"].items()):
        xs = [100 * mean(p["x"]) for p in by_step.values()]
        ys = [100 * mean(p["y"]) for p in by_step.values()]
        ax.errorbar(xs, ys, xerr=[100 * std(p["x"]) for p in by_step.values()],
                    yerr=[100 * std(p["y"]) for p in by_step.values()], marker=MARKERS[i % len(MARKERS)],
                    color=colors[arm], label=arm, capsize=2, lw=1.2)
        for step, x, y in zip(by_step, xs, ys):
            ax.annotate(step, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=colors[arm])
    ax.set(xlabel=f"{result['x']} (%)", ylabel=f"{result['y']} (%)",
           title=f"the frontier: large-k reach against learning ({result['seeds']} seeds; step by each point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="mean over seeds, bars ±1 std", title_fontsize=7)
    return fig
