"""Benchmarks: rollout tokens/s per engine, evaluation sampling next to HF generate, a full PSN-GRPO step, PSN
overhead, TRL's GRPOTrainer, the verifier.

    python cli.py bench --out bench            # tiny on CPU; + a Qwen2.5-1.5B-shaped random model on CUDA
    python cli.py bench --quick --no-trl       # smaller, a smoke test

On one H100 (an estimate: not run yet) --quick (P=4, T=256) should take about 3 minutes, the default
(P=8, G=8, T=512) 5-6, most of it TRL's two HF-generate steps and the first torch.compile.

Every path does the same work: P prompts × G rollouts × T new tokens with the end token suppressed, so no
row stops early (minipsn: a tokenizer view without an end token; TRL: `min_new_tokens = T`). Each model is
loaded afresh per engine (4-bit NF4 + LoRA, method psn-adaptive), timed after a warm-up (compile, caches),
best of the repeats. Memory is the CUDA peak, or the process's peak RSS on CPU (monotone over the whole
run). PSN overhead = perturb/fold + restore/unfold; σ-controller overhead = diversity + σ update; both as a
share of the step. Evaluation sampling (`bench_eval`) is the exception to suppressed end tokens: n samples of a
few held-out problems that stop where they stop, as evaluation samples them, by minipsn's evaluation path, its
plain loop and HF `generate`. A number that could not be measured is recorded with the reason, never estimated.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minipsn.config import GRPOConfig, build_config
from minipsn.data import BUNDLED_DIR, format_prompt, synthetic_split
from minipsn.folders import check_writable
from minipsn.models import load_policy

SHAPE_NAME = "qwen2.5-1.5b-shape"
QWEN15_SHAPE = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True)


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


def specs(device: str, quick: bool, model: str, P: int = 0, G: int = 0, T: int = 0) -> list[Spec]:
    """The models to time on this device; P, G, T > 0 override every model's size."""
    tiny = Spec("tiny", "tiny", "chat", 4 if quick else 8, 4 if quick else 8, 16 if quick else 64, 16 if quick else 64,
                "cpu")
    out = [tiny] if model in ("auto", "tiny") else []
    if model == SHAPE_NAME and device != "cuda":
        raise ValueError(f"--model {SHAPE_NAME} needs CUDA (a 1.5B-shaped model is not timed on CPU)")
    if model in ("auto", SHAPE_NAME) and device == "cuda":
        out.append(Spec(SHAPE_NAME, str(shape_model_dir()), "plain", 4 if quick else 8, 8, 256 if quick else 512, 128,
                        "cuda"))
    if not out:
        raise ValueError(f"unknown bench model {model!r}; use auto, tiny or {SHAPE_NAME}")
    if min(P, G, T) < 0 or G == 1:
        raise ValueError("--prompts, --group and --tokens must be >= 0 (0 = the default) and --group >= 2")
    return [dataclasses.replace(s, P=P or s.P, G=G or s.G, T=T or s.T, T_unmerged=min(s.T_unmerged, T or s.T))
            for s in out]


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for pkg in ("transformers", "peft", "bitsandbytes", "trl"):
        try:
            info[pkg] = __import__(pkg).__version__
        except ImportError:
            info[pkg] = None
    return info


def shape_model_dir() -> Path:
    """A random-init model of Qwen2.5-1.5B's shape (bf16, cached) with a byte-level tokenizer (Qwen2's pipeline,
    no merges, so `AutoTokenizer` reloads it as is) padded to the whole vocabulary, so any sampled id decodes.
    Built on the GPU in seconds; about 3 GB on disk."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    root = Path(os.environ.get("MINIPSN_CACHE", Path.home() / ".cache" / "minipsn"))
    folder = root / SHAPE_NAME
    if (folder / "done").exists():
        return folder
    V = QWEN15_SHAPE["vocab_size"]
    vocab = {"<|endoftext|>": 0, "<|im_end|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    vocab.update({f"<t{i}>": i for i in range(len(vocab), V)})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config = Qwen2Config(bos_token_id=None, eos_token_id=1, pad_token_id=0, **QWEN15_SHAPE)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    print(f"building {SHAPE_NAME} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params) in {folder}")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "done").write_text("ok")
    del model
    torch.cuda.empty_cache()
    return folder


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


def _config(spec: Spec, run_dir: str, engine: str, T: int, sigma: float, quantize: str = "nf4"):
    sets = {"run.out": run_dir, "grpo.prompts_per_step": spec.P, "grpo.group_size": spec.G,
            "grpo.passk_k": min(spec.G, GRPOConfig.passk_k), "rollout.max_new_tokens": T, "eval.max_new_tokens": T,
            "rollout.batch_size": spec.P * spec.G, "rollout.engine": engine, "noise.sigma": sigma,
            "data.template": spec.template, "model.quantize": quantize, "model.max_prompt_tokens": 4096,
            "model.device": spec.device}
    return build_config(model=spec.model, method="psn-adaptive", sets=sets)


def _sync(device: str = "cuda"):
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gb(device: str, reset: bool = False) -> float:
    """CUDA peak allocated since the last reset, else the process's peak RSS (GB)."""
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _free() -> None:
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
            _sync()
            acc[0] += time.perf_counter() - t
    setattr(obj, attr, wrapper)


def bench_rollouts(trainer, spec: Spec, T: int, reps: int, sigma: float) -> dict:
    """Tokens/s of `trainer.engine` sampling P·G rows × T new tokens (σ > 0: PSN on), best of `reps`."""
    from minipsn.noise import derive_seed
    from minipsn.rollout import sample

    engine, cfg = trainer.engine, trainer.cfg
    rcfg = dataclasses.replace(cfg.rollout, max_new_tokens=T)
    prompts = [format_prompt(trainer.tok, r["problem"], spec.template) for r in trainer.records[: spec.P]]
    seeds = [derive_seed(0, "bench")] * (spec.P * spec.G)
    warm = rcfg if engine.name == "fast" else dataclasses.replace(rcfg, max_new_tokens=min(T, 4))
    runs = []
    for r in range(reps + 1):
        gen = torch.Generator(trainer.device).manual_seed(r)
        _sync(spec.device)
        t0 = time.perf_counter()
        with engine.policy(sigma, seeds, cfg.noise.targets) as (model, row_noise):
            ro = sample(model, trainer.tok, prompts, spec.G, warm if r == 0 else rcfg, gen,
                        cfg.model.max_prompt_tokens, row_noise=row_noise)
        _sync(spec.device)
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
        _peak_gb(device, reset=True)
        m = trainer.step(s)
        _sync(device)
        psn = trainer.engine.stats.get("noise_in_s", 0.0) + trainer.engine.stats.get("noise_out_s", 0.0)
        N = trainer.cfg.grpo.prompts_per_step * trainer.cfg.grpo.group_size
        rows.append({"step_s": m["perf/step_s"], "sample_s": m["perf/sample_s"], "learn_s": m["perf/learn_s"],
                     "psn_s": psn, "sched_s": sched[0], "peak_gb": _peak_gb(device),
                     "tokens": m["completion/len_mean"] * N})
    timed = rows[1:]
    mean = {k: sum(r[k] for r in timed) / len(timed) for k in timed[0]}
    mean["peak_gb"] = max(r["peak_gb"] for r in timed)
    mean["psn_pct"] = 100 * mean["psn_s"] / mean["step_s"]
    mean["sched_pct"] = 100 * mean["sched_s"] / mean["step_s"]
    mean["step_s_min"] = min(r["step_s"] for r in timed)  # a shared CPU: the least disturbed step
    mean["warmup_step_s"] = rows[0]["step_s"]
    mean["steps_timed"] = len(timed)
    return mean


def bench_engine(spec: Spec, engine: str, work: str, sigma: float, steps: int, reps: int, do_steps: bool) -> dict:
    """Load the policy for one engine (hf: full-precision base), time its rollouts and, if asked, its steps."""
    from minipsn.train import Trainer

    quantize = "none" if engine == "hf" else "nf4"
    T = spec.T if engine == "fast" or spec.device == "cpu" else min(spec.T, spec.T_unmerged)
    trainer = Trainer(_config(spec, tempfile.mkdtemp(dir=work), engine, spec.T, sigma, quantize))
    trainer.tok = NoEos(trainer.tok)
    _peak_gb(spec.device, reset=True)
    out = {"rollout": bench_rollouts(trainer, spec, T, reps, sigma), "torch_threads": torch.get_num_threads()}
    out["rollout"]["peak_gb"] = _peak_gb(spec.device)  # run.threads (the tiny preset: 1) is set by the Trainer
    if do_steps:
        out["step"] = bench_steps(trainer, steps, spec.device)
    del trainer
    _free()
    return out


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
    from minipsn.engine import build_engine
    from minipsn.evaluate import FAST_SAMPLING
    from minipsn.noise import derive_seed
    from minipsn.rollout import end_ids, encode_prompts, sample

    P, n, T = eval_size(spec, quick)
    cfg = _config(spec, tempfile.mkdtemp(dir=work), "fast", T, 0.0)
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
                _sync(spec.device)
                t0 = time.perf_counter()
                tokens = run(sampler)
                _sync(spec.device)
                runs.append((time.perf_counter() - t0, tokens))
            best = min(runs[1:], key=lambda x: x[0])
            out["paths"][name] = {"seconds": best[0], "tokens": best[1], "tokens_per_s": best[1] / best[0],
                                  "all_seconds": [x[0] for x in runs[1:]]}
    top = out["paths"]["HF generate"]["tokens_per_s"]
    for v in out["paths"].values():
        v["vs_generate"] = v["tokens_per_s"] / top
    del model, engine
    _free()
    return out


def bench_trl(spec: Spec, work: str, sigma: float, steps: int) -> dict:
    """TRL's GRPOTrainer on the same policy (NF4 + peft LoRA), P·G rows × T tokens, HF generate, in-process."""
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
    except ImportError as e:
        return {"skipped": f"TRL is not usable: {e}"}
    cfg = _config(spec, tempfile.mkdtemp(dir=work), "lean", spec.T, sigma)
    model, tok = load_policy(cfg)
    N, cuda = spec.P * spec.G, spec.device == "cuda"
    prompts = [format_prompt(tok, r["problem"], spec.template) for r in synthetic_split(cfg.data, "train", 0)]
    Tp = max(len(ids) for ids in tok(prompts[: spec.P * (steps + 1)], add_special_tokens=False)["input_ids"])
    rows_per_micro = max(1, cfg.grpo.micro_batch_tokens // (Tp + spec.T))  # minipsn's learner micro-batch
    mb = max(d for d in range(1, N + 1) if N % d == 0 and d <= rows_per_micro)
    data = Dataset.from_dict({"prompt": prompts[: spec.P * (steps + 1)]})
    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(dir=work), per_device_train_batch_size=mb,
                          gradient_accumulation_steps=N // mb, num_generations=spec.G, max_completion_length=spec.T,
                          temperature=cfg.rollout.temperature, beta=0.0, learning_rate=cfg.grpo.lr,
                          max_steps=steps + 1, logging_strategy="no", save_strategy="no", report_to=[],
                          gradient_checkpointing=cfg.model.gradient_checkpointing, bf16=cuda, use_cpu=not cuda,
                          generation_kwargs={"min_new_tokens": spec.T}, shuffle_dataset=False, seed=0,
                          disable_tqdm=True, dataloader_num_workers=0)

    class Clock(TrainerCallback):
        marks: list[float] = []

        def on_train_begin(self, *a, **k):
            Clock.marks = [time.perf_counter()]

        def on_step_end(self, *a, **k):
            _sync(spec.device)
            Clock.marks.append(time.perf_counter())

    def zero_reward(completions, **kwargs):
        return [0.0] * len(completions)  # the score does not change the work; the verifier is timed apart

    try:
        trainer = trl.GRPOTrainer(model=model, reward_funcs=zero_reward, args=args, train_dataset=data,
                                  processing_class=tok, callbacks=[Clock()])
        _peak_gb(spec.device, reset=True)
        trainer.train()
    except (RuntimeError, ValueError, TypeError, AttributeError, ImportError, KeyError) as e:
        return {"skipped": f"TRL failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    finally:
        model = trainer = None
        _free()
    times = [b - a for a, b in zip(Clock.marks, Clock.marks[1:])]
    if len(times) < 2:
        return {"skipped": f"TRL ran {len(times)} steps, need a warm-up and a timed one"}
    timed = times[1:]
    return {"trl": trl.__version__, "step_s": sum(timed) / len(timed), "warmup_step_s": times[0],
            "steps_timed": len(timed), "peak_gb": _peak_gb(spec.device), "micro_batch_rows": mb,
            "generation": "transformers generate (use_vllm=False), NF4 base + peft LoRA, no PSN",
            "loss": args.loss_type}


def symbolic_pairs(golds: list[str]) -> list[tuple[str, str]]:
    """(pred, gold) pairs that the cheap stages cannot decide, so every one reaches the sympy worker:
    each expression gold against sympy's LaTeX spelling of it, of it expanded, and of 15 digits of it
    (equal), and of it plus 1 (unequal)."""
    import sympy

    from minipsn.verify import _cheap_verdict, normalise
    from minipsn.verify.parse import LatexError, TooLarge, parse_answer

    pairs = []
    for gold in golds:
        try:
            value = parse_answer(normalise(gold))
        except (LatexError, TooLarge, RecursionError):
            continue
        if not isinstance(value, sympy.Expr) or isinstance(value, sympy.MatrixBase) or value.has(sympy.I):
            continue
        spellings = (sympy.latex(value), sympy.latex(sympy.expand(value)), sympy.latex(value + 1),
                     *((str(sympy.N(value, 15)),) if value.is_number else ()))
        for pred in dict.fromkeys(spellings):
            if _cheap_verdict(pred, gold)[0] is None:
                pairs.append((pred, gold))
    return pairs


def bench_verify(data_dir: Path, limit: int) -> dict:
    """Verifier checks/s on MATH-500: (boxed answer of the gold solution, gold answer) pairs, nearly all
    decided on the cheap exact path, and under "symbolic" a mix that reaches the sympy stage (symbolic_pairs)."""
    from minipsn.verify import bench_verifier, extract_answer

    path = data_dir / "math500_test.jsonl"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs = [(extract_answer(r["solution"]) or "", r["answer"]) for r in rows if r.get("solution")]
    hard = symbolic_pairs([r["answer"] for r in rows])
    cut = (lambda xs: xs[:limit]) if limit > 0 else (lambda xs: xs)
    return {"source": str(path), **bench_verifier(cut(pairs)), "symbolic": bench_verifier(cut(hard))}


def run_bench(out: str, model: str = "auto", steps: int = 2, quick: bool = False, trl: bool = True,
              paths: tuple[str, ...] = ("lean", "hf", "fast"), step_engines: tuple[str, ...] = (),
              sigma: float = 0.01, verifier_pairs: int = 0, data_dir: str | None = None,
              size: tuple[int, int, int] = (0, 0, 0), fidelity: bool = True) -> dict:
    """Run every benchmark, write OUT/bench.json, return the report. Steps are timed for `step_engines`, by
    default fast and lean on CPU, fast only on CUDA (a lean 1.5B step samples at ~700 tokens/s: about a minute)."""
    check_writable(out)
    if steps < 1:
        raise ValueError("--steps must be >= 1 (timed steps after the warm-up)")
    for name in (*paths, *step_engines):
        if name not in ("lean", "hf", "fast"):
            raise ValueError(f"unknown engine {name!r} in the bench; use lean, hf or fast")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"machine": machine_info(), "settings": {"steps": steps, "quick": quick, "sigma": sigma,
              "method": "psn-adaptive", "eos": "suppressed (every row runs T new tokens)"}, "models": {}}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as work:
        for spec in specs(device, quick, model, *size):
            entry = {"spec": dataclasses.asdict(spec), "engines": {}}
            if spec.label == SHAPE_NAME:
                entry["spec"]["model"] = f"random init, {QWEN15_SHAPE}"
            stepped = step_engines or (("fast", "lean") if spec.device == "cpu" else ("fast",))
            reps = 3 if spec.device == "cpu" and not quick else 1  # best of 3 on a (possibly shared) CPU
            for name in dict.fromkeys((*paths, *stepped)):
                entry["engines"][name] = bench_engine(spec, name, work, sigma, steps, reps, name in stepped)
            entry["eval"] = bench_eval(spec, work, quick, reps)
            entry["trl"] = bench_trl(spec, work, sigma, steps) if trl else {"skipped": "--no-trl"}
            entry["trl_ratio"] = {e: entry["trl"]["step_s"] / v["step"]["step_s"] for e, v in entry["engines"].items()
                                  if "step" in v and "step_s" in entry["trl"]}
            report["models"][spec.label] = entry
    report["verifier"] = (bench_verify(Path(data_dir) if data_dir else BUNDLED_DIR, verifier_pairs)
                          if verifier_pairs >= 0 else {"skipped": "--verifier-pairs -1"})
    if fidelity:  # does the sampler sample the learner's policy (fidelity.py): tiny on CPU, the 1.5B shape on CUDA
        from minipsn.fidelity import bench_fidelity

        shape = str(shape_model_dir()) if device == "cuda" and model in ("auto", SHAPE_NAME) else "tiny"
        report["fidelity"] = bench_fidelity(device, shape, T=24 if shape == "tiny" else 64)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    return report


def eval_table(e: dict, label: str, table):
    """Evaluation sampling: tokens/s of each path over the same work, and its ratio to HF generate."""
    t = table(f"evaluation sampling · {label} · {e['problems']} problems × n = {e['n']} · ≤ {e['new_tokens']} new tokens",
              "path", "tokens/s", "seconds", "tokens", "vs generate")
    for name, v in e["paths"].items():
        t.add_row(name, f"{v['tokens_per_s']:,.0f}", f"{v['seconds']:.2f}", f"{v['tokens']:,}", f"{v['vs_generate']:.2f}")
    t.caption = (f"{e['engine']} engine, clean policy, end tokens on, {e['rows_per_call']} rows per call, "
                 f"{e['torch_threads']} torch thread(s); minipsn eval: each prompt encoded once, ended rows dropped")
    return t


def tables(report: dict) -> list:
    """rich Tables: machine and settings; per model its rollouts and its steps; the verifier."""
    from rich.table import Table

    def table(title, *cols):
        t = Table(title=title)
        for i, c in enumerate(cols):
            t.add_column(c, justify="left" if i == 0 else "right")
        return t

    m = report["machine"]
    head = table(f"{m['cpu']} ({m['cpu_cores']} cores) · torch {m['torch']} · {m['cuda_device'] or 'no CUDA'}",
                 "setting", "value")
    for k, v in report["settings"].items():
        head.add_row(k, str(v))
    out = [head]
    for label, entry in report["models"].items():
        s = entry["spec"]
        ro = table(f"rollouts · {label} · {s['P']}×{s['G']} rows · {s['device']}", "engine", "tokens/s", "new tokens",
                   "PSN in ms", "PSN out ms", "peak GB")
        st = table(f"PSN-GRPO steps · {label} · T={s['T']}", "engine", "step s", "sample", "learn", "PSN %",
                   "sched %", "peak GB", "vs TRL")
        for name, e in entry["engines"].items():
            r = e["rollout"]
            ro.add_row(name, f"{r['tokens_per_s']:,.0f}", str(r["new_tokens"]), f"{r['noise_in_ms']:.1f}",
                       f"{r['noise_out_ms']:.1f}", f"{r['peak_gb']:.2f}")
            if "step" in e:
                x, ratio = e["step"], entry["trl_ratio"].get(name)
                st.add_row(name, f"{x['step_s']:.2f}", f"{x['sample_s']:.2f}", f"{x['learn_s']:.2f}",
                           f"{x['psn_pct']:.2f}", f"{x['sched_pct']:.3f}", f"{x['peak_gb']:.2f}",
                           f"{ratio:.2f}" if ratio else "–")
        out += [ro, st]
        if "eval" in entry:
            out.append(eval_table(entry["eval"], label, table))
        trl = entry["trl"]
        if "step_s" in trl:
            st.add_row("TRL", f"{trl['step_s']:.2f}", "–", "–", "–", "–", f"{trl['peak_gb']:.2f}", "1.00")
            st.caption = f"vs TRL: TRL {trl['trl']} GRPOTrainer step time ÷ this step time"
        else:
            st.caption = f"TRL: {trl['skipped']}"
    v = report["verifier"]
    vt = table("verifier · MATH-500 gold pairs", "mix", "checks", "equivalent", "checks/s", "sympy worker", "timeouts")
    if "skipped" in v:
        vt.caption = v["skipped"]
    else:
        for mix, x in (("solution box vs gold", v), ("symbolic (sympy respelled)", v.get("symbolic", {}))):
            if x:
                vt.add_row(mix, str(x["checks"]), str(x["equivalent"]), f"{x['checks_per_s']:,.0f}",
                           str(x["worker_checks"]), str(x["timeouts"]))
    out.append(vt)
    if "fidelity" in report:
        from minipsn.fidelity import table as fidelity_table

        out.append(fidelity_table(report["fidelity"]))
    return out
