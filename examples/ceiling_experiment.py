"""The ceiling experiment: does noise lift the ceiling at any dose, or only learn less? (docs/RESULTS.md)

    python examples/ceiling_experiment.py PART [OUT] [SEEDS] [WORKERS] [--other-code]

On the `ceiling` model, where GRPO narrows the steps questions' pass@256, in parts that each resume where they
stopped (every finished job is reused) and can run on different days; every arm in one compare grid (OUT/grid), so
every difference is paired with the same GRPO seeds:
    calibrate   σ on the adapter, σ on the base weights and the temperature at each noise KL per token of DOSES
    preflight   noise without training: the base model's first 100 steps questions under each dose, D = 1 and n draws
    preflight-grpo  the same at GRPO's checkpoints: seeds 0–2's adapters kept at steps 20 and 40 and their final one
                (60), and the base (step 0); the first 50 steps questions × 256: clean, and the adapter, the weights (a
                draw per sample) and the temperature at 0.03 per token (the arms part's GRPO jobs; 27 min on 2 cores)
    preflight-testbed   the same on testbed v2 (every problem asks for a tuple): 100 problems, its own calibration
                (OUT/calibrate-testbed) at 0.003, 0.03 and 0.1 per token, a draw per sample
    arms        every arm at a noise KL of 0.003 per token: grpo, psn, psn-adaptive, psn-kl, psn-paper,
                psn-weight, temperature, passk (k = 4), psn-passk
    doses       psn, psn-weight and temperature at the other doses (label `<arm>@<kl>`)
    extras      at each space's best dose: per-rollout noise (adapter and weights), c3po with 2 and 4 draws, a fixed-σ
                psn-passk, passk with k = 2
    builds      grpo, the best parameter-noise arm, the best noise arm if temperature's lift is larger (each at its
                best dose, the σ or T of each build's own calibration, in OUT/calibrate-ceiling-b1, …) and passk on
                two more builds of the ceiling model (ceiling-b1,
                ceiling-b2), each a grid of its own (OUT/grid-ceiling-b1, …)
    frontier    pass@256 of the steps questions against the mix's pass@1 at steps 0, 20, 40, 60: grpo, passk and each
                space's best dose (the runs' kept adapters, nothing trained)
    report      the figures and tables (examples/ceiling_report.py) into OUT/report
Each part prints its wall time; OUT defaults to runs/ceiling-experiment, SEEDS to 5, WORKERS to 2. A part refuses
to reuse a calibration or a job made by other code (after a `git pull`, say) unless given --other-code; the grid's
compare.json then lists which code made which job.
"""
import json
import sys
import time
from pathlib import Path

from minipsn import build_config, compare
from minipsn.experiments.calibrate import calibrate, parse_sigmas, parse_temperatures, reuse, suggest

DOSES = (0.001, 0.003, 0.01, 0.03, 0.1)  # noise KL per token
GRIDS = {"sigmas": "0.002,0.005,0.01,0.02,0.04,0.08,0.16", "weight_sigmas": "0.001,0.002,0.005,0.01,0.02,0.04",
         "temperatures": "1.02,1.05,1.1,1.2,1.4,1.7,2.0"}
ARMS = ["grpo", "psn", "psn-adaptive", "psn-kl", "psn-paper", "psn-weight", "temperature", "passk", "psn-passk"]
SETS = {"run.keep_adapters": "20,40"}
BUILDS = ("ceiling-b1", "ceiling-b2")
TESTBED_DOSES = (0.003, 0.03, 0.1)  # the pre-flight on testbed v2 (preflight-testbed)
TESTBED_WEIGHT_SIGMAS = GRIDS["weight_sigmas"] + ",0.08"  # the testbed's weights need a larger σ for 0.1 per token
CHECKPOINT_DOSE, CHECKPOINT_SEEDS = 0.03, 3  # the pre-flight at GRPO's checkpoints (preflight-grpo)


SPACES = (("psn", "lora", "noise.sigma"), ("psn-weight", "weight", "noise.sigma"),
          ("temperature", "temperature", "rollout.temperature"))  # arm, its calibrated space, the key it sets


def doses(out: Path, model: str = "ceiling", kls: tuple[float, ...] = DOSES, other_code: bool = False,
          folder: str = "calibrate", weight_sigmas: str = GRIDS["weight_sigmas"]) -> dict:
    """{kl: {"lora": σ, "weight": σ, "temperature": T, "tokens": mean completion length}} from one calibration of
    `model` (OUT/FOLDER; one made by other code is reused with `other_code`)."""
    cfg = build_config(model=model)
    args = (parse_sigmas(GRIDS["sigmas"]), 0.003, 2, None, parse_sigmas(weight_sigmas),
            parse_temperatures(GRIDS["temperatures"]))
    path = out / folder / "calibrate.json"
    report = reuse(path, cfg, *args, other_code=other_code) or calibrate(cfg, args[0], 0.003, 2, out / folder, *args[3:])
    t_rows = [{"sigma": r["temperature"] - 1, "kl_noise": r["kl"]} for r in report["temperature"]["rows"]]
    found = {}
    for kl in kls:
        lora, weight, hot = (suggest(rows, kl)[0] for rows in (report["rows"], report["weight"]["rows"], t_rows))
        found[kl] = {"lora": lora, "weight": weight, "temperature": None if hot is None else 1 + hot,
                     "tokens": report["rows"][0]["len_mean"]}
    return found


def per_arm(found: dict, kls: tuple[float, ...], label: bool) -> tuple[list[str], dict]:
    """The dose arms (`psn@0.01=psn`, …) and their overrides; at 0.003 (label False) the plain arm names."""
    arms, sets = [], {}
    for kl in kls:
        d = found[kl]
        for arm, space, key in SPACES:
            value = d[space]
            if value is None:
                print(f"note: calibrate's grid does not reach a noise KL of {kl} for {arm}; that dose is left out")
                continue
            name = f"{arm}@{kl:g}" if label else arm
            arms.append(f"{name}={arm}" if label else arm)
            sets[name] = {key: round(value, 5)}
    return arms, sets


def best_doses(out: Path) -> dict:
    """Each space's dose with the largest Δ pass@256 of the steps questions against GRPO (the doses part's grid), among
    the doses where training still learns: the training mix's pass@1 after training above the base model's (a dose
    that breaks training is not a candidate; on the shipped build psn-weight at 0.1 ends below the base)."""
    from minipsn.experiments.frontier import mix_pass1

    grid = out / "grid"
    c = json.loads((grid / "compare.json").read_text())
    paired = c["paired"]["benchmarks"]["synthetic"]["kinds"]["steps"]
    mix = lambda run: mix_pass1(json.loads((grid / run / "eval" / "eval.json").read_text()))  # noqa: E731
    learns = lambda label: sum(mix(f"{label}-s{s}") for s in range(c["seeds"])) / c["seeds"] > mix("base")  # noqa: E731
    best = {}
    for arm in ("psn", "psn-weight", "temperature"):
        at = {kl: paired[_label(arm, kl)]["diff"][-1] for kl in DOSES if _label(arm, kl) in paired and learns(_label(arm, kl))}
        best[arm] = max(at, key=at.get)
    return best


def extras(found: dict, best: dict) -> tuple[list[str], dict]:
    """At each space's best dose: per-rollout noise on the adapter and on the weights, c3po with 2 and 4 draws, a
    fixed-σ psn-passk (psn with Pass@k advantages: no σ controller), and Pass@k training at k = 2."""
    lora, weight = round(found[best["psn"]]["lora"], 5), round(found[best["psn-weight"]]["weight"], 5)
    per = {"psn-rollout": {"noise.sigma": lora, "noise.granularity": "rollout"},
           "psn-weight-rollout": {"noise.sigma": weight, "noise.granularity": "rollout"},
           "c3po2": {"noise.sigma": lora}, "c3po4": {"noise.sigma": lora, "noise.draws": 4},
           "psn-passk-fixed": {"noise.sigma": lora, "grpo.advantage": "passk"}, "passk2": {"grpo.passk_k": 2}}
    arms = ["psn-rollout=psn", "psn-weight-rollout=psn-weight", "c3po2=c3po", "c3po4=c3po", "psn-passk-fixed=psn",
            "passk2=passk"]
    return arms, per


def run(part: str, out: Path, seeds: int, workers: int, other_code: bool = False) -> None:
    if part == "preflight-grpo":
        preflight_grpo(out, min(seeds, CHECKPOINT_SEEDS), other_code)
        return
    found = doses(out, other_code=other_code)
    print("doses (noise KL per token → σ adapter, σ weights, T; KL per trajectory at the base's mean length): " + "; ".join(
        f"{kl:g} → {d['lora'] and round(d['lora'], 4)}, {d['weight'] and round(d['weight'], 4)}, "
        f"{d['temperature'] and round(d['temperature'], 3)} ({kl * d['tokens']:.2g}/trajectory)" for kl, d in found.items()))
    arms, per_method = per_arm(found, (0.003,), label=False)
    sigma = per_method["psn"]["noise.sigma"]
    per_method.update({m: {"noise.sigma": sigma} for m in ARMS if m.startswith("psn") and m not in per_method})
    grid = list(ARMS)
    if part in ("doses", "extras", "builds"):
        more, sets = per_arm(found, tuple(kl for kl in DOSES if kl != 0.003), label=True)
        grid += more
        per_method.update(sets)
    if part in ("extras", "builds"):
        best = best_doses(out)
        print("best dose per space (Δ pass@256, steps questions): " + ", ".join(f"{a} {kl:g}" for a, kl in best.items()))
        more, sets = extras(found, best)
        grid += more
        per_method.update(sets)
    if part == "calibrate":
        return
    if part == "preflight":
        from minipsn.experiments.preflight import preflight

        settings = _preflight_settings(found)
        # 100 steps questions (the first 200 held-out problems): 31 evaluations at n = 256, about an hour on 2 cores
        preflight(build_config(model="ceiling", sets={"eval.n_by_kind": "", "eval.problems": 200}), settings, [1, 256],
                  out / "preflight", kind="steps", other_code=other_code)  # resumes: each finished setting is kept
        return
    if part == "preflight-testbed":
        preflight_testbed(out, other_code)
        return
    if part == "builds":  # the best dose is a noise KL: each build's own calibration gives its σ (or T) there
        lift = lambda a: _steps_diff(out / "grid", _label(a, best[a]))  # noqa: E731
        best_params = max(("psn", "psn-weight"), key=lift)  # the kit's question is parameter noise: always its best arm
        noisy = [best_params] + [a for a in ("temperature",) if lift(a) > lift(best_params)]  # and a better one if any
        for build in BUILDS:
            arms, per = ["grpo"], {}
            for arm in noisy:
                kl, (space, key) = best[arm], next((space, key) for a, space, key in SPACES if a == arm)
                value = doses(out, build, (kl,), other_code, folder=f"calibrate-{build}")[kl][space]
                if value is None:
                    raise ValueError(f"calibrate's grid does not reach a noise KL of {kl:g} for {arm} on {build}")
                print(f"{build}: {_label(arm, kl)} at {key} = {value:.5g} (its own calibration)")
                arms.append(f"{_label(arm, kl)}={arm}")
                per[_label(arm, kl)] = {key: round(value, 5)}
            compare(build, arms + ["passk"], seeds, out / f"grid-{build}", SETS, workers=workers, ref="grpo",
                    per_method=per, other_code=other_code)
        return
    if part == "frontier":  # the grid's finished runs: their kept adapters are evaluated, nothing is trained
        from minipsn.experiments.frontier import frontier, read_grid

        overrides = json.loads((out / "grid" / "compare.json").read_text())["overrides"]
        best = best_doses(out)
        arms = ["grpo", "passk", *(_label(a, best[a]) for a in ("psn", "psn-weight", "temperature"))]
        # an arm whose kept steps an earlier run evaluated (a best dose then) stays in compare_frontier.json
        arms += [a for a in read_grid(out / "grid")["methods"]
                 if a not in arms and (out / "grid" / f"{a}-s0" / "eval-step20" / "eval.json").is_file()]
        frontier("ceiling", arms, seeds, out / "grid", [20, 40], overrides, workers=workers)
        return
    if part == "report":
        from ceiling_report import report  # examples/ceiling_report.py: the figures and tables of docs/RESULTS.md

        testbed = testbed_doses(out, other_code) if (
            out / "preflight-testbed" / "preflight.json").is_file() else None
        report(out, DOSES, found, testbed)
        return
    compare("ceiling", grid, seeds, out / "grid", SETS, workers=workers, ref="grpo", per_method=per_method,
            other_code=other_code)


def testbed_doses(out: Path, other_code: bool = False) -> dict:
    return doses(out, "testbed", TESTBED_DOSES, other_code, "calibrate-testbed", TESTBED_WEIGHT_SIGMAS)


def preflight_testbed(out: Path, other_code: bool = False) -> None:
    """The same question on testbed v2, whose every held-out problem asks for a tuple: 100 problems, a draw per sample
    (D = 256), its own calibration; 10 evaluations at n = 256, 16 min on 2 cores."""
    from minipsn.experiments.preflight import preflight

    cfg = build_config(model="testbed", sets={"eval.n_by_kind": "", "eval.n": 256, "eval.problems": 100})  # its n is 16
    preflight(cfg, _preflight_settings(testbed_doses(out, other_code)), [256], out / "preflight-testbed",
              other_code=other_code)


def checkpoints(grid: Path, seeds: int) -> list[tuple[str, Path | None]]:
    """(folder, adapter) of the pre-flight at GRPO's checkpoints: the base (step0, no adapter), then each seed's
    adapters kept at steps 20 and 40 and its final one (sS-step20, sS-step40, sS-step60)."""
    out = [("step0", None)]
    for s in range(seeds):
        run = grid / f"grpo-s{s}"
        out += [(f"s{s}-step{t}", run / "adapters" / f"step-{t}" / "adapter") for t in (20, 40)]
        out.append((f"s{s}-step60", run / "adapter"))
    return out


def preflight_grpo(out: Path, seeds: int, other_code: bool = False) -> None:
    """The pre-flight at GRPO's checkpoints (the module docstring's preflight-grpo) into OUT/preflight-grpo/FOLDER, at
    the calibration's σ and T for CHECKPOINT_DOSE; the kept adapters are looked for first."""
    from minipsn.experiments.preflight import preflight

    found = checkpoints(out / "grid", seeds)
    missing = [str(a) for _, a in found if a is not None and not a.is_dir()]
    if missing:
        raise ValueError(f"{missing[0]} is missing: run the arms part first (GRPO's {seeds} seeds keep their adapters)")
    cfg = build_config(model="ceiling", sets={"eval.n_by_kind": "", "eval.problems": 100})  # 50 steps questions
    dose = doses(out, kls=(CHECKPOINT_DOSE,), other_code=other_code)[CHECKPOINT_DOSE]
    settings = _preflight_settings({CHECKPOINT_DOSE: dose})
    for folder, adapter in found:
        preflight(cfg, settings, [256], out / "preflight-grpo" / folder, adapter=adapter and str(adapter), kind="steps",
                  other_code=other_code)


def _preflight_settings(found: dict) -> list[str]:
    """clean, then each dose's adapter σ, weights σ and T, each written with 5 digits (the report reads them so)."""
    return ["clean"] + [f"{space}:{d[space]:.5g}" for d in found.values() for space in ("lora", "weight", "temperature")
                        if d[space] is not None]


def _label(arm: str, kl: float) -> str:
    return arm if kl == 0.003 else f"{arm}@{kl:g}"


def _steps_diff(grid: Path, arm: str) -> float:
    return json.loads((grid / "compare.json").read_text())["paired"]["benchmarks"]["synthetic"]["kinds"]["steps"][arm]["diff"][-1]


def main(run=run, script: str = "ceiling_experiment.py", default_out: str = "runs/ceiling-experiment") -> None:
    """PART [OUT] [SEEDS] [WORKERS] [--other-code] from the command line into `run` (the route experiment's main is
    this one too)."""
    given = [a for a in sys.argv[1:] if a != "--other-code"]
    args = given + [None] * 4
    if (args[0] is None or len(given) > 4 or any(a.startswith("--") for a in given)
            or any(a is not None and not a.isdigit() for a in args[2:4])):
        raise SystemExit(f"usage: python examples/{script} PART [OUT] [SEEDS] [WORKERS] [--other-code] (see its docstring)")
    t0 = time.perf_counter()
    try:
        run(args[0], Path(args[1] or default_out), int(args[2] or 5), int(args[3] or 2), "--other-code" in sys.argv)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"part {args[0]}: {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":  # compare's workers are spawned processes: they import this file without running it
    main()
