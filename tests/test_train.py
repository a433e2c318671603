"""End to end on the real tiny model (4-bit NF4 base on CPU + LoRA): CLI runs, saved adapters, guards."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
KEYS = {"step", "reward/mean", "reward/accuracy", "loss/policy", "tis/weight_mean", "tis/clip_frac", "noise/sigma",
        "noise/seed", "perf/step_s", "perf/tokens_per_s", "guard/skipped_steps"}


def cli(*args, check=True, timeout=1800):
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cli {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny_cfg(out, **sets):
    from minipsn.run.overrides import build_config

    base = {"run.out": str(out), "run.steps": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4",
            "rollout.max_new_tokens": "32"}
    return build_config(model="tiny", sets={**base, **sets})


def test_cli_train_tiny_writes_metrics_and_a_reloadable_adapter(tmp_path):
    out = tmp_path / "run"
    proc = cli("train", "--model", "tiny", "--steps", "3", "--sigma", "0.02", "--out", str(out),
               "--set", "grpo.prompts_per_step=4", "--set", "run.save_every=2", "--set", "noise.control=fixed")
    assert "step 3/3" in proc.stdout and "σ" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert KEYS <= rows[0].keys()
    assert all(r["noise/sigma"] == 0.02 for r in rows)
    assert json.loads((out / "config.json").read_text())["noise"]["sigma"] == 0.02

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from minipsn.tasks.local_models import tiny_model_dir

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir())
    fresh = {n: p.clone() for n, p in base.named_parameters()}
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # peft initialises B at 0: training moved it
    for n, p in model.get_base_model().named_parameters():
        if "lora_" not in n:
            key = n.replace("base_layer.", "")
            assert torch.equal(p, fresh[key]), n  # the base did not move
    assert (out / "checkpoints" / "latest").read_text() == "step-000003"


def test_trainer_keeps_base_weights_frozen_in_4bit(tmp_path):
    from minipsn.training.train import Trainer

    tr = Trainer(tiny_cfg(tmp_path / "r"))
    if getattr(tr.model.get_base_model(), "is_loaded_in_4bit", False):
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in tr.model.modules())
    base = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_" in n}
    m = tr.step(0)
    assert m["step"] == 1 and 0.0 <= m["reward/accuracy"] <= 1.0
    assert "verify/disagree" not in m  # only reward.verifier=both asks both verifiers
    assert all(torch.equal(base[n], p) for n, p in tr.model.named_parameters() if "lora_" not in n)
    assert any(not torch.equal(lora[n], p) for n, p in tr.model.named_parameters() if "lora_" in n)


def test_verifier_both_logs_the_step_disagreements(tmp_path, monkeypatch):
    from minipsn import verify
    from minipsn.training import batch
    from minipsn.training.train import Trainer

    real = batch.correctness_rewards

    def scored_with_two_disagreements(*args, **kwargs):
        for _ in range(2):  # strict refuses a labelled list, Math-Verify reads it: a disagreement each
            assert verify.is_equivalent("|AB|=4,|CD|=5", "4, 5", verifier="both") is False
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "correctness_rewards", scored_with_two_disagreements)
    tr = Trainer(tiny_cfg(tmp_path / "r", **{"reward.verifier": "both"}))
    assert tr.step(0)["verify/disagree"] >= 2


def test_nan_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    from minipsn.method import algo
    from minipsn.training.train import Trainer

    tr = Trainer(tiny_cfg(tmp_path / "r"))
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    real = algo.policy_loss
    monkeypatch.setattr(algo, "policy_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), {}))
    m = tr.step(0)
    assert m["guard/skipped"] == 1.0 and m["guard/skipped_steps"] == 1
    assert all(torch.equal(before[n], p) for n, p in tr.model.named_parameters() if p.requires_grad)


def test_simulated_oom_halves_the_rollout_batch_and_the_learner_budget(tmp_path, monkeypatch):
    from minipsn.training import train as T

    tr = T.Trainer(tiny_cfg(tmp_path / "r", **{"rollout.batch_size": "8", "grpo.micro_batch_tokens": "2048"}))
    real_sample, real_learn = T.sample, T.learner_step

    def sample_small_only(model, tok, prompts, G, cfg, *a, **k):
        if cfg.batch_size > 2:
            raise torch.OutOfMemoryError("simulated")
        return real_sample(model, tok, prompts, G, cfg, *a, **k)

    def learn_small_only(model, opt, ro, adv, cfg, *a, **k):
        if cfg.micro_batch_tokens > 512:
            raise torch.OutOfMemoryError("simulated")
        return real_learn(model, opt, ro, adv, cfg, *a, **k)

    monkeypatch.setattr(T, "sample", sample_small_only)
    monkeypatch.setattr(T, "learner_step", learn_small_only)
    m = tr.step(0)
    assert m["step"] == 1
    assert tr.state.rollout.batch_size == 2 and tr.state.grpo.micro_batch_tokens == 512
    monkeypatch.setattr(T, "sample", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("always")))
    with pytest.raises(MemoryError, match="smallest batch"):
        tr.step(1)


def test_build_tiny_variant_records_its_task_and_trains_from_its_folder(tmp_path, capsys):
    """A tiny model for another synthetic task (2 warm-start steps here, to stay quick) loads by folder;
    the build names the model it builds."""
    from minipsn.run.config import DataConfig
    from minipsn.run.overrides import build_config
    from minipsn.tasks.local_models import build_tiny
    from minipsn.training.train import Trainer

    data = DataConfig(n_ops=3, ops="+-*", n_train=80, n_test=5)  # a warm-start batch takes 64
    folder = build_tiny(tmp_path / "tiny3", data, steps=2, name="tiny3")
    assert capsys.readouterr().out.startswith("building the tiny3 model (")
    done = json.loads((folder / "done").read_text())
    assert done["data"]["n_ops"] == 3 and done["data"]["ops"] == "+-*" and done["warm_steps"] == 2
    cfg = build_config(model=str(folder), sets={"run.out": str(tmp_path / "run"), "data.n_ops": "3", "data.ops": "+-*",
                                                "data.n_train": "80", "grpo.prompts_per_step": "2",
                                                "grpo.group_size": "4", "rollout.max_new_tokens": "8",
                                                "model.gradient_checkpointing": "false"})
    m = Trainer(cfg).step(0)
    assert m["step"] == 1 and m["completion/len_mean"] > 0
    with pytest.raises(ValueError, match=r"draws 64 problems a step: give it at least 64 \(data.n_train\)"):
        build_tiny(tmp_path / "too-few", DataConfig(n_train=10), steps=1)
    assert not (tmp_path / "too-few").exists()


def test_cli_headroom_reports_pass_at_k_next_to_guessing(tmp_path):
    proc = cli("headroom", "--model", "tiny", "--n", "8", "--problems", "4", "--out", str(tmp_path / "hr"))
    assert "best guess pass@k" in proc.stdout
    assert "Loading weights" not in proc.stderr  # transformers' per-load progress bar is off
    result = json.loads((tmp_path / "hr" / "headroom.json").read_text())
    assert set(result["pass@k"]) == {"1", "2", "4", "8"} and result["problems"] == 4
    # the tiny task's answers are small integers: a uniform guess over their range is often right
    [(lo, hi)] = result["guess"]["range"]
    assert hi - lo < 100 and result["guess"]["uniform"] > 0.01
    assert result["guess_pass@k"]["8"] == pytest.approx(1 - (1 - max(result["guess"][k] for k in ("mode", "shuffled", "uniform"))) ** 8)


def test_a_rollout_retried_after_out_of_memory_samples_what_the_first_try_would_have(tmp_path, monkeypatch):
    """The first try consumed its generators before it ran out of memory; the retry starts from fresh ones seeded
    as the first try's (per prompt, with batch sizes that are multiples of G), so the step is the step without
    out-of-memory: the same completions, the same rewards."""
    from minipsn.training import train as T

    sets = {"rollout.batch_size": "8", "noise.sigma": "0.02"}
    clean = T.Trainer(tiny_cfg(tmp_path / "clean", **sets))
    want, want_texts = clean.step(0), clean.samples
    tr = T.Trainer(tiny_cfg(tmp_path / "oom", **sets))
    real_sample, failed = T.sample, []

    def out_of_memory_once(model, tok, prompts, G, cfg, gen, *a, **k):
        if not failed:
            failed.append(1)
            for g in gen if isinstance(gen, list) else [gen]:
                torch.rand(100, generator=g)  # what a partial first try consumes before it dies
            raise torch.OutOfMemoryError("simulated")
        return real_sample(model, tok, prompts, G, cfg, gen, *a, **k)

    monkeypatch.setattr(T, "sample", out_of_memory_once)
    got = tr.step(0)
    assert failed and tr.state.rollout.batch_size == 4
    assert [s["completion"] for s in tr.samples] == [s["completion"] for s in want_texts]
    assert got["reward/mean"] == want["reward/mean"] and got["noise/kl_noise"] == pytest.approx(want["noise/kl_noise"])


def test_the_learner_on_a_base_dequantized_once_is_the_nf4_learner_bit_for_bit(tmp_path):
    """model.dequantize_once (on by default on the CPU) keeps each 4-bit weight's dequantized values: the learner's
    log-probs and the adapter's gradients are those of dequantizing at every call."""
    from minipsn.training import learner
    from minipsn.training import train as T

    outs = []
    for mode in ("off", "on"):
        torch.manual_seed(0)
        tr = T.Trainer(tiny_cfg(tmp_path / mode, **{"model.dequantize_once": mode}))
        ro = T.sample(tr.model, tr.tok, [T.format_prompt(tr.tok, "Start at 3, add 4. What number do you get?", "chat")],
                      4, tr.cfg.rollout, torch.Generator().manual_seed(0), 1024)
        logp, pooled = learner.completion_logprobs(tr.model, ro, torch.arange(4), 1.0)
        (logp * ro.completion_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.requires_grad}
        dense = [m for m in tr.model.modules() if "_minipsn_dense" in m.__dict__]
        outs.append((ro.completion_ids, logp.detach(), grads, len(dense)))
    (ids_off, lp_off, g_off, n_off), (ids_on, lp_on, g_on, n_on) = outs
    assert n_off == 0 and n_on == 28  # 4 layers × 7 projections computed from their cached weights
    assert torch.equal(ids_off, ids_on) and torch.equal(lp_off, lp_on)
    assert all(torch.equal(g_off[n], g_on[n]) for n in g_off), [n for n in g_off if not torch.equal(g_off[n], g_on[n])][:3]


def test_the_guard_watches_the_decode_path_that_gives_the_tis_denominators(tmp_path, monkeypatch, capsys):
    """At σ > 0 the decoded log-probs (TIS's π_θ̃) are checked against a full teacher-forced pass of the same noisy
    sampler: a healthy decode is within float noise of it; one whose log-probs drift is warned about."""
    from minipsn.training import train as T

    tr = T.Trainer(tiny_cfg(tmp_path / "r", **{"noise.sigma": "0.02", "rollout.guard_every": "1"}))
    healthy = tr.step(0)
    assert 0 <= healthy["guard/decode_gap"] < 1e-5 and healthy["guard/sampler_gap"] < 1e-5
    real_sample = T.sample

    def drifting(*a, **k):
        ro = real_sample(*a, **k)
        ro.sampler_logp = ro.sampler_logp - 0.01 * ro.completion_mask  # a decode path 0.01 nats off per token
        return ro

    monkeypatch.setattr(T, "sample", drifting)
    drifted = tr.step(1)
    assert drifted["guard/decode_gap"] == pytest.approx(0.01, rel=1e-3)
    assert "guard/decode_gap 0.01" in capsys.readouterr().out
    import dataclasses

    tr.state.rollout = dataclasses.replace(tr.state.rollout, guard_every=10)
    assert "guard/decode_gap" not in tr.step(2)  # between checks: the clean pass only
