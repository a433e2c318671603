"""The σ controller: how the noise scale moves from one step to the next (arXiv 2602.02555, Sec. 3.3).

Named a controller, not a scheduler, so it is never confused with a learning-rate schedule: it is
`noise.control` in the config, its settings are the `control` section, its metrics are `noise/*`.

    fixed     σ constant.
    kl        variant I (Plappert et al. 2018) on the noise's own KL: d = mean_t(log π_θ̃ − log π_clean)
              over the sampled tokens, π_clean the same sampler without noise (so sampler/learner
              numerics, temperature and top-p are not counted; see `train.learner_step`). d > target·band:
              σ ← σ/α; d < target/band: σ ← σ·α; else hold.
    adaptive  variant II with an operating point. The first `window` steps hold σ at its start value
              σ₀ and record the reference: mean and spread of the groups' semantic diversity D and of
              the self-certainty s. After that each step standardises both against the reference,
                  z_D = (D − m_D) / sd_D,   z_s = (s − m_s) / sd_s,
                  I = λ·z_D − (1 − λ)·z_s,         (clipped to ±INDICATOR_CLIP)
              so I < 0 means the groups are less diverse and more certain than when the run started
              (collapsing), and moves log σ a fraction `rate` of the way to the set point
                  log σ* = log σ₀ + gain · (target − I).
              Under stationary signals σ settles in a band around σ₀·exp(gain·(target − E[I]));
              it rises while groups collapse and falls while they are more diverse than the reference.

Where `adaptive` departs from the paper, which moves σ ← β·σ when I = λ·D + (1 − λ)·ŝ ≤ target and
σ ← σ/β otherwise, with ŝ the min-max normalised self-certainty:
- certainty enters with a minus sign (the paper's ŝ adds exploration credit for confidence; here
  high certainty means collapse, so it asks for more noise);
- both signals are standardised against a reference window at σ₀ instead of D raw and ŝ min-max
  normalised over a sliding window (whose mean is ≈ 0.5 by construction, so the bang-bang rule was a
  driftless random walk whatever the groups did);
- σ moves smoothly toward a set point around σ₀ instead of by ×β or ÷β each step, so it has a level
  to settle at; σ₀ is the operating point (`python cli.py calibrate` suggests one);
- D is the mean over groups of the cosine distance between the learner's mean-pooled final hidden
  states of the group's completions (clean policy, noisy samples; `control.diversity=ngram`: distinct
  2-grams), and s is the mean self-certainty KL(U ‖ p) of the sampler's logits (the perturbed policy,
  before temperature) over the sampled tokens: both come from passes the step makes anyway.

    paper     variant II as published: I_p = λ·D + (1 − λ)·ŝ, ŝ the self-certainty min-max normalised over the
              last `paper_window` steps (0.5 while they have no spread); I_p ≤ paper_target: σ ← β·σ,
              else σ ← σ/β. No reference window and no operating point: σ random-walks by ×β or ÷β. The rule
              and its signs are the paper's; β and the target are this kit's (config.py), as the text gives
              no values we could use for a 0.8 M model. Every controller logs ŝ and I_p.

After any rule σ is clamped to [σ_min, σ_max]. σ = 0 means noise off (plain GRPO): every controller
keeps it at exactly 0. `update` logs the signals, z-scores and I of *this* step for every controller
(so runs compare) and moves σ for the *next* step; `state_dict` holds everything needed to continue
identically after a resume.
"""
from __future__ import annotations

import math
import statistics
from collections import deque

from minipsn.run.config import ControlConfig, NoiseConfig

SIGNALS = ("kl_noise", "diversity", "certainty")
INDICATOR_CLIP = 4.0  # |I| ≤ 4: σ* stays within σ₀·exp(±gain·(4 + |target|)) whatever one step shows
_SPREAD_FLOOR = 1e-3  # sd ≥ 0.1 % of |mean| (and ≥ 1e-12): a reference with no spread cannot divide by 0


def _read(signals: dict[str, float]) -> tuple[float, float, float]:
    """(kl_noise, diversity, certainty) as finite floats; a missing or NaN signal is an error."""
    missing = [k for k in SIGNALS if k not in signals]
    if missing:
        raise ValueError(f"the σ controller needs signals {', '.join(SIGNALS)}; missing {', '.join(missing)}")
    out = tuple(float(signals[k]) for k in SIGNALS)
    bad = [f"{k}={v}" for k, v in zip(SIGNALS, out) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"σ controller signals must be finite, got {', '.join(bad)} (a diverged loss or empty rollouts?)")
    return out


def minmax_normalise(value: float, window: list[float]) -> float:
    """(value − min) / (max − min) over `window` (which holds `value`), in [0, 1]; 0.5 while the window has no
    spread (one step, or all equal): no evidence either way."""
    lo, hi = min(window), max(window)
    return 0.5 if hi <= lo else (value - lo) / (hi - lo)


def standardise(value: float, reference: list[float]) -> float:
    """(value − mean) / sd over `reference`; 0 while it holds fewer than two values."""
    if len(reference) < 2:
        return 0.0
    mean = statistics.fmean(reference)
    sd = max(statistics.pstdev(reference), _SPREAD_FLOOR * abs(mean), 1e-12)
    return (value - mean) / sd


class FixedSigma:
    """σ stays where it started. Also the base of the others: the reference window, the logged
    signals, the clamp and the state; a subclass only says where σ goes (`_next`)."""

    name = "fixed"

    def __init__(self, noise: NoiseConfig, cfg: ControlConfig):
        self.noise, self.cfg = noise, cfg
        self.sigma0 = self.sigma = float(noise.sigma)
        self.ref_div: list[float] = []   # D of the first `window` steps: the reference
        self.ref_cert: list[float] = []  # s of the first `window` steps
        self.recent_cert: deque[float] = deque(maxlen=cfg.paper_window)  # s of the last paper_window steps

    @property
    def calibrating(self) -> bool:
        """True while the reference window is still being recorded (σ holds)."""
        return len(self.ref_div) < self.cfg.window

    def _next(self, kl_noise: float, indicator: float, recording: bool, paper_indicator: float) -> float:
        """σ of the next step by this controller's rule, before the clamp (`recording`: this step
        was part of the reference window; `paper_indicator`: the published variant II's I_p)."""
        return self.sigma

    def update(self, signals: dict[str, float]) -> dict[str, float]:
        """Read this step's signals (kl_noise, diversity, certainty); return the logged noise/* stats
        of this step and move σ for the next one."""
        kl_noise, diversity, certainty = _read(signals)
        recording = self.calibrating
        if recording:
            self.ref_div.append(diversity)
            self.ref_cert.append(certainty)
        z_div, z_cert = standardise(diversity, self.ref_div), standardise(certainty, self.ref_cert)
        lam = self.cfg.lam
        indicator = max(-INDICATOR_CLIP, min(INDICATOR_CLIP, lam * z_div - (1.0 - lam) * z_cert))
        self.recent_cert.append(certainty)
        cert_minmax = minmax_normalise(certainty, list(self.recent_cert))
        paper_indicator = lam * diversity + (1.0 - lam) * cert_minmax
        before = self.sigma
        wanted = self._next(kl_noise, indicator, recording, paper_indicator) if before > 0 else 0.0  # σ = 0 stays 0
        if before > 0:
            self.sigma = min(max(wanted, self.noise.sigma_min), self.noise.sigma_max)
        # direction is where σ went (after the clamp); clamped: the bounds held back the rule's move
        return {"noise/kl_noise": kl_noise, "noise/diversity": diversity, "noise/certainty": certainty,
                "noise/diversity_z": z_div, "noise/certainty_z": z_cert, "noise/indicator": indicator,
                "noise/certainty_minmax": cert_minmax, "noise/paper_indicator": paper_indicator,
                "noise/calibrating": float(recording),
                "noise/direction": float((self.sigma > before) - (self.sigma < before)),
                "noise/clamped": float(before > 0 and self.sigma != wanted), "noise/sigma_next": self.sigma}

    def state_dict(self) -> dict:
        return {"controller": self.name, "sigma": self.sigma, "sigma0": self.sigma0,
                "ref_div": list(self.ref_div), "ref_cert": list(self.ref_cert), "recent_cert": list(self.recent_cert)}

    def load_state_dict(self, state: dict) -> None:
        kind = state.get("controller", state.get("scheduler", self.name))
        if kind != self.name:
            raise ValueError(f"the checkpoint's σ state was written by the {kind!r} controller but noise.control="
                             f"{self.name!r}; resume with --set noise.control={kind}")
        self.sigma = float(state["sigma"])
        self.sigma0 = float(state.get("sigma0", self.sigma0))
        self.ref_div = [float(v) for v in state.get("ref_div", [])]
        self.ref_cert = [float(v) for v in state.get("ref_cert", [])]
        self.recent_cert = deque((float(v) for v in state.get("recent_cert", [])), maxlen=self.cfg.paper_window)


class KLSigma(FixedSigma):
    """Variant I: keep the noise's KL inside [target/band, target·band]."""

    name = "kl"

    def _next(self, kl_noise: float, indicator: float, recording: bool, paper_indicator: float) -> float:
        if kl_noise > self.cfg.kl_target * self.cfg.kl_band:
            return self.sigma / self.cfg.kl_alpha  # the noisy policy drifts too far: less noise
        if kl_noise < self.cfg.kl_target / self.cfg.kl_band:
            return self.sigma * self.cfg.kl_alpha  # it barely differs from π_clean: more noise
        return self.sigma


class AdaptiveSigma(FixedSigma):
    """Variant II with an operating point: log σ tracks log σ₀ + gain·(target − I)."""

    name = "adaptive"

    def _next(self, kl_noise: float, indicator: float, recording: bool, paper_indicator: float) -> float:
        if recording:
            return self.sigma  # σ holds at σ₀ while the reference is recorded
        set_point = math.log(self.sigma0) + self.cfg.gain * (self.cfg.target - indicator)
        return math.exp(math.log(self.sigma) + self.cfg.rate * (set_point - math.log(self.sigma)))


class PaperSigma(FixedSigma):
    """Variant II as published: σ ← β·σ while I_p = λ·D + (1 − λ)·ŝ is at or below its target, else σ/β."""

    name = "paper"

    def _next(self, kl_noise: float, indicator: float, recording: bool, paper_indicator: float) -> float:
        beta = self.cfg.paper_beta
        return self.sigma * beta if paper_indicator <= self.cfg.paper_target else self.sigma / beta


def make_controller(noise: NoiseConfig, cfg: ControlConfig, steps: int = 0) -> FixedSigma:
    """The σ controller named by `noise.control`, starting at `noise.sigma`, for a run of `steps` steps (0: not
    known; only the note below reads it)."""
    kinds = {"fixed": FixedSigma, "kl": KLSigma, "adaptive": AdaptiveSigma, "paper": PaperSigma}
    if noise.control not in kinds:
        raise ValueError(f"unknown noise.control {noise.control!r}; use {', '.join(kinds)}")
    if noise.sigma == 0 and noise.control != "fixed":
        print(f"note: noise.sigma=0 means noise off; the {noise.control} controller keeps σ at 0 "
              f"(set noise.sigma within [{noise.sigma_min:g}, {noise.sigma_max:g}] to start it)")
    elif noise.control == "adaptive" and 0 < steps <= cfg.window + 1:  # σ first moves for step window + 2
        print(f"note: the adaptive controller holds σ for its first control.window = {cfg.window} steps (its "
              f"reference) and moves it from step {cfg.window + 2} on; with run.steps = {steps} σ never moves, so this "
              "run is the same as one with noise.control=fixed (psn-adaptive = psn); run more steps or lower "
              "control.window")
    return kinds[noise.control](noise, cfg)
