"""σ schedulers on hand sequences of signals: direction, factor, clamping, the min-max window,
σ = 0 staying off, and a state_dict round trip that continues identically."""
import dataclasses
import io
import math
from types import SimpleNamespace

import pytest
import torch

from minipsn.config import NoiseConfig, SchedulerConfig
from minipsn.scheduler import AdaptiveSigma, FixedSigma, KLSigma, make_scheduler, minmax_normalise


def sig(kl=0.003, div=0.5, cert=1.0):
    return {"kl_proxy": kl, "diversity": div, "certainty": cert}


def make(kind, sigma=0.01, smin=1e-6, smax=0.5, **sched):
    return make_scheduler(NoiseConfig(sigma=sigma, scheduler=kind, sigma_min=smin, sigma_max=smax),
                          SchedulerConfig(**sched))


def test_dispatch_and_unknown_name():
    assert type(make("fixed")) is FixedSigma
    assert type(make("kl")) is KLSigma
    assert type(make("adaptive")) is AdaptiveSigma
    with pytest.raises(ValueError, match="noise.scheduler"):
        NoiseConfig(scheduler="cosine")
    bogus = SimpleNamespace(**{**dataclasses.asdict(NoiseConfig()), "scheduler": "cosine"})
    with pytest.raises(ValueError, match="unknown noise scheduler 'cosine'"):
        make_scheduler(bogus, SchedulerConfig())


def test_config_checks_sigma_bounds():
    with pytest.raises(ValueError, match="outside"):
        NoiseConfig(sigma=0.6)
    with pytest.raises(ValueError, match="kl_band"):
        SchedulerConfig(kl_band=0.9)
    NoiseConfig(sigma=0.0, sigma_min=1e-3)  # 0 = off is always allowed


def test_fixed_stays_constant_and_logs_signals():
    s = make("fixed", sigma=0.02)
    for kl, div, cert in [(1.0, 0.0, 5.0), (0.0, 1.0, -3.0), (0.5, 0.5, 0.0)]:
        stats = s.update(sig(kl, div, cert))
        assert s.sigma == 0.02 and stats["noise/sigma_next"] == 0.02 and stats["noise/direction"] == 0
        assert (stats["noise/kl_proxy"], stats["noise/diversity"], stats["noise/certainty"]) == (kl, div, cert)
        assert "noise/indicator" in stats


def test_kl_direction_factor_and_band():
    s = make("kl", sigma=0.01, kl_target=0.003, kl_alpha=1.01)
    s.update(sig(kl=0.01))  # far above target: less noise
    assert s.sigma == pytest.approx(0.01 / 1.01, rel=1e-12)
    s.update(sig(kl=0.0))  # below target / 1.1: more noise
    assert s.sigma == pytest.approx(0.01, rel=1e-12)
    for kl in (0.003, 0.003 * 1.1, 0.003 / 1.1 + 1e-9):  # inside the band (edges included): hold
        stats = s.update(sig(kl=kl))
        assert s.sigma == pytest.approx(0.01, rel=1e-12) and stats["noise/direction"] == 0
    assert s.update(sig(kl=0.0033001))["noise/direction"] == -1


def test_kl_clamps_to_bounds():
    s = make("kl", sigma=0.01, smin=0.009, smax=0.0105, kl_alpha=1.1)
    for _ in range(5):
        s.update(sig(kl=0.0))
    assert s.sigma == 0.0105
    for _ in range(5):
        s.update(sig(kl=1.0))
    assert s.sigma == 0.009


def test_minmax_window_normalisation():
    assert minmax_normalise(3.0, [3.0]) == 0.5  # no spread yet
    assert minmax_normalise(2.0, [2.0, 2.0, 2.0]) == 0.5
    assert minmax_normalise(1.5, [1.0, 2.0, 1.5]) == 0.5
    assert minmax_normalise(2.0, [1.0, 2.0]) == 1.0
    s = make("adaptive", window=3)
    got = [s.update(sig(cert=c))["noise/certainty_norm"] for c in (1.0, 2.0, 1.5, 1.0, 0.0, 0.5)]
    # windows: [1] [1,2] [1,2,1.5] [2,1.5,1] [1.5,1,0] [1,0,.5] — the oldest value leaves after 3 steps
    assert got == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.0, 0.5])
    assert list(s.window) == [1.0, 0.0, 0.5]


def test_adaptive_indicator_direction_and_factor():
    s = make("adaptive", sigma=0.01, lam=0.5, beta=1.05, target=0.5, window=5)
    st = s.update(sig(div=0.2, cert=1.0))  # ŝ = .5: I = .1 + .25 = .35 ≤ .5 → more noise
    assert st["noise/indicator"] == pytest.approx(0.35) and st["noise/direction"] == 1
    assert s.sigma == pytest.approx(0.0105, rel=1e-12)
    st = s.update(sig(div=0.9, cert=0.0))  # ŝ = 0 (least certain so far): I = .45 + .5 = .95 → less
    assert st["noise/indicator"] == pytest.approx(0.95) and s.sigma == pytest.approx(0.01, rel=1e-12)
    st = s.update(sig(div=0.0, cert=2.0))  # ŝ = 1 (most certain): I = 0 → more
    assert st["noise/indicator"] == 0.0 and s.sigma == pytest.approx(0.0105, rel=1e-12)
    s2 = make("adaptive", sigma=0.01, lam=1.0, target=0.5)
    s2.update(sig(div=0.5))  # exactly at target counts as too little exploration
    assert s2.sigma > 0.01


def test_adaptive_clamps_to_bounds():
    s = make("adaptive", sigma=0.4, smin=0.3, smax=0.45, beta=1.5, lam=1.0)
    s.update(sig(div=0.0))
    assert s.sigma == 0.45
    for _ in range(3):
        s.update(sig(div=1.0))
    assert s.sigma == 0.3


@pytest.mark.parametrize("kind", ["fixed", "kl", "adaptive"])
def test_sigma_zero_means_off(kind, capsys):
    s = make(kind, sigma=0.0, smin=1e-3)
    for kl, div in [(0.0, 0.0), (1.0, 1.0)]:
        stats = s.update(sig(kl=kl, div=div))
        assert s.sigma == 0.0 and stats["noise/sigma_next"] == 0.0  # not clamped up to σ_min
    assert ("keeps σ at 0" in capsys.readouterr().out) == (kind != "fixed")


@pytest.mark.parametrize("kind", ["fixed", "kl", "adaptive"])
def test_state_dict_round_trip_continues_identically(kind):
    seq = [sig(kl=0.001 * i, div=(i % 4) / 4, cert=math.sin(i)) for i in range(12)]
    a = make(kind, window=4)
    for s in seq[:7]:
        a.update(s)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as checkpoint.save does
    buf.seek(0)
    b = make(kind, window=4)
    b.load_state_dict(torch.load(buf))
    for s in seq[7:]:
        assert a.update(s) == b.update(s)
        assert a.sigma == b.sigma


def test_load_rejects_other_scheduler_and_bad_signals():
    with pytest.raises(ValueError, match="noise.scheduler=kl"):
        make("adaptive").load_state_dict(make("kl").state_dict())
    make("fixed").load_state_dict({"sigma": 0.01})  # older checkpoints hold σ only
    with pytest.raises(ValueError, match="missing certainty"):
        make("adaptive").update({"kl_proxy": 0.0, "diversity": 0.1})
    with pytest.raises(ValueError, match="finite"):
        make("kl").update(sig(kl=float("nan")))


def test_direction_reports_where_sigma_went_when_the_clamp_holds_it():
    s = make("kl", sigma=0.01, smin=0.009, smax=0.01, kl_alpha=1.1)
    held = s.update(sig(kl=0.0))  # the rule wants more noise; σ is at σ_max already
    assert s.sigma == 0.01 and held["noise/direction"] == 0 and held["noise/clamped"] == 1
    down = s.update(sig(kl=1.0))  # inside the bounds: σ moves and nothing clamps
    assert s.sigma < 0.01 and down["noise/direction"] == -1 and down["noise/clamped"] == 0
    steady = s.update(sig(kl=0.003))  # inside the band: the rule holds, which is no clamp
    assert steady["noise/direction"] == 0 and steady["noise/clamped"] == 0
