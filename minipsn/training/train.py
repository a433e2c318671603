"""PSN-GRPO training: `train(cfg)` runs the loop; `Trainer.step` is one step, one labelled phase at a time.

    perturb LoRA by σ·ε → sample G completions per prompt with π_θ̃ → restore θ bit-exactly
    → score → group advantages → learner log π_θ on the clean policy, TIS weights
    w = min(π_θold/π_θ̃, C) → clipped surrogate × w, backward over micro-batches, AdamW steps
    → the σ controller moves σ → status line, metrics.jsonl, checkpoint

(arXiv 2602.02555, Alg. 1). Deviations: noise only on LoRA adapters of a 4-bit base; by default
one optimizer step per batch (on-policy: π_θold = π_θ, so the PPO ratio is 1), `grpo.epochs` ×
`grpo.mini_batches` steps as an option (`learner.py`); `algo.py` holds every formula. Around the step:
`Trainer.batch` (this process's prompts, generators and noise seeds; batch.py, with the rewards and advantages),
metrics.py (the step's means over every process; perf/*), oom.py (halve and retry), checkpoint.RunState (what a
checkpoint saves), trackers.py (records).
"""
from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import torch

from minipsn.evaluation.provenance import provenance, provenance_differences, settings_differences
from minipsn.method import algo, mechanism
from minipsn.method.noise import derive_seed, perturbation_size, row_seeds
from minipsn.method.sigma_control import make_controller
from minipsn.rewards import funcs as reward_funcs
from minipsn.rewards import overlong_penalty
from minipsn.run import checkpoint, folders, oom, printlog
from minipsn.run import distributed as dist
from minipsn.run.config import Config
from minipsn.sampling.engine import make_engine
from minipsn.sampling.rollout import Rollouts, sample
from minipsn.tasks.data import format_prompt
from minipsn.tasks.models import check_available, load_policy
from minipsn.tasks.problems import load_problems, problems
from minipsn.tasks.user_data import heldout_eval
from minipsn.training import metrics, trackers
from minipsn.training.batch import StepBatch, advantages, per_prompt_rng, score, step_records
from minipsn.training.learner import LearnerOut, completion_logprobs, learner_step, micro_batches, set_learning_rate  # noqa: F401
from minipsn.verify import verify_stats


def prepare_run_dir(cfg: Config, resume: bool, records: list[dict] | None = None) -> Path:
    """Check the run folder can be written, take it for this process (one writer per run folder: a
    second `train` or `--resume` on it fails here, at once), check it holds no other run (on resume:
    that it holds this one) and write the resolved config with its provenance (`records`: the training problems,
    loaded here when not given)."""
    run_dir = folders.check_writable(cfg.run.out)
    if resume and checkpoint.latest(run_dir) is None and not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a run folder (no config.json, no checkpoint); nothing to resume")
    folders.hold(run_dir)  # before anything is written
    try:
        if not resume and (run_dir / "metrics.jsonl").exists():
            raise ValueError(f"{run_dir} already holds a run: pass --resume {run_dir} or choose another --out")
        made = provenance(cfg, {"train": load_problems(cfg.data, "train") if records is None else records})
        if resume and (run_dir / "config.json").is_file():
            made = _resumed_provenance(run_dir, json.loads((run_dir / "config.json").read_text()).get("provenance"), made)
        (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "provenance": made}, indent=2))
    except (OSError, ValueError) as e:
        folders.release(run_dir)
        if isinstance(e, ValueError):
            raise
        raise ValueError(f"cannot write to the run folder {run_dir}: {e.strerror}; choose another --out") from None
    return run_dir


def _resumed_provenance(run_dir: Path, stored: dict | None, now: dict) -> dict:
    """A resume under another model build or other training problems is another run: an error. Under other code,
    device, dtype or torch it goes on, says so in one line, and the run records each resume's provenance."""
    differ = provenance_differences(stored, now)
    fatal = {k: v for k, v in differ.items() if k == "model" or k.startswith("records.")}
    if fatal:
        said = ", ".join(f"{k} ({a} → {b})" for k, (a, b) in fatal.items())
        raise ValueError(f"{run_dir} was started with another {said}; resuming would mix two runs: start a new one "
                         "with --out")
    if not differ or stored is None:
        return stored or now
    print(f"note: resuming {run_dir} under another {', '.join(f'{k} ({a} → {b})' for k, (a, b) in differ.items())}; "
          "config.json records it under provenance.resumes")
    return {**stored, "resumes": [*stored.get("resumes", []), now]}


class Trainer:
    """The state of one run; `step()` is one PSN-GRPO step, `run()` the loop with logging."""

    def __init__(self, cfg: Config, reward_fn=None, resume: bool = False, dataset=None, test_dataset=None):
        self.started = time.time()  # summary.json's wall time counts the model's loading too
        check_available(cfg.model.name)  # a hub model that cannot load fails before the run folder is made
        cfg = heldout_eval(cfg, dataset, test_dataset)  # your own data without held-out problems: eval.every off
        self.records = problems(cfg.data, "train", dataset)  # before the run folder and the model: data errors come fast
        self.test_given = test_dataset  # held-out rows handed to train(), else data.dataset's (see evaluate)
        self.rewards = reward_funcs.resolve(reward_fn, cfg.reward)  # None: the verifier's reward (see score)
        joined = dist.init()  # torchrun: K processes, each with its share of every step's prompts (distributed.py)
        cfg, latest = dist.from_main(folders.run_folder(cfg, resume))  # no --out: a fresh folder, named on rank 0
        if joined:
            dist.check_world(cfg)
            self.run_dir = prepare_run_dir(cfg, resume, self.records) if dist.is_main() else Path(cfg.run.out)
            dist.barrier()  # the folder exists before any rank reads it
        else:
            self.run_dir = prepare_run_dir(cfg, resume, self.records)
        if latest is not None and dist.is_main():
            folders.link_latest(latest, self.run_dir)
        self.cfg = cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        reward_funcs.check_resume(self.run_dir, self.rewards, resume)  # a resume with other reward functions: refused
        self.model, self.tok = load_policy(cfg)
        self.device = next(self.model.parameters()).device
        self.engine = make_engine(self.model, cfg)  # where rollouts sample from: folded copy or the peft model
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.grpo.lr, weight_decay=cfg.grpo.weight_decay)
        controller = make_controller(cfg.noise, cfg.control, cfg.run.steps)
        self.state = checkpoint.RunState(optimizer, controller, cfg.rollout, cfg.grpo,
                                         processes=dist.world())  # what a checkpoint saves and a resume restores
        self.stop_requested, self.gap_warned = False, False
        if resume:
            self._resume()
        dist.broadcast_params(params)  # torchrun: the same adapter on every rank, whatever each one's initialisation did

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    @property
    def controller(self):
        return self.state.controller

    def _resume(self) -> None:
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:  # it died before its first checkpoint: nothing to keep but the settings
            if dist.is_main():
                trackers.truncate(self.run_dir, -1)
            print(f"{self.run_dir} has no checkpoint yet (the run stopped before its first one): restarting from step 0")
            return
        saved = checkpoint.load_state(ckpt)
        for note in checkpoint.restore(ckpt, self.model, self.state, saved):
            print(note)
        if dist.is_main():
            trackers.truncate(self.run_dir, self.state.step)
        # what a resume may change (--steps, run.*, eval.*): said once the resume is accepted, not before a refusal
        changed = settings_differences(saved["config"], self.cfg.to_dict(), lambda k: k != "run.out")
        print(f"resumed {self.run_dir} at step {self.state.step}"
              + "".join(f"; {k} {a} → {b}" for k, (a, b) in changed.items()))

    def batch(self, step: int) -> StepBatch:
        """This process's prompts of step `step`, their sampling generators and the noise seeds of their rows."""
        cfg, P, G = self.cfg, self.cfg.grpo.prompts_per_step, self.cfg.grpo.group_size
        lo, hi = dist.shard(P)  # torchrun: this rank's prompts lo … hi − 1 of the step's P
        recs = step_records(self.records, step, P, cfg.run.seed)[lo:hi]
        # one per prompt: a prompt samples the same tokens whichever process samples it
        gens = ([derive_seed(cfg.run.seed, "sample", step, i) for i in range(lo, hi)] if per_prompt_rng(cfg)
                else [derive_seed(cfg.run.seed, "sample", step)])
        noise_seed = derive_seed(cfg.run.seed, "noise", step)
        return StepBatch(recs, [format_prompt(self.tok, r["problem"], cfg.data.template) for r in recs], gens, per_prompt_rng(cfg),
                         self.device, noise_seed, row_seeds(noise_seed, P, G, cfg.noise.granularity, cfg.noise.draws), lo * G, G)

    def step(self, step: int) -> dict:
        """One PSN-GRPO step (arXiv 2602.02555, Alg. 1) on this process's share of the step's prompts."""
        cfg, G, state, clock = self.cfg, self.cfg.grpo.group_size, self.state, metrics.Stopwatch()
        batch, sigma = self.batch(step), self.controller.sigma  # this process's prompts, generators, noise seeds

        # 1-3. perturb the LoRA weights by σ·ε (each row's seed), sample G completions per prompt with π_θ̃, restore θ
        with self.engine.policy(sigma, batch.seeds, cfg.noise.targets) as (noisy, row_noise):
            clock.mark("noise")
            ro = oom.retry_halving("rollout", state, lambda: sample(noisy, self.tok, batch.prompts, G, state.rollout,
                                                                    batch.generators(), cfg.model.max_prompt_tokens,
                                                                    row_noise=row_noise))
        clock.mark("sample")
        with clock.timed("rescore"):  # σ > 0: clean and noisy samplers rescore the samples (the noise's own KL); ‖ΔW‖/‖W‖
            delta_w = self._measure_noise(ro, sigma, batch, step)

        # 4. score with the verifier
        with clock.timed("verify"):
            rewards, correct, verified = self._score(ro, batch)

        # 5. group advantages (P_r, G): a group never spans processes
        adv = advantages(rewards.view(-1, G), correct.view(-1, G), cfg.grpo)
        rewards = rewards.nan_to_num(0.0)  # a row no reward function scored (advantage 0) is logged as 0
        assert torch.equal(ro.prompt_ids[::G].repeat_interleave(G, 0), ro.prompt_ids), "rows must be prompt-major"
        self.samples = trackers.step_samples(step + 1, cfg, batch.prompts, batch.row_records, ro, rewards, correct,
                                             adv.view(-1), batch.seeds, batch.first_row, len(batch.step_seeds))

        # 6. learner log π_θ on the clean policy, TIS weights, clipped loss, grpo.epochs × grpo.mini_batches AdamW steps
        lr = set_learning_rate(self.optimizer, cfg, step)
        with clock.timed("learn"):
            out = self._learn(step, ro, adv, batch)

        # 7. the σ controller reads the noise KL, diversity and self-certainty (no extra pass) and moves σ
        with clock.timed("sched"):  # with the mechanism's signal groups, noise-owed groups, noise KL per completion
            explore = mechanism.step_tensors(correct, adv, batch.seeds, sigma, ro)
            means = metrics.step_means(rewards, correct, adv, ro, self._diversity(ro, out.pooled), verified, explore)
            noise_stats = self.controller.update({"kl_noise": out.stats["noise/kl_noise"], **means.signals})

        # 8. the step's metrics: means over every process's rows, the learner's, the controller's, the noise seeds
        state.step = step + 1
        m = {"step": step + 1, **means.metrics, **out.stats, **noise_stats, "noise/sigma": sigma,
             "noise/seed": batch.noise_seed, "noise/delta_w_rel": delta_w, "guard/skipped_steps": state.skipped,
             "optim/lr": lr, **batch.logged_seeds(cfg.noise.granularity), **clock.perf(means.tokens, self.device),
             **metrics.draw_accuracy(correct, G, cfg.noise.draws),
             **self.reward_means}
        if cfg.reward.verifier != "both":  # strict and Math-Verify are both asked only with `both`
            del m["verify/disagree"]
        return m

    def _score(self, ro: Rollouts, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """Rewards (N_r,) (with DAPO's soft overlong penalty when asked), the verifier's correctness (N_r,), and
        its timeouts, errors and disagreements while it scored them."""
        before, self.reward_means = verify_stats(), {}  # reward/<name> of each reward function
        rewards, correct = score(self.rewards, ro, batch.row_records, self.cfg.reward, [p for p in batch.prompts
                                 for _ in range(batch.G)], self.reward_means)  # each row's prompt, prompt-major
        after = verify_stats()
        if self.cfg.reward.overlong == "soft":  # DAPO's length penalty, 0 … −1 over the window, on any reward function's
            rewards = rewards + overlong_penalty(ro.completion_mask.sum(1).float().cpu(), self.cfg.rollout.max_new_tokens,
                                                 self.cfg.reward.overlong_window)
        return rewards, correct, {k: after[k] - before[k] for k in ("timeouts", "errors", "disagree")}

    def _learn(self, step: int, ro: Rollouts, adv: torch.Tensor, batch: StepBatch) -> LearnerOut:
        """learner_step on this process's rows (the normaliser and gradients over every process's), the batch
        halved on out-of-memory (oom.py); counts a skipped update and checks the sampler against the learner."""
        cfg, state = self.cfg, self.state
        keep = ~ro.truncated if cfg.reward.overlong == "mask" else None  # mask: truncated rows leave the loss
        out = oom.retry_halving("learner", state, lambda: learner_step(
            self.model, self.optimizer, ro, adv.view(-1).to(self.device), state.grpo, cfg.rollout.max_new_tokens, keep,
            shard=(batch.first_row, len(batch.step_seeds)), sample_temperature=cfg.rollout.temperature))
        state.skipped += int(out.stats["guard/skipped"])
        if out.stats["guard/skipped"] and state.skipped == 1:
            print(f"warning: non-finite loss or gradient at step {step + 1}: update skipped (counted in guard/skipped_steps)")
        self._check_sampler(step, out.stats)
        return out

    def _check_sampler(self, step: int, stats: dict) -> None:
        """One warning line when the sampler has drifted from the learner (a stale or detached adapter in the sampler:
        rollouts of another policy than the one trained), or its decode path from a full pass of itself (the
        TIS denominators at σ > 0), again after each healthy step."""
        limit = self.cfg.rollout.gap_warn
        gaps = {k: stats[k] for k in ("guard/sampler_gap", "guard/decode_gap") if k in stats}
        over = {k: v for k, v in gaps.items() if limit and v > limit}
        if over and not self.gap_warned and dist.is_main():
            said = ", ".join(f"{k} {v:.2g}" for k, v in over.items())
            print(f"warning: step {step + 1}: the sampler is {said} nats per token from the learner or from itself "
                  f"(> rollout.gap_warn = {limit:g}): rollouts may come from another policy than the one trained (a "
                  "stale or detached adapter, a sampler in lower precision, a decode path that drifts)")
        self.gap_warned = bool(over)

    def _measure_noise(self, ro: Rollouts, sigma: float, batch: StepBatch, step: int) -> float:
        """σ > 0: the clean sampler's log-probs of the sampled tokens by a teacher-forced pass (`ro.clean_logp`) and
        the noise's own KL per token (`ro.noise_kl`): the k3 estimate on the sampled tokens under top_p = 1 (they are
        drawn from the whole noisy distribution: unbiased), else the exact KL over the vocabulary from a second, noisy
        pass (`ro.noisy_logp`), which also checks the decode path of the TIS denominators (guard/decode_gap) every
        rollout.guard_every steps. Returns ‖ΔW_noise‖/‖W‖ (0 at σ = 0)."""
        if sigma == 0:
            return 0.0
        targets, rcfg, budget = self.cfg.noise.targets, self.state.rollout, self.state.grpo.micro_batch_tokens
        if rcfg.top_p < 1 or step % rcfg.guard_every == 0:
            ro.clean_logp, ro.noisy_logp, ro.noise_kl = self.engine.measure(ro, rcfg, targets, budget, sigma, batch.seeds)
        else:
            ro.clean_logp = self.engine.rescore(ro, rcfg, targets, budget)
            ro.noise_kl = algo.kl_k3(ro.raw_logp, ro.clean_logp) * ro.completion_mask
        if self.cfg.noise.space == "weight":
            return self.engine.weight_noise_size(sigma, batch.step_seeds[0], targets)
        return perturbation_size(self.model, sigma, batch.step_seeds[0], targets)

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
        from minipsn.evaluation.evaluate import quick_eval

        if not hasattr(self, "test_records"):
            self.test_records = problems(self.cfg.data, "test", self.test_given)
        with self.engine.policy(0.0, [0], self.cfg.noise.targets) as (clean, _):
            return quick_eval(clean, self.tok, self.test_records, self.cfg.eval, self.state.rollout, self.cfg.data.template,
                              derive_seed(self.cfg.run.seed, "eval", step), self.cfg.model.max_prompt_tokens,
                              self.cfg.reward.timeout, self.cfg.reward.last_number, self.cfg.reward.unboxed_answer,
                              per_problem=per_prompt_rng(self.cfg), verifier=self.cfg.reward.verifier,
                              extract=self.cfg.reward.extract)

    def save(self) -> None:
        """A checkpoint of the run as it stands (rank 0 writes it; every rank holds the same state)."""
        if dist.is_main():
            checkpoint.save(self.run_dir, self.model, self.state, self.cfg.to_dict())

    def run(self, on_step=None, log: printlog.PrintLog | None = None) -> Path:
        """The loop: a step, its metrics line and status line, a checkpoint every run.save_every steps; what it
        prints goes to RUN/log.txt too (`log`: train's, holding what the set-up printed) and RUN/summary.json
        says what it did."""
        main_thread = threading.current_thread() is threading.main_thread()  # signals only work there
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main_thread else None
        self.log, first_step = log or printlog.PrintLog(), self.state.step
        if dist.is_main():
            self.log.attach(self.run_dir)
        try:
            with self.log.capture():
                self._loop(on_step)
                if dist.is_main():
                    checkpoint.save_final_adapter(self.run_dir, self.model)
                    summary = trackers.eval_summary(self.run_dir, self.cfg)
                    if summary:
                        print(summary)
        except KeyboardInterrupt as e:  # a second Ctrl-C: stopped at once; say what the folder holds
            stop = folders.interrupted(e, self.run_dir)
            self.log.line(str(stop))
            raise stop from None
        except ValueError as e:
            self.log.line(f"error: {e}")
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
            if dist.is_main():
                trackers.write_summary(self.run_dir, self.cfg, self.started, first_step)
                folders.release(self.run_dir)
            self.log.close()
        return self.run_dir

    def _loop(self, on_step) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        steps = self.cfg.run.steps
        columns = (TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeRemainingColumn())
        every = self.cfg.eval.every
        start = self.state.step
        sinks = trackers.open_log(self.cfg, self.run_dir, start)  # rank 0 writes; the other ranks write nowhere
        # the bar's frames reach the terminal, not log.txt; prints while it is live reach both (printlog.py)
        with self.log.paused(), Progress(*columns, transient=True, disable=not dist.is_main()) as bar, sinks as records, \
                self.log.capture():
            task = bar.add_task("train", total=steps, completed=start)
            if every and start == 0 and steps >= every:  # the starting point the periodic evals compare to
                m0 = {"step": 0, **self.evaluate(-1)}
                records.write(m0)
                self._status(bar, f"step 0/{steps} | held-out pass@1 {m0['eval/pass@1']:.2f} before training")
            for step in range(start, steps):
                if dist.any_true(self.stop_requested):  # torchrun: one rank's Ctrl-C stops all of them at this step
                    self.save()  # at `step` finished steps
                    raise folders.RunInterrupted(f"stopped after step {step}; checkpoint saved: continue with "
                                                 f"python cli.py train --resume {self.run_dir}")
                m = self.step(step)
                if every and (step + 1) % every == 0:
                    m.update(self.evaluate(step))
                records.write(m, self.samples)  # metrics.jsonl, samples.jsonl, run.log_to's trackers
                self._status(bar, trackers.status_line(m, steps))
                bar.update(task, completed=step + 1)
                if on_step is not None:
                    on_step(m)
                # a kept adapter first: a kill before the checkpoint redoes the step and writes it again
                if str(step + 1) in self.cfg.run.keep_adapters.replace(" ", "").split(",") and dist.is_main():
                    checkpoint.save_final_adapter(self.run_dir / "adapters" / f"step-{step + 1}", self.model)
                if (step + 1) % self.cfg.run.save_every == 0 or step + 1 == steps:
                    self.save()

    def _status(self, bar, line: str) -> None:
        """A status line above the progress bar, and in log.txt."""
        bar.console.print(line, highlight=False, soft_wrap=True)
        self.log.line(line)

    def _on_sigint(self, signum, frame):
        """First Ctrl-C: finish this step, save, exit. Second: stop now (the last checkpoint stays)."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nCtrl-C: finishing this step, then saving a checkpoint (press again to stop at once)")


def train(cfg: Config, reward_fn=None, resume: bool = False, on_step=None, dataset=None, test_dataset=None) -> Path:
    """Run PSN-GRPO as configured; returns the run folder (metrics.jsonl, checkpoints, adapter/). reward_fn: one or a
    list (rewards/funcs.py); dataset, test_dataset: rows instead of data.dataset's (user_data.py). Under torchrun
    every process runs this."""
    joined = not dist.active()  # a caller's process group (compare's) stays open for its next job
    log = printlog.PrintLog()  # what the set-up prints waits here for the run folder's log.txt
    try:
        with log.capture():
            run_dir = Trainer(cfg, reward_fn, resume, dataset, test_dataset).run(on_step, log)
    except KeyboardInterrupt as e:  # Ctrl-C while the model loads, before the trainer's own handler is set
        raise folders.interrupted(e, Path(cfg.run.out)) from None
    if joined:
        dist.close()
    return run_dir
