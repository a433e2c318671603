"""The laptop experiment: GRPO against PSN-GRPO on the tiny model, 3 seeds each, pass@k on held-out problems.

    python examples/psn_vs_grpo_tiny.py [OUT] [STEPS] [SEEDS] [N] [PROBLEMS]   # ~10 minutes on 2 CPU cores

Every argument is optional, in this order: the output folder (runs/psn-vs-grpo-tiny), training steps
per run (40), seeds per method (3), samples per problem N (64) and held-out problems (100). Same as
`python cli.py compare --methods grpo,psn,psn-adaptive --seeds 3 --model tiny`; edit METHODS and SETS
to try other σ, granularities or task difficulties. Finished runs are reused, so an interrupted
experiment picks up where it stopped; a rerun with other arguments into the same OUT stops with one
line naming what differs (choose another OUT). The measured table is in docs/RESULTS.md.
"""
import sys

from minipsn import compare
from minipsn.run import script

METHODS = ["grpo", "psn", "psn-adaptive"]
DEFAULTS = ("runs/psn-vs-grpo-tiny", 40, 3, 64, 100)  # OUT, STEPS, SEEDS, N, PROBLEMS


def parse(argv: list[str]) -> tuple[str, int, int, int, int]:
    """[OUT] [STEPS] [SEEDS] [N] [PROBLEMS], each optional, the ones not given at their defaults."""
    return script.args("[OUT] [STEPS] [SEEDS] [N] [PROBLEMS]", DEFAULTS, argv)


def main() -> None:
    out, steps, seeds, n, problems = parse(sys.argv[1:])
    compare("tiny", METHODS, seeds, out, {"run.steps": steps, "eval.n": n, "eval.problems": problems})
    print(open(f"{out}/compare.md").read())


if __name__ == "__main__":
    script.run(main)  # e.g. OUT holds runs made with other arguments: one `error:` line
