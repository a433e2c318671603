"""One-GPU recipe: PSN-GRPO on GSM8K with Qwen2.5-1.5B-Instruct (4-bit NF4 base + LoRA).

    python examples/qwen_gsm8k.py [DATA_DIR] [OUT]

The paper's settings scaled to one consumer GPU: G = 8 rollouts per prompt, TIS cap C = 10, noise on
the MLP adapters with the adaptive σ controller, completions up to 512 tokens (GSM8K solutions are
short). σ is absolute on the LoRA A/B weights, so its effect depends on the model and the adapter:
the recipe first runs `calibrate` (a minute on a GPU) and starts from the σ whose noise KL per token
is the paper's 0.003 (OUT/calibrate/calibrate.json says which). GSM8K train loads from DATA_DIR when
given (layout of data/README.md), else from data/ once `python cli.py data gsm8k` has written it
there, else from the Hugging Face hub. Run it again to continue: the calibration is reused and the
run resumes from its last checkpoint. `TINY=1` runs the same recipe on the tiny model with a
synthetic task, for a dry run on a laptop.
"""
import os
from pathlib import Path

from minipsn import build_config, train
from minipsn.experiments.calibrate import calibrate, parse_sigmas, reuse
from minipsn.run import script
from minipsn.tasks.models import check_available


def main() -> None:
    data_dir, out = script.args("[DATA_DIR] [OUT]", ("", "runs/qwen-gsm8k"))
    tiny = os.environ.get("TINY") == "1"
    model = "tiny" if tiny else "qwen-1.5b"
    check_available(model)  # an uncached model without a network: one line now, before any data is loaded
    sets = {
        "data.dataset": "synthetic" if tiny else "gsm8k", "data.data_dir": data_dir, "run.out": out,
        "grpo.group_size": 8, "grpo.prompts_per_step": 8, "grpo.tis_cap": 10.0, "grpo.lr": 1e-5,
        "noise.targets": "mlp", "noise.control": "adaptive",
        "rollout.max_new_tokens": 512, "run.steps": 300, "run.save_every": 25,
        "eval.every": 50, "eval.n": 8, "eval.problems": 128,
    }
    grid = "0.001,0.002,0.005,0.01,0.02,0.05"
    if tiny:
        sets.update({"rollout.max_new_tokens": 48, "run.steps": 2, "eval.every": 0, "grpo.lr": 1e-4})
        grid = "0.005,0.02,0.08"
    cal_cfg, sigmas = build_config(model=model, sets=sets), parse_sigmas(grid)
    # a rerun reuses the calibration (when measured with these settings) and resumes the run
    report = (reuse(f"{out}/calibrate/calibrate.json", cal_cfg, sigmas, 0.003, 1)
              or calibrate(cal_cfg, sigmas, target_kl=0.003, draws=1, out=f"{out}/calibrate"))
    if report["suggested_sigma"] is None:
        raise ValueError(f"calibrate found no σ for the target KL: {report['suggestion']}")
    print(f"σ from calibrate: {report['suggested_sigma']:.3g} ({report['suggestion']})")
    train(build_config(model=model, sets={**sets, "noise.sigma": report["suggested_sigma"]}),
          resume=Path(out, "config.json").is_file())


if __name__ == "__main__":
    script.run(main)  # a bad argument, an uncached model, a data error: one `error:` line
