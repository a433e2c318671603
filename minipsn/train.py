"""PSN-GRPO training: `train(cfg)` runs the loop, one labelled phase at a time.

    perturb LoRA by σ·ε → sample G completions per prompt with π_θ̃ → restore θ bit-exactly
    → score → group advantages → learner log π_θ on the clean policy, TIS weights
    w = min(π_θold/π_θ̃, C) → clipped surrogate × w, backward over micro-batches, AdamW steps
    → the σ controller moves σ → status line, metrics.jsonl, checkpoint

(arXiv 2602.02555, Alg. 1). Deviations: noise only on LoRA adapters of a 4-bit base; by default
one optimizer step per batch (on-policy: π_θold = π_θ, so the PPO ratio is 1), `grpo.epochs` ×
`grpo.mini_batches` steps as an option (`learner.py`); `algo.py` holds every formula.
"""
from __future__ import annotations

import dataclasses
import json
import random
import signal
import threading
import time
from pathlib import Path

import torch

from minipsn import algo, checkpoint, folders, trackers
from minipsn import distributed as dist
from minipsn.config import Config, GRPOConfig, RewardConfig
from minipsn.data import format_prompt, load_problems
from minipsn.engine import make_engine
from minipsn.learner import LearnerOut, body_and_head, completion_logprobs, learner_step, micro_batches  # noqa: F401
from minipsn.models import check_available, load_policy
from minipsn.noise import derive_seed, perturbation_size, row_seeds
from minipsn.rewards import correctness_rewards, overlong_penalty, shaped_reward
from minipsn.rollout import Rollouts, sample
from minipsn.sigma_control import make_controller
from minipsn.verify import verify_stats


def step_records(records: list[dict], step: int, P: int, seed: int) -> list[dict]:
    """The P problems of a step: a fixed function of (seed, step), so a resumed run sees the same ones."""
    n = len(records)
    out = []
    for j in range(step * P, (step + 1) * P):
        epoch, i = divmod(j, n)
        order = list(range(n))
        random.Random(derive_seed(seed, "data", epoch)).shuffle(order)
        out.append(records[order[i]])
    return out


def score(reward_fn, ro: Rollouts, recs: list[dict], cfg: RewardConfig):
    """Rewards (N,) and the verifier's correctness (N,) of the rollouts. Correctness is the verifier's
    judgement alone (no format bonus, a truncated completion counts as wrong), whatever the reward;
    the default reward is built from it, so each completion is verified once."""
    truncated = ro.truncated.tolist()
    correct = torch.tensor(correctness_rewards(ro.texts, [r["answer"] for r in recs], truncated, 0.0, cfg.timeout,
                                               cfg.last_number, cfg.unboxed_answer, cfg.verify_workers, cfg.verifier))
    if reward_fn is None:
        rewards = [shaped_reward(float(c), t, tr, cfg.format_weight, cfg.truncated_reward)
                   for c, t, tr in zip(correct.tolist(), ro.texts, truncated)]
    else:
        rewards = reward_fn(ro.texts, recs, truncated)
    return torch.tensor(rewards, dtype=torch.float32), correct


def status_line(m: dict, steps: int) -> str:
    held_out = f" | pass@1 {m['eval/pass@1']:.2f}" if "eval/pass@1" in m else ""
    return (f"step {m['step']}/{steps} | reward {m['reward/mean']:.2f} | acc {m['reward/accuracy']:.2f}{held_out} | "
            f"σ {m['noise/sigma']:.1e} | tis_clip {m['tis/clip_frac']:.2f} | "
            f"tok/s {m['perf/tokens_per_s'] / 1e3:.1f}k | {m['perf/step_s']:.1f} s")


def advantages(rewards: torch.Tensor, correct: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    """(P, G) rewards and verifier correctness → (P, G) advantages by the configured estimator:
    GRPO normalises the reward within groups; Pass@k training reads pass/fail from the verifier."""
    if cfg.advantage == "grpo":
        return algo.group_advantages(rewards, scale=cfg.scale_advantages)
    elif cfg.advantage == "passk":
        return algo.passk_advantages(correct, cfg.passk_k)
    else:
        raise ValueError(f"unknown advantage estimator {cfg.advantage!r}; use grpo or passk")


def prepare_run_dir(cfg: Config, resume: bool) -> Path:
    """Check the run folder can be written, take it for this process (one writer per run folder: a
    second `train` or `--resume` on it fails here, at once), check it holds no other run (on resume:
    that it holds this one) and write the resolved config."""
    run_dir = folders.check_writable(cfg.run.out)
    if resume and checkpoint.latest(run_dir) is None and not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a run folder (no config.json, no checkpoint); nothing to resume")
    folders.hold(run_dir)  # before anything is written
    try:
        if not resume and (run_dir / "metrics.jsonl").exists():
            raise ValueError(f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out")
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    except (OSError, ValueError) as e:
        folders.release(run_dir)
        if isinstance(e, ValueError):
            raise
        raise ValueError(f"cannot write to the run folder {run_dir}: {e.strerror}; choose another --out") from None
    return run_dir


def check_world(cfg: Config) -> None:
    """Under torchrun: settings that cannot be split over the K processes are errors that say so."""
    K, P = dist.world(), cfg.grpo.prompts_per_step
    if P < K:
        raise ValueError(f"grpo.prompts_per_step={P} is fewer than the {K} processes (each samples at least one "
                         "prompt's group); raise it or start fewer processes")
    if cfg.rollout.rng == "batch" and K > 1:
        raise ValueError("rollout.rng=batch draws every row from one generator, which cannot be split over "
                         "processes; use rollout.rng=prompt (the default) under torchrun")


def per_prompt_rng(cfg: Config) -> bool:
    """One sampling generator per prompt (rollout.rng=prompt or auto, the default), else one per step (batch)."""
    return cfg.rollout.rng != "batch"


_SUMMED = ("rows", "groups", "reward", "reward_sq", "correct", "zero_adv", "len", "truncated", "diversity", "certainty",
           "timeouts", "errors", "disagree", "tokens")


def _sums(rewards, correct, adv, ro: Rollouts, diversity, verify_before: dict, verify_after: dict) -> list[float]:
    """This rank's sums and counts behind the step's row and group means (`_SUMMED` order)."""
    lengths = ro.completion_mask.sum(1).double()
    return [rewards.numel(), adv.shape[0], rewards.double().sum().item(), rewards.double().pow(2).sum().item(),
            correct.double().sum().item(), (adv == 0).all(1).double().sum().item(), lengths.sum().item(),
            ro.truncated.double().sum().item(), diversity.double().sum().item(), ro.certainty.double().sum().item(),
            verify_after["timeouts"] - verify_before["timeouts"], verify_after["errors"] - verify_before["errors"],
            verify_after["disagree"] - verify_before["disagree"], ro.n_tokens]


def _global_metrics(t: dict, t_sample: float) -> dict:
    """The row and group means of a step over all ranks, from the summed `_sums`."""
    n = t["rows"]
    var = max(t["reward_sq"] - t["reward"] ** 2 / n, 0.0) / max(n - 1, 1)  # unbiased, as torch.std
    return {"reward/mean": t["reward"] / n, "reward/std": var ** 0.5, "reward/accuracy": t["correct"] / n,
            "verify/timeouts": int(t["timeouts"]), "verify/errors": int(t["errors"]), "verify/disagree": int(t["disagree"]),
            "reward/zero_adv_frac": t["zero_adv"] / t["groups"], "completion/len_mean": t["len"] / n,
            "completion/truncated_frac": t["truncated"] / n, "perf/tokens_per_s": t["tokens"] / max(t_sample, 1e-9)}


class Trainer:
    """The state of one run; `step()` is one PSN-GRPO step, `run()` the loop with logging."""

    def __init__(self, cfg: Config, reward_fn=None, resume: bool = False):
        check_available(cfg.model.name)  # a hub model that cannot load fails before the run folder is made
        if dist.init():  # torchrun: K processes, each with its share of every step's prompts (distributed.py)
            check_world(cfg)
            self.run_dir = prepare_run_dir(cfg, resume) if dist.is_main() else Path(cfg.run.out)
            dist.barrier()  # the folder exists before any rank reads it
        else:
            self.run_dir = prepare_run_dir(cfg, resume)
        self.cfg = cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        self.records = load_problems(cfg.data, "train")  # before the model: data errors should come fast
        self.model, self.tok = load_policy(cfg)
        self.device = next(self.model.parameters()).device
        self.engine = make_engine(self.model, cfg)  # where rollouts sample from: folded copy or the peft model
        self.reward_fn = reward_fn  # None: the default, rewards.build_reward_fn's formula (see score)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.grpo.lr, weight_decay=cfg.grpo.weight_decay)
        self.controller = make_controller(cfg.noise, cfg.control)
        self.start, self.skipped, self.stop_requested, self.gap_warned = 0, 0, False, False
        # halved on out-of-memory; kept for the rest of the run
        self.rollout_cfg, self.grpo_cfg = cfg.rollout, cfg.grpo
        if resume:
            self._restore()
        if dist.active():  # the same adapter on every rank, whatever each one's initialisation did
            dist.broadcast_params(params)

    def _on_oom_halve(self, phase: str, fn):
        """Run `fn`; on out-of-memory halve the rollout batch (or learner token budget) and retry."""
        while True:
            try:
                return fn()
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if phase == "learner" and dist.world() > 1:  # the other ranks wait in a collective of this update
                    raise MemoryError(f"out of memory in the update on rank {dist.rank()}; under torchrun the update "
                                      f"cannot retry on one rank: lower grpo.micro_batch_tokens "
                                      f"(now {self.grpo_cfg.micro_batch_tokens}) and resume") from None
                if phase == "rollout" and self.rollout_cfg.batch_size > 1:
                    self.rollout_cfg = dataclasses.replace(self.rollout_cfg, batch_size=self.rollout_cfg.batch_size // 2)
                    print(f"out of memory while sampling: rollout.batch_size → {self.rollout_cfg.batch_size}")
                elif phase == "learner" and self.grpo_cfg.micro_batch_tokens > 64:
                    self.grpo_cfg = dataclasses.replace(self.grpo_cfg, micro_batch_tokens=self.grpo_cfg.micro_batch_tokens // 2)
                    print(f"out of memory in the update: grpo.micro_batch_tokens → {self.grpo_cfg.micro_batch_tokens}")
                else:
                    raise MemoryError(f"out of memory in the {phase} even at the smallest batch; use a smaller model, "
                                      "rollout.max_new_tokens or grpo.group_size") from None

    def _restore(self) -> None:
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:  # it died before its first checkpoint: nothing to keep but the settings
            if dist.is_main():
                trackers.truncate(self.run_dir, -1)
            print(f"{self.run_dir} has no checkpoint yet (the run stopped before its first one): restarting from step 0")
            return
        state = checkpoint.load_state(ckpt)
        checkpoint.load_adapter_weights(self.model, ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.controller.load_state_dict(state.get("sigma_control", state.get("scheduler")))  # older: "scheduler"
        checkpoint.set_rng_state(state["rng"])
        self.start = state["step"]
        trainer = state.get("trainer", {})  # checkpoints from before this field: the configured sizes, 0 skipped
        self.skipped = trainer.get("skipped_steps", 0)
        batch = trainer.get("rollout_batch_size", self.rollout_cfg.batch_size)
        budget = trainer.get("micro_batch_tokens", self.grpo_cfg.micro_batch_tokens)
        self.rollout_cfg = dataclasses.replace(self.rollout_cfg, batch_size=batch)
        self.grpo_cfg = dataclasses.replace(self.grpo_cfg, micro_batch_tokens=budget)
        for key, now, was in (("rollout.batch_size", batch, self.cfg.rollout.batch_size),
                              ("grpo.micro_batch_tokens", budget, self.cfg.grpo.micro_batch_tokens)):
            if now != was:
                print(f"note: {key} stays at {now} (halved after out of memory earlier in this run)")
        if trainer.get("processes", 1) != dist.world():
            print(f"note: this run was checkpointed on {trainer.get('processes', 1)} process(es) and continues on "
                  f"{dist.world()}: the data order and noise seeds are the same (functions of seed and step), the "
                  "samples may differ from the uninterrupted run's")
        if dist.is_main():
            trackers.truncate(self.run_dir, self.start)
        print(f"resumed {self.run_dir} at step {self.start}")

    def step(self, step: int) -> dict:
        cfg, P, G = self.cfg, self.cfg.grpo.prompts_per_step, self.cfg.grpo.group_size
        t0 = time.perf_counter()
        recs = step_records(self.records, step, P, cfg.run.seed)
        lo, hi = dist.shard(P)  # torchrun: this rank's prompts lo … hi − 1 of the step's P (all on one process)
        recs = recs[lo:hi]
        prompts = [format_prompt(self.tok, r["problem"], cfg.data.template) for r in recs]
        sigma, noise_seed = self.controller.sigma, derive_seed(cfg.run.seed, "noise", step)
        if per_prompt_rng(cfg):  # a prompt's samples depend on its index in the step, not on who samples it
            gen = [torch.Generator(self.device).manual_seed(derive_seed(cfg.run.seed, "sample", step, i)) for i in range(lo, hi)]
        else:
            gen = torch.Generator(self.device).manual_seed(derive_seed(cfg.run.seed, "sample", step))

        # 1-3. perturb the LoRA weights, sample G completions per prompt with π_θ̃, restore θ
        all_seeds = row_seeds(noise_seed, P, G, cfg.noise.granularity)  # (N,) prompt-major; all equal for `step`
        seeds = all_seeds[lo * G : hi * G]  # a function of the row's index in the step, whatever rank samples it
        with self.engine.policy(sigma, seeds, cfg.noise.targets) as (rollout_model, row_noise):
            t_noise = time.perf_counter() - t0
            ro = self._on_oom_halve("rollout", lambda: sample(rollout_model, self.tok, prompts, G, self.rollout_cfg, gen,
                                                                cfg.model.max_prompt_tokens, row_noise=row_noise))
        t_sample = time.perf_counter() - t0

        t_rescore = time.perf_counter()
        delta_w = self._measure_noise(ro, sigma, all_seeds[0])
        t_rescore = time.perf_counter() - t_rescore

        # 4. score with the verifier
        group_recs = [r for r in recs for _ in range(G)]  # prompt-major: row i → prompt i // G
        verify_before, t_verify = verify_stats(), time.perf_counter()
        rewards, correct = score(self.reward_fn, ro, group_recs, cfg.reward)
        verify_after, t_verify = verify_stats(), time.perf_counter() - t_verify
        if cfg.reward.overlong == "soft":  # DAPO's length penalty, 0 … −1 over the window, on any reward function's
            rewards = rewards + overlong_penalty(ro.completion_mask.sum(1).float().cpu(), cfg.rollout.max_new_tokens,
                                                 cfg.reward.overlong_window)

        # 5. group advantages
        adv = advantages(rewards.view(hi - lo, G), correct.view(hi - lo, G), cfg.grpo)  # (P, G); a group never spans ranks
        assert torch.equal(ro.prompt_ids[::G].repeat_interleave(G, 0), ro.prompt_ids), "rows must be prompt-major"
        self.samples = trackers.pick_samples(step + 1, cfg, prompts, group_recs, ro, rewards, correct, adv.view(-1), seeds,
                                             *((lo * G, P * G) if dist.active() else ()))
        if dist.active():  # rank 0 writes every rank's picked rows, in row order
            self.samples = [s for part in dist.gather(self.samples) for s in part]

        # 6. learner log π_θ on the clean policy, TIS weights, clipped loss, grpo.epochs × grpo.mini_batches AdamW steps
        lr = cfg.grpo.lr * algo.lr_factor(step, cfg.grpo.lr_schedule, cfg.grpo.warmup_steps, cfg.run.steps)
        for group in self.optimizer.param_groups:  # a function of the step: a resumed run needs no scheduler state
            group["lr"] = lr
        keep = ~ro.truncated if cfg.reward.overlong == "mask" else None  # mask: truncated rows leave the loss
        t1 = time.perf_counter()
        shard = {"shard": (lo * G, P * G)} if dist.active() else {}  # torchrun: normaliser and gradients over all ranks
        out = self._on_oom_halve("learner", lambda: learner_step(self.model, self.optimizer, ro, adv.view(-1).to(self.device),
                                                                 self.grpo_cfg, cfg.rollout.max_new_tokens, keep, **shard,
                                                                 sample_temperature=cfg.rollout.temperature))
        self.skipped += int(out.stats["guard/skipped"])
        if out.stats["guard/skipped"] and self.skipped == 1:
            print(f"warning: non-finite loss or gradient at step {step + 1}: update skipped (counted in guard/skipped_steps)")
        self._check_sampler(step, out.stats["guard/sampler_gap"])
        t_learn = time.perf_counter() - t1

        # 7. the σ controller reads the noise KL, diversity and self-certainty (no extra pass) and moves σ
        t2 = time.perf_counter()
        diversity = self._diversity(ro, out.pooled)
        totals = None
        if dist.active():  # means over every rank's rows and groups: every rank moves σ alike
            totals = dict(zip(_SUMMED, dist.all_sum(_sums(rewards, correct, adv, ro, diversity, verify_before, verify_after))))
            signals = {"diversity": totals["diversity"] / totals["groups"], "certainty": totals["certainty"] / totals["rows"]}
        else:
            signals = {"diversity": float(diversity.mean()), "certainty": float(ro.certainty.mean())}
        noise_stats = self.controller.update({"kl_noise": out.stats["noise/kl_noise"], **signals})
        t_sched = time.perf_counter() - t2

        step_s = time.perf_counter() - t0
        m = {"step": step + 1, "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
                "reward/accuracy": correct.float().mean().item(),
                "verify/timeouts": verify_after["timeouts"] - verify_before["timeouts"],
                "verify/errors": verify_after["errors"] - verify_before["errors"],
                "verify/disagree": verify_after["disagree"] - verify_before["disagree"],
                "reward/zero_adv_frac": (adv == 0).all(1).float().mean().item(),
                "completion/len_mean": ro.completion_mask.sum(1).float().mean().item(),
                "completion/truncated_frac": ro.truncated.float().mean().item(),
                **out.stats, **noise_stats, "noise/sigma": sigma, "noise/seed": noise_seed, "noise/delta_w_rel": delta_w,
                "guard/skipped_steps": self.skipped, "optim/lr": lr,
                **({"noise/row_seeds": all_seeds[::G] if cfg.noise.granularity == "group" else all_seeds}
                   if cfg.noise.granularity != "step" else {}),
                "perf/step_s": step_s, "perf/sample_s": t_sample, "perf/learn_s": t_learn, "perf/verify_s": t_verify,
                "perf/noise_sched_s": t_noise + t_sched, "perf/rescore_s": t_rescore, "perf/tokens_per_s": ro.n_tokens / max(t_sample, 1e-9),
                **({"perf/peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30} if self.device.type == "cuda" else {})}
        if totals is not None:
            m.update(_global_metrics(totals, t_sample))
        if cfg.reward.verifier != "both":  # strict and Math-Verify are both asked only with `both`
            del m["verify/disagree"]
        return m

    def _check_sampler(self, step: int, gap: float) -> None:
        """One warning line when the sampler without its noise has drifted from the learner (a stale or detached
        adapter in the sampler: rollouts of another policy than the one trained), again after each healthy step."""
        limit = self.cfg.rollout.gap_warn
        if limit and gap > limit and not self.gap_warned and dist.is_main():
            print(f"warning: step {step + 1}: the sampler without noise is {gap:.2g} nats per token from the learner "
                  f"(guard/sampler_gap > rollout.gap_warn = {limit:g}): rollouts may come from another policy than "
                  "the one trained (a stale or detached adapter, or a sampler in lower precision)")
        self.gap_warned = bool(limit) and gap > limit

    def _measure_noise(self, ro: Rollouts, sigma: float, seed: int) -> float:
        """σ > 0: the clean sampler's log-probs of the sampled tokens into `ro.clean_logp` (so the noise's
        own KL is told apart from numerics); returns ‖ΔW_noise‖/‖W‖ (0 at σ = 0)."""
        if sigma == 0:
            return 0.0
        targets = self.cfg.noise.targets
        ro.clean_logp = self.engine.rescore(ro, self.rollout_cfg, targets, self.grpo_cfg.micro_batch_tokens)
        if self.cfg.noise.space == "weight":
            return self.engine.weight_noise_size(sigma, seed, targets)
        return perturbation_size(self.model, sigma, seed, targets)

    def _diversity(self, ro: Rollouts, pooled: torch.Tensor) -> torch.Tensor:
        """(P,) semantic diversity of each group: hidden-state cosine distance, or distinct n-grams."""
        G = self.cfg.grpo.group_size
        if self.cfg.control.diversity == "hidden":
            return algo.group_diversity(pooled, G)
        elif self.cfg.control.diversity == "ngram":
            rows = [row[m.bool()].tolist() for row, m in zip(ro.completion_ids, ro.completion_mask)]
            return algo.ngram_diversity(rows, G)
        else:
            raise ValueError(f"unknown control.diversity {self.cfg.control.diversity!r}; use hidden or ngram")

    def evaluate(self, step: int) -> dict:
        """pass@k of the clean policy on held-out problems (eval.problems of them, eval.n samples each)."""
        from minipsn.evaluate import quick_eval

        if not hasattr(self, "test_records"):
            self.test_records = load_problems(self.cfg.data, "test")
        with self.engine.policy(0.0, [0], self.cfg.noise.targets) as (clean, _):
            return quick_eval(clean, self.tok, self.test_records, self.cfg.eval, self.rollout_cfg, self.cfg.data.template,
                              derive_seed(self.cfg.run.seed, "eval", step), self.cfg.model.max_prompt_tokens,
                              self.cfg.reward.timeout, self.cfg.reward.last_number, self.cfg.reward.unboxed_answer,
                              per_problem=per_prompt_rng(self.cfg), verifier=self.cfg.reward.verifier)

    def save(self, step: int) -> None:
        trainer = {"skipped_steps": self.skipped, "rollout_batch_size": self.rollout_cfg.batch_size,
                   "micro_batch_tokens": self.grpo_cfg.micro_batch_tokens,
                   **({"processes": dist.world()} if dist.active() else {})}
        if not dist.is_main():  # rank 0 writes the run folder; every rank holds the same state
            return
        checkpoint.save(self.run_dir, step, self.model, self.optimizer, self.controller, self.cfg.to_dict(),
                        extra={"trainer": trainer})

    def run(self, on_step=None) -> Path:
        """The loop: a step, its metrics line and status line, a checkpoint every run.save_every steps."""
        main_thread = threading.current_thread() is threading.main_thread()  # signals only work there
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main_thread else None
        try:
            self._loop(on_step)
            if dist.is_main():
                checkpoint.save_final_adapter(self.run_dir, self.model)
                self._print_eval_summary()
        except KeyboardInterrupt as e:  # a second Ctrl-C: stopped at once; say what the folder holds
            raise folders.interrupted(e, self.run_dir) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
            if dist.is_main():
                folders.release(self.run_dir)
        return self.run_dir

    def _print_eval_summary(self) -> None:
        """One line comparing the first and last held-out evaluations of the run, when there are two."""
        rows = checkpoint.read_metrics(self.run_dir / "metrics.jsonl")
        evals = [r for r in rows if "eval/pass@1" in r]
        if len(evals) >= 2:
            first, last = evals[0], evals[-1]
            print(f"held-out pass@1: {first['eval/pass@1']:.3f} at step {first['step']} → "
                  f"{last['eval/pass@1']:.3f} at step {last['step']} "
                  f"({self.cfg.eval.problems or 'all'} problems × {self.cfg.eval.n} samples)")

    def _loop(self, on_step) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        steps = self.cfg.run.steps
        columns = (TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeRemainingColumn())
        every = self.cfg.eval.every
        log = trackers.RunLog(self.cfg, self.run_dir, self.start) if dist.is_main() else _NoLog()  # rank 0 writes
        with Progress(*columns, transient=True, disable=not dist.is_main()) as bar, log as records:
            task = bar.add_task("train", total=steps, completed=self.start)
            if every and self.start == 0 and steps >= every:  # the starting point the periodic evals compare to
                m0 = {"step": 0, **self.evaluate(-1)}
                records.write(m0)
                bar.console.print(f"step 0/{steps} | held-out pass@1 {m0['eval/pass@1']:.2f} before training",
                                  highlight=False)
            for step in range(self.start, steps):
                if dist.any_true(self.stop_requested):  # torchrun: one rank's Ctrl-C stops all of them at this step
                    self.save(step)
                    raise folders.RunInterrupted(f"stopped after step {step}; checkpoint saved: continue with "
                                                 f"python cli.py train --resume {self.run_dir}")
                m = self.step(step)
                if every and (step + 1) % every == 0:
                    m.update(self.evaluate(step))
                records.write(m, self.samples)  # metrics.jsonl, samples.jsonl, run.log_to's trackers
                bar.console.print(status_line(m, steps), highlight=False, soft_wrap=True)
                bar.update(task, completed=step + 1)
                if on_step is not None:
                    on_step(m)
                if (step + 1) % self.cfg.run.save_every == 0 or step + 1 == steps:
                    self.save(step + 1)

    def _on_sigint(self, signum, frame):
        """First Ctrl-C: finish this step, save, exit. Second: stop now (the last checkpoint stays)."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nCtrl-C: finishing this step, then saving a checkpoint (press again to stop at once)")


class _NoLog:
    """What ranks other than 0 write records to under torchrun: nothing."""

    def write(self, metrics: dict, samples: list[dict] = ()) -> None:
        pass

    def __enter__(self) -> "_NoLog":
        return self

    def __exit__(self, *exc) -> None:
        pass


def train(cfg: Config, reward_fn=None, resume: bool = False, on_step=None) -> Path:
    """Run PSN-GRPO as configured; returns the run folder (metrics.jsonl, checkpoints, adapter/).
    Under torchrun, every process runs this (see distributed.py); rank 0 writes the run folder."""
    joined = not dist.active()  # a caller's process group (compare's) stays open for its next job
    try:
        run_dir = Trainer(cfg, reward_fn, resume).run(on_step)
    except KeyboardInterrupt as e:  # Ctrl-C while the model loads, before the trainer's own handler is set
        raise folders.interrupted(e, Path(cfg.run.out)) from None
    if joined:
        dist.close()
    return run_dir
