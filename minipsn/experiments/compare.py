"""Compare exploration methods: train each (method, seed), evaluate pass@k, tabulate mean ± std.

    RUN/base/eval/                 the starting model, no RL (the "base" row: what RL has to beat)
    RUN/<method>-s<seed>/          a normal run folder (metrics.jsonl, adapter/, eval/eval.json)
    RUN/compare.json, compare.md   pass@k (k = 1, 4, 16, 64, 256 where n allows) and accuracy per method, and
                                   each method's Δ pass@k against a reference (`ref`, default grpo) with a
                                   paired 95 % interval over seeds and problems (paired.py)
    RUN/compare.png, .pdf          pass@k curves, mean over seeds with a ±1 std band (plot.bands_figure)
    RUN/compare_diff.png, .pdf     Δ pass@k against the reference, with the interval as a band
compare.md opens with what was compared (model, methods, seeds, steps, benchmarks and problems, n, T) and what
the numbers are; its tables share the k columns. With `workers` > 1 every line a job prints starts with its
name ([psn-s1] step 3/60 | …), as the workers' lines interleave. The jobs, and the workers that run them, are
jobs.py's.
On a task with kinds of question (the ceiling testbed's final and steps questions) each table and figure
repeats per kind: a kind's ceiling can move while the average hides it.

Resumable at the grain of a run: a (method, seed) whose eval.json exists is not redone, one
with a checkpoint resumes its training, but only when it was made with the settings asked for now:
its config.json (training) and eval.json (evaluation settings, benchmarks) are compared first, and
a grid with a result made otherwise fails in one line naming the keys that differ (`recompute`
redoes those jobs instead: the training when a training setting differs, else the evaluation).
The folder belongs to one `compare` at a time (folders.py). Periodic evaluation during training is
off in the grid (`eval.every` = 0 unless set): the final pass@k evaluation is the measurement. The
std is over seeds (population std); with one seed no spread is printed.

Under torchrun (`torchrun --nproc_per_node K cli.py compare …`) the jobs run one after another, each
training and evaluation on all K ranks (one process group for the grid); rank 0 decides which jobs
are finished and alone writes the files.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from minipsn.evaluation.evaluate import benchmark_records
from minipsn.evaluation.provenance import ABSENT, provenance, provenance_differences, settings_differences
from minipsn.experiments.jobs import (
    base_config,
    evaluate_base,
    grid_evaluations,
    in_workers,
    job_config,
    parse_arms,
    run_one,
)
from minipsn.run import distributed as dist
from minipsn.run import folders
from minipsn.run.config import Config
from minipsn.tasks.problems import load_problems

TABLE_KS = (1, 4, 16, 64, 256)
# settings that do not change a job's result: where it writes and logs (`--workers` sets run.threads)
BOOKKEEPING = ("run.out", "run.threads", "run.log_to", "run.log_samples", "run.save_every", "run.keep_adapters")
BASE_KEYS = ("model.", "data.", "rollout.", "reward.", "eval.", "run.seed")  # what the base evaluation depends on


def _differences(folder: Path, cfg: Config, benchmarks: list[str], train: bool) -> tuple[dict, dict]:
    """(what of the training differs from folder/config.json, what of the evaluation differs from
    folder/eval/eval.json); both empty where nothing was stored yet. Settings, and provenance: the code, the
    model's build, device, dtype and torch, and the problems (provenance.py). A key a stored result lacks is a
    difference. `train=False`: the base evaluation (folder/eval only, compared on what an evaluation depends on)."""
    trained, evaluated = folder / "config.json", folder / "eval" / "eval.json"
    train_diff, eval_diff = {}, {}
    if train and trained.is_file():
        stored = json.loads(trained.read_text())
        now = provenance(cfg, {"train": load_problems(cfg.data, "train")})
        train_diff = {**settings_differences(stored, cfg.to_dict(), lambda k: not k.startswith("eval.") and k not in BOOKKEEPING),
                      **provenance_differences(stored.get("provenance"), now)}
    if evaluated.is_file():
        report = json.loads(evaluated.read_text())
        keep = (lambda k: k.startswith("eval.")) if train else (lambda k: k.startswith(BASE_KEYS))
        now = provenance(cfg, {b: benchmark_records(b, cfg) for b in benchmarks})
        eval_diff = {**settings_differences(report["config"], cfg.to_dict(), lambda k: keep(k) and k not in BOOKKEEPING),
                     **provenance_differences(report.get("provenance"), now)}
        if sorted(report["benchmarks"]) != sorted(benchmarks):  # the order is cosmetic: each is sampled on its own
            eval_diff["benchmarks"] = (",".join(report["benchmarks"]), ",".join(benchmarks))
    return train_diff, eval_diff


def check_reuse(out: Path, model: str, methods: list[str], seeds: int, sets: dict, benchmarks: list[str],
                recompute: bool, other_code: bool = False) -> dict[str, list[str]]:
    """Before any job runs: every stored result of the grid must have been made with the settings and the
    provenance asked for now. A mismatch is one error naming the jobs and keys, or, with `recompute`, those jobs
    are cleared (the whole run folder when a training setting differs, else its evaluation) to be redone.
    `other_code`: results of other code (provenance `source`) are reused, and compare.json lists the versions; a
    setting such a result lacks (that code had no such key) is reused too, and returned: {key: [jobs]}."""
    jobs = [("base", out / "base", base_config(model, sets), False)]
    jobs += [(f"{m}-s{s}", out / f"{m}-s{s}", job_config(model, m, s, sets, out / f"{m}-s{s}"), True)
             for m in methods for s in range(seeds)]
    stale, lacked = {}, {}
    for name, folder, cfg, train in jobs:
        diffs = _differences(folder, cfg, benchmarks, train)
        if other_code and any("source" in d for d in diffs):
            for key in sorted({k for d in diffs for k, (was, _) in d.items() if was == ABSENT}):
                lacked.setdefault(key, []).append(name)
            diffs = tuple({k: v for k, v in d.items() if v[0] != ABSENT} for d in diffs)
        train_diff, eval_diff = ({k: v for k, v in d.items() if not (other_code and k == "source")} for d in diffs)
        if train_diff or eval_diff:
            stale[name] = (folder, train_diff, eval_diff)
    if not stale:
        return lacked
    keys = {k: v for _, t, e in stale.values() for k, v in {**t, **e}.items()}
    said = ", ".join(f"{k} ({v[0]} → {v[1]})" for k, v in list(keys.items())[:6]) + (", …" if len(keys) > 6 else "")
    if not recompute:
        code = " (or --other-code to reuse results of other code)" if "source" in keys else ""
        raise ValueError(f"{out} holds results made with other settings: {', '.join(stale)} differ in {said}; "
                         f"rerun with --recompute to redo them{code}, or choose another --out")
    for name, (folder, train_diff, eval_diff) in stale.items():
        print(f"── {name}: made with other settings ({', '.join({**train_diff, **eval_diff})}); recomputing its "
              f"{'training and evaluation' if train_diff else 'evaluation'}")
        shutil.rmtree(folder if train_diff else folder / "eval")
    return lacked


def _on_main(fn, *args):
    """fn(*args) on rank 0; its result, or its ValueError raised, on every rank (none waits for it)."""
    result, error = None, None
    if dist.is_main():
        try:
            result = fn(*args)
        except ValueError as e:
            error = str(e)
    result, error = dist.from_main((result, error))
    if error is not None:
        raise ValueError(error)
    return result


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def summarize(reports: dict[str, list[dict]]) -> dict[str, dict]:
    """{method: [report per seed]} → {method: {"pass@k": {k: [mean, std]}, "acc": [mean, std], "seeds": n}}, over
    the benchmarks' average; on a task with kinds of question (the mixed task), also "kinds": {kind: the same
    over that kind's problems} (a kind is named with its benchmark when there are several benchmarks)."""
    out = {}
    for method, reps in reports.items():
        out[method] = _summary([r["average"] for r in reps])
        benches = reps[0].get("benchmarks", {})
        kinds = {(b, kind) for b, numbers in benches.items() for kind in numbers.get("kinds", {})}
        if kinds:
            out[method]["kinds"] = {(kind if len(benches) == 1 else f"{b} · {kind}"):
                                    _summary([r["benchmarks"][b]["kinds"][kind] for r in reps]) for b, kind in sorted(kinds)}
    return out


def _summary(numbers: list[dict]) -> dict:
    ks = sorted(int(k) for k in numbers[0]["pass@k"])  # JSON keys are strings
    return {"pass@k": {k: _mean_std([x["pass@k"][str(k)] for x in numbers]) for k in ks},
            "acc": _mean_std([x["mean_acc"] for x in numbers]), "maj": _mean_std([x["maj_acc"] for x in numbers]),
            "seeds": len(numbers)}


def markdown(summary: dict[str, dict]) -> str:
    """The pass@k table (mean ± std over seeds), then one per kind of question when the task has kinds; each with
    the k columns of its Δ table (TABLE_KS up to its n, and n)."""
    kinds = next(iter(summary.values())).get("kinds", {})
    parts = [_table(summary)]
    for kind in kinds:
        parts.append(f"**{kind}** (the held-out problems of this kind)\n\n" + _table({m: s["kinds"][kind] for m, s in
                                                                                   summary.items()}))
    return "\n".join(parts)


def header(model: str, methods: list[str], seeds: int, cfg: Config, base_report: dict, ref: str = "grpo") -> str:
    """compare.md's opening lines: what was compared, on what, and what the numbers are."""
    problems = {b: r["problems"] for b, r in base_report["benchmarks"].items()}
    kinds = cfg.eval.kind_n()
    n = f"n = {cfg.eval.n}" + (f" ({', '.join(f'{k}: {v}' for k, v in kinds.items())}; other kinds {cfg.eval.n})" if kinds else "")
    several = seeds > 1
    spread = ("mean ± std over the seeds (population std)" if several else "one seed each: no spread is measured")
    interval = ("with a 95 % interval paired on seeds and problems (stats.py)" if several else
                "without an interval (one seed: no run-to-run spread)")
    against = "the model before RL" if ref == "base" else ref
    return (f"# compare: {', '.join(methods)} on {model}\n\n"
            f"{seeds} seed{'s' if several else ''} per method (seed s of every method shares its data order, "
            f"initialisation and generators), {cfg.run.steps} training steps each; the base row is the model before "
            f"RL, evaluated once. Evaluated on {', '.join(f'{b} ({p} problems)' for b, p in problems.items())}, {n} "
            f"samples per problem at T = {cfg.eval.temperature:g}. pass@k is the unbiased estimator from the n samples, "
            f"averaged over the problems, in %: {spread}. Δ is a method's pass@k minus {against}'s, in points, "
            f"{interval}.\n\n")


def table_ks(n: int) -> list[int]:
    """The k columns of every compare table: TABLE_KS up to n, and n itself."""
    ks = [k for k in TABLE_KS if k <= n]
    return ks if n in ks else [*ks, n]


def _table(summary: dict[str, dict]) -> str:
    ks = table_ks(min(max(s["pass@k"]) for s in summary.values()))
    head = "| method | seeds | " + " | ".join(f"pass@{k}" for k in ks) + " | mean acc | maj acc |"
    lines = [head, "|" + "---|" * (len(ks) + 4)]
    for method, s in summary.items():
        def cell(mean_std, spread=s["seeds"] > 1):  # one seed (and the base row): no spread was measured
            return f"{100 * mean_std[0]:.1f}" + (f" ± {100 * mean_std[1]:.1f}" if spread else "")

        cells = [cell(s["pass@k"][k]) for k in ks] + [cell(s["acc"]), cell(s["maj"])]
        name = "base (before RL)" if method == "base" else method
        lines.append(f"| {name} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_figures(out: Path, summary: dict[str, dict], payload: dict, cfg: Config) -> list[Path]:
    """compare.png/.pdf (pass@k, ± std bands over seeds) and compare_diff.png/.pdf (Δ against the reference, paired
    95 % interval bands), titled with what was compared."""
    from minipsn.experiments import paired
    from minipsn.experiments.plot import bands_figure, save

    seeds, ref = payload["seeds"], payload["paired"]["ref"]
    title = (f"{payload['model']}, {cfg.run.steps} steps, {seeds} seed{'s' if seeds > 1 else ''} per method, "
             f"n = {payload['n']}, {', '.join(payload['benchmarks'])}")
    return (save(bands_figure(summary, f"pass@k after RL: {title}"), out / "compare")
            + save(paired.diff_figure(payload["paired"]["benchmarks"], ref, ["base", *payload["methods"]], seeds, title),
                   out / "compare_diff"))


def compare(model: str, methods: list[str], seeds: int, out: str | Path, sets: dict | None = None,
            benchmarks: tuple[str, ...] = ("synthetic",), workers: int = 1, recompute: bool = False,
            ref: str = "grpo", per_method: dict[str, dict] | None = None, other_code: bool = False) -> dict:
    """Train and evaluate every (method, seed); write compare.json, compare.md, compare.png/.pdf and
    compare_diff.png/.pdf in `out`. `ref` (a method of the grid, or base) is what the paired differences are
    taken against; `per_method` {method: overrides} applies after the grid's `sets` (a σ per noise space, a
    temperature). A method may be given as LABEL=METHOD (`parse_arms`): several arms of one method, each with its
    own `per_method[LABEL]` (a dose-response: psn-k01=psn, psn-k03=psn, …). `workers` > 1 runs that many processes of one torch thread each: trainings, then each
    evaluation split in `workers` shares (on a CPU with that many cores, about `workers` times faster for small
    models, and no worker idles at the end). Under torchrun each job
    runs on all the ranks in turn (`workers` must be 1); rank 0 writes the files. A stored result made
    with other settings is an error, or with `recompute` is redone (`check_reuse`); `other_code` reuses results of
    other code, and compare.json and compare.md say which code made each."""
    arms = parse_arms(methods)
    methods = list(arms)
    outside = [m for m in per_method or {} if m not in methods]
    if outside:
        raise ValueError(f"--method-set names {', '.join(outside)}, not in the grid ({', '.join(methods)}); add it to "
                         "--methods or drop its --method-set")
    if ref not in methods and ref != "base":
        raise ValueError(f"--ref {ref} is not in the grid ({', '.join(['base', *methods])}); add it to --methods "
                         "or choose one of them")
    if seeds < 1:
        raise ValueError("--seeds must be >= 1")
    if workers > 1 and dist.launched():
        raise ValueError("--workers N runs on one process; under torchrun the jobs run one after another, "
                         "each on all the ranks (drop --workers, or run without torchrun)")
    out = folders.check_writable(out)
    joined = not dist.active() and dist.init()  # torchrun: one process group for every job of the grid
    try:
        _on_main(folders.hold, out)  # one compare per grid folder (its jobs lock their own run folders)
        sets = {"eval.every": 0, **(sets or {}), **({"run.threads": 1} if workers > 1 else {}),
                **({"per_method": per_method} if per_method else {}),
                **({"arms": arms} if any(label != m for label, m in arms.items()) else {})}
        lacked = _on_main(check_reuse, out, model, methods, seeds, sets, list(benchmarks), recompute, other_code)
        return _grid(model, methods, seeds, out, sets, benchmarks, workers, ref, lacked)
    finally:
        if dist.is_main():
            folders.release(out)
        if joined:
            dist.close()


def _grid(model: str, methods: list[str], seeds: int, out: Path, sets: dict, benchmarks: tuple[str, ...],
          workers: int, ref: str, lacked: dict[str, list[str]] | None = None) -> dict:
    if workers > 1:
        from minipsn.tasks.models import resolve_name

        resolve_name(model)  # a locally built model is built once, here, not by every worker at once
    grid = [(m, s) for m in methods for s in range(seeds)]
    if workers > 1:
        results = in_workers(model, grid_evaluations(out, grid), sets, list(benchmarks), workers)
    else:
        results = [evaluate_base(model, sets, out / "base" / "eval", list(benchmarks))] + [
            run_one(model, m, s, sets, out / f"{m}-s{s}", list(benchmarks)) for m, s in grid]
    reports = {"base": [results[0]]}
    for (m, _), report in zip(grid, results[1:]):
        reports.setdefault(m, []).append(report)
    summary = summarize(reports)
    n = next(iter(reports.values()))[0]["n"]
    made_by: dict[str, list[str]] = {}  # code digest → jobs: more than one only with --other-code
    for name, report in [("base", results[0]), *((f"{m}-s{s}", r) for (m, s), r in zip(grid, results[1:]))]:
        made_by.setdefault(report.get("provenance", {}).get("code", {}).get("source", "absent"), []).append(name)
    payload = {"model": model, "methods": methods, "seeds": seeds, "n": n, "benchmarks": list(benchmarks),
               "code": made_by, **({"lacked": lacked} if lacked else {}), "overrides": sets, "summary": {m: {**s, "pass@k": {str(k): v for k, v in s["pass@k"].items()}}
                                              for m, s in summary.items()}}
    if dist.is_main():
        from minipsn.experiments import paired

        folders = {"base": {None: out / "base" / "eval"}, **{m: {s: out / f"{m}-s{s}" / "eval" for s in range(seeds)}
                                                             for m in methods}}
        payload["paired"] = {"ref": ref, "benchmarks": paired.paired(folders, ref, list(benchmarks), TABLE_KS)}
        mixed = ("" if len(made_by) == 1 else f"**Made by {len(made_by)} code versions** (provenance source digest: jobs): "
                 + "; ".join(f"{k}: {', '.join(v)}" for k, v in made_by.items()) + "\n\n")
        if lacked:  # settings the older code did not have: its jobs ran as that code did
            mixed += ("Settings some jobs' code did not have (they ran as that code did): "
                      + "; ".join(f"{k}: {', '.join(v)}" for k, v in lacked.items()) + "\n\n")
        (out / "compare.md").write_text(header(model, methods, seeds, base_config(model, sets), results[0], ref) + mixed + markdown(summary) + "\n" + paired.markdown(payload["paired"]["benchmarks"],
                                                                                                  ref, seeds))
        (out / "compare.json").write_text(json.dumps(payload, indent=2))
        write_figures(out, summary, payload, base_config(model, sets))
    dist.barrier()  # torchrun: the files exist before any rank returns (and reads them)
    return payload
