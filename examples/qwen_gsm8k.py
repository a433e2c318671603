"""One-GPU recipe: PSN-GRPO on GSM8K with Qwen2.5-1.5B-Instruct (4-bit NF4 base + LoRA).

    python examples/qwen_gsm8k.py [DATA_DIR] [OUT]

The paper's settings scaled to one consumer GPU: G = 8 rollouts per prompt, TIS cap C = 10, noise on
the MLP adapters with the adaptive scheduler, completions up to 512 tokens (GSM8K solutions are
short). σ is absolute on the LoRA A/B weights; 0.003 is a starting point, not a measured optimum:
watch `noise/kl_proxy` in the first steps (the paper's KL controller aims at 0.003) and the adaptive
scheduler's `noise/indicator` (set `scheduler.target` near its mean, see the README). With DATA_DIR the GSM8K JSON Lines load
from disk (layout of ../shared/data), otherwise from the Hugging Face hub. `TINY=1` runs the same
recipe on the tiny model with a synthetic task, for a dry run on a laptop.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: find minipsn/
import os

from minipsn.config import build_config
from minipsn.train import train

data_dir = sys.argv[1] if len(sys.argv) > 1 else ""
out = sys.argv[2] if len(sys.argv) > 2 else "runs/qwen-gsm8k"
tiny = os.environ.get("TINY") == "1"
sets = {
    "data.dataset": "synthetic" if tiny else "gsm8k", "data.data_dir": data_dir, "run.out": out,
    "grpo.group_size": 8, "grpo.prompts_per_step": 8, "grpo.tis_cap": 10.0, "grpo.lr": 1e-5,
    "noise.sigma": 0.003, "noise.targets": "mlp", "noise.control": "adaptive",
    "rollout.max_new_tokens": 512, "run.steps": 300, "run.save_every": 25,
    "eval.every": 50, "eval.n": 8, "eval.problems": 128,
}
if tiny:
    sets.update({"rollout.max_new_tokens": 48, "run.steps": 2, "eval.every": 0, "grpo.lr": 1e-4, "noise.sigma": 0.02})
train(build_config(model="tiny" if tiny else "qwen-1.5b", sets=sets))
