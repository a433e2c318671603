"""The exploration experiment: does parameter-space noise widen what GRPO reaches at large k?

    python examples/exploration_testbed.py [OUT] [STEPS] [SEEDS] [PROBLEMS] [N] [WORKERS]

On the `testbed` model (built and cached locally like `tiny`; before RL pass@1 ≈ 10 %, pass@256 ≈ 47 %,
and a guess is right below once in 10⁴ samples, see `python cli.py headroom`): 1. `calibrate` σ for a noise KL of 0.003 per token;
2. `compare` the model before RL, grpo, psn (that σ), psn-adaptive (starting there) and psn-kl:
SEEDS seeds each, pass@k for k = 1 … N on PROBLEMS held-out problems, WORKERS jobs at once.
Defaults: 60 steps, 3 seeds, 100 problems, n = 256, 2 workers (docs/RESULTS.md has the measured
table, plot and time). Finished runs and the calibration are reused, so an interrupted experiment picks
up where it stopped; a rerun with other arguments into the same OUT stops with one line naming what
differs (choose another OUT).
"""
import sys
from pathlib import Path

from minipsn.calibrate import calibrate, parse_sigmas, reuse
from minipsn.compare import compare
from minipsn.config import build_config


def main() -> None:
    args = sys.argv[1:] + [None] * 6
    out = Path(args[0] or "runs/exploration-testbed")
    steps, seeds, problems, n, workers = (int(a) if a else d for a, d in zip(args[1:6], (60, 3, 100, 256, 2)))
    METHODS = ["grpo", "psn", "psn-adaptive", "psn-kl"]

    cal_cfg, grid = build_config(model="testbed"), parse_sigmas("0.005,0.01,0.02,0.04,0.08")
    try:  # one σ for the whole grid, also when the experiment is resumed (if measured with these settings)
        report = (reuse(out / "calibrate" / "calibrate.json", cal_cfg, grid, 0.003, 2)
                  or calibrate(cal_cfg, grid, target_kl=0.003, draws=2, out=out / "calibrate"))
    except ValueError as e:  # a calibration or a grid made with other settings: say so in one line
        raise SystemExit(f"error: {e}") from None
    sigma = report["suggested_sigma"]
    if sigma is None:
        raise SystemExit(f"calibrate found no σ for the target KL: {report['suggestion']}")
    print(f"σ from calibrate: {sigma:.3g} ({report['suggestion']})")
    SETS = {"run.steps": steps, "noise.sigma": round(sigma, 4), "eval.n": n, "eval.problems": problems}
    try:
        compare("testbed", METHODS, seeds, out, SETS, workers=workers)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print((out / "compare.md").read_text())


if __name__ == "__main__":  # compare's workers are spawned processes: they import this file without running it
    main()
