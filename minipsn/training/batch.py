"""A step's batch: what one process samples at a step (problems, generators, noise seeds) and what its rows earn.

A step's P problems are a fixed function of (seed, step) (`step_records`), so a resumed run sees the same ones.
Under torchrun each process takes a contiguous share of them (`StepBatch`), with one sampling generator per prompt
seeded by the prompt's index in the step (rollout.rng=prompt, `per_prompt_rng`: a prompt samples the same tokens
whichever process samples it) and the noise seed of each of its rows (noise.row_seeds). `score` gives the rows'
rewards and the verifier's correctness, `advantages` the (P, G) advantages from them: GRPO's group-normalised
reward, or Pass@k training's. `Trainer.step` (train.py) calls them in its phases.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from minipsn.method import algo
from minipsn.method.noise import derive_seed
from minipsn.rewards import correctness_rewards, shaped_reward
from minipsn.rewards import funcs as reward_funcs
from minipsn.run.config import Config, GRPOConfig, RewardConfig
from minipsn.sampling.rollout import Rollouts


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


def per_prompt_rng(cfg: Config) -> bool:
    """One sampling generator per prompt (rollout.rng=prompt or auto, the default), else one per step (batch)."""
    return cfg.rollout.rng != "batch"


@dataclass
class StepBatch:
    """What a process samples at one step: its share lo … hi − 1 of the step's P prompts (all of them on one process)."""
    records: list[dict]          # (P_r,) the problems
    prompts: list[str]           # (P_r,) the problems as prompts
    generator_seeds: list[int]   # (P_r,) one per prompt, seeded by its index in the step, or (1,) one for the step
    per_prompt: bool             # which of the two (rollout.rng)
    device: torch.device
    noise_seed: int              # the step's noise seed (noise/seed): rebuilds its noisy policies
    step_seeds: list[int]        # (N,) the noise seed of every row of the step, prompt-major (noise.row_seeds)
    first_row: int               # this process's rows are first_row … first_row + P_r·G − 1 of the step's N = P·G
    G: int

    def generators(self) -> torch.Generator | list[torch.Generator]:
        """Fresh sampling generators, one per prompt or one for the step: a rollout retried after out-of-memory
        starts from these again, so with one per prompt and batch sizes that are multiples of G the retry samples
        what the first try would have (tests/test_train.py)."""
        gens = [torch.Generator(self.device).manual_seed(s) for s in self.generator_seeds]
        return gens if self.per_prompt else gens[0]

    @property
    def seeds(self) -> list[int]:
        """(P_r·G,) the noise seeds of this process's rows: a function of a row's index in the step."""
        return self.step_seeds[self.first_row : self.first_row + len(self.records) * self.G]

    @property
    def row_records(self) -> list[dict]:
        """(P_r·G,) the problem of each row, prompt-major: row i → prompt i // G."""
        return [r for r in self.records for _ in range(self.G)]

    def logged_seeds(self, granularity: str) -> dict:
        """noise/row_seeds: the seed of each group (group noise) or row (rollout noise, several draws); none for one
        draw a step."""
        if granularity == "step" and len(set(self.step_seeds)) == 1:
            return {}
        return {"noise/row_seeds": self.step_seeds[:: self.G] if granularity == "group" else self.step_seeds[: self.G]
                if granularity == "step" else self.step_seeds}  # draws: the first group's rows show the split


def score(reward_fn, ro: Rollouts, recs: list[dict], cfg: RewardConfig, prompts: list[str] | None = None,
          stats: dict | None = None):
    """Rewards (N,) and the verifier's correctness (N,) of the rollouts. Correctness is the verifier's
    judgement alone (no format bonus, a truncated completion counts as wrong), whatever the reward;
    the default reward is built from it, so each completion is verified once. Reward functions give their
    weighted sum instead, NaN where none scored a row; `stats` receives their reward/* means (rewards/funcs.py)."""
    truncated = ro.truncated.tolist()
    correct = torch.tensor(correctness_rewards(ro.texts, [r["answer"] for r in recs], truncated, 0.0, cfg.timeout,
                                               cfg.last_number, cfg.unboxed_answer, cfg.verify_workers, cfg.verifier,
                                               cfg.extract))
    rewards = [shaped_reward(float(c), t, tr, cfg.format_weight, cfg.truncated_reward)
               for c, t, tr in zip(correct.tolist(), ro.texts, truncated)]
    if reward_fn is not None:
        rewards = reward_funcs.combine(reward_fn, ro, recs, truncated, rewards, cfg, prompts, stats)
    return torch.tensor(rewards, dtype=torch.float32), correct


def advantages(rewards: torch.Tensor, correct: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    """(P, G) rewards and verifier correctness → (P, G) advantages by the configured estimator:
    GRPO normalises the reward within groups; Pass@k training reads pass/fail from the verifier."""
    if cfg.advantage == "grpo":
        if rewards.isnan().any():  # rows no reward function scored: out of their group's mean and std, as in TRL
            return reward_funcs.scored_group_advantages(rewards, cfg.scale_advantages)
        return algo.group_advantages(rewards, scale=cfg.scale_advantages)
    elif cfg.advantage == "passk":
        return algo.passk_advantages(correct, cfg.passk_k)
    else:
        raise ValueError(f"unknown advantage estimator {cfg.advantage!r}; use grpo or passk")
