"""TRL's GRPOTrainer on the work of a minipsn step, for the step-time ratio the bench prints ("vs TRL").

The same policy (NF4 base + peft LoRA, loaded by minipsn), P prompts × G generations × T new tokens with the end
token held off by `min_new_tokens = T`, β = 0, minipsn's learning rate, temperature and learner micro-batch
(gradient accumulation makes up the P·G rows); transformers `generate` (no vLLM), no PSN, in-process. The reward is
a constant 0: the score does not change the work, and the verifier is timed apart (verifier.py). Step time is
the mean between `on_step_end` marks after one warm-up step, split into sampling (its `_generate`), scoring and old
log-probs (the rest of `_prepare_inputs`) and learning (the rest of the step); memory as in engines.py. The
NF4 model dequantizes at every call, as a TRL user loads it. If TRL is missing or fails, the section says why
instead of a number.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time

from minipsn.bench.engines import Spec, bench_config, free_memory, peak_gb, sync
from minipsn.tasks.data import format_prompt
from minipsn.tasks.models import checkpointing_rename_quiet, load_policy
from minipsn.tasks.synthetic import synthetic_split


def bench_trl(spec: Spec, work: str, sigma: float, steps: int) -> dict:
    """TRL's GRPOTrainer on the same policy (NF4 + peft LoRA), P·G rows × T tokens, HF generate, in-process."""
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback
    except ImportError as e:
        return {"skipped": f"TRL is not usable: {e}"}
    cfg = bench_config(spec, tempfile.mkdtemp(dir=work), "lean", spec.T, sigma)
    # the NF4 model as a TRL user loads it: bitsandbytes dequantizing at every call (model.dequantize_once is minipsn's)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dequantize_once="off"))
    model, tok = load_policy(cfg)
    N, cuda = spec.P * spec.G, spec.device == "cuda"
    prompts = [format_prompt(tok, r["problem"], spec.template) for r in synthetic_split(cfg.data, "train", 0)]
    Tp = max(len(ids) for ids in tok(prompts[: spec.P * (steps + 1)], add_special_tokens=False)["input_ids"])
    rows_per_micro = max(1, cfg.grpo.micro_batch_tokens // (Tp + spec.T))  # minipsn's learner micro-batch
    mb = max(d for d in range(1, N + 1) if N % d == 0 and d <= rows_per_micro)
    data = Dataset.from_dict({"prompt": prompts[: spec.P * (steps + 1)]})
    with checkpointing_rename_quiet():  # TRL still sets transformers' old name
        args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(dir=work), per_device_train_batch_size=mb,
                              gradient_accumulation_steps=N // mb, num_generations=spec.G, max_completion_length=spec.T,
                              temperature=cfg.rollout.temperature, beta=0.0, learning_rate=cfg.grpo.lr,
                              max_steps=steps + 1, logging_strategy="no", save_strategy="no", report_to=[],
                              gradient_checkpointing=cfg.model.gradient_checkpointing, bf16=cuda, use_cpu=not cuda,
                              generation_kwargs={"min_new_tokens": spec.T}, shuffle_dataset=False, seed=0,
                              disable_tqdm=True, dataloader_num_workers=0)

    running = {"generate": 0.0, "prepare": 0.0}  # this step's sampling, and sampling + scoring + old log-probs

    class Clock(TrainerCallback):
        marks: list[float] = []
        phases: list[dict] = []  # per step: the running sums at its end

        def on_train_begin(self, *a, **k):
            Clock.marks = [time.perf_counter()]

        def on_step_end(self, *a, **k):
            sync(spec.device)
            Clock.marks.append(time.perf_counter())
            Clock.phases.append(dict(running))
            running.update(generate=0.0, prepare=0.0)

    def zero_reward(completions, **kwargs):
        return [0.0] * len(completions)  # the score does not change the work; the verifier is timed apart

    def clocked(fn, key):  # _prepare_inputs runs once per micro-batch, and samples on the first of the step
        def run(*a, **k):
            sync(spec.device)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync(spec.device)
            running[key] += time.perf_counter() - t0
            return out
        return run

    try:
        trainer = trl.GRPOTrainer(model=model, reward_funcs=zero_reward, args=args, train_dataset=data,
                                  processing_class=tok, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # its raw dict of the run's totals at the end: the bench's tables say it
        trainer._generate = clocked(trainer._generate, "generate")
        trainer._prepare_inputs = clocked(trainer._prepare_inputs, "prepare")
        peak_gb(spec.device, reset=True)
        with checkpointing_rename_quiet():  # TRL's generation asks the model under its old name
            trainer.train()
    except (RuntimeError, ValueError, TypeError, AttributeError, ImportError, KeyError) as e:
        return {"skipped": f"TRL failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    finally:
        model = trainer = None
        free_memory()
    times = [b - a for a, b in zip(Clock.marks, Clock.marks[1:])]
    if len(times) < 2:
        return {"skipped": f"TRL ran {len(times)} steps, need a warm-up and a timed one"}
    timed = times[1:]
    phases = Clock.phases[1:]  # after the warm-up step
    gen, prep = (sum(p[key] for p in phases) / len(phases) for key in ("generate", "prepare"))
    split = {"sample_s": gen, "score_s": prep - gen, "learn_s": sum(timed) / len(timed) - prep}
    return {"trl": trl.__version__, "step_s": sum(timed) / len(timed), **split, "warmup_step_s": times[0],
            "steps_timed": len(timed), "peak_gb": peak_gb(spec.device), "micro_batch_rows": mb,
            "generation": "transformers generate (use_vllm=False), NF4 base + peft LoRA, no PSN",
            "loss": args.loss_type}
