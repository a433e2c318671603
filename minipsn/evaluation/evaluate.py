"""Evaluation: sample n completions per problem from the clean policy, score them, report pass@k.

This module samples, keeps the samples files and runs an evaluation (`evaluate`); the scoring (the pass@k
estimator, majority vote, per-kind numbers) is in scoring.py and the report's tables in reports.py.

Each problem is sampled on its own with a generator seeded from (seed, benchmark, problem id), so a
result does not depend on which other problems are evaluated, and one JSON line per problem (its n
extracted answers, correctness, lengths, truncation flags and the gold; no texts) is appended as soon as it is
scored: an interrupted evaluation resumes at the first unfinished problem and reproduces exactly
what an uninterrupted one would have. The first line of a samples file records the sampling
settings and reward.verifier; resuming with other settings is an error, not a silent mix. Under torchrun the problems
are split over the ranks and rank 0 writes the same files one process would (`_sample_split`). Sampling encodes
each prompt once for its n rows and drops rows that have ended as the batch decodes (`FAST_SAMPLING`): the plain
loop's samples, from the same generators, in less time.

A record's `kind` (the mixed synthetic task's final and steps questions) is kept in its samples line,
and the report adds the same numbers per kind ("kinds") next to the benchmark's totals.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from minipsn.evaluation.provenance import compared, provenance, row_digest
from minipsn.evaluation.scoring import average, score_rows, summarize
from minipsn.evaluation.scoring import pass_at_k as pass_at_k  # public: minipsn.evaluation.evaluate.pass_at_k
from minipsn.method.noise import derive_seed
from minipsn.run import distributed as dist
from minipsn.run import folders
from minipsn.run.config import Config, EvalConfig, RolloutConfig
from minipsn.sampling.rollout import sample
from minipsn.tasks.data import format_prompt, load_benchmark
from minipsn.tasks.problems import heldout_records, load_problems
from minipsn.verify import EXTRACTS, VERIFIERS

# evaluation encodes each prompt once for its n rows and drops ended rows as the batch decodes (`rollout.decode`):
# the plain loop's samples; a whole `eval` of the tiny model at n = 256 takes 0.37-0.52 of its time (docs/RESULTS.md)
FAST_SAMPLING = {"shared_prefill": True, "drop_finished": True}


# ---------------------------------------------------------------- sampling


def eval_rollout_config(rollout: RolloutConfig, ev: EvalConfig) -> RolloutConfig:
    """The rollout settings of evaluation: EvalConfig's temperature, length and batch, the rest as in training."""
    return dataclasses.replace(rollout, temperature=ev.temperature, max_new_tokens=ev.max_new_tokens,
                               batch_size=ev.batch_size or rollout.batch_size)


def sample_problems(model, tok, records: list[dict], benchmark: str, cfg: Config, rcfg: RolloutConfig,
                    n: int | None = None) -> list[dict]:
    """n completions of each problem (default eval.n), scored; problems share sampling calls, but each draws from
    its own generator seeded by (seed, benchmark, id), so its samples do not depend on its neighbours."""
    device = next(model.parameters()).device
    n = n or cfg.eval.n
    prompts = [format_prompt(tok, r["problem"], cfg.data.template) for r in records]
    gens = [torch.Generator(device).manual_seed(derive_seed(cfg.run.seed, "eval", benchmark, r["id"])) for r in records]
    ro = sample(model, tok, prompts, n, rcfg, gens, cfg.model.max_prompt_tokens, **FAST_SAMPLING)
    lengths, cut = ro.completion_mask.sum(1).tolist(), ro.truncated.tolist()
    return [{"id": r["id"], "hash": row_digest(r), **({"kind": r["kind"]} if "kind" in r else {}),
             **score_rows(ro.texts[j * n:(j + 1) * n], cut[j * n:(j + 1) * n], lengths[j * n:(j + 1) * n],
                          r["answer"], cfg.reward.timeout, cfg.reward.last_number, cfg.reward.unboxed_answer,
                          cfg.reward.verifier, cfg.reward.extract)}
            for j, r in enumerate(records)]


def quick_eval(model, tok, records: list[dict], eval_cfg: EvalConfig, rollout_cfg: RolloutConfig,
               template: str, seed: int, max_prompt_tokens: int = 4096, timeout: float = 3.0,
               last_number: bool = True, unboxed: bool = True, per_problem: bool = False,
               verifier: str = VERIFIERS[0], extract: str = EXTRACTS[0]) -> dict:
    """Small-n evaluation during training on held-out `records` (the first eval_cfg.problems, 0 = all).

    Call it on the clean policy (outside `perturbed`). Unlike `evaluate`, several problems share one
    sampling call (batch_size // n per call) for speed, with one generator seeded from `seed`; there is
    no progress bar, so it can run under the trainer's. `per_problem`: one generator per problem, seeded
    by (`seed`, its index), and under torchrun each rank samples its share of the problems and the
    scored rows are gathered before pass@k (the same result whatever the number of processes). Returns {"eval/pass@k" for k <= n,
    "eval/accuracy", "eval/maj_accuracy", "eval/truncated_frac"}."""
    n = eval_cfg.n
    records = records[: eval_cfg.problems] if eval_cfg.problems else records
    rcfg = eval_rollout_config(rollout_cfg, eval_cfg)
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(derive_seed(seed, "quick_eval"))
    lo, hi = dist.shard(len(records)) if per_problem else (0, len(records))
    per_call, rows = max(1, rcfg.batch_size // n), []
    for s in range(lo, hi, per_call):
        chunk = records[s : min(s + per_call, hi)]
        if per_problem:
            gen = [torch.Generator(device).manual_seed(derive_seed(seed, "quick_eval", i)) for i in range(s, s + len(chunk))]
        ro = sample(model, tok, [format_prompt(tok, r["problem"], template) for r in chunk], n, rcfg, gen,
                    max_prompt_tokens, **FAST_SAMPLING)
        lengths, cut = ro.completion_mask.sum(1).tolist(), ro.truncated.tolist()
        for j, rec in enumerate(chunk):  # prompt-major: rows j·n … (j+1)·n − 1 belong to problem j
            part = slice(j * n, (j + 1) * n)
            rows.append(score_rows(ro.texts[part], cut[part], lengths[part], rec["answer"], timeout, last_number,
                                  unboxed, verifier, extract))
    if per_problem:  # every rank's rows, in problem order (the rank's own on one process)
        rows = [row for part in dist.gather(rows) for row in part]
    s = summarize(rows)
    return {**{f"eval/pass@{k}": v for k, v in s["pass@k"].items()}, "eval/accuracy": s["mean_acc"],
            "eval/maj_accuracy": s["maj_acc"], "eval/truncated_frac": s["trunc_rate"]}


# ---------------------------------------------------------------- resumable samples files


def sampling_meta(cfg: Config, benchmark: str, adapter: str | None, engine: str = "") -> dict:
    """Everything that decides the samples of a benchmark (with the code, model build, device, dtype and torch
    that made them); a samples file made otherwise is not reused. The problems themselves are checked row by
    row (`hash`), so other data.* settings never reuse a row by its id."""
    rcfg = eval_rollout_config(cfg.rollout, cfg.eval)
    return {"benchmark": benchmark, "model": cfg.model.name, "quantize": cfg.model.quantize,
            "adapter": adapter_fingerprint(adapter), "engine": engine, "n": cfg.eval.n,
            **({"n_by_kind": cfg.eval.kind_n()} if cfg.eval.n_by_kind else {}), "seed": cfg.run.seed,
            "temperature": rcfg.temperature, "top_p": rcfg.top_p, "max_new_tokens": rcfg.max_new_tokens,
            "batch_size": rcfg.batch_size, "template": cfg.data.template, "last_number": cfg.reward.last_number,
            **({} if cfg.reward.unboxed_answer else {"unboxed_answer": False}), "verifier": cfg.reward.verifier,
            "extract": cfg.reward.extract,
            "made_with": compared(provenance(cfg))}


def adapter_fingerprint(adapter: str | None) -> str | None:
    """Path and a hash of the weights: a run that trained on under the same path is a new adapter."""
    if adapter is None:
        return None
    weights = Path(adapter) / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else "no-weights"
    return f"{Path(adapter).resolve()}@{digest}"


def read_samples(path: Path, meta: dict) -> dict[str, dict]:
    """Finished problems {id: row} of a samples file (creating it with `meta` when missing).
    A last line cut by a kill mid-write is dropped; a file made with other settings is an error."""
    if not path.is_file() or not path.read_text().strip():  # new, or killed before the first line
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": meta}) + "\n")
        return {}
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0])["meta"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        head = None
    if head != meta:
        diff = {k: (head or {}).get(k) for k in meta if (head or {}).get(k) != meta[k]}
        raise ValueError(f"{path} was sampled with other settings ({diff}, now "
                         f"{ {k: meta[k] for k in diff} }); choose another --out or delete the file")
    done = {}
    for i, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines):
                raise ValueError(f"{path}:{i} is not valid JSON; delete the line or the file") from None
            print(f"note: {path} ends in a cut line (an interrupted write); that problem is sampled again")
            path.write_text("".join(x + "\n" for x in lines[:-1]))
            break
        done[row["id"]] = row
    return done


def evaluate_benchmark(model, tok, name: str, records: list[dict], cfg: Config, samples: Path,
                       adapter: str | None = None, progress=None, engine: str = "") -> dict:
    """Sample and score every problem not yet in `samples`, appending one line each; summarize all.
    `model` is what to sample from (the peft model, or an engine's folded copy, named by `engine`)."""
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} has duplicate problem ids; resumable evaluation keys on them")
    meta = sampling_meta(cfg, name, adapter, engine)
    done = _read_samples_on_rank0(samples, meta) if dist.active() else read_samples(samples, meta)
    for r in records:
        if r["id"] in done and done[r["id"]].get("hash") != row_digest(r):
            raise ValueError(f"{samples} holds samples of another problem under the id {r['id']} (other data.* "
                             "settings?); choose another --out or delete the file")
    todo = [r for r in records if r["id"] not in done]
    rcfg = eval_rollout_config(cfg.rollout, cfg.eval)
    task = progress.add_task(name, total=len(records), completed=len(records) - len(todo)) if progress else None
    for n in sorted({cfg.eval.n_for(r) for r in todo}, reverse=True):  # a kind with its own n is sampled apart
        part = [r for r in todo if cfg.eval.n_for(r) == n]
        per_call = max(1, rcfg.batch_size // n)  # problems per sampling call (eval.batch_size rows)
        if dist.active():
            _sample_split(model, tok, name, part, cfg, rcfg, per_call, samples, done, progress, task, n)
            continue
        with open(samples, "a") as f:
            for s in range(0, len(part), per_call):
                for row in sample_problems(model, tok, part[s : s + per_call], name, cfg, rcfg, n):
                    f.write(json.dumps(row) + "\n")
                    f.flush()  # a kill loses at most the problems being sampled
                    done[row["id"]] = row
                    if progress is not None:
                        progress.advance(task)
    return summarize([done[i] for i in ids])


def _read_samples_on_rank0(path: Path, meta: dict) -> dict[str, dict]:
    """torchrun: rank 0 reads (or creates) the samples file and sends every rank its finished problems;
    its error (a file sampled with other settings) is raised on every rank, so none waits for it."""
    done, error = {}, None
    if dist.is_main():
        try:
            done = read_samples(path, meta)
        except ValueError as e:
            error = str(e)
    done, error = dist.gather((done, error))[0]
    if error is not None:
        raise ValueError(error)
    return done


def _sample_split(model, tok, name: str, todo: list[dict], cfg: Config, rcfg: RolloutConfig, per_call: int,
                  samples: Path, done: dict, progress, task, n: int) -> None:
    """torchrun: `todo` in rounds of K·per_call problems, rank r sampling the round's r-th contiguous
    share of per_call. These are the sampling calls one process makes (the same problems batched, so
    the same padding and the same samples bit for bit, whatever K); after each round rank 0 appends
    every rank's rows in problem order, so a kill loses at most one round and the file is the
    one-process file."""
    K, r = dist.world(), dist.rank()
    with open(samples, "a") if dist.is_main() else contextlib.nullcontext() as f:
        for s in range(0, len(todo), K * per_call):
            mine = todo[s + r * per_call : s + (r + 1) * per_call]
            rows = sample_problems(model, tok, mine, name, cfg, rcfg, n) if mine else []
            for row in (row for part in dist.gather(rows) for row in part):
                if f is not None:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                done[row["id"]] = row
                if progress is not None:
                    progress.advance(task)


# ---------------------------------------------------------------- the evaluation run


def benchmark_records(name: str, cfg: Config) -> list[dict]:
    """Test problems of one benchmark, the first eval.problems of them (0 = all); `heldout` is data.dataset's own
    held-out split (data.test_split of your own data, e.g. a subset chosen on the base: subset.py)."""
    if name == "synthetic":  # the run's own synthetic settings (n_ops, max_operand), held-out split
        records = load_problems(dataclasses.replace(cfg.data, dataset="synthetic"), "test")
    elif name == "heldout":
        records = heldout_records(cfg.data)
    else:
        records = load_benchmark(name, "test", cfg.data.data_dir or None, cfg.data.skip_bad_rows)
    return records[: cfg.eval.problems] if cfg.eval.problems else records


def resolve_adapter(path: str) -> tuple[str, Path | None]:
    """An adapter folder, or a run folder (its final adapter, else its latest checkpoint's) →
    (adapter folder, run folder or None)."""
    from minipsn.run import checkpoint

    p = Path(path)
    if (p / "adapter_config.json").is_file():
        return str(p), None
    if (p / "adapter" / "adapter_config.json").is_file():
        return str(p / "adapter"), p
    ckpt = checkpoint.latest(p)
    if ckpt is not None and (ckpt / "adapter" / "adapter_config.json").is_file():
        print(f"note: {p} has no final adapter; using its latest checkpoint {ckpt.name}")
        return str(ckpt / "adapter"), p
    raise ValueError(f"{path} is neither an adapter folder (adapter_config.json) nor a run folder with "
                     "an adapter/ or a checkpoint")


def run_config(run_dir: Path, model: str | None, overrides: dict) -> Config:
    """The config a run trained with (RUN_DIR/config.json), evaluation overrides on top."""
    from minipsn.run.overrides import apply_overrides, config_from_dict

    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no config.json; pass the adapter folder and --model instead")
    cfg = config_from_dict(json.loads(path.read_text()))
    if model is not None and model != cfg.model.name:
        raise ValueError(f"--model {model} differs from the run's model {cfg.model.name} ({path}); drop --model")
    return apply_overrides(cfg, overrides)


def default_out(model: str, adapter: str | None, run_dir: Path | None) -> Path:
    """RUN_DIR/eval for a run; runs/eval-<model>[-<adapter>] otherwise."""
    if run_dir is not None:
        return run_dir / "eval"
    slug = lambda s: "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in s)
    name = f"eval-{slug(model.strip('/').split('/')[-1])}"
    if adapter is not None:
        a = Path(adapter).resolve()
        name += f"-{slug(a.parent.name if a.name == 'adapter' else a.name)}"
    return Path("runs") / name


def evaluate(cfg: Config, benchmarks: list[str], out: str | Path, adapter: str | None = None,
             share: tuple[int, int] | None = None) -> dict:
    """Evaluate the clean policy (base + `adapter`) on `benchmarks`; write OUT/eval.json and
    OUT/samples/<benchmark>.jsonl; return the report. Under torchrun every rank runs this, samples its
    share of the problems and returns the report; rank 0 writes the files (and holds OUT meanwhile).
    `share` (i, K): only the i-th of K contiguous shares of each benchmark's problems (`merge_shares` joins them)."""
    if not benchmarks:
        raise ValueError("no benchmarks given")
    from minipsn.tasks.models import check_available

    out = folders.check_writable(out)
    records = {name: benchmark_records(name, cfg) for name in benchmarks}  # fail on data before loading a model
    if share is not None:
        i, K = share
        records = {name: recs[len(recs) * i // K : len(recs) * (i + 1) // K] for name, recs in records.items()}
    check_available(cfg.model.name)  # and on a hub model that cannot load, before OUT is made
    joined = not dist.active() and dist.init()  # torchrun: the problems are split over the ranks (_sample_split)
    if dist.is_main():
        folders.hold(out)  # one writer: two evaluations into one folder would mix their samples files
    try:
        return _evaluate(cfg, benchmarks, records, out, adapter)
    finally:
        if dist.is_main():
            folders.release(out)
        if joined:
            dist.close()


def _evaluate(cfg: Config, benchmarks: list[str], records: dict[str, list[dict]], out: Path,
              adapter: str | None) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from minipsn.sampling.engine import make_engine
    from minipsn.tasks.models import load_policy

    torch.manual_seed(cfg.run.seed)
    model, tok = load_policy(cfg, adapter)
    # the training rollout path (on GPU a folded copy: ~11x NF4 + unmerged LoRA in the DESIGN.md prototype), σ = 0
    clean = dataclasses.replace(cfg, rollout=eval_rollout_config(cfg.rollout, cfg.eval),
                                noise=dataclasses.replace(cfg.noise, sigma=0.0))
    engine = make_engine(model, clean)
    results = {}
    columns = (TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (engine.policy(0.0, [0], cfg.noise.targets) as (sampler, _),
          Progress(*columns, transient=True, disable=not dist.is_main()) as bar):
        for name, recs in records.items():
            results[name] = evaluate_benchmark(sampler, tok, name, recs, cfg, out / "samples" / f"{name}.jsonl",
                                               adapter, bar, engine.name)
    report = _report(cfg, adapter, results, records)
    if dist.is_main():  # every rank holds the report; rank 0 writes it
        _write_report(out, report)
    return report


def _report(cfg: Config, adapter: str | None, results: dict, records: dict[str, list[dict]]) -> dict:
    return {"model": cfg.model.name, "adapter": None if adapter is None else str(Path(adapter).resolve()),
            "n": cfg.eval.n, "seed": cfg.run.seed, "benchmarks": results, "average": average(results),
            "config": cfg.to_dict(), "provenance": provenance(cfg, records)}


def _write_report(out: Path, report: dict) -> None:
    tmp = out / f".eval.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "eval.json")


def share_folder(out: str | Path, share: tuple[int, int]) -> Path:
    """Where `evaluate(..., share=share)` for OUT writes: OUT/shares/<i>-of-<K>."""
    return Path(out) / "shares" / f"{share[0]}-of-{share[1]}"


def merge_shares(cfg: Config, benchmarks: list[str], out: str | Path, adapter: str | None, K: int) -> dict:
    """Join the K shares evaluated into OUT/shares/ (see `evaluate`) into OUT/samples/<benchmark>.jsonl (the meta
    line, then every problem's row in the benchmark's order: the file one evaluation would write) and OUT/eval.json;
    returns the report. The shares are removed once joined."""
    out = Path(out)
    records = {name: benchmark_records(name, cfg) for name in benchmarks}
    results = {}
    for name, recs in records.items():
        lines = [(share_folder(out, (i, K)) / "samples" / f"{name}.jsonl").read_text().splitlines() for i in range(K)]
        metas = {line[0] for line in lines}
        if len(metas) != 1:
            raise ValueError(f"the shares of {out} were sampled with other settings; delete {out / 'shares'}")
        rows = {r["id"]: r for part in lines for r in map(json.loads, part[1:])}
        missing = [r["id"] for r in recs if r["id"] not in rows]
        if missing:
            raise ValueError(f"the shares of {out} lack problem {missing[0]} of {name}; evaluate them again")
        (out / "samples").mkdir(parents=True, exist_ok=True)
        ordered = [rows[r["id"]] for r in recs]
        (out / "samples" / f"{name}.jsonl").write_text("".join(x + "\n" for x in [metas.pop(), *map(json.dumps, ordered)]))
        results[name] = summarize(ordered)
    report = _report(cfg, adapter, results, records)
    _write_report(out, report)
    shutil.rmtree(out / "shares")
    return report
