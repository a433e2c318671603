"""Noise in policy terms on the real tiny model: what each step logs (the KL split, ‖ΔW‖/‖W‖, TIS ESS),
what the kl controller steers on, and `calibrate`: its JSON, σ = 0 as the numerics-only row, and a
noise KL that grows with σ."""
import json
import math

import pytest

from minipsn.experiments.calibrate import calibrate, parse_sigmas, suggest
from minipsn.method.noise import derive_seed, perturbation_size
from minipsn.run.overrides import build_config
from minipsn.training.train import Trainer

NEW_KEYS = {"noise/kl_total", "noise/kl_numerics", "noise/kl_noise", "noise/delta_w_rel", "tis/ess", "tis/ratio_max",
            "noise/diversity_z", "noise/certainty_z", "noise/calibrating", "perf/rescore_s"}


def tiny(out, **sets):
    base = {"run.out": str(out), "run.steps": 2, "grpo.prompts_per_step": 4, "grpo.group_size": 4,
            "rollout.max_new_tokens": 32, "eval.every": 0}
    return build_config(model="tiny", sets={**base, **sets})


def test_a_step_logs_the_noise_in_policy_and_weight_terms_and_kl_control_steers_on_the_noise_part(tmp_path):
    trainer = Trainer(tiny(tmp_path / "psn", **{"noise.sigma": 0.03, "noise.control": "kl"}))
    seen = []
    update = trainer.controller.update
    trainer.controller.update = lambda signals: (seen.append(dict(signals)), update(signals))[1]
    m = trainer.step(0)
    assert NEW_KEYS <= m.keys()
    # the noise part is a KL (k3, ≥ 0) and clearly there at σ = 0.03; numerics are what σ = 0 shows
    assert m["noise/kl_noise"] > 1e-4 and m["noise/kl_noise"] != m["noise/kl_total"]
    assert seen[0]["kl_noise"] == m["noise/kl_noise"]  # the controller read the noise's part, not the total
    assert 0 < m["noise/delta_w_rel"] < 10 and 0 < m["tis/ess"] <= 1 and m["tis/ratio_max"] >= 1
    grpo = Trainer(build_config(model="tiny", method="grpo", sets={
        "run.out": str(tmp_path / "grpo"), "run.steps": 1, "grpo.prompts_per_step": 4, "grpo.group_size": 4,
        "rollout.max_new_tokens": 32, "eval.every": 0}))
    g = grpo.step(0)
    assert g["noise/kl_noise"] == 0.0 and g["noise/delta_w_rel"] == 0.0 and g["noise/kl_numerics"] == g["noise/kl_total"]


def test_calibrate_on_tiny_writes_json_with_a_numerics_only_row_and_kl_growing_with_sigma(tmp_path):
    cfg = tiny(tmp_path / "unused", **{"grpo.prompts_per_step": 8, "grpo.group_size": 8, "rollout.max_new_tokens": 48})
    report = calibrate(cfg, parse_sigmas("0.005,0.02,0.08"), target_kl=0.003, draws=1, out=tmp_path / "cal")
    saved = json.loads((tmp_path / "cal" / "calibrate.json").read_text())
    assert saved["rows"] == report["rows"] and [r["sigma"] for r in saved["rows"]] == [0.0, 0.005, 0.02, 0.08]
    zero, *noisy = saved["rows"]
    assert zero["kl_noise"] == 0.0 and zero["delta_w_rel"] == 0.0  # σ = 0: numerics only
    assert zero["accuracy"] == zero["accuracy_clean"]
    kls = [r["kl_noise"] for r in noisy]
    assert kls[0] < kls[1] < kls[2] and kls[2] > 10 * kls[0]  # KL grows with σ (about as σ²)
    dws = [r["delta_w_rel"] for r in noisy]
    assert dws[0] < dws[1] < dws[2]
    if saved["suggested_sigma"] is not None:  # bracketed: the suggestion lies between its grid points
        assert 0.005 <= saved["suggested_sigma"] <= 0.08


def test_suggest_interpolates_in_log_log_and_says_when_the_grid_misses():
    rows = [{"sigma": 0.0, "kl_noise": 0.0}, {"sigma": 0.01, "kl_noise": 0.001}, {"sigma": 0.1, "kl_noise": 0.1}]
    best, _ = suggest(rows, 0.01)  # kl ∝ σ² between the points: σ = 0.01·√10
    assert best == pytest.approx(0.01 * math.sqrt(10), rel=1e-9)
    assert suggest(rows, 1.0) == (None, pytest.approx(suggest(rows, 1.0)[1])) and "larger --sigmas" in suggest(rows, 1.0)[1]
    assert "smaller --sigmas" in suggest(rows, 1e-5)[1]
    best, why = suggest([{"sigma": 0.01, "kl_noise": 0.0}, {"sigma": 0.02, "kl_noise": 0.004}], 0.001)
    assert best == pytest.approx(0.01) and "σ²" in why
    with pytest.raises(ValueError, match="--sigmas"):
        parse_sigmas("0,abc")
    with pytest.raises(ValueError, match="at least one"):
        parse_sigmas("0")


def test_calibrate_measures_the_adapter_the_run_starts_with(tmp_path):
    # the fresh adapter's A comes from torch's RNG: calibrate seeds it as the trainer does, so two calls
    # (and the run with the same seed) see the same A, and the same numbers
    cfg = tiny(tmp_path / "unused", **{"grpo.prompts_per_step": 4, "grpo.group_size": 4})
    a = calibrate(cfg, parse_sigmas("0.02"), draws=1)
    b = calibrate(cfg, parse_sigmas("0.02"), draws=1)
    assert a["rows"] == b["rows"]
    # ‖ΔW‖ depends on A (B = 0 at the start): the trainer's adapter gives calibrate's number exactly
    trainer = Trainer(tiny(tmp_path / "run", **{"grpo.prompts_per_step": 4, "grpo.group_size": 4}))
    expected = perturbation_size(trainer.model, 0.02, derive_seed(0, "calibrate", 0), "mlp")
    assert a["rows"][1]["delta_w_rel"] == pytest.approx(expected, rel=1e-9)
