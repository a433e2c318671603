"""Benchmarks: `python cli.py bench` runs them all, writes OUT/bench.json and prints its tables; here the models
timed (tiny; on CUDA a random-init model of Qwen2.5-1.5B's shape), the machine, the report and the tables.

    python cli.py bench --out bench            # tiny on CPU; + a Qwen2.5-1.5B-shaped random model on CUDA
    python cli.py bench --quick --no-trl       # smaller, a smoke test

On one H100 (an estimate: not run yet) --quick (P=4, T=256) should take about 3 minutes, the default
(P=8, G=8, T=512) 5-6, most of it TRL's two HF-generate steps and the first torch.compile.

What each measures, and how: engines.py (rollout tokens/s per engine, PSN-GRPO step time, PSN overhead,
evaluation sampling), trl.py (TRL's GRPOTrainer on the same work), verifier.py (the verifier's checks/s,
and its symbolic mix), fidelity.py (does the sampler sample the learner's policy). A number that could not be
measured is recorded with the reason, never estimated.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from minipsn.bench.engines import SHAPE_NAME, NoEos, Spec, bench_engine, bench_eval
from minipsn.bench.roofline import phase_bound
from minipsn.bench.trl import bench_trl
from minipsn.bench.verifier import bench_verify, symbolic_pairs
from minipsn.run.folders import check_writable
from minipsn.tasks.data import BUNDLED_DIR

__all__ = ["run_bench", "tables", "phase_bound", "specs", "shape_model_dir", "machine_info", "SHAPE_NAME", "QWEN15_SHAPE", "Spec",
           "NoEos", "bench_engine", "bench_eval", "bench_trl", "bench_verify", "symbolic_pairs"]

QWEN15_SHAPE = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True)


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
        from minipsn.bench.fidelity import bench_fidelity

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


def phase_table(entry: dict, label: str, table):
    """Where a step's time goes, per phase, for each engine timed and for TRL's step on the same work."""
    cols = ("sample", "rescore", "verify", "learn", "other")
    t = table(f"where a step goes · {label} · seconds (share of the step)", "engine", "step", *cols, "start-up")
    for name, e in entry["engines"].items():
        if "step" in e:
            x = e["step"]
            t.add_row(name, f"{x['step_s']:.3f}", *(f"{x[c + '_s']:.3f} ({100 * x[c + '_s'] / x['step_s']:.0f} %)"
                                                   for c in cols), f"{e['startup_s']:.1f}")
    trl = entry["trl"]
    if "sample_s" in trl:
        t.add_row("TRL", f"{trl['step_s']:.3f}", f"{trl['sample_s']:.3f} ({100 * trl['sample_s'] / trl['step_s']:.0f} %)",
                  "–", f"{trl['score_s']:.3f} (scoring + old log-probs)", f"{trl['learn_s']:.3f} "
                  f"({100 * trl['learn_s'] / trl['step_s']:.0f} %)", "–", "–")
    t.caption = ("sample: rollouts (noise in and out included); rescore: the clean and noisy teacher-forced passes at "
                 "σ > 0; verify: answer checks; learn: log-probs, loss, backward, AdamW; other: advantages, σ "
                 "controller, metrics; start-up: model load, LoRA and the engine's copy")
    return t


def bound_table(entry: dict, label: str, table):
    """What bounds the learner and evaluation sampling (roofline.py): their matrix products against the same alone."""
    t = table(f"what bounds a phase · {label} · matrix products in the phase against the same products alone",
              "phase", "seconds", "products s (share)", "GFLOP/s", "alone GFLOP/s", "floor s (share)", "top other ops")
    rows = [(f"learner ({name} engine)", e["learn_bound"]) for name, e in entry["engines"].items() if "learn_bound" in e]
    rows += [("evaluation sampling", entry["eval"]["bound"])] if "bound" in entry.get("eval", {}) else []
    for name, b in rows:
        t.add_row(name, f"{b['wall_s']:.3f}", f"{b['matmul_s']:.3f} ({100 * b['matmul_share']:.0f} %)",
                  f"{b['gflops']:.1f}", f"{b['alone_gflops']:.1f}", f"{b['floor_s']:.3f} ({100 * b['floor_share']:.0f} %)",
                  ", ".join(f"{o['op'].removeprefix('aten::')} {100 * o['share']:.0f} %" for o in b["top_other"][:3]))
    t.caption = ("shares: of the profiled phase (every operator's own time); floor: the phase's products at the alone "
                 "rate (same shapes, warm caches, best of 5) and nothing else, as a share of the phase's time; products "
                 "near their alone rate and a floor near the phase's time leave little to trim but work")
    return t if rows else None


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
        out += [ro, st, phase_table(entry, label, table)]
        if "eval" in entry:
            out.append(eval_table(entry["eval"], label, table))
        bound = bound_table(entry, label, table)
        out += [bound] if bound is not None else []
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
        from minipsn.bench.fidelity import table as fidelity_table

        out.append(fidelity_table(report["fidelity"]))
    return out
