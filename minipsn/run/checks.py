"""What values the settings may take: one check per section of config.py, called from its `__post_init__`.

`model_config(cfg)` checks a ModelConfig, `lora_config` a LoraConfig, and so on for every section; `config` checks
across sections. Each raises one ValueError that names the setting and says what to change, so a bad value fails
where the Config is made (by `build_config`, a config file, `--set`, or in a script). They live here so that
config.py reads as the list of settings, each with the comment that is its help (`overrides.field_help`).
config.py imports this module, never the reverse: a check reads its section's fields, not its class.
"""
from __future__ import annotations

import math

from minipsn.verify import EXTRACTS, VERIFIERS

LOG_SINKS = ("jsonl", "tensorboard", "wandb")  # run.log_to; minipsn/training/trackers.py writes each


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def one_of(name: str, value: str, options: tuple[str, ...]) -> None:
    check(value in options, f"{name}={value!r} is not one of {', '.join(options)}")


def model_config(cfg) -> None:
    one_of("model.quantize", cfg.quantize, ("nf4", "none"))
    one_of("model.dequantize_once", cfg.dequantize_once, ("auto", "on", "off"))
    one_of("model.device", cfg.device, ("auto", "cpu", "cuda"))
    one_of("model.dtype", cfg.dtype, ("auto", "float32", "bfloat16", "float16"))
    check(cfg.max_prompt_tokens > 0, "model.max_prompt_tokens must be > 0")


def lora_config(cfg) -> None:
    check(cfg.rank >= 1, f"lora.rank must be >= 1, got {cfg.rank}")
    check(cfg.dropout == 0.0, f"lora.dropout={cfg.dropout:g}: only 0 is supported (the learner runs in train "
          "mode, so dropout would make it another function than the sampler); drop the setting")
    one_of("lora.targets", cfg.targets, ("attn", "mlp", "all"))


def data_config(cfg) -> None:
    check(cfg.template in ("chat", "plain") or "{problem}" in cfg.template,
          f"data.template={cfg.template!r} is not chat, plain, or a prompt with {{problem}} where the problem "
          "goes (e.g. \"Solve: {problem}\")")
    one_of("data.answer", cfg.answer, ("final", "steps", "mixed", "route"))
    check(0.0 <= cfg.steps_share <= 1.0, f"data.steps_share must be in [0, 1], got {cfg.steps_share}")
    check(0.0 <= cfg.neg_share <= 1.0, f"data.neg_share must be in [0, 1], got {cfg.neg_share}")
    check(cfg.route_offset >= 2, f"data.route_offset must be >= 2 (chains stay above -route_offset, so a "
          f"negative value needs 2 or more), got {cfg.route_offset}")
    check(cfg.answer != "route" or set(cfg.ops) == set("+-"), f"data.answer=route needs data.ops='+-' (the ledger's "
          f"shift does not survive *, and neg problems need -), got {cfg.ops!r}")
    check(cfg.n_ops >= 1, "data.n_ops must be >= 1")
    check(0 <= cfg.min_ops <= cfg.n_ops, "data.min_ops must be in 0..data.n_ops (0 = every problem has n_ops)")
    check(cfg.max_operand >= 2, "data.max_operand must be >= 2")
    check(cfg.max_start == 0 or cfg.max_start >= 2, "data.max_start must be 0 (= max_operand) or >= 2")
    check(bool(cfg.ops) and set(cfg.ops) <= set("+-*"), f"data.ops must be made of + - *, got {cfg.ops!r}")
    check(cfg.n_train >= 1 and cfg.n_test >= 1, "data.n_train and data.n_test must be >= 1")


def noise_config(cfg) -> None:
    check(cfg.sigma >= 0.0, f"noise.sigma must be >= 0, got {cfg.sigma}")
    one_of("noise.targets", cfg.targets, ("mlp", "attn", "all"))
    one_of("noise.granularity", cfg.granularity, ("step", "group", "rollout"))
    one_of("noise.space", cfg.space, ("lora", "weight"))
    check(cfg.draws >= 1, f"noise.draws must be >= 1, got {cfg.draws}")
    check(cfg.draws == 1 or cfg.granularity == "step",
          f"noise.draws={cfg.draws} splits the step's draw; it needs noise.granularity=step")
    one_of("noise.control", cfg.control, ("fixed", "kl", "adaptive", "paper"))
    check(0.0 <= cfg.sigma_min <= cfg.sigma_max, "need 0 <= noise.sigma_min <= noise.sigma_max")
    check(cfg.sigma == 0.0 or cfg.sigma_min <= cfg.sigma <= cfg.sigma_max,
          f"noise.sigma={cfg.sigma:g} is outside [noise.sigma_min, noise.sigma_max] = "
          f"[{cfg.sigma_min:g}, {cfg.sigma_max:g}]; change sigma or the bounds")


def control_config(cfg) -> None:
    check(cfg.kl_target > 0 and cfg.kl_alpha >= 1.0, "need control.kl_target > 0, kl_alpha >= 1")
    check(cfg.paper_beta >= 1.0 and cfg.paper_window >= 2, "need control.paper_beta >= 1 and paper_window >= 2")
    check(cfg.kl_band >= 1.0, f"control.kl_band must be >= 1, got {cfg.kl_band}")
    check(0.0 <= cfg.lam <= 1.0, "control.lam must be in [0, 1]")
    check(cfg.gain >= 0.0 and 0.0 < cfg.rate <= 1.0, "need control.gain >= 0 and 0 < control.rate <= 1")
    check(cfg.window >= 2, "control.window must be >= 2")
    one_of("control.diversity", cfg.diversity, ("hidden", "ngram"))


def grpo_config(cfg) -> None:
    check(cfg.prompts_per_step >= 1, "grpo.prompts_per_step (P) must be >= 1")
    check(0 < cfg.seq_mis_low < 1 < cfg.seq_mis_high, "need 0 < grpo.seq_mis_low < 1 < grpo.seq_mis_high")
    check(cfg.group_size >= 2, f"grpo.group_size (G) must be >= 2, got {cfg.group_size}")
    check(cfg.clip_eps > 0, "grpo.clip_eps (ε) must be > 0")
    check(cfg.clip_eps_high >= 0, "grpo.clip_eps_high (ε_high) must be >= 0 (0 = grpo.clip_eps)")
    check(cfg.epochs >= 1, f"grpo.epochs (μ) must be >= 1, got {cfg.epochs}")
    check(1 <= cfg.mini_batches <= cfg.prompts_per_step * cfg.group_size,
          f"grpo.mini_batches (M) must be in [1, P·G = {cfg.prompts_per_step * cfg.group_size}], got {cfg.mini_batches}")
    one_of("grpo.lr_schedule", cfg.lr_schedule, ("constant", "linear", "cosine"))
    check(cfg.warmup_steps >= 0, f"grpo.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    check(cfg.tis_cap > 0, f"grpo.tis_cap (C) must be > 0, got {cfg.tis_cap}")
    check(cfg.kl_beta >= 0, "grpo.kl_beta (β) must be >= 0")
    one_of("grpo.advantage", cfg.advantage, ("grpo", "passk"))
    check(cfg.passk_k >= 1, f"grpo.passk_k must be >= 1, got {cfg.passk_k}")
    # k ≤ G only binds where Pass@k training reads it: a smaller G for GRPO must not trip on it
    check(cfg.advantage != "passk" or cfg.passk_k <= cfg.group_size,
          f"grpo.passk_k={cfg.passk_k} must be in [1, grpo.group_size={cfg.group_size}] (G) "
          f"with grpo.advantage='passk'; lower grpo.passk_k or raise grpo.group_size")
    one_of("grpo.loss_agg", cfg.loss_agg, ("token-mean", "seq-mean", "dr-grpo"))
    check(cfg.lr > 0 and cfg.micro_batch_tokens > 0, "grpo.lr and grpo.micro_batch_tokens must be > 0")
    check(cfg.temperature > 0, "grpo.temperature must be > 0")


def rollout_config(cfg) -> None:
    check(cfg.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1")
    check(cfg.gap_warn >= 0, f"rollout.gap_warn must be >= 0 (0 = never warn), got {cfg.gap_warn}")
    check(cfg.guard_every >= 1, f"rollout.guard_every must be >= 1, got {cfg.guard_every}")
    one_of("rollout.rng", cfg.rng, ("auto", "batch", "prompt"))
    check(cfg.temperature > 0, "rollout.temperature must be > 0")
    check(0 < cfg.top_p <= 1, "rollout.top_p must be in (0, 1]")
    check(cfg.batch_size >= 1, "rollout.batch_size must be >= 1")
    one_of("rollout.engine", cfg.engine, ("auto", "hf", "fast", "lean"))


def reward_config(cfg) -> None:
    one_of("reward.verifier", cfg.verifier, VERIFIERS)
    one_of("reward.extract", cfg.extract, EXTRACTS)
    check(cfg.timeout > 0, "reward.timeout must be > 0")
    check(cfg.verify_workers >= 1, f"reward.verify_workers must be >= 1, got {cfg.verify_workers}")
    one_of("reward.overlong", cfg.overlong, ("none", "soft", "mask"))
    check(cfg.overlong_window >= 1, f"reward.overlong_window must be >= 1, got {cfg.overlong_window}")
    check(not cfg.weights or not cfg.functions or len(cfg.weights) == len(cfg.functions),
          f"reward.weights has {len(cfg.weights)} weights for {len(cfg.functions)} reward.functions; give one each")
    check(all(math.isfinite(w) for w in cfg.weights), f"reward.weights must be finite numbers, got {cfg.weights}")


def eval_config(cfg) -> None:
    check(1 <= cfg.n <= 4096, "eval.n must be in [1, 4096]")
    check(all(1 <= n <= 4096 for n in cfg.kind_n().values()), "eval.n_by_kind's n must be in [1, 4096]")
    check(cfg.temperature > 0 and cfg.max_new_tokens >= 1, "eval.temperature must be > 0 and eval.max_new_tokens >= 1")
    check(cfg.problems >= 0 and cfg.every >= 0 and cfg.batch_size >= 0,
          "eval.problems, eval.every and eval.batch_size must be >= 0")


def run_config(cfg) -> None:
    check(cfg.steps >= 1, f"run.steps must be >= 1, got {cfg.steps}")
    check(cfg.save_every >= 1, "run.save_every must be >= 1")
    check(all(x.strip().isdigit() and int(x) >= 1 for x in cfg.keep_adapters.split(",") if x.strip()),
          f"run.keep_adapters expects steps like 20,40, got {cfg.keep_adapters!r}")
    check(cfg.threads >= 0, "run.threads must be >= 0 (0 = torch's default)")
    bad = [name for name in cfg.log_to if name not in LOG_SINKS]
    check(not bad, f"run.log_to has {', '.join(map(repr, bad))}; choose from {', '.join(LOG_SINKS)}")
    check(cfg.log_samples >= 0, "run.log_samples must be >= 0 (0 = no samples.jsonl)")


def config(cfg) -> None:
    """Checks across sections: those of a Config."""
    check(cfg.grpo.group_size % cfg.noise.draws == 0,
          f"noise.draws={cfg.noise.draws} must divide grpo.group_size={cfg.grpo.group_size} (G/N rollouts per draw)")
    check(cfg.reward.overlong != "soft" or cfg.reward.overlong_window <= cfg.rollout.max_new_tokens,
          f"reward.overlong_window={cfg.reward.overlong_window} must be <= rollout.max_new_tokens="
          f"{cfg.rollout.max_new_tokens} with reward.overlong=soft; lower the window")
