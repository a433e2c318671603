"""Noise schedulers: how σ moves from step to step.

fixed: σ constant. (kl and adaptive are added by the scheduler work; see the README.)
Every scheduler clamps σ to [σ_min, σ_max] and reports `noise/*` signals each step.
"""
from __future__ import annotations

from minipsn.config import NoiseConfig, SchedulerConfig


class FixedSigma:
    """σ stays where it started."""

    def __init__(self, noise: NoiseConfig, cfg: SchedulerConfig):
        self.noise, self.cfg = noise, cfg
        self.sigma = noise.sigma

    def update(self, signals: dict[str, float]) -> dict[str, float]:
        """Read this step's signals (kl_proxy, diversity, certainty); return the logged noise/* stats."""
        return {"noise/" + k: float(v) for k, v in signals.items()}

    def state_dict(self) -> dict:
        return {"sigma": self.sigma}

    def load_state_dict(self, state: dict) -> None:
        self.sigma = float(state["sigma"])


def make_scheduler(noise: NoiseConfig, cfg: SchedulerConfig):
    if noise.scheduler == "fixed":
        return FixedSigma(noise, cfg)
    else:
        raise ValueError(f"unknown noise scheduler {noise.scheduler!r}; use fixed, kl or adaptive")
