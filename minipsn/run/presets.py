"""Named overrides over the config: per-model presets, the methods users compare, and renamed keys; and the
local models' recipes and names (LOCAL_MODELS, local_spec), which build_config needs to find a build's preset.

`overrides.build_config` applies them in order: defaults → model preset → method → file → --set.
"""
from __future__ import annotations

import re

from minipsn.run.config import DataConfig

# Per-model presets: overrides applied before anything the user sets.
PRESETS: dict[str, dict[str, object]] = {
    "tiny": {
        "lora.rank": 8, "grpo.lr": 2e-4, "model.gradient_checkpointing": False, "run.threads": 1, "grpo.prompts_per_step": 8, "rollout.max_new_tokens": 48,
        "eval.max_new_tokens": 48, "run.steps": 40, "run.save_every": 10, "control.window": 10,
        # σ from `python cli.py calibrate --model tiny` (noise KL 0.003 per token; docs/RESULTS.md)
        "noise.sigma": 0.021,
        "eval.n": 16, "eval.problems": 64, "eval.every": 20, "model.max_prompt_tokens": 1024,
    },
    # the exploration testbed (LOCAL_MODELS below): the tiny recipe on three operations, every value asked for
    "testbed": {
        "lora.rank": 8, "grpo.lr": 5e-4, "model.gradient_checkpointing": False, "run.threads": 1, "grpo.prompts_per_step": 8,
        "data.n_ops": 3, "data.answer": "steps", "data.n_train": 4000, "rollout.max_new_tokens": 64,
        "eval.max_new_tokens": 64, "eval.batch_size": 1024, "run.steps": 60, "run.save_every": 20, "control.window": 10,
        "noise.sigma": 0.019, "eval.n": 16, "eval.problems": 100, "model.max_prompt_tokens": 1024,  # σ: calibrate
    },
    # the ceiling testbed (LOCAL_MODELS below): the same chains asked two ways; RL on 70 % final / 30 % steps
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
    # the route testbed (LOCAL_MODELS below): the steps question on four operations, worked by a common route (right on
    # pos problems only) or a rare offset ledger (right everywhere, if kept on every line); RL trains on 80 % pos, 20 %
    # neg. The neg kind is the measurement (n = 256); the held-out split alternates the kinds (400 = 200 of each). A
    # 4-operation rare solution is at most 78 tokens with its own tokenizer (81 with the ceiling's), hence 128.
    # σ: the ceiling's until `calibrate --model route` measures this one
    "route": {
        "lora.rank": 8, "grpo.lr": 5e-4, "model.gradient_checkpointing": False, "run.threads": 1, "grpo.prompts_per_step": 8,
        "data.n_ops": 4, "data.answer": "route", "data.neg_share": 0.2, "data.n_train": 4000, "data.n_test": 400,
        "rollout.max_new_tokens": 128, "eval.max_new_tokens": 128, "eval.batch_size": 1024, "run.steps": 60,
        "run.save_every": 20, "control.window": 10, "noise.sigma": 0.019, "eval.n": 256, "eval.n_by_kind": "pos=32",
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


# The one-GPU comparison (examples/one_gpu_comparison.py, docs/one-gpu.md). Per model: its config, the pool its ceiling
# subset is chosen from (subset.py), the best guess per sample above which a problem is left out, and the σ grid of
# the weight-space calibration. llama-1b is the replication arm (another family than Qwen2.5-Math, which gains from
# random rewards); tiny runs the recipe on a CPU (its small integer answers are guessable: the filter is off there).
_REAL_MODEL = {"rollout.max_new_tokens": 1024, "eval.max_new_tokens": 1024, "eval.batch_size": 512, "grpo.lr": 1e-5,
               "grpo.lr_schedule": "cosine", "grpo.warmup_steps": 10, "reward.overlong": "soft",
               "reward.overlong_window": 256, "noise.targets": "mlp"}
ONE_GPU_MODELS: dict[str, dict[str, object]] = {
    "qwen-math-1.5b": {"config": {**_REAL_MODEL, "data.template": "plain"}, "pool": "math500,olympiadbench",
                       "max_guess": 1e-3, "weight_sigmas": "0.0005,0.001,0.002,0.005,0.01,0.02,0.04"},
    "llama-1b": {"config": {**_REAL_MODEL, "data.template": "chat"}, "pool": "math500,olympiadbench",
                 "max_guess": 1e-3, "weight_sigmas": "0.0005,0.001,0.002,0.005,0.01,0.02,0.04"},
    "tiny": {"config": {}, "pool": "synthetic", "max_guess": 1.0, "weight_sigmas": "0.001,0.002,0.005,0.01,0.02,0.04"},
}
# Per profile: the config and the recipe's sizes. day: 3 seeds × (grpo, psn-weight at two doses), 200 steps, a subset
# of 150 ceiling problems and 50 never solved at n = 256 chosen from the first 350 of each pool benchmark, the frontier
# at step 100 on seed 0 (about 21 h of one H100 by estimate: `plan` measures it). smoke: the same path at 5 steps,
# 20 problems × 16 samples (a looser max_pass1, so 20 qualify from a small pool), to run first on a new card: minutes
# of sampling and training, and each of its jobs' model load (its plan prints it, and the day projected from it).
ONE_GPU_PROFILES: dict[str, dict[str, object]] = {
    "day": {"config": {"run.steps": 200, "eval.n": 256, "run.save_every": 25}, "seeds": 3, "subset": 150,
            "min_subset": 150, "max_pass1": 0.1, "never": 50, "pool_problems": 350, "frontier_every": 100,
            "frontier_seeds": 1, "budget_h": 24.0, "draws": 2},
    "smoke": {"config": {"run.steps": 5, "eval.n": 16, "run.save_every": 5}, "seeds": 3, "subset": 20,
              "min_subset": 10, "max_pass1": 0.25, "never": 4, "pool_problems": 60, "frontier_every": 3,
              "frontier_seeds": 1, "budget_h": 1.0, "draws": 1},
}

# keys renamed since earlier versions: old name → new (old run folders are mapped, old --set fails naming the new)
RENAMED = {"noise.scheduler": "noise.control", "scheduler": "control"}

TINY_VERSION = "v4"  # bump a version when its recipe changes, so stale caches are rebuilt

# The local models' recipes (local_models.py builds them): name → what `build_tiny` takes, and the folder's version.
# `testbed` is the exploration testbed: each answer is the tuple of three values (a guess is rarely right), and its
# warm start boxes that tuple for 40 % of the problems that open with an addition and never for those that open with
# a subtraction (sft.py; docs/RESULTS.md, "The exploration testbed"). `ceiling` is the ceiling testbed: the same chains
# asked for the last value (final) or every value (steps), each kind's habit the other's answer (30 % of final
# demonstrations box the tuple, 97 % of steps ones the last value), warm-started on half of each kind; RL trains on
# its own mix (PRESETS above), where GRPO narrows the steps kind's pass@256 (docs/RESULTS.md, "The ceiling testbed").
# `route` is the route testbed (minipsn/tasks/route.py): its `habit` is the share of the rare route on the plain
# question per kind (6.5 %; the rest take the common route, wrong on every neg problem), and 15 % of rare
# demonstrations slip part way (`slip`, sft.py); 30 % of warm-start rows ask for the ledger (`cue`: the skill learnt
# where it is asked for; v1, without it, never kept the ledger); warm-started on half of each kind, RL trains on 20 %
# neg (PRESETS above). The plain question's ledger share is a steep knob (docs/RESULTS.md, the route testbed): at 3–5.5 %
# an opened ledger is kept 0.1–7 % of the time, at 8 % 72 % and GRPO then learns it on the neg problems; v3's 6.5 %
# keeps 26 % (neg pass@256 58 % before RL).
LOCAL_MODELS: dict[str, dict] = {
    "tiny": {"version": TINY_VERSION, "data": DataConfig()},
    "testbed": {"version": "v3", "data": DataConfig(n_ops=3, answer="steps", n_train=4000), "steps": 800,
                "habit": {"add": 0.6, "subtract": 1.0}},
    "ceiling": {"version": "v2", "data": DataConfig(n_ops=3, answer="mixed", steps_share=0.5, n_train=4000),
                "steps": 800, "habit": {"final": 0.3, "steps": 0.97}},
    "route": {"version": "v3", "data": DataConfig(n_ops=4, answer="route", neg_share=0.5, n_train=4000), "steps": 800,
              "habit": {"pos": 0.065, "neg": 0.065}, "slip": 0.15, "cue": 0.3},
}
NOT_SHIPPED: set[str] = set()  # designs not yet in models/: their seed 0 is built on first use and cached, like a -bK build
_NAME = re.compile(r"^(?P<base>[a-z]+)(?:-b(?P<seed>\d+))?$")


def local_spec(name: str) -> tuple[str, int] | None:
    """"ceiling" → ("ceiling", 0); "ceiling-b2" → ("ceiling", 2): a local model and its build seed; else None."""
    m = _NAME.match(name)
    if m is None or m["base"] not in LOCAL_MODELS:
        return None
    return m["base"], int(m["seed"] or 0)
