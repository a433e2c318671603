"""Reward functions next to the verifier, in the kit's signature or TRL's, weighted and summed as TRL does:

    r_i = Σ_f w_f · r_f,i   over the functions f that scored completion i (w: reward.weights, 1 each by default)

A function that takes **kwargs is TRL's kind, called as f(completions=…, prompts=…, completion_ids=…,
truncated=…, **columns): the dataset's columns as keyword arguments, one list each (your own data's row as it is,
a bundled record's fields), as GRPOTrainer calls it; one that can be called with three positional arguments is the
kit's, f(completions, records, truncated); anything else is an error. Completions and prompts are plain text (the
prompt as the policy saw it). Each returns one float or None per completion: as in TRL (None is NaN there) a None
leaves f out of that completion's sum and of f's mean, and a completion no function scored leaves its group's mean
and std and gets advantage 0 (GRPOTrainer's sum_then_normalize). `verifier` is the kit's own reward (minipsn.rewards)
with its rule for truncated completions; the other functions see truncated completions as they are, flagged.
Specs (`--reward`): module:function (importable from the current directory), path/file.py:function, verifier.
A function that raises, or returns anything but a number or None per completion, stops the step (RewardError).
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import numbers
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from minipsn.method import algo
from minipsn.run import distributed as dist
from minipsn.run.config import RewardConfig

VERIFIER = "verifier"  # the spec of the kit's own reward: the verifier's correctness (+ format bonus): minipsn.rewards
KIT_METRICS = ("mean", "std", "accuracy", "zero_adv_frac", "unscored_frac")  # reward/* names the kit logs itself
KEYWORDS = ("completions", "prompts", "completion_ids", "truncated")  # what a TRL-kind function always receives


class RewardError(ValueError):
    """A reward function that cannot be loaded, raised, or did not return one number (or None) per completion."""


@dataclass(frozen=True)
class RewardFunc:
    name: str    # its mean is logged as reward/<name>
    fn: object   # the callable; None for the verifier's reward
    trl: bool    # TRL's keyword call, else the kit's positional (completions, records, truncated)


@dataclass(frozen=True)
class RewardSet:
    funcs: tuple[RewardFunc, ...]
    weights: tuple[float, ...]  # (F,) one per function

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.funcs]


def check_resume(run_dir: Path, rs: RewardSet | None, resume: bool) -> None:
    """RUN/rewards.json: the reward functions' names, written when a run starts (rank 0). A resume re-imports
    reward.functions from config.json, but train(reward_fn=...) may hand it others: a resume whose names differ
    is refused (a run folder from before this record gets one)."""
    names, path = (rs.names if rs is not None else [VERIFIER]), run_dir / "rewards.json"
    if resume and path.is_file():
        before = json.loads(path.read_text()).get("functions", [])
        if before != names:
            raise RewardError(f"{run_dir} was trained with the reward functions {', '.join(before)}; this resume has "
                              f"{', '.join(names)}: pass the same ones, or start a new run with another --out")
    elif dist.is_main():
        path.write_text(json.dumps({"functions": names, "weights": list(rs.weights) if rs else [1.0]}) + "\n")


def resolve(reward_fn, cfg: RewardConfig) -> RewardSet | None:
    """The run's reward functions: `reward_fn` (a function, or a list of functions and specs) or reward.functions,
    weighted by reward.weights; None when there are none (the verifier's reward alone, the default)."""
    if isinstance(reward_fn, RewardSet):
        return reward_fn
    if reward_fn is not None and cfg.functions:
        raise RewardError("reward functions come from reward.functions (--reward) or from train(reward_fn=...), "
                          "not both; drop one")
    given = list(cfg.functions) if reward_fn is None else \
        list(reward_fn) if isinstance(reward_fn, (list, tuple)) else [reward_fn]
    if not given:
        if cfg.weights:
            raise RewardError("reward.weights needs reward functions (--reward, or train(reward_fn=...))")
        return None
    funcs = []
    for item in given:
        fn = load_spec(item) if isinstance(item, str) else item
        if fn is not None and not callable(fn):
            raise RewardError(f"a reward function must be a callable or a spec (module:function), got {item!r:.60}")
        name = VERIFIER if fn is None else callable_name(fn)
        funcs.append(RewardFunc(name, fn, fn is not None and takes_keywords(fn, name)))
    names = [f.name for f in funcs]
    weights = cfg.weights or (1.0,) * len(funcs)
    if len(weights) != len(funcs):
        raise RewardError(f"reward.weights has {len(weights)} weights for {len(funcs)} reward functions "
                          f"({', '.join(names)}); give one each")
    if clash := next((n for n in names if names.count(n) > 1 or n in KIT_METRICS), None):
        why = "two reward functions have it" if names.count(clash) > 1 else f"the kit logs reward/{clash} itself"
        raise RewardError(f"reward function name {clash!r} cannot be logged as reward/{clash} ({why}); rename it")
    return RewardSet(tuple(funcs), tuple(float(w) for w in weights))


def callable_name(fn) -> str:
    """A function's name, as TRL names it: through functools.partial, else the class of a callable object."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def takes_keywords(fn, name: str) -> bool:
    """True for TRL's kind (it takes **kwargs), False for the kit's (it can be called with three positional
    arguments); anything else is an error that names both signatures."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise RewardError(f"reward function {name}: its signature cannot be read; wrap it in a def") from None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return True
    try:
        sig.bind(None, None, None)
    except TypeError:
        raise RewardError(f"reward function {name}{sig} takes neither the kit's arguments (completions, records, "
                          "truncated) nor TRL's (completions, **kwargs)") from None
    return False


def load_spec(spec: str):
    """The function a spec names: module:function, path/file.py:function, or None for `verifier`."""
    if spec == VERIFIER:
        return None
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr.isidentifier():
        raise RewardError(f"reward {spec!r} is not module:function, path/file.py:function or {VERIFIER}")
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    module = _from_file(where, spec) if is_file else _from_module(where, spec)
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1)
        raise RewardError(f"{where} has no function {attr!r} (reward {spec})"
                          + (f"; did you mean {close[0]}?" if close else f"; it has {', '.join(names) or 'none'}"))
    if not callable(fn):
        raise RewardError(f"reward {spec}: {attr} is a {type(fn).__name__}, not a function")
    return fn


def _from_file(where: str, spec: str):
    path = Path(where).expanduser()
    if not path.is_file():
        raise RewardError(f"reward file {where} not found (reward {spec}; paths are relative to {Path.cwd()})")
    # a module name of its own: the file is imported, so its `if __name__ == "__main__":` part does not run
    name = "minipsn_reward_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    if name not in sys.modules:
        loader = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(loader)  # before it runs, as import does
        try:
            loader.loader.exec_module(module)
        except Exception as e:  # the user's module may fail in any way: say which file, and how
            del sys.modules[name]
            raise RewardError(f"importing reward file {where} failed: {type(e).__name__}: {_line(e)}") from e
    return sys.modules[name]


def _from_module(where: str, spec: str):
    if os.getcwd() not in sys.path:  # importable from the current directory, as with `python -m`
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        if e.name is None or not where.startswith(e.name):  # the module imports something that is missing
            raise RewardError(f"importing reward module {where} failed: {_line(e)}") from e
        file = f"path/to/{where.replace('.', '/')}.py:{spec.rpartition(':')[2]}"
        raise RewardError(f"no module {where} to import (reward {spec}) in {os.getcwd()} or the installed packages; "
                          f"run from its folder, or give its file: {file}") from None
    except Exception as e:  # the user's module may fail in any way: say which, and how
        raise RewardError(f"importing reward module {where} failed: {type(e).__name__}: {_line(e)}") from e


def combine(reward_fn, ro, recs: list[dict], truncated: list[bool], verifier: list[float], cfg: RewardConfig,
            prompts: list[str] | None, stats: dict | None) -> list[float]:
    """(N,) the weighted sum of the reward functions' rewards of rollouts `ro` (NaN where none scored a row);
    `stats`, when given, receives their step_metrics. `verifier` (N,) is the kit's own reward of each row."""
    funcs = resolve(reward_fn, cfg)
    per_fn = scores(funcs, ro, recs, truncated, verifier, prompts)
    if stats is not None:
        stats.update(step_metrics(funcs, per_fn))
    return weighted_sum(per_fn, funcs.weights).tolist()


def scores(rs: RewardSet, ro, recs: list[dict], truncated: list[bool], verifier: list[float],
           prompts: list[str] | None) -> torch.Tensor:
    """(N, F) each function's rewards of rollouts `ro`, NaN where it returned None."""
    texts, trl = ro.texts, any(f.trl for f in rs.funcs)
    out = torch.empty(len(texts), len(rs.funcs), dtype=torch.float64)
    columns = dataset_columns(recs) if trl else {}
    completion_ids = [row[m.bool()].tolist() for row, m in zip(ro.completion_ids, ro.completion_mask)] \
        if trl and hasattr(ro, "completion_ids") else None
    for j, f in enumerate(rs.funcs):
        if f.fn is None:
            values = verifier
        elif f.trl:  # the kit's own keywords win over dataset columns of the same name
            values = _call(f, **columns, completions=texts, prompts=prompts, completion_ids=completion_ids,
                           truncated=truncated)
        else:
            values = _call(f, texts, recs, truncated)
        out[:, j] = torch.tensor(_checked(f.name, values, len(texts)), dtype=torch.float64)
    return out


def weighted_sum(per_fn: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """(N, F) → (N,) Σ_f w_f·r_f over the functions that scored each row (TRL's nansum); NaN where none did."""
    total = (per_fn * torch.tensor(weights, dtype=per_fn.dtype)).nansum(dim=1)
    return total.masked_fill(per_fn.isnan().all(dim=1), math.nan)


def scored_group_advantages(rewards: torch.Tensor, scale: bool) -> torch.Tensor:
    """(P, G) rewards with NaN rows → (P, G) advantages: each group's scored rows as algo.group_advantages alone,
    the unscored rows 0 (TRL: out of the group's mean and std, no advantage)."""
    out = torch.zeros_like(rewards)
    for p in range(rewards.shape[0]):
        keep = ~rewards[p].isnan()
        if keep.any():
            out[p, keep] = algo.group_advantages(rewards[p, keep].unsqueeze(0), scale=scale)[0]
    return out


def step_metrics(rs: RewardSet, per_fn: torch.Tensor) -> dict[str, float]:
    """reward/<name>: each function's mean over the completions it scored (every process's; absent at a step where
    it scored none), and reward/unscored_frac: the share of completions no function scored."""
    F, scored = len(rs.funcs), ~per_fn.isnan()
    t = dist.all_sum([*per_fn.nan_to_num(0.0).sum(0).tolist(), *scored.sum(0).tolist(),
                      float((~scored.any(1)).sum()), float(per_fn.shape[0])])
    m = {f"reward/{f.name}": t[j] / t[F + j] for j, f in enumerate(rs.funcs) if t[F + j]}
    return {**m, "reward/unscored_frac": t[2 * F] / max(t[2 * F + 1], 1.0)}


def dataset_columns(recs: list[dict]) -> dict[str, list]:
    """The dataset's columns, one list each, as TRL passes them: your own data's rows as they are (a record's
    `columns`), else a record's fields (problem, answer, ...); a row without a column gives None."""
    rows = [r.get("columns", r) for r in recs]
    skip = set(KEYWORDS) | {"prompt", "completion"}  # TRL passes neither column: it passes prompts and completions
    keys = dict.fromkeys(k for row in rows for k in row if k not in skip)
    return {k: [row.get(k) for row in rows] for k in keys}


def _call(f: RewardFunc, *args, **kwargs):
    try:
        return f.fn(*args, **kwargs)
    except Exception as e:  # the user's function may fail in any way: name it, and stop the step
        raise RewardError(f"reward function {f.name} raised {type(e).__name__}: {_line(e)}") from e


def _checked(name: str, values, n: int) -> list[float]:
    """`values` as n floats (None and NaN → NaN); anything else is a RewardError naming the function."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # a tensor or an array
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward function {name} returned a {type(values).__name__}; return a list of {n} numbers "
                          "(None: no reward for that completion)")
    if len(values) != n:
        raise RewardError(f"reward function {name} returned {len(values)} rewards for {n} completions; return one "
                          "per completion")
    for i, v in enumerate(values):
        if v is not None and (not isinstance(v, numbers.Real) or math.isinf(v)):
            raise RewardError(f"reward function {name} returned {v!r:.40} for completion {i}; return a finite "
                              "number or None")
    return [math.nan if v is None else float(v) for v in values]


def _line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"
