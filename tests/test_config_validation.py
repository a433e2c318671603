"""Config validation binds where a value is used: a field that only a feature not in use reads (passk_k
without Pass@k training) cannot fail a run, while a nonsensical value (a count below 1) always does."""
import pytest

from minipsn.run.config import GRPOConfig, NoiseConfig
from minipsn.run.overrides import build_config
from minipsn.run.presets import METHODS
from minipsn.tasks import local_models, models


@pytest.fixture(autouse=True)
def no_model_build(monkeypatch):
    """Building a config must never build or resolve the model (the tiny build takes minutes)."""
    def refuse(*args, **kwargs):
        raise AssertionError("config building touched the model")
    monkeypatch.setattr(local_models, "local_model_dir", refuse)
    monkeypatch.setattr(models, "resolve_name", refuse)


@pytest.mark.parametrize("method", [None, *sorted(m for m in METHODS if METHODS[m].get("grpo.advantage") != "passk")])
def test_small_group_without_passk_is_valid(method):
    cfg = build_config(model="tiny", method=method, sets={"grpo.group_size": "2"})
    assert cfg.grpo.group_size == 2 and cfg.grpo.passk_k > 2 and cfg.grpo.advantage == "grpo"


@pytest.mark.parametrize("method", ["passk", "psn-passk"])
def test_passk_k_above_group_size_fails_naming_the_fields(method):
    with pytest.raises(ValueError) as err:
        build_config(model="tiny", method=method, sets={"grpo.group_size": "2"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "grpo.passk_k=4" in msg and "grpo.group_size=2" in msg and "passk" in msg
    with pytest.raises(ValueError, match=r"grpo\.passk_k=3 must be in \[1, grpo\.group_size=2\]"):
        build_config(model="tiny", method="grpo", sets={"grpo.advantage": "passk", "grpo.group_size": "2",
                                                        "grpo.passk_k": "3"})


def test_passk_k_equal_to_group_size_is_valid():
    cfg = build_config(model="tiny", method="passk", sets={"grpo.group_size": "2", "grpo.passk_k": "2"})
    assert (cfg.grpo.group_size, cfg.grpo.passk_k, cfg.grpo.advantage) == (2, 2, "passk")


@pytest.mark.parametrize("advantage", ["grpo", "passk"])
def test_passk_k_below_one_always_fails(advantage):
    with pytest.raises(ValueError, match=r"grpo\.passk_k must be >= 1, got 0"):
        GRPOConfig(advantage=advantage, passk_k=0)


def test_sigma_bounds_still_bind_under_the_fixed_scheduler():
    # kept on purpose: every scheduler, fixed included, clamps σ into [sigma_min, sigma_max] after a step,
    # so a σ outside them would silently change after step 1
    with pytest.raises(ValueError, match=r"noise\.sigma=0\.6 is outside"):
        NoiseConfig(sigma=0.6, control="fixed")
    NoiseConfig(sigma=0.0, sigma_min=1e-3, control="fixed")  # 0 = off is always allowed


def test_update_schedule_and_overlong_keys_validate_with_one_line_errors():
    cfg = build_config(model="tiny", sets={"grpo.epochs": "2", "grpo.mini_batches": "4", "grpo.clip_eps_high": "0.28",
                                           "grpo.lr_schedule": "cosine", "grpo.warmup_steps": "5",
                                           "reward.overlong": "soft", "reward.overlong_window": "16"})
    assert (cfg.grpo.epochs, cfg.grpo.mini_batches, cfg.grpo.clip_eps_high) == (2, 4, 0.28)
    assert (cfg.grpo.lr_schedule, cfg.grpo.warmup_steps, cfg.reward.overlong_window) == ("cosine", 5, 16)
    for sets, msg in [({"grpo.epochs": "0"}, r"grpo\.epochs \(μ\) must be >= 1"),
                      ({"grpo.mini_batches": "65"}, r"grpo\.mini_batches \(M\) must be in \[1, P·G = 64\]"),
                      ({"grpo.clip_eps_high": "-0.1"}, r"grpo\.clip_eps_high"),
                      ({"grpo.lr_schedule": "step"}, r"grpo\.lr_schedule='step' is not one of constant, linear, cosine"),
                      ({"grpo.warmup_steps": "-1"}, r"grpo\.warmup_steps must be >= 0"),
                      ({"reward.overlong": "cut"}, r"reward\.overlong='cut' is not one of none, soft, mask"),
                      ({"reward.overlong": "soft"}, r"reward\.overlong_window=64 must be <= rollout\.max_new_tokens=48"),
                      ({"reward.overlong_window": "0"}, r"reward\.overlong_window must be >= 1")]:
        with pytest.raises(ValueError, match=msg) as err:
            build_config(model="tiny", sets=sets)
        assert "\n" not in str(err.value)
    build_config(model="tiny", sets={"reward.overlong": "mask"})  # the window binds only for soft


def test_lora_dropout_is_refused_in_one_line():
    """With dropout the learner (train mode) would be another function than the sampler, even at σ = 0."""
    from minipsn.run.config import LoraConfig

    assert LoraConfig(dropout=0.0).dropout == 0.0
    with pytest.raises(ValueError, match=r"lora.dropout=0.05: only 0 is supported"):
        build_config(model="tiny", sets={"lora.dropout": 0.05})
    with pytest.raises(ValueError, match="only 0 is supported"):
        LoraConfig(dropout=0.1)


@pytest.mark.parametrize("key,value", [("eval.temperature", "0"), ("eval.max_new_tokens", "0"), ("eval.problems", "-1"),
                                       ("eval.every", "-1"), ("eval.batch_size", "-1")])
def test_eval_settings_out_of_range_fail_in_one_line(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
        build_config(model="tiny", sets={key: value})
    assert "\n" not in str(err.value)
