"""The jobs of `compare`'s grid: one arm's seed trained and evaluated, or the base model evaluated.

An arm is a method, or LABEL=METHOD for another arm of the same method with its own overrides (`parse_arms`). A
job's config is the grid's overrides that reach its method (`method_sets`: noise.* only where the method has
noise), then the arm's own, then its seed and folder (`job_config`; the base model's: `base_config`). A job whose
eval.json exists is reused; one with a checkpoint resumes its training.

The jobs run one after another (`run_one`, `evaluate_base`; under torchrun each on all the ranks), or with
`--workers N` on N spawned processes of one torch thread each (`in_workers`): trainings first, then each
evaluation in N shares of its problems, joined when its shares are done, so no worker idles while another finishes
a long job. compare.py runs its grid through them, frontier.py its kept adapters.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import NamedTuple

from minipsn.run import checkpoint
from minipsn.run import distributed as dist
from minipsn.run.config import Config
from minipsn.run.overrides import build_config
from minipsn.run.presets import METHODS

GRID_KEYS = ("per_method", "arms")  # what `sets` carries besides config keys: each arm's overrides and method


def parse_arms(specs: list[str]) -> dict[str, str]:
    """["grpo", "psn-k01=psn"] → {"grpo": "grpo", "psn-k01": "psn"}: an arm is a method, or LABEL=METHOD for
    another arm of the same method (its own overrides by --method-set LABEL:key=value, a dose, a build)."""
    arms = {}
    for spec in specs:
        label, _, method = spec.partition("=")
        label, method = label.strip(), (method or label).strip()
        if method not in METHODS:
            close = difflib.get_close_matches(method, METHODS, n=1)
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}"
                             + (f" (did you mean {close[0]}?)" if close else ""))
        if label in arms or not label.replace("-", "").replace("_", "").replace(".", "").replace("@", "").isalnum():
            raise ValueError(f"arm {label!r} is repeated or not a name (letters, digits, - _ . @); give each arm its own")
        arms[label] = method
    return arms


def arm_method(arm: str, sets: dict) -> str:
    return sets.get("arms", {}).get(arm, arm)


def method_sets(method: str, sets: dict) -> dict:
    """The grid's overrides for one method: noise.* settings (`--sigma`) reach only the methods with
    noise, so a baseline (grpo, temperature, passk: σ = 0) stays one; then that method's own overrides
    (`sets["per_method"][method]`, e.g. the σ calibrated for its noise space, or a temperature)."""
    own = sets.get("per_method", {}).get(method, {})
    real = arm_method(method, sets)
    sets = {k: v for k, v in sets.items() if k not in GRID_KEYS}
    if METHODS[real].get("noise.sigma") == 0.0:
        sets = {k: v for k, v in sets.items() if not k.startswith("noise.")}
    return {**sets, **own}


def job_config(model: str, arm: str, seed: int, sets: dict, run_dir: Path) -> Config:
    """The config of one job: arm `arm` (a method, or a label of one: sets["arms"]) with seed `seed`."""
    return build_config(model=model, method=arm_method(arm, sets), sets={**method_sets(arm, sets), "run.seed": seed,
                                                                         "run.out": str(run_dir)})


def base_config(model: str, sets: dict) -> Config:
    return build_config(model=model, sets={**{k: v for k, v in sets.items() if k not in GRID_KEYS}, "run.seed": 0})


def _job_state(run_dir: Path) -> tuple[dict | None, bool, bool]:
    """(its eval report or None, whether its adapter is saved, whether it has a checkpoint to resume)."""
    report_path = run_dir / "eval" / "eval.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return report, (run_dir / "adapter" / "adapter_config.json").is_file(), checkpoint.latest(run_dir) is not None


def run_one(model: str, method: str, seed: int, sets: dict, run_dir: Path, benchmarks: list[str]) -> dict:
    """Train (or resume) one (method, seed) and evaluate it; returns its eval report."""
    from minipsn.evaluation.evaluate import evaluate
    from minipsn.training.train import train

    report_path = run_dir / "eval" / "eval.json"
    report, trained, resume = dist.from_main(_job_state(run_dir) if dist.is_main() else None)  # alike on every rank
    if report is not None:
        print(f"{run_dir.name}: done, reusing {report_path}")
        return report
    cfg = job_config(model, method, seed, sets, run_dir)
    if not trained:
        print(f"── {run_dir.name}: training {method}, seed {seed}")
        train(cfg, resume=resume)
        dist.barrier()  # torchrun: rank 0 has written the adapter before any rank loads it
    print(f"── {run_dir.name}: evaluating")
    return evaluate(cfg, benchmarks, run_dir / "eval", adapter=str(run_dir / "adapter"))


def evaluate_base(model: str, sets: dict, out: Path, benchmarks: list[str]) -> dict:
    """pass@k of the starting model (no adapter) with the grid's evaluation settings and seed 0."""
    from minipsn.evaluation.evaluate import evaluate

    report_path = out / "eval.json"
    done = report_path.is_file() if dist.is_main() else None
    if dist.from_main(done):
        print(f"base: done, reusing {report_path}")
        return dist.from_main(json.loads(report_path.read_text()) if dist.is_main() else None)
    print("── base: evaluating the model before RL")
    return evaluate(base_config(model, sets), benchmarks, out)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _train_job(model: str, method: str, seed: int, sets: dict, run_dir: Path) -> None:
    """A worker's training of one (method, seed), resumed from its checkpoint when it has one; its lines start with
    [method-sS], as the other workers' lines interleave with them."""
    from minipsn.run.printlog import labelled
    from minipsn.training.train import train

    _, trained, resume = _job_state(run_dir)
    if not trained:
        with labelled(run_dir.name):
            print(f"── training {method}, seed {seed}")
            train(job_config(model, method, seed, sets, run_dir), resume=resume)


class Evaluation(NamedTuple):
    """One evaluation of a grid: of arm `arm`'s seed `seed` (arm None: the base model), trained into `run_dir`, of
    `adapter` (None: no adapter), into `eval_dir`."""
    arm: str | None
    seed: int
    run_dir: Path | None
    eval_dir: Path
    adapter: Path | None


def _eval_share(model: str, job: Evaluation, sets: dict, benchmarks: list[str], share: tuple[int, int]) -> None:
    """A worker's evaluation of one share of a job's problems."""
    from minipsn.evaluation.evaluate import evaluate, share_folder
    from minipsn.run.printlog import labelled

    cfg = base_config(model, sets) if job.arm is None else job_config(model, job.arm, job.seed, sets, job.run_dir)
    name = "base" if job.arm is None else job.eval_dir.parent.name + ("" if job.eval_dir.name == "eval" else f" {job.eval_dir.name}")
    with labelled(f"{name} eval {share[0] + 1}/{share[1]}"):
        evaluate(cfg, benchmarks, share_folder(job.eval_dir, share), None if job.adapter is None else str(job.adapter),
                 share)


def in_workers(model: str, jobs: list[Evaluation], sets: dict, benchmarks: list[str], workers: int) -> list[dict]:
    """Evaluations (and the trainings they need) on `workers` processes of one torch thread each: trainings first,
    then each evaluation in `workers` shares of its problems, joined when its shares are done, so no worker idles
    while another finishes a long job. Returns the reports, in the order of `jobs`."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from minipsn.evaluation.evaluate import merge_shares

    report = lambda j: j.eval_dir / "eval.json"  # noqa: E731
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
    running, left, training = {}, {j: workers for j in jobs}, {}

    def evaluate_in_shares(job):
        for i in range(workers):
            running[pool.submit(_eval_share, model, job, sets, benchmarks, (i, workers))] = ("eval", job)

    try:
        for job in jobs:
            if report(job).is_file():
                print(f"{job.eval_dir.relative_to(job.eval_dir.parents[1])}: done, reusing {report(job)}")
            elif job.run_dir is None or _job_state(job.run_dir)[1]:
                evaluate_in_shares(job)
            elif job.run_dir in training:  # another evaluation of the same run waits for its training
                training[job.run_dir].append(job)
            else:
                training[job.run_dir] = [job]
                running[pool.submit(_train_job, model, job.arm, job.seed, sets, job.run_dir)] = ("train", job)
        while running:
            for future in wait(running, return_when=FIRST_COMPLETED)[0]:
                kind, job = running.pop(future)
                future.result()  # a worker's error ends the grid here, with its message
                if kind == "train":
                    for waiting in training.pop(job.run_dir):
                        evaluate_in_shares(waiting)
                    continue
                left[job] -= 1
                if left[job] == 0:
                    cfg = base_config(model, sets) if job.arm is None else job_config(model, job.arm, job.seed, sets, job.run_dir)
                    merge_shares(cfg, benchmarks, job.eval_dir, None if job.adapter is None else str(job.adapter), workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [json.loads(report(j).read_text()) for j in jobs]


def grid_evaluations(out: Path, grid: list[tuple[str, int]]) -> list[Evaluation]:
    """The base model's evaluation, then each (arm, seed)'s final adapter's."""
    return [Evaluation(None, 0, None, out / "base" / "eval", None)] + [
        Evaluation(m, s, out / f"{m}-s{s}", out / f"{m}-s{s}" / "eval", out / f"{m}-s{s}" / "adapter") for m, s in grid]
