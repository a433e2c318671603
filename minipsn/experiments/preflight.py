"""The noise-only pre-flight: does noise explore before any training, and where? `python cli.py preflight`.

Evaluates a policy (the base model, or an RL checkpoint's adapter) with each problem's n samples drawn from D
independent noise draws, n/D samples each (D = n: one draw per sample), for each setting of a list:

    clean           no noise, T = 1 (D = 1 here is exactly `eval`'s and `headroom`'s sampling)
    lora:σ          σ·ε on the LoRA adapter (the `psn` arms' space)
    weight:σ        σ·ε on the target projections' dense base weights (the `psn-weight` arm's, the paper's form)
    temperature:T   the clean policy sampled at T (action-space noise, the `temperature` arm)

Clean sampling and a temperature have no noise draws, so each is sampled once (D = 1) whatever the list of D.

Draw d's noise seed is derive_seed(run.seed, "preflight", d), shared by every problem, and logged with each sample
(`noise_seeds`); each problem's generator for draw d is its evaluation generator, made draw-specific when D > 1. It
reports each setting's pass@k per kind of question, and on answers that should be tuples (the ceiling's steps
questions) how often the policy boxes a tuple and how often that tuple is right: the choice that makes the ceiling.
On the route task it is the mechanism probe: which route each sample took (tasks/route.py), how often a sample starts
the rare route and how often a sample that starts it keeps it to the box, the prediction that tells noise on the
parameters (one policy for a whole trajectory) from noise on the tokens. It costs evaluations only: if no noise beats
clean sampling on that choice, training runs cannot be expected to.

OUT/preflight.json is rewritten after each setting (`complete` false until the last), so a stopped pre-flight
continues where it stopped: a run into the same folder reuses each finished setting when the rest was made with the
same settings and code (other code only with `other_code`), and otherwise refuses, saying what differs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from minipsn.evaluation.evaluate import benchmark_records, eval_rollout_config
from minipsn.evaluation.provenance import ABSENT, provenance, refuse_stale, settings_differences
from minipsn.evaluation.scoring import score_rows, summarize
from minipsn.method.noise import derive_seed
from minipsn.run.config import Config
from minipsn.run.folders import check_writable
from minipsn.sampling.engine import build_engine, make_engine
from minipsn.sampling.rollout import sample
from minipsn.tasks.data import format_prompt
from minipsn.tasks.models import load_policy
from minipsn.tasks.route import KINDS, ROUTES, route_counts

SPACES = ("clean", "lora", "weight", "temperature")


def parse_setting(text: str) -> tuple[str, float]:
    """"clean" → ("clean", 0); "lora:0.02" → ("lora", 0.02); "temperature:1.2" → ("temperature", 1.2)."""
    space, _, value = text.partition(":")
    if space not in SPACES or (space == "clean") != (value == ""):
        raise ValueError(f"a pre-flight setting is clean, lora:σ, weight:σ or temperature:T, got {text!r}")
    try:
        v = float(value) if value else 0.0
    except ValueError:
        raise ValueError(f"a pre-flight setting's value must be a number, got {text!r}") from None
    if v < 0 or (space == "temperature" and v <= 0):
        raise ValueError(f"a pre-flight setting's σ must be >= 0 and T > 0, got {text!r}")
    return space, v


def sample_setting(model, engines: dict, tok, records: list[dict], cfg: Config, space: str, value: float,
                   draws: int) -> list[dict]:
    """Every problem's n = eval.n samples, n/D from each of D draws of one setting, scored; one row per problem with
    the samples of every draw in order and each sample's noise seed."""
    n = cfg.eval.n
    if draws < 1 or n % draws:
        raise ValueError(f"the pre-flight's draws D={draws} must divide eval.n={n}")
    rcfg = eval_rollout_config(cfg.rollout, cfg.eval)
    if space == "temperature":
        rcfg = dataclasses.replace(rcfg, temperature=value)
    engine, sigma = engines["weight" if space == "weight" else "lora"], value if space in ("lora", "weight") else 0.0
    device = next(model.parameters()).device
    per = n // draws
    rows = {r["id"]: {"id": r["id"], **({"kind": r["kind"]} if "kind" in r else {}), "texts": [], "cut": [], "lengths": [],
                      "noise_seeds": []} for r in records}
    per_call = max(1, rcfg.batch_size // per)
    for d in range(draws):
        seed = derive_seed(cfg.run.seed, "preflight", d)
        with engine.policy(sigma, [seed], cfg.noise.targets) as (sampler, _):
            for s in range(0, len(records), per_call):
                chunk = records[s : s + per_call]
                gens = [torch.Generator(device).manual_seed(derive_seed(cfg.run.seed, "eval", "synthetic", r["id"],
                                                                        *(("draw", d) if draws > 1 else ())))
                        for r in chunk]
                ro = sample(sampler, tok, [format_prompt(tok, r["problem"], cfg.data.template) for r in chunk], per, rcfg,
                            gens, cfg.model.max_prompt_tokens, shared_prefill=True, drop_finished=True)
                lengths, cut = ro.completion_mask.sum(1).tolist(), ro.truncated.tolist()
                for j, r in enumerate(chunk):
                    row = rows[r["id"]]
                    row["texts"] += ro.texts[j * per:(j + 1) * per]
                    row["cut"] += cut[j * per:(j + 1) * per]
                    row["lengths"] += lengths[j * per:(j + 1) * per]
                    row["noise_seeds"] += [seed if sigma > 0 else None] * per
    scored = []
    for r in records:
        row = rows[r["id"]]
        if r.get("kind") in KINDS:  # the route task: which route each sample took
            row["routes"] = route_counts(row["texts"], r["problem"])
        scored.append({k: v for k, v in row.items() if k not in ("texts", "cut", "lengths")}
                      | score_rows(row["texts"], row["cut"], row["lengths"], r["answer"], cfg.reward.timeout,
                                   cfg.reward.last_number, cfg.reward.unboxed_answer, cfg.reward.verifier,
                                   cfg.reward.extract))
    return scored


def tuple_choice(rows: list[dict]) -> dict:
    """On problems whose gold is a tuple: the share of samples that box a tuple, and that box the right one, each a
    mean over problems of the per-problem share."""
    tuples = [r for r in rows if r["gold"].startswith("(")]
    if not tuples:
        return {}
    boxed = [sum(a is not None and a.startswith("(") for a in r["answers"]) / len(r["answers"]) for r in tuples]
    right = [sum(r["correct"]) / len(r["correct"]) for r in tuples]
    return {"problems": len(tuples), "tuple_rate": sum(boxed) / len(tuples), "right_rate": sum(right) / len(tuples)}


def route_choice(rows: list[dict]) -> dict:
    """On the route task's rows: the share of samples that start the rare route (a mean over problems of the
    per-problem share) and the share of rare starts kept to the box (pooled over problems: most problems have few),
    with the pooled counts of every route."""
    routed = [r for r in rows if "routes" in r]
    if not routed:
        return {}
    counts = {k: sum(r["routes"][k] for r in routed) for k in ROUTES}
    starts = counts["rare-kept"] + counts["rare-broken"]
    rare = [(r["routes"]["rare-kept"] + r["routes"]["rare-broken"]) / sum(r["routes"].values()) for r in routed]
    return {"problems": len(routed), "rare_rate": sum(rare) / len(routed),
            "keep_rate": counts["rare-kept"] / starts if starts else None, "routes": counts}


def finished(path: Path, report: dict, cfg: Config, other_code: bool = False) -> dict:
    """{(setting, D): result} of an earlier pre-flight in `path` (OUT/preflight.json) whose samples file is there;
    {} when there is none; an error naming what differs when it was made with other settings or code (a result of
    other code is reused with `other_code`, with the settings that code did not have), so nothing stale mixes in."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a pre-flight report ({e}); delete it to measure again") from None
    if "config" not in old:
        raise ValueError(f"{path} does not record the settings it was made with; delete it to measure again")
    diff = {k: (old.get(k, ABSENT), report[k]) for k in ("model", "adapter", "n", "problems", "kind")
            if old.get(k, ABSENT) != report[k]}
    diff.update(settings_differences(old["config"], report["config"]))
    refuse_stale(path, diff, old.get("provenance"), report["provenance"], other_code)
    return {(r["setting"], r["draws"]): r for r in old["results"]
            if (path.parent / "samples" / _samples_name(r["setting"], r["draws"])).is_file()}


def _samples_name(setting: str, draws: int) -> str:
    return f"{setting.replace(':', '-')}-D{draws}.jsonl"


def _write(out: Path, report: dict) -> None:
    tmp = out / "preflight.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "preflight.json")  # a kill leaves the last whole report


def preflight(cfg: Config, settings: list[str], draws: list[int], out: str | Path, adapter: str | None = None,
              kind: str | None = None, other_code: bool = False) -> dict:
    """Each setting × each D (module docstring) on the held-out synthetic problems (eval.problems of them, only those
    of `kind` when given, eval.n samples each); writes OUT/preflight.json after each setting (and each setting's rows
    in OUT/samples/), reusing the settings an earlier run into OUT finished (`finished`), and returns the report."""
    out = check_writable(out)
    parsed = [parse_setting(s) for s in settings]
    records = [r for r in benchmark_records("synthetic", cfg) if kind is None or r.get("kind") == kind]
    if not records:
        raise ValueError(f"no held-out problems of kind {kind!r}; the mixed task has final and steps, the route task "
                         "pos and neg")
    t0 = time.perf_counter()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)  # the fresh adapter the runs start with, as the trainer and calibrate make it
    model, tok = load_policy(cfg, adapter)
    model.eval()
    clean = dataclasses.replace(cfg, noise=dataclasses.replace(cfg.noise, sigma=0.0, space="lora"))
    engines = {"lora": make_engine(model, clean)}
    if any(space == "weight" for space, _ in parsed):
        engines["weight"] = build_engine(model, "fast", cfg.eval.max_new_tokens, "weight", static_cache=False,
                                         compile_step=False)
    report = {"model": cfg.model.name, "adapter": adapter, "n": cfg.eval.n, "problems": len(records), "kind": kind,
              "results": [], "complete": False, "config": cfg.to_dict(),
              "provenance": provenance(cfg, {"synthetic": records})}
    done = finished(out / "preflight.json", report, cfg, other_code)
    for text, (space, value) in zip(settings, parsed):
        for d in draws if space in ("lora", "weight") else [1]:  # clean and a temperature have no draws
            if (text, d) in done:
                report["results"].append(done[text, d])
                print(f"pre-flight {text} D={d}: done, reusing {out / 'samples' / _samples_name(text, d)}", flush=True)
                continue
            rows = sample_setting(model, engines, tok, records, cfg, space, value, d)
            (out / "samples").mkdir(parents=True, exist_ok=True)
            (out / "samples" / _samples_name(text, d)).write_text("".join(json.dumps(r) + "\n" for r in rows))
            numbers = summarize(rows)
            kinds = {k: {"pass@k": v["pass@k"], **tuple_choice(of_kind := [r for r in rows if r.get("kind") == k]),
                         **({"route": route_choice(of_kind)} if route_choice(of_kind) else {})}
                     for k, v in numbers.get("kinds", {}).items()}
            routes = route_choice(rows)
            report["results"].append({"setting": text, "space": space, "value": value, "draws": d,
                                      "pass@k": numbers["pass@k"], **tuple_choice(rows), "kinds": kinds,
                                      **({"route": routes} if routes else {})})
            kept = "" if not routes else (f", rare starts {routes['rare_rate']:.4f}, kept "
                                          + ("–" if routes["keep_rate"] is None else f"{routes['keep_rate']:.3f}"))
            print(f"pre-flight {text} D={d}: pass@1 {numbers['pass@k']['1']:.3f}, pass@{cfg.eval.n} "
                  f"{numbers['pass@k'][str(cfg.eval.n)]:.3f}{kept}", flush=True)
            _write(out, report)
    report["seconds"], report["complete"] = time.perf_counter() - t0, True
    _write(out, report)
    return report
