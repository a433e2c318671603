"""One-GPU recipe: PSN-GRPO on MATH with Qwen2.5-Math-1.5B, then pass@k up to 256 on MATH-500 and AIME24.

    python examples/qwen_math.py [DATA_DIR] [OUT]

Paper settings scaled down: G = 8, TIS C = 10, MLP-adapter noise with the adaptive σ controller
starting from the σ that `calibrate` finds for a noise KL of 0.003 per token (OUT/calibrate),
completions up to 1024 tokens, LoRA learning rate 1e-5, base-model (plain) prompt template as
Qwen2.5-Math is a base model. The evaluation samples n = 256 per problem from the clean policy, as
the paper does, to read pass@k at large k. MATH train loads from DATA_DIR when given, else from
data/ once `python cli.py data math` has written it there, else from the hub; the benchmarks ship in
data/. Run it again to continue: the calibration is reused, the run resumes from its last checkpoint
and the evaluation from its samples files. `TINY=1` runs the same recipe on the tiny model.
"""
import os
from pathlib import Path

from minipsn import build_config, evaluate, train
from minipsn.experiments.calibrate import calibrate, parse_sigmas, reuse
from minipsn.run import script
from minipsn.tasks.models import check_available


def main() -> None:
    data_dir, out = script.args("[DATA_DIR] [OUT]", ("", "runs/qwen-math"))
    tiny = os.environ.get("TINY") == "1"
    model = "tiny" if tiny else "qwen-math-1.5b"
    check_available(model)  # an uncached model without a network: one line now, before any data is loaded
    sets = {
        "data.dataset": "synthetic" if tiny else "math", "data.data_dir": data_dir, "data.template": "plain",
        "run.out": out, "grpo.group_size": 8, "grpo.prompts_per_step": 8, "grpo.tis_cap": 10.0, "grpo.lr": 1e-5,
        "noise.targets": "mlp", "noise.control": "adaptive",
        "rollout.max_new_tokens": 1024, "eval.max_new_tokens": 1024, "eval.n": 256, "run.steps": 500,
        # 64 rollouts of up to 1024 tokens make sampling most of a step: learn from each batch twice (μ = 2),
        # in 2 mini-batches of 4 whole groups, so 4 updates share one sampling phase; ρ = π_θ/π_θold is clipped
        # to [0.8, 1.28] (DAPO's clip-higher lets unlikely tokens grow, against entropy collapse: watch
        # policy/entropy and loss/clip_*_frac) and TIS stays min(π_θold/π_θ̃, C)
        "grpo.epochs": 2, "grpo.mini_batches": 2, "grpo.clip_eps_high": 0.28,
        # a fresh adapter and AdamW's empty moments take the largest steps: warm up over 10 steps, then cosine to 0
        "grpo.lr_schedule": "cosine", "grpo.warmup_steps": 10,
        # MATH solutions that reach 1024 tokens are cut and score 0; DAPO's soft penalty over the last 256
        # tokens makes length cost something before the cut, a signal toward finishing
        "reward.overlong": "soft", "reward.overlong_window": 256,
    }
    benchmarks, grid = ["math500", "aime24"], "0.001,0.002,0.005,0.01,0.02,0.05"
    if tiny:
        sets.update({"rollout.max_new_tokens": 48, "eval.max_new_tokens": 48, "eval.n": 4, "eval.problems": 4,
                     "run.steps": 2, "grpo.lr": 1e-4, "data.template": "chat", "reward.overlong_window": 12,
                     "grpo.warmup_steps": 1})
        benchmarks, grid = ["synthetic"], "0.005,0.02,0.08"
    cal_cfg, sigmas = build_config(model=model, sets=sets), parse_sigmas(grid)
    # a rerun reuses the calibration (when measured with these settings) and resumes the run
    report = (reuse(f"{out}/calibrate/calibrate.json", cal_cfg, sigmas, 0.003, 1)
              or calibrate(cal_cfg, sigmas, target_kl=0.003, draws=1, out=f"{out}/calibrate"))
    if report["suggested_sigma"] is None:
        raise ValueError(f"calibrate found no σ for the target KL: {report['suggestion']}")
    print(f"σ from calibrate: {report['suggested_sigma']:.3g} ({report['suggestion']})")
    cfg = build_config(model=model, sets={**sets, "noise.sigma": report["suggested_sigma"]})
    run_dir = train(cfg, resume=Path(out, "config.json").is_file())
    evaluate(cfg, benchmarks, run_dir / "eval", adapter=str(run_dir / "adapter"))
    print(f"pass@k table: {run_dir / 'eval' / 'eval.json'}; plot it with: python cli.py plot {run_dir}")


if __name__ == "__main__":
    script.run(main)  # a bad argument, an uncached model, a data error: one `error:` line
