"""Named overrides over the config: per-model presets, the methods users compare, and renamed keys.

`config.build_config` applies them in order: defaults → model preset → method → file → --set.
"""
from __future__ import annotations

# Per-model presets: overrides applied before anything the user sets.
PRESETS: dict[str, dict[str, object]] = {
    "tiny": {
        "lora.rank": 8, "grpo.lr": 2e-4, "model.gradient_checkpointing": False, "run.threads": 1, "grpo.prompts_per_step": 8, "rollout.max_new_tokens": 48,
        "eval.max_new_tokens": 48, "run.steps": 40, "run.save_every": 10, "control.window": 10,
        # σ from `python cli.py calibrate --model tiny` (noise KL 0.003 per token; docs/RESULTS.md)
        "noise.sigma": 0.021,
        "eval.n": 16, "eval.problems": 64, "eval.every": 20, "model.max_prompt_tokens": 1024,
    },
    # the exploration testbed (models.LOCAL_MODELS): the tiny recipe on three operations, every value asked for
    "testbed": {
        "lora.rank": 8, "grpo.lr": 5e-4, "model.gradient_checkpointing": False, "run.threads": 1, "grpo.prompts_per_step": 8,
        "data.n_ops": 3, "data.answer": "steps", "data.n_train": 4000, "rollout.max_new_tokens": 64,
        "eval.max_new_tokens": 64, "eval.batch_size": 1024, "run.steps": 60, "run.save_every": 20, "control.window": 10,
        "noise.sigma": 0.019, "eval.n": 16, "eval.problems": 100, "model.max_prompt_tokens": 1024,  # σ: calibrate
    },
    # the ceiling testbed (local_models.LOCAL_MODELS): the same chains asked two ways; RL on 70 % final / 30 % steps
    # questions narrows what the base model reaches on the steps kind (docs/RESULTS.md, "The ceiling testbed").
    # Its warm start saw half of each kind; the held-out split alternates them (400 = 200 of each). The steps kind is
    # the measurement (n = 256); the final kind's answers are guessable, so its pass@1 at n = 32 is all it gives
    "ceiling": {
        "lora.rank": 8, "grpo.lr": 5e-4, "model.gradient_checkpointing": False, "run.threads": 1, "grpo.prompts_per_step": 8,
        "data.n_ops": 3, "data.answer": "mixed", "data.steps_share": 0.3, "data.n_train": 4000, "data.n_test": 400,
        "rollout.max_new_tokens": 64, "eval.max_new_tokens": 64, "eval.batch_size": 1024, "run.steps": 60,
        "run.save_every": 20, "control.window": 10, "noise.sigma": 0.019, "eval.n": 256, "eval.n_by_kind": "final=32",
        "eval.problems": 400, "model.max_prompt_tokens": 1024,
    },
    "qwen-1.5b": {"grpo.lr": 1e-5, "rollout.max_new_tokens": 1024, "run.steps": 500},
}

# Methods: named overrides over the config (the baselines users compare).
METHODS: dict[str, dict[str, object]] = {
    "grpo": {"noise.sigma": 0.0, "noise.control": "fixed"},
    "psn": {"noise.control": "fixed", "grpo.tis": True},
    "psn-notis": {"noise.control": "fixed", "grpo.tis": False},
    "psn-kl": {"noise.control": "kl", "grpo.tis": True},
    "psn-adaptive": {"noise.control": "adaptive", "grpo.tis": True},
    "psn-paper": {"noise.control": "paper", "grpo.tis": True},  # variant II as published (sigma_control.py)
    # the paper's own form: σ·ε on the dense weights of the target projections in the sampler's copy, fixed σ
    "psn-weight": {"noise.control": "fixed", "noise.space": "weight", "grpo.tis": True},
    # C3PO (3PO, arXiv 2608.09805): a group's G rollouts split over N noise draws (noise.draws, 2 here), advantages over
    # the whole group, Seq-MIS on top of TIS; fixed σ on the adapter (noise.space=weight also works)
    "c3po": {"noise.control": "fixed", "noise.granularity": "step", "noise.draws": 2, "grpo.tis": True,
             "grpo.seq_mis": True},
    # action-space noise: sample hotter than the policy, importance-corrected by TIS
    "temperature": {"noise.sigma": 0.0, "noise.control": "fixed", "rollout.temperature": 1.2, "grpo.tis": True},
    "passk": {"noise.sigma": 0.0, "noise.control": "fixed", "grpo.advantage": "passk"},
    "psn-passk": {"noise.control": "adaptive", "grpo.advantage": "passk", "grpo.tis": True},
}
TUNABLE = {"temperature": {"rollout.temperature"}, "c3po": {"noise.draws"}}  # a method's keys a user may still change


# keys renamed since earlier versions: old name → new (old run folders are mapped, old --set fails naming the new)
RENAMED = {"noise.scheduler": "noise.control", "scheduler": "control"}
