"""Quickstart: train the tiny model with PSN-GRPO for a few steps from Python, then sample from it.

    python examples/quickstart.py [STEPS] [RUN_DIR]     # about a minute on a laptop CPU (tiny model cached)

The overrides below use the same keys as `--set` on the CLI; edit them to try other settings.
Running it again on the same RUN_DIR resumes that run.
"""
from pathlib import Path

import torch

from minipsn import build_config, load_problems, train
from minipsn.run import script
from minipsn.sampling.rollout import sample
from minipsn.tasks.data import format_prompt
from minipsn.tasks.models import load_policy


def main() -> None:
    steps, out = script.args("[STEPS] [RUN_DIR]", (8, Path("runs/quickstart")))
    cfg = build_config(model="tiny", sets={"run.steps": steps, "run.out": str(out), "noise.sigma": 0.02,
                                           "noise.control": "adaptive"})
    run_dir = train(cfg, resume=(out / "config.json").is_file())

    # Load the trained adapter and sample answers from the clean policy.
    model, tok = load_policy(cfg, adapter=str(run_dir / "adapter"))
    problems = load_problems(cfg.data, "test")[:3]
    prompts = [format_prompt(tok, p["problem"], cfg.data.template) for p in problems]
    gen = torch.Generator(next(model.parameters()).device).manual_seed(0)  # on the model's device (CUDA too)
    ro = sample(model, tok, prompts, G=1, cfg=cfg.rollout, gen=gen)
    for p, text in zip(problems, ro.texts):
        print(f"Q: {p['problem']}\nA: {text.strip()}\n(gold answer {p['answer']})\n")


if __name__ == "__main__":
    script.run(main)  # a bad argument or setting: one `error:` line, no traceback
