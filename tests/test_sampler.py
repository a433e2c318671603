"""The sampler samples the policy the learner trains, in bf16 as in fp32: the fast engine keeps every bit of a
small LoRA update that a bf16 fold rounds away; the sampler/learner guard warns on a broken sync and stays quiet
in a healthy run; an out-of-memory after an update is not retried; diversity pools the completion's own states;
the noise KL stays finite under top-p; logits are upcast before the softmax."""
import pytest
import torch

from minipsn.bench.fidelity import B_SCALES, layer_fidelity, model_fidelity, set_lora_b
from minipsn.method import algo
from minipsn.run.config import GRPOConfig, RolloutConfig
from minipsn.run.overrides import build_config
from minipsn.sampling import engine as E
from minipsn.sampling.rollout import Rollouts, sample, sampling_logp
from minipsn.training import learner as L
from tests.test_learner import ADV, TP, TW, make_rollouts, trainable


@pytest.mark.parametrize("b_std", B_SCALES)
def test_a_bf16_fold_loses_a_small_update(b_std):
    """One Qwen2.5-1.5B-width layer: the folded layer's output change against the learner's (the copy's side path
    is measured on the model below, where it is not the learner's own term by construction)."""
    fold = layer_fidelity(b_std=b_std, dtype=torch.bfloat16)
    if b_std <= 3e-4:  # the measure sees what folding loses (0.33 and 0.77 here)
        assert fold["projection"] < 0.9
    assert fold["rel_error"] > 0.05  # at every scale the fold gets a share of the update wrong


@pytest.fixture(scope="module")
def bf16_tiny():
    from minipsn.tasks.data import format_prompt
    from minipsn.tasks.models import load_policy
    from minipsn.tasks.problems import load_problems

    cfg = build_config(model="tiny", sets={"model.dtype": "bfloat16", "rollout.max_new_tokens": "24"})
    torch.manual_seed(0)
    model, tok = load_policy(cfg)
    engine = E.CopyEngine(model.eval(), 24, static_cache=False, compile_step=False)
    prompts = [format_prompt(tok, r["problem"], "chat") for r in load_problems(cfg.data, "train")[:4]]
    return model, engine, tok, prompts, cfg.rollout


def test_the_sampler_applies_the_whole_update_on_tiny_in_bf16(bf16_tiny):
    """NF4 with bf16 compute on the CPU (the GPU's numerics): at every adapter scale the sampler's logits move
    as the learner's do, and its decoded log-probs are the learner's; folding would not (the measure's check)."""
    model, engine, tok, prompts, rcfg = bf16_tiny
    assert engine.dtype == torch.bfloat16
    for b_std in B_SCALES:
        set_lora_b(model, b_std)
        got = model_fidelity(model, engine, tok, prompts, 4, rcfg)
        assert got["projection"] >= 0.99 and got["rel_error"] < 0.01, (b_std, got)
        assert got["gap"] < 1e-3 and abs(got["kl_numerics"]) < 1e-3, (b_std, got)
    set_lora_b(model, B_SCALES[0])
    fold = model_fidelity(model, engine, tok, prompts, 4, rcfg, route="fold")
    assert fold["projection"] < 0.9 and fold["rel_error"] > 0.5, fold
    set_lora_b(model, 0.0)


def _run(tmp_path, name, monkeypatch=None, **sets):
    from minipsn.training.train import Trainer

    cfg = build_config(model="tiny", method="grpo", sets={"run.out": str(tmp_path / name), "run.steps": "5",
                                                          "eval.every": "0", "run.save_every": "100", **sets})
    return Trainer(cfg)


def test_a_stale_sampler_warns_naming_the_step_and_its_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(E, "load_adapters", lambda *a, **k: None)  # the copy never takes the trained adapter
    tr = _run(tmp_path, "stale")
    gaps = [tr.step(s)["guard/sampler_gap"] for s in range(5)]
    out = capsys.readouterr().out
    assert gaps[-1] > tr.cfg.rollout.gap_warn  # the adapter moved, the sampler did not
    warned = [line for line in out.splitlines() if line.startswith("warning: step")]
    assert len(warned) == 1 and "guard/sampler_gap" in warned[0], out  # one line, not one per step
    step = int(warned[0].split()[2].rstrip(":"))
    assert gaps[step - 1] > tr.cfg.rollout.gap_warn >= max(gaps[: step - 1], default=0.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_healthy_run_never_warns(tmp_path, capsys, dtype):
    tr = _run(tmp_path, dtype, **{"model.dtype": dtype, "noise.sigma": "0.0"})
    gaps = [tr.step(s)["guard/sampler_gap"] for s in range(5)]
    assert "warning" not in capsys.readouterr().out
    assert max(gaps) < tr.cfg.rollout.gap_warn / 5  # the default threshold has room above a healthy run


def test_an_out_of_memory_after_an_update_is_not_retried(small_policy, monkeypatch):
    cfg = GRPOConfig(epochs=2, micro_batch_tokens=4 * (TP + TW))  # 2 micro-batches a pass, 2 passes
    ro = make_rollouts(small_policy)
    real, calls = L.completion_forward, []

    def oom_on(n):
        def forward(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise torch.OutOfMemoryError("simulated")
            return real(*a, **k)
        return forward

    before = {k: v.clone() for k, v in trainable(small_policy).items()}
    opt = torch.optim.AdamW(list(trainable(small_policy).values()), lr=1e-2)
    monkeypatch.setattr(L, "completion_forward", oom_on(1))  # before any update: the trainer may retry
    with pytest.raises(torch.OutOfMemoryError):
        L.learner_step(small_policy, opt, ro, ADV, cfg, TW)
    assert all(torch.equal(before[k], v) for k, v in trainable(small_policy).items())
    calls.clear()
    monkeypatch.setattr(L, "completion_forward", oom_on(3))  # in the second pass: one update applied
    with pytest.raises(MemoryError, match="after 1 of 2 optimizer steps") as err:
        L.learner_step(small_policy, opt, ro, ADV, cfg, TW)
    assert not isinstance(err.value, torch.OutOfMemoryError)  # so oom.retry_halving does not catch it


def test_the_trainer_refuses_to_retry_a_partly_applied_batch(tmp_path, monkeypatch):
    from minipsn.training import train as T

    tr = _run(tmp_path, "oom", **{"grpo.epochs": "2"})
    real = T.learner_step

    def partly_applied(*a, **k):
        raise MemoryError("out of memory in the update after 1 of 2 optimizer steps were applied")

    monkeypatch.setattr(T, "learner_step", partly_applied)
    with pytest.raises(MemoryError, match="after 1 of 2"):
        tr.step(0)
    assert tr.state.grpo.micro_batch_tokens == tr.cfg.grpo.micro_batch_tokens  # not halved and retried
    monkeypatch.setattr(T, "learner_step", real)


def test_diversity_pools_the_completions_own_states(small_policy):
    """The last completion token's state is in the pool, the last prompt state (shared by a group) is not."""
    ro = make_rollouts(small_policy)
    rows = torch.arange(ro.completion_ids.shape[0])
    with torch.no_grad():
        _, _, pooled, _ = L.completion_forward(small_policy, ro, rows, 1.0)
    last = ro.completion_mask.sum(1) - 1  # (N,) column of each row's last completion token
    changed = ro.completion_ids.clone()
    changed[rows, last] = (changed[rows, last] + 7) % 60 + 2  # only that token, so only that position's state
    other = Rollouts(**{**ro.__dict__, "completion_ids": changed})
    with torch.no_grad():
        _, _, pooled2, _ = L.completion_forward(small_policy, other, rows, 1.0)
    assert ((pooled2 - pooled).abs().amax(1) > 1e-6).all()
    with torch.no_grad():  # and it is the mean of the states at the completion's positions, nothing else
        hidden = small_policy.get_base_model().model(
            input_ids=torch.cat([ro.prompt_ids, ro.completion_ids], 1),
            attention_mask=torch.cat([ro.prompt_mask, ro.completion_mask], 1),
            position_ids=(torch.cat([ro.prompt_mask, ro.completion_mask], 1).cumsum(-1) - 1).clamp(min=0),
        ).last_hidden_state[:, ro.prompt_ids.shape[1]:]
    m = ro.completion_mask.unsqueeze(-1).float()
    torch.testing.assert_close(pooled, (hidden * m).sum(1) / m.sum(1), rtol=0, atol=1e-6)


def test_the_noise_kl_stays_finite_under_top_p(small_policy, toy_tok):
    """A token inside the noisy nucleus but outside the clean one: the top-p clean log-prob is −∞, the noise KL
    (before top-p, at the rollout temperature) is finite, ≥ 0, and what the learner logs."""
    cfg = RolloutConfig(max_new_tokens=8, top_p=0.3, batch_size=16)
    engine = E.CopyEngine(small_policy.eval(), 8, static_cache=False, compile_step=False)
    with engine.policy(0.5, [3], "all") as (sampler, _):
        ro = sample(sampler, toy_tok, ["ab", "cdef"], 8, cfg, torch.Generator().manual_seed(0))
    ro.clean_logp, ro.noisy_logp, ro.noise_kl = engine.measure(ro, cfg, "all", 4096, 0.5, [3] * 16)
    m = ro.completion_mask.bool()
    with torch.no_grad(), E.noise.perturbed(small_policy, 0.0, 0, "all"):
        ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
        logits = engine.plain(input_ids=ids, attention_mask=torch.cat([ro.prompt_mask, ro.completion_mask], 1),
                              logits_to_keep=ro.completion_ids.shape[1] + 1).logits[:, :-1]
    clean_top_p = sampling_logp(logits, cfg)[0].gather(-1, ro.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.isinf(clean_top_p[m]).any()  # the case that made the old noise KL −∞ / +19 nats
    old = L.OldPolicy(ro, GRPOConfig())
    with torch.no_grad():
        old.record(torch.arange(16), *L.completion_forward(small_policy, ro, torch.arange(16), 1.0, cfg.temperature))
    stats = old.stats()
    want = algo.masked_mean(ro.noise_kl, m).item()  # the exact KL per position (test_noise_measure.py)
    assert torch.isfinite(torch.tensor([stats["noise/kl_noise"], stats["noise/kl_numerics"], stats["guard/sampler_gap"]])).all()
    assert stats["noise/kl_noise"] == pytest.approx(want, rel=1e-6) and want > 0
    assert stats["guard/sampler_gap"] < 1e-5  # the clean copy is the learner; top-p does not count
    assert stats["guard/decode_gap"] < 1e-5  # the decoded log-probs are a full pass of the noisy copy


def test_logits_are_upcast_before_the_softmax():
    z = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).bfloat16()
    cfg = RolloutConfig(temperature=0.7, top_p=0.9)
    got, raw = sampling_logp(z, cfg)
    assert got.dtype == raw.dtype == torch.float32
    torch.testing.assert_close(raw, torch.log_softmax(z.float() / 0.7, -1), rtol=0, atol=0)


def test_the_fidelity_table_measures_the_copy_on_the_model_only():
    """On one layer the copy's side path is the learner's own LoRA term: comparing them measures nothing, so the
    layer column of the copy row is empty and only the model measure (the whole engine) is shown."""
    from minipsn.bench import fidelity

    cell = {"projection": 0.5, "rel_error": 0.5, "gap": 1e-4}
    report = {"model_name": "tiny", "layer": {"bfloat16": {"fold": {str(b): cell for b in B_SCALES}}},
              "model": {"bfloat16": {r: {str(b): cell for b in B_SCALES} for r in ("fold", "copy")}}}
    rows = {fidelity.table(report).columns[0]._cells[i]: [c._cells[i] for c in fidelity.table(report).columns[1:]]
            for i in range(2)}
    assert rows["bfloat16 · copy"][0] == "—" and rows["bfloat16 · fold"][0] == "0.500"
