"""The one-GPU, one-day experiment: does parameter noise lift pass@256 over GRPO on a real model? (docs/one-gpu.md)

    python examples/one_gpu_comparison.py [--model qwen-math-1.5b] [--profile day] [--out OUT] [--budget-h H]
                                          [--passk] [--train-file FILE]

grpo against psn-weight (the paper's form: σ·ε on the MLP weights) at the calibrated dose (a noise KL of 0.003 per
token) and a higher one (0.01), 3 seeds each with the same seeds across arms, on a ceiling subset chosen on the base:
    1. calibrate  σ on the base weights for each dose (OUT/calibrate; reused when measured with these settings)
    2. subset     the base once on the pool at n = 256 with seed 1000: problems with pass@1 <= 0.1 and pass@256 > 0
                  and a slice it never solves (OUT/subset/subset.jsonl); the grid samples them with seeds 0, 1, 2
    3. plan       two training steps and a 20-problem evaluation timed here, the hours left projected; a plan over
                  --budget-h stops here in one line naming what to shrink (smoke also projects the day from them)
    4. grid       compare on the subset (OUT/grid/compare.md): pass@k per slice and paired Δ against grpo
    5. frontier   pass@1 against pass@n on the subset at every kept step, seed 0 (OUT/grid/compare_frontier.png)
    6. report     the selection's luck against the fresh base row, and per arm the mechanism: signal groups,
                  noise-owed groups, noise KL per completion (OUT/grid/report.md)
--model llama-1b is the replication arm (another family, its own subset); --model tiny runs it on a CPU.
--profile smoke is the same path in minutes (5 steps, 20 problems × 16 samples): run it first on a new card. Every
part reuses what an earlier run finished, so a rerun continues. The presets are ONE_GPU_* in minipsn/run/presets.py.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from minipsn import build_config, compare, load_problems
from minipsn.evaluation.evaluate import benchmark_records
from minipsn.experiments import planner, subset
from minipsn.experiments.calibrate import calibrate, parse_sigmas, reuse, suggest
from minipsn.experiments.frontier import frontier
from minipsn.method import mechanism
from minipsn.run.presets import ONE_GPU_MODELS, ONE_GPU_PROFILES
from minipsn.tasks.data import BUNDLED_DIR

DOSES = (0.003, 0.01)  # noise KL per token: the calibrated dose (the paper's variant-I target) and a higher one


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="grpo against psn-weight at two doses on a ceiling subset (docstring)")
    p.add_argument("--model", default="qwen-math-1.5b", choices=list(ONE_GPU_MODELS))
    p.add_argument("--profile", default="day", choices=list(ONE_GPU_PROFILES))
    p.add_argument("--out", default=None, help="default runs/one-gpu-MODEL-PROFILE")
    p.add_argument("--budget-h", type=float, default=None, help="refuse a plan over this (default: the profile's)")
    p.add_argument("--passk", action="store_true", help="add passk (Pass@k training) as an arm")
    p.add_argument("--train-file", default=str(BUNDLED_DIR / "math_train.jsonl"), help="the training problems")
    return p.parse_args(argv)


def training_file(model: str, given: str, out: Path) -> str:
    """The training set as a file (own data, so data.test_split can name the subset): MATH train, or on tiny its
    synthetic training split written out."""
    if model != "tiny":
        if not Path(given).is_file():
            raise ValueError(f"no training file {given}: python cli.py data math writes it, or give --train-file")
        return given
    rows = load_problems(build_config(model="tiny").data, "train")
    path = out / "data" / "synthetic_train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n" for r in rows))
    return str(path)


def doses(model: str, common: dict, spec: dict, prof: dict, out: Path) -> tuple[dict, float]:
    """({kl: σ on the base weights}, seconds the calibration took) from one calibration of psn-weight."""
    cfg = build_config(model=model, method="psn-weight", sets=common)
    sigmas, path = parse_sigmas(spec["weight_sigmas"]), out / "calibrate" / "calibrate.json"
    report = reuse(path, cfg, sigmas, DOSES[0], prof["draws"]) or calibrate(cfg, sigmas, DOSES[0], prof["draws"],
                                                                            out / "calibrate")
    found = {}
    for kl in DOSES:
        sigma, why = suggest(report["rows"], kl)
        if sigma is None:
            raise ValueError(f"calibrate found no σ on the base weights for a noise KL of {kl} per token: {why}")
        found[kl] = round(sigma, 6)
    print("σ on the base weights: " + ", ".join(f"{s:.3g} for a noise KL of {kl} per token" for kl, s in found.items()))
    return found, report["seconds"]


def choose(model: str, common: dict, spec: dict, prof: dict, out: Path) -> dict:
    """The ceiling subset, chosen on the base with the selection seed (subset.py)."""
    cfg = build_config(model=model, sets={**common, "run.seed": subset.SELECTION_SEED,
                                          "eval.problems": prof["pool_problems"]})
    sel = subset.Selection(prof["subset"], prof["min_subset"], prof["max_pass1"], prof["never"], spec["max_guess"])
    if spec["max_guess"] >= 1:
        print(f"note: {model}'s answers are guessable (small integers): the guess filter is off, a toy run")
    report = subset.select(cfg, spec["pool"].split(","), out / "subset", sel)
    from rich.console import Console

    Console().print(subset.table(report))
    return report


def left(grid: Path, arms: list[str], prof: dict, kept: list[int]) -> tuple[int, int, int]:
    """(trainings, evaluations, frontier evaluations) the grid has not finished."""
    runs = [grid / f"{a}-s{s}" for a in arms for s in range(prof["seeds"])]
    trainings = sum(not (r / "adapter" / "adapter_config.json").is_file() for r in runs)
    evaluations = sum(not (f / "eval.json").is_file() for f in [grid / "base" / "eval", *(r / "eval" for r in runs)])
    fronts = [grid / f"{a}-s{s}" / f"eval-step{k}" for a in arms for s in range(prof["frontier_seeds"]) for k in kept]
    return trainings, evaluations, sum(not (f / "eval.json").is_file() for f in fronts)


def plan(a, out: Path, arms: list[str], sigma_high: float, sets: dict, prof: dict, chosen: dict, done: dict) -> None:
    """Time the pieces here, print the plan, refuse one over the budget (planner.py); smoke also projects the day."""
    from rich.console import Console

    train_cfg = build_config(model=a.model, method="psn-weight", sets={**sets, "noise.sigma": sigma_high})
    t = planner.measure(train_cfg, build_config(model=a.model, sets=sets), "heldout", out / "plan")
    seeds, kept = prof["seeds"], frontier_steps(sets["run.steps"], prof["frontier_every"])
    trainings, evaluations, fronts = left(out / "grid", arms, prof, kept)
    problems = sum(chosen["kept"].values())
    rows = planner.project(planner.Grid(trainings, sets["run.steps"], evaluations, fronts, problems, done=done), t)
    budget = a.budget_h if a.budget_h is not None else prof["budget_h"]
    Console().print(planner.table(rows, t, budget, f"plan: {a.model}, {a.profile}, {len(arms)} arms × {seeds} seeds"))
    (out / "plan").mkdir(parents=True, exist_ok=True)
    planner.save(out / "plan" / "plan.json", rows, t, budget)
    if a.profile == "smoke":  # the same steps (P, G, lengths are the day's), evaluations scaled to the day's n
        day = ONE_GPU_PROFILES["day"]
        n, runs, steps = day["config"]["eval.n"], len(arms) * day["seeds"], day["config"]["run.steps"]
        day_cfg = build_config(model=a.model, sets={**sets, "data.test_split": "", "eval.problems": day["pool_problems"]})
        pool = sum(len(benchmark_records(b, day_cfg)) for b in chosen["pool"])
        fronts = len(arms) * day["frontier_seeds"] * len(frontier_steps(steps, day["frontier_every"]))
        grid = planner.Grid(runs, steps, runs + 1, fronts, day["subset"] + day["never"], pool)
        Console().print(planner.table(planner.project(grid, t, n), t, day["budget_h"], f"the day profile projected from "
                                      f"these timings (evaluations scaled from n = {t.n} to {n}: an estimate)"))
    planner.check(rows, budget)


def frontier_steps(steps: int, every: int) -> list[int]:
    return list(range(every, steps, every))


def run(a) -> None:
    prof, spec = ONE_GPU_PROFILES[a.profile], ONE_GPU_MODELS[a.model]
    out, seeds = Path(a.out or f"runs/one-gpu-{a.model}-{a.profile}"), prof["seeds"]
    common = {**spec["config"], **prof["config"], "eval.problems": 0, "eval.n_by_kind": "",
              "data.dataset": training_file(a.model, a.train_file, out)}
    sigma, cal_s = doses(a.model, common, spec, prof, out)  # 1
    chosen = choose(a.model, common, spec, prof, out)  # 2
    subset.check_seeds(chosen, range(seeds))
    kept = frontier_steps(common["run.steps"], prof["frontier_every"])
    sets = {**common, "data.test_split": chosen["file"], "run.keep_adapters": ",".join(map(str, kept))}
    labels = [f"psn-weight@{kl:g}" for kl in DOSES]
    arms = ["grpo", *(f"{label}=psn-weight" for label in labels), *(["passk"] if a.passk else [])]
    per_method = {label: {"noise.sigma": sigma[kl]} for label, kl in zip(labels, DOSES)}
    names = [arm.partition("=")[0] for arm in arms]
    plan(a, out, names, sigma[DOSES[-1]], sets, prof, chosen, {"calibrate": cal_s, "subset selection": chosen["seconds"]})  # 3
    compare(a.model, arms, seeds, out / "grid", sets, ("heldout",), per_method=per_method, ref="grpo")  # 4
    if kept:  # 5
        overrides = json.loads((out / "grid" / "compare.json").read_text())["overrides"]
        frontier(a.model, names, prof["frontier_seeds"], out / "grid", kept, overrides, kind="all", k=common["eval.n"],
                 benchmark="heldout")
    report(out / "grid", names, seeds, chosen)  # 6


def report(grid: Path, arms: list[str], seeds: int, chosen: dict) -> None:
    """OUT/grid/report.md: the selection's luck against the fresh base row, and the mechanism per arm."""
    base = json.loads((grid / "base" / "eval" / "eval.json").read_text())
    table = mechanism.markdown(mechanism.summary({arm: [grid / f"{arm}-s{s}" for s in range(seeds)] for arm in arms}))
    text = (f"# the one-GPU comparison: {base['model']}\n\n{subset.regression_line(chosen['file'], base)}.\n\n"
            f"The mechanism, means over seeds and steps (docs/one-gpu.md):\n\n{table}")
    (grid / "report.md").write_text(text)
    print((grid / "compare.md").read_text() + "\n" + text)


def main() -> None:
    t0 = time.perf_counter()
    try:
        run(parse(sys.argv[1:]))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"one_gpu_comparison: {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":  # compare's workers are spawned processes: they import this file without running it
    main()
