"""The laptop experiment: GRPO against PSN-GRPO on the tiny model, 3 seeds each, pass@k on held-out problems.

    python examples/psn_vs_grpo_tiny.py [OUT] [STEPS] [SEEDS] [N PROBLEMS]   # ~10 minutes on 2 CPU cores

Same as `python cli.py compare --methods grpo,psn,psn-adaptive --seeds 3 --model tiny`; edit
METHODS and SETS to try other σ, granularities or task difficulties. Finished runs are reused,
so an interrupted experiment picks up where it stopped. The measured table is in docs/RESULTS.md.
"""
import sys

from minipsn.compare import compare

out = sys.argv[1] if len(sys.argv) > 1 else "runs/psn-vs-grpo-tiny"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
METHODS = ["grpo", "psn", "psn-adaptive"]
SETS = {"run.steps": steps, "eval.n": 64, "eval.problems": 100}
if len(sys.argv) > 4:  # N PROBLEMS: a smaller evaluation (the tests use this)
    SETS.update({"eval.n": int(sys.argv[4]), "eval.problems": int(sys.argv[5])})

result = compare("tiny", METHODS, seeds, out, SETS)
print(open(f"{out}/compare.md").read())
