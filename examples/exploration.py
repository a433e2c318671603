"""The exploration experiment: does parameter-space noise widen what RL reaches at large k, and when?

    python examples/exploration.py [MODEL] [OUT] [STEPS] [SEEDS] [PROBLEMS] [N] [WORKERS]

On a local synthetic-task model (`ceiling` by default, where GRPO narrows pass@256 below the starting
model; or `testbed`, where it widens): 1. `calibrate` puts every arm at the same noise KL per token (0.003):
σ with the noise on the LoRA adapter, σ with the noise on the base weights, and the sampling temperature;
2. `compare` the model before RL against every arm, SEEDS seeds each, pass@k for k = 1 … N on PROBLEMS
held-out problems, WORKERS jobs at once, each arm's Δ pass@k against grpo with a paired 95 % interval:
    grpo          no noise                           psn           σ on the adapter, fixed
    psn-adaptive  this kit's variant II controller   psn-kl        variant I (the noise's KL)
    psn-paper     variant II as published            psn-weight    σ on the base weights, the paper's form
    temperature   action-space noise, the same KL    passk         Pass@k training (Chen et al. 2025)
    psn-passk     PSN composed with Pass@k
Defaults: the model's preset steps and problems (ceiling: 60 steps, 400 problems, 200 of each kind, the final kind
at n = 32), 5 seeds, n = 256, 2 workers; the adapters at steps 20 and 40 are kept for the frontier. docs/RESULTS.md has the
measured tables, plots and time. Finished runs and the calibration are reused, so an interrupted experiment
picks up where it stopped; a rerun with other arguments into the same OUT stops with one line naming what
differs (choose another OUT).
"""
import sys
from pathlib import Path

from minipsn import build_config, compare
from minipsn.experiments.calibrate import calibrate, parse_sigmas, parse_temperatures, reuse

METHODS = ["grpo", "psn", "psn-adaptive", "psn-kl", "psn-paper", "psn-weight", "temperature", "passk", "psn-passk"]
TARGET_KL = 0.003
GRIDS = {"sigmas": "0.005,0.01,0.02,0.04,0.08", "weight_sigmas": "0.002,0.005,0.01,0.02,0.04",
         "temperatures": "1.05,1.1,1.2,1.4,1.7"}


def calibrated(model: str, out: Path) -> dict:
    """{method: its overrides} putting every arm at the same noise KL per token, from one calibration."""
    cfg, sigmas = build_config(model=model), parse_sigmas(GRIDS["sigmas"])
    weights, temps = parse_sigmas(GRIDS["weight_sigmas"]), parse_temperatures(GRIDS["temperatures"])
    path = out / "calibrate" / "calibrate.json"
    report = (reuse(path, cfg, sigmas, TARGET_KL, 2, None, weights, temps)
              or calibrate(cfg, sigmas, TARGET_KL, 2, out / "calibrate", None, weights, temps))
    found = {"adapter σ": report["suggested_sigma"], "weight σ": report["weight"]["suggested_sigma"],
             "temperature": report["temperature"]["suggested_temperature"]}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise ValueError(f"calibrate found no {', '.join(missing)} for the noise KL {TARGET_KL} (see {path})")
    print("from calibrate, at a noise KL of 0.003 per token: " + ", ".join(f"{k} {v:.3g}" for k, v in found.items()))
    sigma = round(found["adapter σ"], 4)
    return {**{m: {"noise.sigma": sigma} for m in METHODS if m.startswith("psn") and m != "psn-weight"},
            "psn-weight": {"noise.sigma": round(found["weight σ"], 4)},
            "temperature": {"rollout.temperature": round(found["temperature"], 3)}}


def main() -> None:
    args = sys.argv[1:] + [None] * 7
    bad = [a for a in args[2:7] if a is not None and not a.isdigit()]
    if bad or len(sys.argv) > 8:
        raise SystemExit(f"error: STEPS SEEDS PROBLEMS N WORKERS are whole numbers, got {' '.join(sys.argv[3:])} "
                         "(usage: python examples/exploration.py [MODEL] [OUT] [STEPS] [SEEDS] [PROBLEMS] [N] [WORKERS])")
    model, out = args[0] or "ceiling", Path(args[1] or f"runs/exploration-{args[0] or 'ceiling'}")
    try:
        preset = build_config(model=model)
        steps = int(args[2]) if args[2] else preset.run.steps
        seeds, problems, n, workers = (int(a) if a else d for a, d in zip(args[3:7], (5, preset.eval.problems, 256, 2)))
        per_method = calibrated(model, out)
        # the adapters at a third and two thirds of the run stay, for the frontier (python cli.py frontier)
        keep = ",".join(str(steps * i // 3) for i in (1, 2))
        compare(model, METHODS, seeds, out, {"run.steps": steps, "eval.n": n, "eval.problems": problems,
                                             "run.keep_adapters": keep}, workers=workers, ref="grpo", per_method=per_method)
    except ValueError as e:  # an unknown model, a calibration or a grid made with other settings: one line
        raise SystemExit(f"error: {e}") from None
    print((out / "compare.md").read_text())


if __name__ == "__main__":  # compare's workers are spawned processes: they import this file without running it
    main()
