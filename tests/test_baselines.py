"""Baselines stay baselines: a method owns the keys that define it, and `compare --sigma` reaches only
the methods with noise."""
import pytest

from minipsn.experiments import jobs
from minipsn.run.overrides import build_config
from minipsn.run.presets import METHODS

BASELINES = {"grpo", "temperature", "passk"}


@pytest.mark.parametrize("method,key,value", [("grpo", "noise.sigma", "0.01"), ("passk", "grpo.advantage", "grpo"),
                                              ("psn-notis", "grpo.tis", "true"), ("psn-kl", "noise.control", "adaptive"),
                                              ("temperature", "noise.sigma", "0.003")])
def test_an_override_that_contradicts_the_method_fails_naming_both(method, key, value):
    with pytest.raises(ValueError, match=rf"--method {method} fixes {key}=.*{key}={value} was given"):
        build_config(model="qwen-1.5b", method=method, sets={key: value})


def test_overrides_that_agree_or_are_free_to_tune_pass():
    assert build_config(model="qwen-1.5b", method="grpo", sets={"noise.sigma": "0"}).noise.sigma == 0.0
    assert build_config(model="qwen-1.5b", method="temperature", sets={"rollout.temperature": "1.5"}).rollout.temperature == 1.5
    assert build_config(model="qwen-1.5b", method="psn", sets={"noise.sigma": "0.02"}).noise.sigma == 0.02


@pytest.mark.parametrize("method", sorted(METHODS))
def test_compare_sigma_reaches_only_the_methods_with_noise(method, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("minipsn.training.train.train", lambda cfg, resume=False: seen.setdefault("cfg", cfg))
    monkeypatch.setattr("minipsn.evaluation.evaluate.evaluate", lambda cfg, *a, **k: {"trained": cfg})
    fixed_draw = "noise.granularity" in METHODS[method]  # c3po: its draws split the step's, its own setting
    sets = {"noise.sigma": 0.02, "eval.every": 0, **({} if fixed_draw else {"noise.granularity": "group"})}
    jobs.run_one("qwen-1.5b", method, 0, sets, tmp_path / method, ["synthetic"])
    noise = seen["cfg"].noise
    if method in BASELINES:
        assert noise.sigma == 0.0 and noise.granularity == build_config(model="qwen-1.5b").noise.granularity
    else:
        assert noise.sigma == 0.02 and noise.granularity == ("step" if fixed_draw else "group")


def test_compare_granularity_the_c3po_arm_cannot_take_fails_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"--method c3po fixes noise.granularity=step.*noise.granularity=group"):
        jobs.job_config("qwen-1.5b", "c3po", 0, {"noise.granularity": "group"}, tmp_path / "w")
    assert jobs.job_config("qwen-1.5b", "psn-weight", 0, {"noise.granularity": "group"}, tmp_path / "w").noise.granularity == "group"
