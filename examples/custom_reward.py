"""Plug your own reward into PSN-GRPO: any function (completions, records, truncated) → list of floats.

    python examples/custom_reward.py [STEPS] [RUN_DIR]

Here: the verifier's correctness, plus a small bonus for short answers and a penalty for
completions without a \\boxed{} answer. `reward/accuracy` in the metrics stays the plain
verifier accuracy, so shaped rewards can be compared honestly. TRL-style functions (dataset columns as
keyword arguments, several with weights, `--reward` on the command line): examples/trl_reward.py.
"""
from pathlib import Path

from minipsn import build_config, correctness_reward, format_reward, train
from minipsn.run import script


def concise_reward(completions: list[str], records: list[dict], truncated: list[bool]) -> list[float]:
    out = []
    for text, rec, cut in zip(completions, records, truncated):
        r = correctness_reward(text, rec["answer"], cut)
        r += 0.1 * max(0.0, 1.0 - len(text) / 200)  # brevity bonus, at most 0.1
        r -= 0.2 * (1.0 - format_reward(text))      # no \boxed{} answer: −0.2
        out.append(r)
    return out


def main() -> None:
    steps, out = script.args("[STEPS] [RUN_DIR]", (8, Path("runs/custom-reward")))
    cfg = build_config(model="tiny", sets={"run.steps": steps, "run.out": str(out), "noise.sigma": 0.02})
    train(cfg, reward_fn=concise_reward, resume=(out / "config.json").is_file())
    print(f"run folder: {out}")


if __name__ == "__main__":
    script.run(main)
