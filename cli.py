"""minipsn command line: a thin layer that parses options into a Config and calls minipsn.

    python cli.py train --model tiny
    python cli.py data                       # once, with the network: GSM8K and MATH train into data/
    python cli.py train --model qwen-1.5b --dataset math --sigma 0.003
    python cli.py train --resume runs/latest     # runs/latest links to the newest run made without --out
    python cli.py calibrate --model qwen-1.5b --target-kl 0.003

Bad input ends with one line saying what to change and exit code 2 (`--debug` shows the traceback);
Ctrl-C with one line and exit code 130.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
DEBUG = "--debug" in sys.argv


def friendly(fn):
    """Turn the errors a user can fix (bad values, missing files, out of memory) into one line and exit code 2,
    and Ctrl-C into one line and exit code 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, MemoryError) as e:
            if DEBUG:
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:  # 130 = 128 + SIGINT: a script can tell a stopped run from a finished one
            if DEBUG:
                raise
            if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; one says so
                typer.secho(str(e) or "interrupted", err=True)  # train's say what the run folder holds (folders.py)
            raise typer.Exit(130) from None
    return wrapper


def one_process(command: str, instead: str = "") -> None:
    """Commands that write their files from one process refuse to start under torchrun (each rank would
    write the same files); `train`, `eval` and `compare` split their work over the ranks instead."""
    from minipsn.run import distributed as dist

    if dist.launched():
        raise ValueError(f"{command} runs on one process only; run it without torchrun{instead}")


def resolve(model, method, config, sets, **first_class):
    """Options → Config: first-class flags are --set shortcuts; explicit --set wins over them."""
    from minipsn.run.overrides import build_config, parse_sets

    overrides = {k: v for k, v in first_class.items() if v is not None}
    overrides.update(parse_sets(sets or []))
    return build_config(model=model, method=method, file=config, sets=overrides)


RESUMABLE = ("run.steps", "run.save_every", "run.threads", "run.log_to", "run.log_samples", "eval.")  # a resume may change


def resume_config(resume: str, ignored: list[str], steps, sets: list[str]):
    """The run's own config (latest checkpoint, else config.json) with the few safe changes applied;
    any option that would change what the run is fails, naming it."""
    import json

    from minipsn.run import checkpoint
    from minipsn.run.overrides import apply_overrides, config_from_dict, parse_sets

    run, ckpt = Path(resume), checkpoint.latest(Path(resume))
    if ckpt is None and not (run / "config.json").is_file():
        raise ValueError(f"{resume} is not a run folder (no config.json, no checkpoint); nothing to resume")
    changes = {**({"run.steps": steps} if steps is not None else {}), **parse_sets(sets)}
    unsafe = ignored + [f"--set {k}" for k in changes if not k.startswith(RESUMABLE)]
    if unsafe:
        raise ValueError(f"--resume continues {resume} with its own settings; drop {', '.join(unsafe)} "
                         f"(a resume may change only {', '.join(RESUMABLE)}*) or start a new run with --out")
    saved = checkpoint.load_state(ckpt)["config"] if ckpt else json.loads((run / "config.json").read_text())
    # the trainer says what changed once it has accepted the resume (a refusal comes first, alone)
    return apply_overrides(config_from_dict(saved), {**changes, "run.out": resume})


@app.command()
@friendly
def train(
    model: Optional[str] = typer.Option(None, help="alias (tiny, qwen-1.5b, ...), hub id or local folder"),
    method: Optional[str] = typer.Option(None, help="grpo, psn, psn-notis, psn-kl, psn-adaptive, psn-paper, psn-weight, temperature, passk, psn-passk"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps (run.steps)"),
    sigma: Optional[float] = typer.Option(None, help="initial noise std σ (noise.sigma)"),
    seed: Optional[int] = typer.Option(None, help="run seed (run.seed)"),
    out: Optional[str] = typer.Option(None, help="run folder (run.out); default: a fresh runs/MODEL-METHOD-TIME, "
                                      "which runs/latest then links to"),
    dataset: Optional[str] = typer.Option(None, help="synthetic, gsm8k, math, ..., a .jsonl/.json/.parquet/.csv file, "
                                          "a folder or a hub dataset id (data.dataset)"),
    data_dir: Optional[str] = typer.Option(None, help="folder of local JSON Lines files (data.data_dir)"),
    reward: list[str] = typer.Option([], "--reward", help="reward function module:function, path/file.py:function "
                                     "or verifier, repeatable; weights: --set reward.weights=1,0.5 (reward.functions)"),
    config: Optional[str] = typer.Option(None, help="TOML or JSON config file"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
    resume: Optional[str] = typer.Option(None, help="continue the run in this folder"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Train a LoRA policy with PSN-GRPO."""
    from minipsn.training.train import train as run_train

    if resume is not None:
        given = {"--model": model, "--method": method, "--sigma": sigma, "--seed": seed, "--out": out,
                 "--dataset": dataset, "--data-dir": data_dir, "--reward": reward or None, "--config": config}
        cfg = resume_config(resume, [flag for flag, v in given.items() if v is not None], steps, set_)
    else:
        cfg = resolve(model, method, config, set_, **{"run.steps": steps, "noise.sigma": sigma, "run.seed": seed,
                      "run.out": out, "data.dataset": dataset, "data.data_dir": data_dir,
                      "reward.functions": reward or None})
    run_dir = run_train(cfg, resume=resume is not None)
    typer.echo(f"run folder: {run_dir}")


@app.command("config")
@friendly
def config_(
    model: Optional[str] = typer.Option(None, help="alias (tiny, qwen-1.5b, ...), hub id or local folder"),
    method: Optional[str] = typer.Option(None, help="grpo, psn, psn-notis, psn-kl, psn-adaptive, psn-paper, psn-weight, temperature, passk, psn-passk"),
    config: Optional[str] = typer.Option(None, help="TOML or JSON config file"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """The resolved config: every field's value (bold where it is not the default) and its help."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from minipsn.run.config import Config
    from minipsn.run.overrides import field_help, flatten

    values, defaults = flatten(resolve(model, method, config, set_).to_dict()), flatten(Config().to_dict())
    shown = lambda v: str(v).lower() if isinstance(v, bool) else ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    table = Table("key", "value", "help", title="resolved config (bold: not the default; change one with --set key=value)")
    section = None
    for key, text in field_help().items():
        if section is not None and key.partition(".")[0] != section:
            table.add_section()
        section = key.partition(".")[0]
        table.add_row(key, escape(shown(values[key])), escape(text), style="bold" if values[key] != defaults[key] else None)
    Console().print(table)


@app.command("eval")
@friendly
def eval_(
    model: Optional[str] = typer.Option(None, help="alias (tiny, qwen-1.5b, ...), hub id or local folder"),
    adapter: Optional[str] = typer.Option(None, help="run folder (its adapter and config) or adapter folder"),
    benchmarks: Optional[str] = typer.Option(None, help="comma-separated: synthetic, gsm8k, math500, aime24, "
                                             "aime25, amc23, minerva, olympiadbench (default: data.dataset)"),
    n: Optional[int] = typer.Option(None, help="completions per problem (eval.n); pass@k for k = 1, 2, 4, ... <= n"),
    problems: Optional[int] = typer.Option(None, help="first K problems of each benchmark, 0 = all (eval.problems)"),
    data_dir: Optional[str] = typer.Option(None, help="folder of local JSON Lines files (data.data_dir)"),
    seed: Optional[int] = typer.Option(None, help="sampling seed (run.seed)"),
    out: Optional[str] = typer.Option(None, help="output folder (default RUN/eval or runs/eval-<model>)"),
    config: Optional[str] = typer.Option(None, help="TOML or JSON config file"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """pass@k of the clean policy on math benchmarks; resumes an interrupted evaluation in OUT."""
    from pathlib import Path

    from minipsn.evaluation import evaluate as ev
    from minipsn.evaluation.reports import print_table, results_table
    from minipsn.run.overrides import load_file, parse_sets

    first = {"eval.n": n, "eval.problems": problems, "data.data_dir": data_dir, "run.seed": seed}
    adapter_dir, run_dir = ev.resolve_adapter(adapter) if adapter else (None, None)
    if run_dir is not None:  # model settings come from the run that made the adapter
        overrides = {**(load_file(config) if config else {}), **{k: v for k, v in first.items() if v is not None},
                     **parse_sets(set_)}
        cfg = ev.run_config(run_dir, model, overrides)
    else:
        cfg = resolve(model, None, config, set_, **first)
    names = [b.strip() for b in (benchmarks or cfg.data.dataset).split(",") if b.strip()]
    out_dir = Path(out) if out else ev.default_out(cfg.model.name, adapter_dir, run_dir)
    report = ev.evaluate(cfg, names, out_dir, adapter_dir)
    print_table(results_table(report))
    typer.echo(f"eval: {out_dir / 'eval.json'}")


@app.command("calibrate")
@friendly
def calibrate_(
    model: Optional[str] = typer.Option(None, help="alias (tiny, qwen-1.5b, ...), hub id or local folder"),
    sigmas: str = typer.Option("0,0.001,0.002,0.005,0.01,0.02,0.05,0.1", help="comma-separated σ grid (0 is always added)"),
    target_kl: float = typer.Option(0.003, help="the noise KL per token to reach (the paper's variant-I target)"),
    draws: int = typer.Option(2, help="noise draws averaged per σ"),
    weight_sigmas: str = typer.Option("0.0005,0.001,0.002,0.005,0.01,0.02", help="σ grid of the other space, noise on "
                                      "the base weights (noise.space=weight, psn-weight); empty: skip"),
    temperatures: str = typer.Option("1.05,1.1,1.2,1.4,1.7", help="sampling temperatures whose KL to the T = 1 policy "
                                     "is measured (the temperature arm); empty: skip"),
    adapter: Optional[str] = typer.Option(None, help="calibrate around a trained adapter folder instead of a fresh one"),
    out: str = typer.Option("runs/calibrate", help="folder for calibrate.json"),
    config: Optional[str] = typer.Option(None, help="TOML/JSON config file"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable (targets, rank, P, G, ...)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Noise in policy terms: per σ the noise's KL per token, accuracy, diversity, ‖ΔW‖/‖W‖, in LoRA and weight
    space, and the KL of sampling temperatures; suggests σ and T for a target KL."""
    from rich.console import Console

    from minipsn.experiments.calibrate import calibrate, parse_sigmas, parse_temperatures, table

    one_process("calibrate")
    cfg = resolve(model, None, config, set_)
    report = calibrate(cfg, parse_sigmas(sigmas), target_kl, draws, out, adapter,
                       parse_sigmas(weight_sigmas) if weight_sigmas.strip() else None,
                       parse_temperatures(temperatures) if temperatures.strip() else None)
    for t in table(report):
        Console().print(t)
    spaces = [(f"noise.sigma ({report.get('space', 'lora')})", report)] + (
        [("noise.sigma (noise.space=weight)", report["weight"])] if "weight" in report else [])
    for what, part in spaces:
        best = part["suggested_sigma"]
        typer.echo(f"suggested {what} for kl_noise {target_kl:g}: {best:.3g} ({part['suggestion']})" if best is not None
                   else f"no σ suggested for {what}: {part['suggestion']}")
    if "temperature" in report:
        t = report["temperature"]
        typer.echo(f"suggested rollout.temperature for kl {target_kl:g}: {t['suggested_temperature']:.3g} ({t['suggestion']})"
                   if t["suggested_temperature"] is not None else f"no temperature suggested: {t['suggestion']}")
    typer.echo(f"calibrate: {out}/calibrate.json ({report['seconds']:.0f} s)")


@app.command("headroom")
@friendly
def headroom_(
    model: str = typer.Option("testbed", help="a model trained on the synthetic task (testbed, ceiling, route, tiny, a folder)"),
    n: int = typer.Option(256, help="samples per held-out problem (pass@k up to k = n)"),
    problems: int = typer.Option(100, help="held-out problems"),
    out: str = typer.Option("runs/headroom", help="folder for headroom.json, eval.json and the samples"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """pass@k of the starting policy up to k = n next to what guessing alone would give."""
    from rich.console import Console

    from minipsn.experiments.headroom import headroom, table

    one_process("headroom")
    cfg = resolve(model, None, None, [*set_, f"eval.n={n}", f"eval.problems={problems}"])
    result = headroom(cfg, out)
    Console().print(table(result))
    g = result["guess"]
    typer.echo(f"guess per sample: mode {g['mode']:.2g}, shuffled policy {g['shuffled']:.2g}, uniform {g['uniform']:.2g}")
    typer.echo(f"headroom: {out}/headroom.json ({result['seconds']:.0f} s)")


@app.command("plot")
@friendly
def plot_(
    sources: list[str] = typer.Argument(..., help="run folders, eval folders or eval.json files"),
    out: Optional[str] = typer.Option(None, help="folder for the PNG and PDF files (default ARG/plots or runs/plots)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """pass@k curves (eval.json) and training curves (metrics.jsonl), each as PNG and PDF."""
    from minipsn.experiments.plot import plot

    one_process("plot")
    for path in plot(sources, out):
        typer.echo(str(path))


@app.command("bench")
@friendly
def bench_(
    out: str = typer.Option("bench", help="folder for bench.json"),
    model: str = typer.Option("auto", help="auto (tiny; + qwen2.5-1.5b-shape on CUDA), tiny or qwen2.5-1.5b-shape"),
    steps: int = typer.Option(2, help="timed PSN-GRPO steps per engine, after one warm-up step"),
    quick: bool = typer.Option(False, "--quick", help="fewer prompts and tokens, one repeat (a smoke test)"),
    trl: bool = typer.Option(True, "--trl/--no-trl", help="also time TRL's GRPOTrainer on the same work"),
    paths: str = typer.Option("lean,hf,fast", help="rollout engines whose tokens/s are timed"),
    step_engines: str = typer.Option("", help="engines whose steps are timed (default fast,lean on CPU, fast on CUDA)"),
    sigma: float = typer.Option(0.01, help="noise std σ while timing (PSN on)"),
    verifier_pairs: int = typer.Option(0, help="MATH-500 gold pairs for the verifier (0 = all, -1 = skip)"),
    data_dir: Optional[str] = typer.Option(None, help="folder with math500_test.jsonl (default: the bundled data/)"),
    prompts: int = typer.Option(0, help="P prompts per step (0 = the model's default)"),
    group: int = typer.Option(0, help="G rollouts per prompt (0 = the model's default)"),
    tokens: int = typer.Option(0, help="T new tokens per rollout (0 = the model's default)"),
    fidelity: bool = typer.Option(True, "--fidelity/--no-fidelity", help="also measure whether the sampler applies "
                                  "the learner's whole update (bf16 and fp32, fold vs the fast engine)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Rollout tokens/s per engine, PSN-GRPO step time and overhead, TRL's GRPOTrainer, verifier checks/s,
    sampler/learner fidelity."""
    from rich.console import Console

    from minipsn.bench import run_bench, tables

    one_process("bench")
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    report = run_bench(out, model, steps, quick, trl, split(paths), split(step_engines), sigma, verifier_pairs, data_dir,
                       (prompts, group, tokens), fidelity)
    console = Console()
    for table in tables(report):
        console.print(table)
    typer.echo(f"bench: {out}/bench.json")


@app.command("verify-audit")
@friendly
def verify_audit(
    run: str = typer.Argument(..., help="run folder (its samples.jsonl and eval/samples/*.jsonl)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """The samples a run kept where the strict verifier and Math-Verify disagree, with what each says."""
    from rich.console import Console

    from minipsn.verify.audit import audit, summary, table

    one_process("verify-audit")
    report = audit(run)
    if report["disagree"]:
        Console(width=200).print(table(report))
    typer.echo(summary(report))


@app.command()
@friendly
def compare(
    methods: str = typer.Option("grpo,psn-adaptive", help="comma-separated: grpo, psn, psn-notis, psn-kl, psn-adaptive, psn-paper, psn-weight, temperature, passk, psn-passk"),
    seeds: int = typer.Option(3, help="seeds per method"),
    model: str = typer.Option("tiny", help="alias, hub id or local folder"),
    steps: Optional[int] = typer.Option(None, help="training steps per run (run.steps)"),
    sigma: Optional[float] = typer.Option(None, help="initial σ of the PSN methods (noise.sigma)"),
    benchmarks: str = typer.Option("synthetic", help="comma-separated benchmarks to evaluate on"),
    n: Optional[int] = typer.Option(None, help="samples per problem (eval.n)"),
    out: str = typer.Option("runs/compare", help="folder of the grid; finished runs made with the same settings are reused"),
    workers: int = typer.Option(1, help="(method, seed) jobs at once, one process and torch thread each "
                                "(1 under torchrun: each job runs on all the ranks)"),
    recompute: bool = typer.Option(False, "--recompute", help="redo the finished jobs made with other settings "
                                   "(without it they are an error)"),
    ref: str = typer.Option("grpo", help="the method (or base) every other one is compared with, paired on the problems"),
    other_code: bool = typer.Option(False, "--other-code", help="reuse finished jobs made by other code (compare.json "
                                    "and compare.md list the code versions); without it they are an error"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable (applies to every run)"),
    method_set: list[str] = typer.Option([], "--method-set", help="METHOD:section.key=value, repeatable: one "
                                         "method's own override (e.g. psn-weight:noise.sigma=0.01)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Train and evaluate every (method, seed); write compare.md, compare.json, compare.png and compare_diff.png (each
    method's pass@k minus the reference's, with paired 95 % intervals), each figure as PDF too. Finished jobs are reused when
    they were made with these settings. Under torchrun every job trains and evaluates on all the ranks."""
    from minipsn.experiments.compare import compare as run_compare
    from minipsn.run.overrides import parse_sets

    sets = {k: v for k, v in {"run.steps": steps, "noise.sigma": sigma, "eval.n": n}.items() if v is not None}
    sets.update(parse_sets(set_))
    per_method: dict[str, dict] = {}
    for item in method_set:
        method, sep, rest = item.partition(":")
        if not sep:
            raise ValueError(f"--method-set expects METHOD:section.key=value, got {item!r}")
        per_method.setdefault(method.strip(), {}).update(parse_sets([rest]))
    result = run_compare(model, [m.strip() for m in methods.split(",") if m.strip()], seeds, out, sets,
                         tuple(b.strip() for b in benchmarks.split(",") if b.strip()), workers, recompute, ref,
                         per_method, other_code)
    typer.echo((Path(out) / "compare.md").read_text())
    typer.echo(f"wrote {out}/compare.md, compare.json, compare.png/.pdf, compare_diff.png/.pdf "
               f"({len(result['methods'])} methods × {seeds} seeds)")


@app.command("data")
@friendly
def data_(
    names: Optional[list[str]] = typer.Argument(None, help="benchmarks to write (default: gsm8k math, the training sets)"),
    out: Optional[str] = typer.Option(None, help="folder to write into (default: the bundled data/, read with no --data-dir)"),
    force: bool = typer.Option(False, "--force", help="write files that exist again"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Write benchmarks from the Hugging Face hub as local JSON Lines (data/README.md), so they load offline."""
    from minipsn.run.folders import check_writable
    from minipsn.tasks.data import BUNDLED_DIR, write_from_hub

    folder = check_writable(out or BUNDLED_DIR)
    for name in names or ["gsm8k", "math"]:
        for path, rows in write_from_hub(name, folder, force):
            typer.echo(f"{path}: {rows} rows" if rows is not None else f"{path}: exists, kept (--force writes it again)")


@app.command("preflight")
@friendly
def preflight_(
    model: str = typer.Option("ceiling", help="a model trained on the synthetic task (ceiling, testbed, tiny, a folder)"),
    settings: str = typer.Option("clean,lora:0.02,weight:0.005,temperature:1.2",
                                 help="comma-separated: clean, lora:σ, weight:σ, temperature:T"),
    draws: str = typer.Option("1,256", help="comma-separated D: each problem's n samples from D noise draws (D divides n; clean and temperature: once)"),
    adapter: Optional[str] = typer.Option(None, help="an RL checkpoint's adapter folder (default: the fresh adapter)"),
    kind: Optional[str] = typer.Option("steps", help="only the held-out problems of this kind (mixed task: final, steps; route task: pos, neg; '' = all)"),
    n: int = typer.Option(256, help="samples per problem"),
    problems: int = typer.Option(0, help="held-out problems (0: the preset's)"),
    out: str = typer.Option("runs/preflight", help="folder for preflight.json and the samples (a stopped pre-flight "
                            "into it continues, keeping each finished setting)"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
    other_code: bool = typer.Option(False, "--other-code", help="keep finished settings made by other code"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Does noise explore before any training? pass@k and the tuple choice under each noise setting and D draws."""
    from minipsn.experiments.preflight import preflight

    one_process("preflight")
    extra = [f"eval.n={n}", *([f"eval.problems={problems}"] if problems else []), "eval.n_by_kind="]
    cfg = resolve(model, None, None, [*set_, *extra])
    report = preflight(cfg, [x.strip() for x in settings.split(",") if x.strip()],
                       [int(x) for x in draws.split(",") if x.strip()], out, adapter, kind or None, other_code)
    typer.echo(f"pre-flight: {out}/preflight.json ({len(report['results'])} settings, {report['seconds']:.0f} s)")


@app.command("frontier")
@friendly
def frontier_(
    out: str = typer.Option(..., help="a finished compare grid whose runs kept adapters (run.keep_adapters)"),
    arms: str = typer.Option("grpo", help="comma-separated arms of the grid"),
    steps: str = typer.Option("20,40", help="the kept steps to evaluate"),
    workers: int = typer.Option(1, help="processes at once, one torch thread each"),
    kind: str = typer.Option("steps", help="the kind whose pass@k is the ceiling"),
    k: int = typer.Option(256, help="the k of the ceiling's pass@k"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Large-k reach against learning along training: compare_frontier.json and .png/.pdf for a finished grid."""
    from minipsn.experiments.frontier import frontier, read_grid

    one_process("frontier")
    grid = read_grid(Path(out))
    frontier(grid["model"], [a.strip() for a in arms.split(",")], grid["seeds"], out,
             [int(x) for x in steps.split(",")], grid["overrides"], kind, k, workers)
    typer.echo(f"wrote {out}/compare_frontier.json, compare_frontier.png, compare_frontier.pdf")


@app.command("subset")
@friendly
def subset_(
    model: str = typer.Option(..., help="alias, hub id or local folder: the base the subset is chosen on"),
    benchmarks: str = typer.Option("math500", help="the pool: comma-separated benchmarks the base is evaluated on"),
    n: int = typer.Option(256, help="samples per problem (the base's pass@1 and pass@n)"),
    problems: int = typer.Option(0, help="the first K problems of each pool benchmark (0 = all)"),
    seed: Optional[int] = typer.Option(None, help="the selection's sampling seed (default 1000); evaluate the subset "
                                       "with other seeds"),
    size: Optional[int] = typer.Option(None, help="ceiling problems kept at most, a seeded sample when more qualify "
                                       "(default 200)"),
    min_size: Optional[int] = typer.Option(None, help="fewer qualifying problems is an error (default 150)"),
    max_pass1: Optional[float] = typer.Option(None, help="a ceiling problem's base pass@1 is at most this, and its "
                                              "pass@n above 0 (default 0.1)"),
    never: Optional[int] = typer.Option(None, help="problems the base never solves, kept as their own slice (default "
                                        "50; 0 = none)"),
    max_guess: Optional[float] = typer.Option(None, help="leave out a problem a guess solves more often per sample "
                                              "(default 0.001; 1 = off)"),
    out: str = typer.Option("runs/subset", help="folder for subset.jsonl, subset.json and the base's samples"),
    config: Optional[str] = typer.Option(None, help="TOML or JSON config file"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Choose a ceiling subset on the base: pass@1 <= 0.1 and pass@n > 0, plus a slice it never solves, written as a
    local dataset (evaluate it with --set data.test_split=OUT/subset.jsonl and the benchmark heldout)."""
    from rich.console import Console

    from minipsn.experiments.subset import SELECTION_SEED, Selection, select, table

    one_process("subset")
    seed = SELECTION_SEED if seed is None else seed
    cfg = resolve(model, None, config, set_, **{"eval.n": n, "eval.problems": problems, "run.seed": seed})
    given = {"size": size, "min_size": min_size, "max_pass1": max_pass1, "never": never, "max_guess": max_guess}
    report = select(cfg, [b.strip() for b in benchmarks.split(",") if b.strip()], out,
                    Selection(**{k: v for k, v in given.items() if v is not None}))
    Console().print(table(report))
    typer.echo(f"subset: {report['file']} ({report['kept']['ceiling']} ceiling + {report['kept']['never']} never "
               f"solved; chosen with seed {seed}: evaluate it with another)")


@app.command("plan")
@friendly
def plan_(
    model: str = typer.Option("tiny", help="alias, hub id or local folder"),
    method: str = typer.Option("psn-weight", help="the arm whose two steps are timed (the grid's dearest)"),
    arms: int = typer.Option(3, help="arms of the grid"),
    seeds: int = typer.Option(3, help="seeds per arm"),
    steps: Optional[int] = typer.Option(None, help="training steps per run (run.steps)"),
    benchmark: str = typer.Option("synthetic", help="what every evaluation samples (heldout: data.test_split)"),
    n: Optional[int] = typer.Option(None, help="samples per problem (eval.n)"),
    frontier_points: int = typer.Option(0, help="kept adapters per run that the frontier evaluates"),
    pool: int = typer.Option(0, help="problems the subset selection has still to evaluate (0: chosen)"),
    budget_h: float = typer.Option(24.0, help="refuse a plan over this many hours"),
    out: str = typer.Option("runs/plan", help="folder for plan.json"),
    config: Optional[str] = typer.Option(None, help="TOML or JSON config file"),
    set_: list[str] = typer.Option([], "--set", help="section.key=value, repeatable"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Time two training steps and a 20-problem evaluation here, project the grid's hours as a table, and refuse a
    plan over --budget-h in one line naming what to shrink."""
    from rich.console import Console

    from minipsn.evaluation.evaluate import benchmark_records
    from minipsn.experiments import planner

    one_process("plan")
    cfg = resolve(model, method, config, set_, **{"run.steps": steps, "eval.n": n})
    runs, problems = arms * seeds, len(benchmark_records(benchmark, cfg))
    t = planner.measure(cfg, cfg, benchmark, out)
    rows = planner.project(planner.Grid(runs, cfg.run.steps, runs + 1, runs * frontier_points, problems, pool), t)
    Console().print(planner.table(rows, t, budget_h, f"plan: {arms} arms × {seeds} seeds of {model}"))
    Path(out).mkdir(parents=True, exist_ok=True)
    planner.save(Path(out) / "plan.json", rows, t, budget_h)
    planner.check(rows, budget_h)
    typer.echo(f"plan: {out}/plan.json ({planner.total_hours(rows):.2f} h, within {budget_h:g} h)")


@app.command("build")
@friendly
def build_(
    model: str = typer.Option("tiny", help="a local model: tiny, testbed, ceiling, route, or NAME-bK (build seed K)"),
    out: Optional[str] = typer.Option(None, help="folder to build into (default runs/build-MODEL)"),
    threads: int = typer.Option(0, help="torch threads of the warm start (0 = every core)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Build a local model again from its recipe and say whether its files are the shipped bits (a build differs
    from one CPU to another: the shipped models are why every machine loads the same ones)."""
    from minipsn.tasks.local_models import rebuild

    one_process("build")
    r = rebuild(model, out or f"runs/build-{model}", threads)
    verdict = ("nothing of this name ships: a new build" if r["same"] is None else
               "the same bits as the shipped build" if r["same"] else
               f"differs from the shipped build ({', '.join(r['differ'])}): this machine sums floats in another order")
    typer.echo(f"built {model} into {r['folder']} in {r['seconds']:.0f} s: {verdict}")


def main() -> None:
    """`python cli.py ...` and the `minipsn` console script (pyproject.toml) run this."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
