"""TRL-style reward functions in PSN-GRPO: an open-r1-style format reward next to the kit's verifier.

    python examples/trl_reward.py [STEPS] [RUN_DIR]       # about a minute on a laptop CPU (tiny model cached)

A TRL reward function takes the completions (plain text) and the dataset's columns as keyword arguments, and
returns one float per completion, or None for "no reward from me" (left out of the sum, as in TRL). `train` sums
the functions with reward.weights, as GRPOTrainer does; "verifier" names the kit's own reward (1 when the
verifier accepts the answer). Each function's mean is logged as reward/<name>, and reward/accuracy stays the
verifier's verdict. The same run from the command line:

    python cli.py train --model tiny --reward verifier --reward examples/trl_reward.py:format_reward \\
        --set reward.weights=1,0.5
"""
import re
from pathlib import Path

from minipsn.run import script

# one \boxed{} answer, at the very end (open-r1's format reward asks for <think>/<answer> tags instead)
ENDS_IN_ONE_BOX = re.compile(r"^(?!.*\\boxed.*\\boxed).*\\boxed\{[^{}]+\}[.$\s]*$", re.DOTALL)


def format_reward(completions, **kwargs):
    """1.0 when the completion ends in its one \\boxed{} answer, else 0.0 (kwargs: prompts, answer, problem, ...)."""
    return [1.0 if ENDS_IN_ONE_BOX.match(text) else 0.0 for text in completions]


def main() -> None:
    from minipsn import build_config, train

    steps, out = script.args("[STEPS] [RUN_DIR]", (8, Path("runs/trl-reward")))
    cfg = build_config(model="tiny", sets={"run.steps": steps, "run.out": str(out), "noise.sigma": 0.02,
                                           "reward.weights": "1,0.5"})
    train(cfg, reward_fn=["verifier", format_reward], resume=(out / "config.json").is_file())
    print(f"run folder: {out}")


if __name__ == "__main__":  # `--reward examples/trl_reward.py:format_reward` imports this file without running it
    script.run(main)
