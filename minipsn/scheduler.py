"""Noise schedulers: how σ moves from one step to the next (arXiv 2602.02555, Sec. 3.3).

    fixed     σ constant.
    kl        variant I (Plappert et al. 2018): d = mean_t(log π_θ̃ − log π_θ) over the sampled
              tokens, an estimate of KL(π_θ̃ ‖ π_θ) that the TIS pass gives for free. Too much
              drift, d > target·band: σ ← σ/α; too little, d < target/band: σ ← σ·α; else hold.
    adaptive  variant II (the paper's): indicator I = λ·D + (1 − λ)·(1 − ŝ), D the mean semantic
              diversity of the groups, ŝ the mean self-certainty min-max normalised over the last
              `window` steps (this one included; ŝ = 0.5 while the window has no spread). Low I means
              little exploration (alike answers, over-confident): I ≤ target: σ ← β·σ, else σ ← σ/β.

After the rule σ is clamped to [σ_min, σ_max]. σ = 0 means noise off (plain GRPO): every
scheduler keeps it at exactly 0 (no clamp up to σ_min), so a GRPO baseline stays one.
`update` logs the signals, ŝ and I of *this* step for every scheduler (so runs compare) and
moves σ for the *next* step; `state_dict` holds σ and the window, for a resume that continues
identically.
"""
from __future__ import annotations

import math
from collections import deque

from minipsn.config import NoiseConfig, SchedulerConfig

SIGNALS = ("kl_proxy", "diversity", "certainty")


def _read(signals: dict[str, float]) -> tuple[float, float, float]:
    """(kl_proxy, diversity, certainty) as finite floats; a missing or NaN signal is an error."""
    missing = [k for k in SIGNALS if k not in signals]
    if missing:
        raise ValueError(f"scheduler.update needs signals {', '.join(SIGNALS)}; missing {', '.join(missing)}")
    out = tuple(float(signals[k]) for k in SIGNALS)
    bad = [f"{k}={v}" for k, v in zip(SIGNALS, out) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"scheduler signals must be finite, got {', '.join(bad)} (a diverged loss or empty rollouts?)")
    return out


def minmax_normalise(value: float, window: list[float]) -> float:
    """(value − min) / (max − min) over `window` (which holds `value`), in [0, 1]; 0.5 when the
    window has no spread yet (one step, or all equal), i.e. 'no evidence either way'."""
    lo, hi = min(window), max(window)
    return 0.5 if hi <= lo else (value - lo) / (hi - lo)


class FixedSigma:
    """σ stays where it started. Also the base of the others: the window, the logged signals,
    the clamp and the state; a subclass only says which way σ moves (`_factor`)."""

    name = "fixed"

    def __init__(self, noise: NoiseConfig, cfg: SchedulerConfig):
        self.noise, self.cfg = noise, cfg
        self.sigma = float(noise.sigma)
        self.window: deque[float] = deque(maxlen=cfg.window)  # self-certainty of the last `window` steps

    def _factor(self, kl_proxy: float, indicator: float) -> float:
        """Multiplier of σ for the next step (1 = hold)."""
        return 1.0

    def update(self, signals: dict[str, float]) -> dict[str, float]:
        """Read this step's signals (kl_proxy, diversity, certainty); return the logged noise/* stats
        of this step and move σ for the next one."""
        kl_proxy, diversity, certainty = _read(signals)
        self.window.append(certainty)
        certainty_norm = minmax_normalise(certainty, list(self.window))
        indicator = self.cfg.lam * diversity + (1.0 - self.cfg.lam) * (1.0 - certainty_norm)
        factor = self._factor(kl_proxy, indicator) if self.sigma > 0 else 1.0  # σ = 0: noise off, stays 0
        before = self.sigma
        if self.sigma > 0:
            self.sigma = min(max(self.sigma * factor, self.noise.sigma_min), self.noise.sigma_max)
        # direction is where σ went (after the clamp); clamped: the bounds held back the rule's move
        return {"noise/kl_proxy": kl_proxy, "noise/diversity": diversity, "noise/certainty": certainty,
                "noise/certainty_norm": certainty_norm, "noise/indicator": indicator,
                "noise/direction": float((self.sigma > before) - (self.sigma < before)),
                "noise/clamped": float(before > 0 and self.sigma != before * factor), "noise/sigma_next": self.sigma}

    def state_dict(self) -> dict:
        return {"scheduler": self.name, "sigma": self.sigma, "window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        kind = state.get("scheduler", self.name)  # checkpoints from before the field was added: fixed
        if kind != self.name:
            raise ValueError(f"the checkpoint's σ state was written by the {kind!r} scheduler but noise.scheduler="
                             f"{self.name!r}; resume with --set noise.scheduler={kind}")
        self.sigma = float(state["sigma"])
        self.window = deque((float(v) for v in state.get("window", [])), maxlen=self.cfg.window)


class KLSigma(FixedSigma):
    """Variant I: keep the KL proxy of π_θ̃ from π_θ inside [target/band, target·band]."""

    name = "kl"

    def _factor(self, kl_proxy: float, indicator: float) -> float:
        if kl_proxy > self.cfg.kl_target * self.cfg.kl_band:
            return 1.0 / self.cfg.kl_alpha  # the noisy policy drifts too far: less noise
        if kl_proxy < self.cfg.kl_target / self.cfg.kl_band:
            return self.cfg.kl_alpha  # it barely differs from π_θ: more noise
        return 1.0


class AdaptiveSigma(FixedSigma):
    """Variant II: more noise while the exploration indicator is at or below its target."""

    name = "adaptive"

    def _factor(self, kl_proxy: float, indicator: float) -> float:
        return self.cfg.beta if indicator <= self.cfg.target else 1.0 / self.cfg.beta


def make_scheduler(noise: NoiseConfig, cfg: SchedulerConfig) -> FixedSigma:
    """The scheduler named by `noise.scheduler`, starting at `noise.sigma`."""
    if noise.scheduler == "fixed":
        sched = FixedSigma(noise, cfg)
    elif noise.scheduler == "kl":
        sched = KLSigma(noise, cfg)
    elif noise.scheduler == "adaptive":
        sched = AdaptiveSigma(noise, cfg)
    else:
        raise ValueError(f"unknown noise scheduler {noise.scheduler!r}; use fixed, kl or adaptive")
    if noise.sigma == 0 and noise.scheduler != "fixed":
        print(f"note: noise.sigma=0 means noise off; the {noise.scheduler} scheduler keeps σ at 0 "
              f"(set noise.sigma within [{noise.sigma_min:g}, {noise.sigma_max:g}] to start it)")
    return sched
