"""Evaluation: sample n completions per problem from the clean policy, score them, report pass@k.

    pass@k = E_problems[ 1 − C(n − c, k) / C(n, k) ],   c = correct completions out of n

(Chen et al. 2021, the unbiased estimator; arXiv 2602.02555 reports pass@1 … pass@256 on AIME24/25
and other math sets). The ratio of binomials is computed as the product Π_{i=n−c+1}^{n} (1 − k/i),
so n in the thousands never builds a giant integer or a float overflow.

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

Truncated completions count as wrong and do not vote, as in training (rewards.py). Majority vote
groups all correct answers as one (each is equivalent to the gold answer) and wrong ones by the
verifier's normalised spelling; a tie scores the chance a random tie-break picks the right group.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import operator
import os
from collections import Counter
from pathlib import Path

import torch

from minipsn import distributed as dist
from minipsn import folders
from minipsn.config import Config, EvalConfig, RolloutConfig
from minipsn.data import format_prompt, load_benchmark, load_problems
from minipsn.noise import derive_seed
from minipsn.rewards import correctness_rewards
from minipsn.rollout import sample
from minipsn.verify import VERIFIERS, extract_answer
from minipsn.verify import normalise as normalise_answer  # the verifier's canonical spelling

_ANSWER_CHARS = 200  # stored answers are cut here: enough to vote on, keeps samples files small
# evaluation encodes each prompt once for its n rows and drops ended rows as the batch decodes (`rollout.decode`):
# the plain loop's samples; a whole `eval` of the tiny model at n = 256 takes 0.37-0.52 of its time (docs/RESULTS.md)
FAST_SAMPLING = {"shared_prefill": True, "drop_finished": True}


# ---------------------------------------------------------------- the math


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples: 1 − C(n−c, k)/C(n, k)."""
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if n < 1 or c < 0 or k < 1:
        raise ValueError(f"pass@k needs n >= 1, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if c > n or k > n:
        raise ValueError(f"pass@k needs c <= n and k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(n: int) -> list[int]:
    """k = 1, 2, 4, ... <= n, and n itself."""
    ks = [2**j for j in range(n.bit_length()) if 2**j <= n]
    return ks if ks[-1] == n else [*ks, n]


def majority_correct(answers: list[str | None], correct: list[int], truncated: list[bool]) -> float:
    """Majority-vote accuracy of one problem in [0, 1] (see the module docstring for the grouping)."""
    right, wrong = 0, Counter()
    for answer, ok, cut in zip(answers, correct, truncated):
        if ok:
            right += 1
        elif answer is not None and not cut:
            wrong[normalise_answer(answer)] += 1
    top = max(wrong.values(), default=0)
    if right == 0 or right < top:
        return 0.0
    return 1.0 if right > top else 1.0 / (1 + sum(v == top for v in wrong.values()))


def summarize(rows: list[dict]) -> dict:
    """Per-problem rows (answers, correct, lengths, truncated) → one benchmark's numbers; when every row
    carries a `kind` (the mixed synthetic task), also "kinds": {kind: the same numbers over its rows}."""
    numbers = _numbers(rows)
    if all("kind" in r for r in rows):
        numbers["kinds"] = {kind: _numbers([r for r in rows if r["kind"] == kind])
                            for kind in sorted({r["kind"] for r in rows})}
    return numbers


def _numbers(rows: list[dict]) -> dict:
    if not rows:
        raise ValueError("no problems to summarize")
    n = len(rows[0]["correct"])
    if any(len(r["correct"]) != n for r in rows):
        raise ValueError("rows hold different numbers of samples; evaluate every problem with the same n")
    flat = lambda key: [x for r in rows for x in r[key]]
    return {"n": n, "problems": len(rows),
            "pass@k": {str(k): sum(pass_at_k(n, sum(r["correct"]), k) for r in rows) / len(rows) for k in ks_for(n)},
            "mean_acc": sum(flat("correct")) / (n * len(rows)),
            "maj_acc": sum(majority_correct(r["answers"], r["correct"], r["truncated"]) for r in rows) / len(rows),
            "mean_len": sum(flat("lengths")) / (n * len(rows)),
            "trunc_rate": sum(flat("truncated")) / (n * len(rows))}


def average(results: dict[str, dict]) -> dict:
    """Unweighted mean over benchmarks (as the paper's "avg" column); pass@k over the shared ks."""
    vals = list(results.values())
    ks = [k for k in vals[0]["pass@k"] if all(k in v["pass@k"] for v in vals)]
    mean = lambda key: sum(v[key] for v in vals) / len(vals)
    return {"n": vals[0]["n"], "problems": sum(v["problems"] for v in vals),
            "pass@k": {k: sum(v["pass@k"][k] for v in vals) / len(vals) for k in ks},
            **{key: mean(key) for key in ("mean_acc", "maj_acc", "mean_len", "trunc_rate")}}


# ---------------------------------------------------------------- sampling and scoring


def eval_rollout_config(rollout: RolloutConfig, ev: EvalConfig) -> RolloutConfig:
    """The rollout settings of evaluation: EvalConfig's temperature, length and batch, the rest as in training."""
    return dataclasses.replace(rollout, temperature=ev.temperature, max_new_tokens=ev.max_new_tokens,
                               batch_size=ev.batch_size or rollout.batch_size)


def score_rows(texts: list[str], truncated: list[bool], lengths: list[int], answer: str,
               timeout: float = 3.0, last_number: bool = True, unboxed: bool = True,
               verifier: str = VERIFIERS[0]) -> dict:
    """One problem's completions → {answers, correct, lengths, truncated, gold}, scored like training rewards."""
    answers = [extract_answer(t, last_number=last_number, unboxed=unboxed) for t in texts]
    correct = [int(c) for c in correctness_rewards(texts, [answer] * len(texts), truncated, 0.0, timeout, last_number,
                                                   unboxed, verifier=verifier)]
    return {"answers": [a[:_ANSWER_CHARS] if a else None for a in answers], "correct": correct,
            "lengths": [int(x) for x in lengths], "truncated": [bool(x) for x in truncated], "gold": answer}


def sample_problems(model, tok, records: list[dict], benchmark: str, cfg: Config, rcfg: RolloutConfig) -> list[dict]:
    """n completions of each problem, scored; problems share sampling calls, but each draws from its own
    generator seeded by (seed, benchmark, id), so its samples do not depend on its neighbours."""
    device = next(model.parameters()).device
    prompts = [format_prompt(tok, r["problem"], cfg.data.template) for r in records]
    gens = [torch.Generator(device).manual_seed(derive_seed(cfg.run.seed, "eval", benchmark, r["id"])) for r in records]
    ro = sample(model, tok, prompts, cfg.eval.n, rcfg, gens, cfg.model.max_prompt_tokens, **FAST_SAMPLING)
    n, lengths, cut = cfg.eval.n, ro.completion_mask.sum(1).tolist(), ro.truncated.tolist()
    return [{"id": r["id"], **({"kind": r["kind"]} if "kind" in r else {}),
             **score_rows(ro.texts[j * n:(j + 1) * n], cut[j * n:(j + 1) * n], lengths[j * n:(j + 1) * n],
                          r["answer"], cfg.reward.timeout, cfg.reward.last_number, cfg.reward.unboxed_answer,
                          cfg.reward.verifier)}
            for j, r in enumerate(records)]


def quick_eval(model, tok, records: list[dict], eval_cfg: EvalConfig, rollout_cfg: RolloutConfig,
               template: str, seed: int, max_prompt_tokens: int = 4096, timeout: float = 3.0,
               last_number: bool = True, unboxed: bool = True, per_problem: bool = False,
               verifier: str = VERIFIERS[0]) -> dict:
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
                                  unboxed, verifier))
    if per_problem:  # every rank's rows, in problem order (the rank's own on one process)
        rows = [row for part in dist.gather(rows) for row in part]
    s = summarize(rows)
    return {**{f"eval/pass@{k}": v for k, v in s["pass@k"].items()}, "eval/accuracy": s["mean_acc"],
            "eval/maj_accuracy": s["maj_acc"], "eval/truncated_frac": s["trunc_rate"]}


# ---------------------------------------------------------------- resumable samples files


def sampling_meta(cfg: Config, benchmark: str, adapter: str | None, engine: str = "") -> dict:
    """Everything that decides the samples of a benchmark; a samples file made otherwise is not reused."""
    rcfg = eval_rollout_config(cfg.rollout, cfg.eval)
    return {"benchmark": benchmark, "model": cfg.model.name, "quantize": cfg.model.quantize,
            "adapter": adapter_fingerprint(adapter), "engine": engine, "n": cfg.eval.n, "seed": cfg.run.seed,
            "temperature": rcfg.temperature, "top_p": rcfg.top_p, "max_new_tokens": rcfg.max_new_tokens,
            "batch_size": rcfg.batch_size, "template": cfg.data.template, "last_number": cfg.reward.last_number,
            **({} if cfg.reward.unboxed_answer else {"unboxed_answer": False}), "verifier": cfg.reward.verifier}


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
    todo = [r for r in records if r["id"] not in done]
    rcfg = eval_rollout_config(cfg.rollout, cfg.eval)
    task = progress.add_task(name, total=len(records), completed=len(records) - len(todo)) if progress else None
    per_call = max(1, rcfg.batch_size // cfg.eval.n)  # problems per sampling call (eval.batch_size rows)
    if dist.active():
        _sample_split(model, tok, name, todo, cfg, rcfg, per_call, samples, done, progress, task)
        return summarize([done[i] for i in ids])
    with open(samples, "a") as f:
        for s in range(0, len(todo), per_call):
            for row in sample_problems(model, tok, todo[s : s + per_call], name, cfg, rcfg):
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
                  samples: Path, done: dict, progress, task) -> None:
    """torchrun: `todo` in rounds of K·per_call problems, rank r sampling the round's r-th contiguous
    share of per_call. These are the sampling calls one process makes (the same problems batched, so
    the same padding and the same samples bit for bit, whatever K); after each round rank 0 appends
    every rank's rows in problem order, so a kill loses at most one round and the file is the
    one-process file."""
    K, r = dist.world(), dist.rank()
    with open(samples, "a") if dist.is_main() else contextlib.nullcontext() as f:
        for s in range(0, len(todo), K * per_call):
            mine = todo[s + r * per_call : s + (r + 1) * per_call]
            rows = sample_problems(model, tok, mine, name, cfg, rcfg) if mine else []
            for row in (row for part in dist.gather(rows) for row in part):
                if f is not None:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                done[row["id"]] = row
                if progress is not None:
                    progress.advance(task)


# ---------------------------------------------------------------- the evaluation run


def benchmark_records(name: str, cfg: Config) -> list[dict]:
    """Test problems of one benchmark, the first eval.problems of them (0 = all)."""
    if name == "synthetic":  # the run's own synthetic settings (n_ops, max_operand), held-out split
        records = load_problems(dataclasses.replace(cfg.data, dataset="synthetic"), "test")
    else:
        records = load_benchmark(name, "test", cfg.data.data_dir or None, cfg.data.skip_bad_rows)
    return records[: cfg.eval.problems] if cfg.eval.problems else records


def resolve_adapter(path: str) -> tuple[str, Path | None]:
    """An adapter folder, or a run folder (its final adapter, else its latest checkpoint's) →
    (adapter folder, run folder or None)."""
    from minipsn import checkpoint

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
    from minipsn.config import apply_overrides, config_from_dict

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


def evaluate(cfg: Config, benchmarks: list[str], out: str | Path, adapter: str | None = None) -> dict:
    """Evaluate the clean policy (base + `adapter`) on `benchmarks`; write OUT/eval.json and
    OUT/samples/<benchmark>.jsonl; return the report. Under torchrun every rank runs this, samples its
    share of the problems and returns the report; rank 0 writes the files (and holds OUT meanwhile)."""
    if not benchmarks:
        raise ValueError("no benchmarks given")
    from minipsn.models import check_available

    out = folders.check_writable(out)
    records = {name: benchmark_records(name, cfg) for name in benchmarks}  # fail on data before loading a model
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

    from minipsn.engine import make_engine
    from minipsn.models import load_policy

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
    report = {"model": cfg.model.name, "adapter": None if adapter is None else str(Path(adapter).resolve()),
              "n": cfg.eval.n, "seed": cfg.run.seed, "benchmarks": results, "average": average(results),
              "config": cfg.to_dict()}
    if dist.is_main():  # every rank holds the report; rank 0 writes it
        tmp = out / f".eval.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out / "eval.json")
    return report


def results_table(report: dict):
    """A rich table: one row per benchmark and an average row; pass@k columns for k = 1, 2, 4, ..."""
    from rich import box
    from rich.table import Table

    ks = list(report["average"]["pass@k"])
    title = report["model"] + (f" + {report['adapter']}" if report.get("adapter") else "")
    table = Table(title=f"{title}, n = {report['n']}", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="@k: pass@k, acc: mean accuracy, maj: majority vote, trunc: truncated (all in %); len: tokens")
    table.add_column("benchmark", no_wrap=True)
    for col in ("problems", *(f"@{k}" for k in ks), "acc", "maj", "len", "trunc"):
        table.add_column(col, justify="right", no_wrap=True)
    rows = [(f"{name} · {kind}" if kind else name, r) for name, b in report["benchmarks"].items()
            for kind, r in [(None, b), *b.get("kinds", {}).items()]]  # a mixed task's kinds under its row
    rows += [("average", report["average"])] if len(report["benchmarks"]) > 1 else []
    for i, (name, r) in enumerate(rows):
        table.add_row(name, str(r["problems"]), *(f"{100 * r['pass@k'].get(k, math.nan):.1f}" for k in ks),
                      f"{100 * r['mean_acc']:.1f}", f"{100 * r['maj_acc']:.1f}", f"{r['mean_len']:.0f}",
                      f"{100 * r['trunc_rate']:.1f}", end_section=i == len(rows) - 1 - (len(report["benchmarks"]) > 1))
    return table


def print_table(table) -> None:
    """Print at full width even on a narrow terminal: wrapped lines beat numbers cut to "…"."""
    from rich.console import Console

    console = Console()
    width = console.measure(table, options=console.options.update(max_width=1000)).maximum
    (console if width <= console.width else Console(width=width)).print(table)
