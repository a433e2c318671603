"""Engine benchmarks: rollout tokens/s per engine (lean, hf, fast), full PSN-GRPO steps with their PSN and
σ-controller overhead, and evaluation sampling next to HF `generate`.

Rollouts and steps do fixed work: P prompts × G rollouts × T new tokens with the end token suppressed (`NoEos`: a
tokenizer view without an end token), so no row stops early. Each model is loaded afresh per engine (4-bit NF4 +
LoRA, method psn-adaptive; hf: a full-precision base), timed after a warm-up (compile, caches), best of the
repeats. Memory is the CUDA peak, or the process's peak RSS on CPU (monotone over the whole run). PSN overhead =
perturb/fold + restore/unfold; σ-controller overhead = diversity + σ update; both as a share of the step.
Evaluation sampling (`bench_eval`) is the exception to suppressed end tokens: n samples of a few held-out problems
that stop where they stop, as evaluation samples them, by minipsn's evaluation path, its plain loop and HF
`generate`. The helpers here (config, sync, peak memory) are shared with trl.py.
"""
from __future__ import annotations

import dataclasses
import gc
import resource
import tempfile
import time
from dataclasses import dataclass

import torch

from minipsn.run.config import GRPOConfig
from minipsn.run.overrides import build_config
from minipsn.tasks.data import format_prompt
from minipsn.tasks.models import load_policy
from minipsn.tasks.synthetic import synthetic_split

SHAPE_NAME = "qwen2.5-1.5b-shape"  # bench/__init__.py builds it (shape_model_dir)


@dataclass(frozen=True)
class Spec:
    """One benchmarked model: P prompts, G rollouts each, T new tokens; unmerged rollouts timed at T_u."""
    label: str
    model: str      # what load_policy resolves: an alias or a folder
    template: str   # chat or plain
    P: int
    G: int
    T: int
    T_unmerged: int  # the unmerged paths are slow on CUDA: timed on fewer new tokens (tokens/s is per token)
    device: str = "cpu"


class NoEos:
    """The tokenizer with no end token (nor the model's: `rollout.end_ids` reads `stop_ids`), so every row
    runs to max_new_tokens: fixed work for every path."""

    eos_token_id, stop_ids = -1, ()

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


def bench_config(spec: Spec, run_dir: str, engine: str, T: int, sigma: float, quantize: str = "nf4"):
    sets = {"run.out": run_dir, "grpo.prompts_per_step": spec.P, "grpo.group_size": spec.G,
            "grpo.passk_k": min(spec.G, GRPOConfig.passk_k), "rollout.max_new_tokens": T, "eval.max_new_tokens": T,
            "rollout.batch_size": spec.P * spec.G, "rollout.engine": engine, "noise.sigma": sigma,
            "data.template": spec.template, "model.quantize": quantize, "model.max_prompt_tokens": 4096,
            "model.device": spec.device}
    return build_config(model=spec.model, method="psn-adaptive", sets=sets)


def sync(device: str = "cuda"):
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gb(device: str, reset: bool = False) -> float:
    """CUDA peak allocated since the last reset, else the process's peak RSS (GB)."""
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def free_memory() -> None:
    gc.collect()  # the models of the previous engine must be gone before the next one loads
    if torch.cuda.is_available():
        torch._dynamo.reset()  # compiled graphs (and CUDA graph pools) hold on to the folded copy
        torch.cuda.empty_cache()


def _timed(obj, attr: str, acc: list[float]) -> None:
    """Wrap obj.attr (on the instance) so its wall time adds to acc[0]."""
    fn = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sync()
            acc[0] += time.perf_counter() - t
    setattr(obj, attr, wrapper)


def bench_rollouts(trainer, spec: Spec, T: int, reps: int, sigma: float) -> dict:
    """Tokens/s of `trainer.engine` sampling P·G rows × T new tokens (σ > 0: PSN on), best of `reps`."""
    from minipsn.method.noise import derive_seed
    from minipsn.sampling.rollout import sample

    engine, cfg = trainer.engine, trainer.cfg
    rcfg = dataclasses.replace(cfg.rollout, max_new_tokens=T)
    prompts = [format_prompt(trainer.tok, r["problem"], spec.template) for r in trainer.records[: spec.P]]
    seeds = [derive_seed(0, "bench")] * (spec.P * spec.G)
    warm = rcfg if engine.name == "fast" else dataclasses.replace(rcfg, max_new_tokens=min(T, 4))
    runs = []
    for r in range(reps + 1):
        gen = torch.Generator(trainer.device).manual_seed(r)
        sync(spec.device)
        t0 = time.perf_counter()
        with engine.policy(sigma, seeds, cfg.noise.targets) as (model, row_noise):
            ro = sample(model, trainer.tok, prompts, spec.G, warm if r == 0 else rcfg, gen,
                        cfg.model.max_prompt_tokens, row_noise=row_noise)
        sync(spec.device)
        if r > 0:
            runs.append((time.perf_counter() - t0, ro.n_tokens, dict(engine.stats)))
    best = min(runs, key=lambda x: x[0])
    return {"new_tokens": T, "tokens": best[1], "seconds": best[0], "tokens_per_s": best[1] / best[0],
            "all_seconds": [x[0] for x in runs], "noise_in_ms": 1e3 * best[2].get("noise_in_s", 0.0),
            "noise_out_ms": 1e3 * best[2].get("noise_out_s", 0.0)}


def bench_steps(trainer, steps: int, device: str) -> dict:
    """Full PSN-GRPO steps (after one warm-up step): time, phases, PSN and σ-controller overhead, peak memory."""
    sched = [0.0]
    _timed(trainer, "_diversity", sched)
    _timed(trainer.controller, "update", sched)
    rows = []
    for s in range(steps + 1):
        sched[0] = 0.0
        peak_gb(device, reset=True)
        m = trainer.step(s)
        sync(device)
        psn = trainer.engine.stats.get("noise_in_s", 0.0) + trainer.engine.stats.get("noise_out_s", 0.0)
        N = trainer.cfg.grpo.prompts_per_step * trainer.cfg.grpo.group_size
        rows.append({"step_s": m["perf/step_s"], "sample_s": m["perf/sample_s"], "rescore_s": m["perf/rescore_s"],
                     "verify_s": m["perf/verify_s"], "learn_s": m["perf/learn_s"], "psn_s": psn, "sched_s": sched[0],
                     "peak_gb": peak_gb(device), "tokens": m["completion/len_mean"] * N})
    timed = rows[1:]
    mean = {k: sum(r[k] for r in timed) / len(timed) for k in timed[0]}
    mean["peak_gb"] = max(r["peak_gb"] for r in timed)
    mean["psn_pct"] = 100 * mean["psn_s"] / mean["step_s"]
    mean["sched_pct"] = 100 * mean["sched_s"] / mean["step_s"]
    mean["step_s_min"] = min(r["step_s"] for r in timed)  # a shared CPU: the least disturbed step
    # the rest of the step: scoring's advantages, the σ controller, the metrics and the status bookkeeping
    mean["other_s"] = mean["step_s"] - sum(mean[k] for k in ("sample_s", "rescore_s", "verify_s", "learn_s"))
    mean["warmup_step_s"] = rows[0]["step_s"]
    mean["steps_timed"] = len(timed)
    return mean


def bench_engine(spec: Spec, engine: str, work: str, sigma: float, steps: int, reps: int, do_steps: bool) -> dict:
    """Load the policy for one engine (hf: full-precision base), time its rollouts and, if asked, its steps."""
    from minipsn.training.train import Trainer

    quantize = "none" if engine == "hf" else "nf4"
    T = spec.T if engine == "fast" or spec.device == "cpu" else min(spec.T, spec.T_unmerged)
    t0 = time.perf_counter()
    trainer = Trainer(bench_config(spec, tempfile.mkdtemp(dir=work), engine, spec.T, sigma, quantize))
    startup = time.perf_counter() - t0  # model load, LoRA, the engine's copy (imports were paid before)
    trainer.tok = NoEos(trainer.tok)
    peak_gb(spec.device, reset=True)
    out = {"rollout": bench_rollouts(trainer, spec, T, reps, sigma), "torch_threads": torch.get_num_threads(),
           "startup_s": startup}
    out["rollout"]["peak_gb"] = peak_gb(spec.device)  # run.threads (the tiny preset: 1) is set by the Trainer
    if do_steps:
        out["step"] = bench_steps(trainer, steps, spec.device)
        if spec.device == "cpu":  # the profiler's CPU view: what bounds the learner (roofline.py)
            out["learn_bound"] = learn_bound(trainer)
    del trainer
    free_memory()
    return out


def learn_bound(trainer) -> dict:
    """roofline.phase_bound of one learner update: one more step runs with its learner call's arguments kept, and
    that call is timed again without the profiler (the wall time) and then profiled."""
    from minipsn.bench.roofline import phase_bound

    learn, kept = trainer._learn, []
    trainer._learn = lambda *args: kept.append(args) or learn(*args)
    try:
        trainer.step(0)
    finally:
        trainer._learn = learn
    walls = []
    for _ in range(2):  # the least disturbed of two (a shared CPU)
        t0 = time.perf_counter()
        learn(*kept[0])
        walls.append(time.perf_counter() - t0)
    return phase_bound(lambda: learn(*kept[0]), min(walls))


def eval_size(spec: Spec, quick: bool) -> tuple[int, int, int]:
    """(problems, n samples each, new tokens) of the evaluation benchmark: one sampling call of 1,024 rows on the
    tiny model (the exploration experiment's eval.batch_size, n and length)."""
    if spec.label == SHAPE_NAME:
        return (2, 16, 64) if quick else (4, 64, 256)
    return (2, 16, 16) if quick else (4, 256, 64)


def _generated(seqs: torch.Tensor, Tp: int, stops: list[int]) -> int:
    """Tokens `generate` sampled in (rows, Tp + T) sequences: each row's up to and including its first end id."""
    ended = torch.isin(seqs[:, Tp:], torch.tensor(stops, dtype=torch.long, device=seqs.device)).long()
    return int(((ended.cumsum(1) - ended) == 0).sum())


def bench_eval(spec: Spec, work: str, quick: bool, reps: int) -> dict:
    """Evaluation sampling tokens/s: n completions of each of P held-out problems, T new tokens at most, end
    tokens on (rows stop where they stop), from the clean policy of the fast engine, in one call of P·n rows.
    Three paths on the same copy: minipsn's evaluation path (each prompt encoded once, ended rows dropped), its
    plain decode loop (training's), and Hugging Face `generate` (num_return_sequences = n, top_k off, same
    temperature). Tokens are the completion tokens sampled (to the end token), so a path that stops rows
    early is not credited for padding; best of `reps` after a warm-up."""
    from minipsn.evaluation.evaluate import FAST_SAMPLING
    from minipsn.method.noise import derive_seed
    from minipsn.sampling.engine import build_engine
    from minipsn.sampling.rollout import encode_prompts, end_ids, sample

    P, n, T = eval_size(spec, quick)
    cfg = bench_config(spec, tempfile.mkdtemp(dir=work), "fast", T, 0.0)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)  # as an evaluation worker runs (the tiny preset: one thread)
    model, tok = load_policy(cfg)
    engine = build_engine(model, "fast", T)
    rcfg = dataclasses.replace(cfg.rollout, max_new_tokens=T, batch_size=P * n)
    prompts = [format_prompt(tok, r["problem"], spec.template) for r in synthetic_split(cfg.data, "test")[:P]]
    gens = lambda: [torch.Generator(spec.device).manual_seed(derive_seed(0, "eval", "bench", i)) for i in range(P)]

    def minipsn(opts):
        return lambda sampler: sample(sampler, tok, prompts, n, rcfg, gens(), cfg.model.max_prompt_tokens, **opts).n_tokens

    def generate(_):
        ids, mask = (x.to(spec.device) for x in encode_prompts(tok, prompts, cfg.model.max_prompt_tokens))
        with torch.no_grad():
            seqs = engine.plain.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=rcfg.temperature,
                                         top_p=rcfg.top_p, top_k=0, max_new_tokens=T, num_return_sequences=n,
                                         eos_token_id=end_ids(engine.plain, tok), pad_token_id=tok.pad_token_id)
        return _generated(seqs, ids.shape[1], end_ids(engine.plain, tok))

    paths = {"minipsn eval": minipsn(FAST_SAMPLING), "minipsn plain loop": minipsn({}), "HF generate": generate}
    out = {"problems": P, "n": n, "new_tokens": T, "rows_per_call": P * n, "torch_threads": torch.get_num_threads(),
           "engine": engine.name, "paths": {}}
    with engine.policy(0.0, [0], cfg.noise.targets) as (sampler, _):
        for name, run in paths.items():
            runs = []
            for r in range(reps + 1):
                torch.manual_seed(r)  # generate's draws
                sync(spec.device)
                t0 = time.perf_counter()
                tokens = run(sampler)
                sync(spec.device)
                runs.append((time.perf_counter() - t0, tokens))
            best = min(runs[1:], key=lambda x: x[0])
            out["paths"][name] = {"seconds": best[0], "tokens": best[1], "tokens_per_s": best[1] / best[0],
                                  "all_seconds": [x[0] for x in runs[1:]]}
        if spec.device == "cpu":  # the profiler's CPU view: what bounds evaluation sampling (roofline.py)
            from minipsn.bench.roofline import phase_bound

            out["bound"] = phase_bound(lambda: paths["minipsn eval"](sampler), out["paths"]["minipsn eval"]["seconds"])
    top = out["paths"]["HF generate"]["tokens_per_s"]
    for v in out["paths"].values():
        v["vs_generate"] = v["tokens_per_s"] / top
    model = engine = None  # drop them (generate's closure too) before free_memory
    free_memory()
    return out
