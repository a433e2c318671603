"""minipsn: GRPO with parameter-space noise on the LoRA weights (PSN-GRPO), on one GPU or a laptop CPU.

The packages, bottom to top; each imports only those before it (tests/test_imports.py checks it, and that no
module imports one that imports it): verify, run, tasks, method, sampling, rewards, evaluation, training,
experiments, bench; cli.py sits on top. The README's Layout section says what each holds.

The entry points a script needs are importable from here, loaded when first used (so `import minipsn` loads
neither torch nor any of the packages, and no module of the kit imports this one):

    from minipsn import build_config, train
    train(build_config(model="tiny", method="psn"))
"""
import importlib

PUBLIC = {  # name → the module that defines it
    "Config": "minipsn.run.config",
    "build_config": "minipsn.run.overrides",
    "load_problems": "minipsn.tasks.problems",
    "correctness_reward": "minipsn.rewards",
    "format_reward": "minipsn.rewards",
    "evaluate": "minipsn.evaluation.evaluate",
    "train": "minipsn.training.train",
    "compare": "minipsn.experiments.compare",
}
__all__ = list(PUBLIC)


def __getattr__(name: str):
    if name in PUBLIC:
        return getattr(importlib.import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'minipsn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC})
