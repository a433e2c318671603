"""The exploration arms beside PSN on the adapter: `psn-paper` (variant II as published, on synthetic signals),
`psn-weight` (σ·ε on the copy's dense base weights: σ = 0 is the identity, restore is bit-exact, the noise KL
grows with σ), and the temperature that calibrate matches to the noise's KL."""
import math

import pytest
import torch

from minipsn.method.sigma_control import PaperSigma, make_controller, minmax_normalise
from minipsn.run.config import ControlConfig, NoiseConfig, RolloutConfig
from minipsn.run.overrides import build_config
from minipsn.sampling import engine as E
from minipsn.sampling.rollout import sample


def sig(div, cert, kl=0.003):
    return {"kl_noise": kl, "diversity": div, "certainty": cert}


def test_the_published_rule_multiplies_by_beta_below_the_target_and_divides_above():
    cfg = ControlConfig(lam=0.5, paper_beta=1.1, paper_target=0.3, paper_window=3)
    ctl = make_controller(NoiseConfig(sigma=0.01, control="paper"), cfg)
    assert type(ctl) is PaperSigma
    # (D, s) per step, and by hand: ŝ = min-max of s over the last 3 steps (0.5 without spread), I = 0.5·D + 0.5·ŝ
    steps = [(0.1, 5.0), (0.1, 7.0), (0.05, 6.0), (0.2, 9.0), (0.0, 1.0)]
    want_s_hat = [0.5, 1.0, 0.5, 1.0, 0.0]
    sigma = 0.01
    for (d, s), s_hat in zip(steps, want_s_hat):
        out = ctl.update(sig(d, s))
        indicator = 0.5 * d + 0.5 * s_hat
        assert out["noise/certainty_minmax"] == pytest.approx(s_hat)
        assert out["noise/paper_indicator"] == pytest.approx(indicator)
        sigma = sigma * 1.1 if indicator <= 0.3 else sigma / 1.1  # confident groups (high ŝ) get less noise
        assert out["noise/sigma_next"] == pytest.approx(sigma) and ctl.sigma == pytest.approx(sigma)
    # no reference window: the first step already moves σ; the clamp holds; σ = 0 stays 0
    low = make_controller(NoiseConfig(sigma=0.01, control="paper", sigma_min=0.01), cfg)
    assert low.update(sig(1.0, 1.0))["noise/clamped"] == 1.0 and low.sigma == 0.01
    off = make_controller(NoiseConfig(sigma=0.0, control="paper"), cfg)
    assert off.update(sig(0.0, 0.0))["noise/sigma_next"] == 0.0


def test_the_paper_controller_resumes_identically():
    cfg = ControlConfig(paper_window=4)
    a = make_controller(NoiseConfig(sigma=0.02, control="paper"), cfg)
    seq = [sig(0.01 * i, math.sin(i)) for i in range(10)]
    for s in seq[:5]:
        a.update(s)
    b = make_controller(NoiseConfig(sigma=0.02, control="paper"), cfg)
    b.load_state_dict(a.state_dict())
    assert [a.update(s) for s in seq[5:]] == [b.update(s) for s in seq[5:]]
    assert minmax_normalise(3.0, [3.0]) == 0.5


@pytest.fixture
def copy_engine(small_policy):
    return E.CopyEngine(small_policy.eval(), 8, static_cache=False, compile_step=False, space="weight")


def test_weight_noise_at_sigma_zero_is_the_identity_and_restores_bit_exactly(copy_engine, small_policy):
    built = {k: v.clone() for k, v in copy_engine.plain.state_dict().items()}
    ids = torch.randint(2, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = copy_engine.plain(input_ids=ids).logits
        with copy_engine.policy(0.0, [7], "mlp") as (sampler, _):
            assert torch.equal(sampler(input_ids=ids).logits, clean)
        with copy_engine.policy(0.05, [7], "mlp") as (sampler, _):
            noisy = sampler(input_ids=ids).logits
            moved = [k for k, v in copy_engine.plain.state_dict().items() if not torch.equal(v, built[k])]
            assert moved and all(any(p in k for p in ("gate_proj", "up_proj", "down_proj")) for k in moved)
    assert (noisy - clean).abs().max() > 1e-3  # the noise was there
    assert all(torch.equal(v, built[k]) for k, v in copy_engine.plain.state_dict().items())  # bit-exact after
    with pytest.raises(KeyError), copy_engine.policy(0.05, [7], "mlp"):
        raise KeyError("boom")
    assert all(torch.equal(v, built[k]) for k, v in copy_engine.plain.state_dict().items())
    with torch.no_grad(), copy_engine.policy(0.05, [7], "mlp") as (sampler, _):  # a seed rebuilds its noisy policy
        assert torch.equal(sampler(input_ids=ids).logits, noisy)


def test_weight_noise_kl_grows_with_sigma(copy_engine, toy_tok):
    from minipsn.method import algo

    cfg = RolloutConfig(max_new_tokens=8, batch_size=32)
    kls = []
    for sigma in (0.01, 0.03, 0.1):
        with copy_engine.policy(sigma, [3], "mlp") as (sampler, _):
            ro = sample(sampler, toy_tok, ["ab", "cdef", "xy", "q"], 8, cfg, torch.Generator().manual_seed(0))
        clean = copy_engine.rescore(ro, cfg, "mlp", 4096)
        kls.append(algo.masked_mean(algo.kl_k3(ro.raw_logp, clean), ro.completion_mask).item())
    assert 0 < kls[0] < kls[1] < kls[2], kls
    assert copy_engine.weight_noise_size(0.02, 3, "mlp") == pytest.approx(2 * copy_engine.weight_noise_size(0.01, 3, "mlp"))


def test_weight_noise_needs_the_copy(small_policy):
    assert NoiseConfig(space="weight", granularity="rollout").granularity == "rollout"  # per-row hooks on the copy
    with pytest.raises(ValueError, match="noise.draws=2 splits the step's draw; it needs noise.granularity=step"):
        NoiseConfig(granularity="group", draws=2)
    cfg = build_config(model="tiny", method="psn-weight", sets={"rollout.engine": "lean"})
    with pytest.raises(ValueError, match="rollout.engine=fast"):
        E.make_engine(small_policy, cfg)
    auto = build_config(model="tiny", method="psn-weight", sets={"rollout.engine": "auto"})
    assert E.make_engine(small_policy, auto).space == "weight"


def test_calibrate_finds_the_temperature_that_hits_the_target_kl(tmp_path):
    """The suggested T, measured again on other samples of the same prompts, gives the target KL (within a factor
    of 1.5: the interpolation is log-log between grid points a factor of ~10 apart in KL)."""
    from minipsn.experiments import calibrate as C
    from minipsn.tasks.data import format_prompt
    from minipsn.tasks.models import load_policy
    from minipsn.tasks.problems import load_problems
    from minipsn.training.batch import step_records

    cfg = build_config(model="tiny")
    target = 0.003
    report = C.calibrate(cfg, [0.0, 0.02], target, 1, tmp_path, temperatures=[1.05, 1.1, 1.2, 1.4])
    T = report["temperature"]["suggested_temperature"]
    assert T is not None and 1.05 < T < 1.4
    torch.manual_seed(cfg.run.seed)
    model, tok = load_policy(cfg)
    engine = E.make_engine(model.eval(), cfg)
    recs = step_records(load_problems(cfg.data, "train"), 0, cfg.grpo.prompts_per_step, cfg.run.seed)
    prompts = [format_prompt(tok, r["problem"], cfg.data.template) for r in recs]
    kls = [C._temperature(model, engine, tok, prompts, recs, cfg, T, seed)["kl"] for seed in (11, 12)]
    got = sum(kls) / len(kls)
    assert target / 1.5 < got < target * 1.5, (T, kls)


def test_a_weight_space_run_is_evaluated_on_any_engine(small_policy, tmp_path):
    """Evaluation has σ = 0: no noise to put on dense weights, so no dense copy is needed (lean, hf, fast alike)."""
    import dataclasses

    from minipsn.evaluation.evaluate import evaluate

    cfg = build_config(model="tiny", method="psn-weight", sets={"rollout.engine": "lean", "eval.n": 2, "eval.problems": 2})
    clean = dataclasses.replace(cfg, noise=dataclasses.replace(cfg.noise, sigma=0.0))
    assert isinstance(E.make_engine(small_policy, clean), E.UnmergedEngine)
    report = evaluate(cfg, ["synthetic"], tmp_path / "eval")
    assert report["benchmarks"]["synthetic"]["problems"] == 2
    assert "lean" in (tmp_path / "eval" / "samples" / "synthetic.jsonl").read_text().splitlines()[0]
