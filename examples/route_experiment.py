"""The route experiment: does noise on the parameters keep a rare route that noise on the tokens breaks? (docs/RESULTS.md)

    python examples/route_experiment.py PART [OUT] [SEEDS] [WORKERS] [--other-code]

On the `route` model, where only the rare route (the offset ledger, kept on every line) is right on the neg problems
and GRPO narrows their pass@256, in parts that each resume where they stopped, as the ceiling experiment's do:
    calibrate   σ on the adapter, σ on the weights and the temperature at each noise KL per token of DOSES
    probe       the mechanism before training: on the first 50 held-out neg problems × 256 samples, how often a sample
                opens the ledger and how often an opened ledger is kept to the box, clean and at each dose, one
                noise draw per problem (D = 1) and one per sample (D = 256)
    arms        grpo, psn, psn-weight and temperature at a noise KL of DOSE per token
    extras      the same grid plus per-rollout noise (adapter and weights), passk (k = 4) and c3po (2 draws)
    low         the same grid plus the second dose, LOW per token: psn (a draw per step and per rollout), psn-weight
                and temperature, labelled ARM@0.003; these arms first, then the grid's others
    probe-grpo  the probe at GRPO's checkpoints (seed 0's adapters at steps 20, 40 and 60): clean, and DOSE on the
                adapter, the weights and the temperature, one draw per sample
    frontier    the neg problems' pass@256 against the mix's pass@1 at steps 0, 20, 40, 60 for every arm of each
                grid found, the shipped build's and route-b1's, in the grid's order (GRPO's path first)
    builds      grpo, psn and psn-weight (a draw per step and per rollout), temperature and c3po at DOSE (the σ and T
                of the build's own calibration, OUT/calibrate-route-b1) and passk on another build of the same design
                (route-b1, built on first use: 7.8 min on 2 cores), a grid of its own (OUT/grid-route-b1)
    report      OUT/report/report.md: the probe tables, and each grid's paired table and frontier tables
Each part prints its wall time; OUT defaults to runs/route-experiment, SEEDS to 5, WORKERS to 2; --other-code as in
the ceiling experiment (a calibration and jobs made by other code are reused, compare.json lists the versions).
"""
import json
import random
from pathlib import Path

import ceiling_experiment  # examples/: one calibration recipe and one command line for both ceilings
from ceiling_experiment import doses
from ceiling_report import frontier_table, same_step_table

from minipsn import build_config, compare

DOSES = (0.003, 0.03)  # noise KL per token: the ceiling's arms and its best dose for every space
DOSE = 0.03
LOW = 0.003  # the second dose in training: the ceiling's first arms', where the probe found ledgers kept most often
ARMS = ["grpo", "psn", "psn-weight", "temperature"]
EXTRAS = ["psn-rollout=psn", "psn-weight-rollout=psn-weight", "passk", "c3po"]
SETS = {"run.keep_adapters": "20,40", "eval.problems": 200}  # 100 neg problems at n = 256, 100 pos at n = 32
PROBE = {"eval.n_by_kind": "", "eval.problems": 100, "run.threads": 2}  # the first 100 held-out problems: 50 neg


def settings(d: dict) -> list[str]:
    return [f"{space}:{d[space]:.5g}" for space in ("lora", "weight", "temperature") if d[space] is not None]


def per_method(d: dict) -> dict:
    lora, weight = round(d["lora"], 5), round(d["weight"], 5)
    return {"psn": {"noise.sigma": lora}, "psn-weight": {"noise.sigma": weight},
            "temperature": {"rollout.temperature": round(d["temperature"], 4)},
            "psn-rollout": {"noise.sigma": lora, "noise.granularity": "rollout"},
            "psn-weight-rollout": {"noise.sigma": weight, "noise.granularity": "rollout"},
            "c3po": {"noise.sigma": lora}}


LOW_ARMS = {"psn": "psn", "psn-rollout": "psn", "psn-weight": "psn-weight", "temperature": "temperature"}


def low_arms(d: dict) -> tuple[list[str], dict]:
    """The arms at the second dose (`psn@0.003=psn`, …: LOW_ARMS) and their overrides, from that dose's calibration
    `d`."""
    sets = per_method(d)
    return [f"{a}@{LOW:g}={m}" for a, m in LOW_ARMS.items()], {f"{a}@{LOW:g}": sets[a] for a in LOW_ARMS}


PARTS = ("calibrate", "probe", "arms", "extras", "low", "probe-grpo", "frontier", "builds", "report")
BUILDS = ["route-b1"]
BUILD_ARMS = ["grpo", "psn", "psn-rollout=psn", "temperature", "passk", "psn-weight", "psn-weight-rollout=psn-weight",
              "c3po"]


def run(part: str, out: Path, seeds: int, workers: int, other_code: bool = False) -> None:
    if part not in PARTS:
        raise ValueError(f"no part {part!r}: {', '.join(PARTS)}")
    if part == "report":
        report(out)
        return
    if part == "frontier":  # the grids' kept adapters, nothing trained
        from minipsn.experiments.frontier import frontier

        every = [("route", "grid")] + [(build, f"grid-{build}") for build in BUILDS]
        grids = [(model, g) for model, g in every if (out / g / "compare.json").is_file()]
        if not grids:
            raise ValueError(f"{out / 'grid' / 'compare.json'} is missing: run the arms part (or builds) first")
        for model, g in grids:  # every arm begun, in the grid's order (GRPO's path first)
            c = json.loads((out / g / "compare.json").read_text())
            done = [a for a in c["methods"] if (out / g / f"{a}-s0").is_dir()]
            frontier(model, done, seeds, out / g, [20, 40], c["overrides"], kind="neg", workers=workers)
        return
    if part == "probe-grpo" and not (out / "grid" / "grpo-s0" / "adapter").is_dir():
        raise ValueError(f"{out / 'grid' / 'grpo-s0' / 'adapter'} is missing: run the arms part first")
    found = doses(out, "route", DOSES, other_code)
    print("doses (noise KL per token → σ adapter, σ weights, T; KL per trajectory at the base's mean length): " + "; ".join(
        f"{kl:g} → {d['lora'] and round(d['lora'], 4)}, {d['weight'] and round(d['weight'], 4)}, "
        f"{d['temperature'] and round(d['temperature'], 3)} ({kl * d['tokens']:.2g}/trajectory)" for kl, d in found.items()))
    if part == "calibrate":
        return
    from minipsn.experiments.preflight import preflight

    if part == "probe":
        every = ["clean"] + [s for d in found.values() for s in settings(d)]
        preflight(build_config(model="route", sets=PROBE), every, [1, 256], out / "probe", kind="neg",
                  other_code=other_code)
        return
    if part == "probe-grpo":
        run_dir = out / "grid" / "grpo-s0"
        for step, adapter in ((20, run_dir / "adapters" / "step-20" / "adapter"),
                              (40, run_dir / "adapters" / "step-40" / "adapter"), (60, run_dir / "adapter")):
            if not adapter.is_dir():
                raise ValueError(f"{adapter} is missing: run the arms part first")
            preflight(build_config(model="route", sets=PROBE), ["clean", *settings(found[DOSE])], [256],
                      out / f"probe-grpo-{step}", adapter=str(adapter), kind="neg", other_code=other_code)
        return
    sets = per_method(found[DOSE])
    if part == "builds":  # the dose is a noise KL: each build's own calibration (OUT/calibrate-BUILD) gives its σ and T
        for build in BUILDS:
            own = per_method(doses(out, build, (DOSE,), other_code, folder=f"calibrate-{build}")[DOSE])
            labels = [a.split("=")[0] for a in BUILD_ARMS]
            compare(build, BUILD_ARMS, seeds, out / f"grid-{build}", SETS, workers=workers, ref="grpo",
                    per_method={a: own[a] for a in labels if a in own}, other_code=other_code)
        return
    grid = ARMS + (EXTRAS if part in ("extras", "low") else [])
    if part == "low":  # the new dose's arms first (after GRPO, which every Δ is paired with)
        low, low_sets = low_arms(found[LOW])
        grid, sets = grid[:1] + low + grid[1:], {**sets, **low_sets}
    labels = [a.split("=")[0] for a in grid]
    compare("route", grid, seeds, out / "grid", SETS, workers=workers, ref="grpo",
            per_method={a: sets[a] for a in labels if a in sets}, other_code=other_code)


def keep_counts(path: Path) -> list[tuple[int, int]]:
    """(kept, opened) ledgers per problem of one probe row's samples file."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["routes"]["rare-kept"], r["routes"]["rare-kept"] + r["routes"]["rare-broken"]) for r in rows]


def keep_difference(a: list[tuple[int, int]], b: list[tuple[int, int]], reps: int = 4000,
                    seed: int = 0) -> tuple[float, float, float]:
    """The keep rate of a minus b (pooled kept / opened) on the same problems, with a 95 % percentile interval from
    resampling problems (a problem's samples stay together: a problem that opens the ledger often weighs more in
    both rates)."""
    rng = random.Random(seed)
    rate = lambda rows, idx: sum(rows[i][0] for i in idx) / max(1, sum(rows[i][1] for i in idx))  # noqa: E731
    every = range(len(a))
    draws = sorted(rate(a, idx) - rate(b, idx) for idx in ([rng.randrange(len(a)) for _ in every] for _ in range(reps)))
    return rate(a, every) - rate(b, every), draws[int(0.025 * reps)], draws[int(0.975 * reps) - 1]


def probe_table(folder: Path) -> str:
    """One line per (setting, D): pass@1 and pass@256 on the neg problems, the share of samples that open the ledger,
    the opened ledgers kept to the box, and the keep rate's difference from clean sampling's and, for noise on the
    adapter or the weights, from the temperature's at the same noise KL (the next temperature row with the same D:
    the probe part lists each dose's settings in the order adapter, weights, temperature), each with its interval."""
    rep = json.loads((folder / "preflight.json").read_text())
    counts = lambda r: keep_counts(folder / "samples" / f"{r['setting'].replace(':', '-')}-D{r['draws']}.jsonl")  # noqa: E731
    clean = keep_counts(folder / "samples" / "clean-D1.jsonl")
    lines = [f"{rep['problems']} neg problems × {rep['n']}, adapter {rep['adapter'] or 'none (the base)'}\n",
             "| setting | D | pass@1 | pass@256 | opens | opened | kept | kept − clean's | kept − temperature's |",
             "|---|---|---|---|---|---|---|---|---|"]
    results = rep["results"]
    for i, r in enumerate(results):
        route, pk = r["route"], r["pass@k"]
        opened = route["routes"]["rare-kept"] + route["routes"]["rare-broken"]
        kept = route["routes"]["rare-kept"]
        hot = next((t for t in results[i + 1:] if t["setting"].startswith("temperature")),
                   None) if r["setting"].split(":")[0] in ("lora", "weight") else None
        cells = [_diff(counts(r), clean) if r["setting"] != "clean" else "",
                 _diff(counts(r), counts(hot)) if hot else ""]
        lines.append(f"| {r['setting']} | {r['draws']} | {100 * pk['1']:.2f} | {100 * pk[str(rep['n'])]:.0f} | "
                     f"{100 * route['rare_rate']:.1f} % | {opened} | {kept} ({100 * kept / max(opened, 1):.1f} %) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _diff(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> str:
    d, lo, hi = keep_difference(a, b)
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{' ✱' if lo > 0 or hi < 0 else ''}"


def report(out: Path) -> None:
    parts = ["# The route experiment\n"]
    for folder in [out / "probe", *sorted(out.glob("probe-grpo-*"))]:
        if (folder / "preflight.json").is_file():
            parts += [f"\n## The mechanism probe: {folder.name}\n", probe_table(folder)]
    for grid in ["grid", *(f"grid-{b}" for b in BUILDS)]:
        if (out / grid / "compare.md").is_file():
            parts += [f"\n## The arms ({grid}/compare.md)\n", (out / grid / "compare.md").read_text()]
            c = json.loads((out / grid / "compare.json").read_text())
            table = frontier_table(out / grid, c, kind="neg")  # "" until the frontier part evaluated GRPO's kept steps
            if table:
                parts += [f"\n## The frontier ({grid}): each arm's last step against GRPO's path\n", table, "\n"]
            table = same_step_table(out / grid, c, kind="neg")
            if table:
                parts += [f"\n## The frontier ({grid}): each arm's kept steps against GRPO's same step\n", table, "\n"]
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "report.md").write_text("".join(parts))
    print(f"report: {out / 'report' / 'report.md'}")


def main() -> None:
    ceiling_experiment.main(run, "route_experiment.py", "runs/route-experiment")


if __name__ == "__main__":  # compare's workers are spawned processes: they import this file without running it
    main()
