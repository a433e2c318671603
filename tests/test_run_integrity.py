"""What the logged numbers mean, and that no run folder is a dead end: reward/accuracy is the
verifier's verdict (loss/policy, the policy term alone: test_methods), trainer state survives a resume, a run killed before
its first checkpoint restarts, a cut metrics line is dropped, and --resume refuses what it would ignore."""
import dataclasses
import json
import signal
from types import SimpleNamespace

import pytest
import torch

from minipsn import verify
from minipsn.experiments import plot
from minipsn.method import algo
from minipsn.run import checkpoint
from minipsn.run.config import GRPOConfig, RewardConfig
from minipsn.run.overrides import build_config
from minipsn.training.batch import advantages, score
from minipsn.training.train import Trainer, train
from tests.test_resume import _metrics, _start, _wait_for_steps
from tests.test_train import cli

SMALL = {"run.steps": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4", "rollout.max_new_tokens": "24",
         "eval.every": "0"}


def rollouts(texts, truncated):
    return SimpleNamespace(texts=texts, truncated=torch.tensor(truncated))


# ------------------------------------------------------------ reward/accuracy is the verifier's verdict

TEXTS = ["so \\boxed{3}", "3 + 1 = 4, \\boxed{4}", "the sum is 3", "\\boxed{3} and on and on"]
CUT = [False, False, False, True]
RECS = [{"answer": "3"}] * 4


def test_accuracy_is_the_verifier_verdict_not_the_shaped_reward():
    cfg = RewardConfig(format_weight=0.5, truncated_reward=-1.0)
    rewards, correct = score(None, rollouts(TEXTS, CUT), RECS, cfg)
    assert correct.tolist() == [1.0, 0.0, 1.0, 0.0]  # the last number counts; a cut completion is wrong
    assert rewards.tolist() == [1.5, 0.5, 1.0, -0.5]  # bonus for one box; -1 + 0.5 for the cut one
    strict = RewardConfig(format_weight=0.5, truncated_reward=-1.0, last_number=False)
    assert score(None, rollouts(TEXTS, CUT), RECS, strict)[1].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_a_custom_reward_leaves_accuracy_to_the_verifier_with_its_last_number_setting():
    def length(completions, records, truncated):
        return [float(len(c)) for c in completions]

    for last_number, want in ((True, [1.0, 0.0, 1.0, 0.0]), (False, [1.0, 0.0, 0.0, 0.0])):
        rewards, correct = score(length, rollouts(TEXTS, CUT), RECS, RewardConfig(last_number=last_number))
        assert rewards.tolist() == [float(len(t)) for t in TEXTS] and correct.tolist() == want


def test_passk_advantages_read_passes_from_the_verifier():
    # wrong answers with a format bonus of 0.6 look like passes to a threshold on the reward
    correct = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    shaped = torch.tensor([[1.6, 0.6, 0.6, 0.0]])
    cfg = GRPOConfig(advantage="passk", passk_k=2, group_size=4)
    got = advantages(shaped, correct, cfg)
    assert torch.equal(got, algo.passk_advantages(correct, 2))
    assert got[0, 1] == got[0, 3] < 0 < got[0, 0]


def test_verifier_timeouts_and_errors_are_counted_per_step(tmp_path, monkeypatch):
    import minipsn.training.batch as batch_mod

    real = batch_mod.correctness_rewards

    def slow_and_broken(completions, *args, **kwargs):
        for _ in completions:
            verify._count("timeouts")
            verify._count("errors", "made up for the test")
            verify._count("errors", "made up for the test")
        return real(completions, *args, **kwargs)

    tr = Trainer(build_config(model="tiny", sets={**SMALL, "run.out": str(tmp_path / "v")}))
    clean = tr.step(0)
    monkeypatch.setattr(batch_mod, "correctness_rewards", slow_and_broken)
    noisy = tr.step(1)
    assert (clean["verify/timeouts"], clean["verify/errors"]) == (0, 0)
    assert (noisy["verify/timeouts"], noisy["verify/errors"]) == (8, 16)  # P·G = 8 completions this step


# ------------------------------------------------------------ state that must survive a resume


def test_skipped_steps_and_halved_batches_survive_a_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    tr = Trainer(build_config(model="tiny", sets={**SMALL, "run.out": out}))
    tr.step(0)
    tr.state.skipped = 3
    tr.state.rollout = dataclasses.replace(tr.state.rollout, batch_size=2)
    tr.state.grpo = dataclasses.replace(tr.state.grpo, micro_batch_tokens=128)
    tr.save()
    again = Trainer(tr.cfg, resume=True)
    assert again.state.step == 1 and again.state.skipped == 3
    assert (again.state.rollout.batch_size, again.state.grpo.micro_batch_tokens) == (2, 128)
    assert "rollout.batch_size stays at 2" in capsys.readouterr().out
    assert again.step(1)["guard/skipped_steps"] == 3


def _run_state(**configured):
    from minipsn.method.sigma_control import make_controller
    from minipsn.run.config import NoiseConfig, RolloutConfig

    w = torch.nn.Parameter(torch.ones(3))
    noise = NoiseConfig(control="adaptive")
    return checkpoint.RunState(torch.optim.AdamW([w], lr=0.1), make_controller(noise, build_config().control),
                               RolloutConfig(**configured), GRPOConfig())


def test_the_run_state_round_trips_and_older_checkpoints_load(capsys):
    """state.pt keeps its format: what it saves a resume restores, and a checkpoint from before the trainer's own
    state (no "trainer") or the controller's rename ("scheduler") loads with the configured sizes."""
    state = _run_state(batch_size=8)
    state.optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    state.optimizer.step()
    state.controller.update({"kl_noise": 0.001, "diversity": 0.2, "certainty": 3.0})
    state.step, state.skipped, state.processes = 5, 2, 2
    state.rollout = dataclasses.replace(state.rollout, batch_size=4)
    saved = state.state_dict()
    assert set(saved) == {"step", "optimizer", "sigma_control", "rng", "trainer"}
    assert saved["trainer"] == {"skipped_steps": 2, "rollout_batch_size": 4, "micro_batch_tokens": 4096, "processes": 2}

    again = _run_state(batch_size=8)
    notes = again.load_state_dict(saved)
    assert (again.step, again.skipped, again.rollout.batch_size, again.grpo.micro_batch_tokens) == (5, 2, 4, 4096)
    assert again.controller.state_dict() == state.controller.state_dict()
    assert again.optimizer.state_dict()["state"][0]["step"] == 1
    assert notes[0] == "note: rollout.batch_size stays at 4 (halved after out of memory earlier in this run)"
    assert notes[1].startswith("note: this run was checkpointed on 2 process(es) and continues on 1")

    older = {k: v for k, v in saved.items() if k not in ("trainer", "sigma_control")}
    older["scheduler"] = saved["sigma_control"]
    old = _run_state(batch_size=8)
    assert old.load_state_dict(older) == []
    assert (old.step, old.skipped, old.rollout.batch_size, old.processes) == (5, 0, 8, 1)
    assert old.controller.state_dict() == state.controller.state_dict()


# ------------------------------------------------------------ metrics.jsonl: one reader


def test_one_reader_drops_a_cut_last_line_with_a_note_and_refuses_a_bad_middle_line(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x": 2.0}\n{"step": 3, "x"')
    assert checkpoint.read_metrics(path, note=True) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}]
    assert "was cut" in capsys.readouterr().out
    checkpoint.truncate_metrics(path, 1)
    assert path.read_text() == '{"step": 1, "x": 1.0}\n'
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not valid JSON"):
        checkpoint.read_metrics(path)
    assert plot.read_metrics is checkpoint.read_metrics


# ------------------------------------------------------------ no dead ends


@pytest.mark.slow
def test_a_run_that_dies_before_its_first_checkpoint_restarts_with_resume(tmp_path):
    run = tmp_path / "early"
    proc = _start(run, 3)  # test_resume's settings: a checkpoint every 2 steps
    _wait_for_steps(proc, run, 1)  # killed after step 1, before the checkpoint at step 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(run) is None and (run / "config.json").is_file()
    first = _metrics(run)[0]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "reward/me')  # as if the kill had cut a line
    done = cli("train", "--resume", str(run))
    assert "restarting from step 0" in done.stdout and "last line" in done.stdout
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3] and checkpoint.latest(run) is not None
    for key in ("reward/mean", "reward/accuracy", "loss/policy", "noise/sigma", "completion/len_mean"):
        assert rows[0][key] == pytest.approx(first[key], rel=1e-5, abs=1e-6), key


def test_a_crash_before_the_first_checkpoint_leaves_a_resumable_folder(tmp_path, capsys):
    cfg = build_config(model="tiny", sets={**SMALL, "run.steps": "3", "run.out": str(tmp_path / "crash")})

    def crash(m):
        raise RuntimeError("a bug after step 1")

    with pytest.raises(RuntimeError):
        train(cfg, on_step=crash)
    assert checkpoint.latest(tmp_path / "crash") is None
    with pytest.raises(ValueError, match="pass --resume"):
        Trainer(cfg)  # a new run in the same folder still refuses, and names the way out
    train(cfg, resume=True)
    assert "restarting from step 0" in capsys.readouterr().out
    assert [r["step"] for r in checkpoint.read_metrics(tmp_path / "crash" / "metrics.jsonl")] == [1, 2, 3]


# ------------------------------------------------------------ --resume never ignores an option


@pytest.fixture
def run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(build_config(model="tiny", sets={**SMALL, "run.out": str(run)}).to_dict()))
    return run


@pytest.mark.parametrize("option", [["--model", "qwen-1.5b"], ["--method", "grpo"], ["--sigma", "0.1"], ["--seed", "3"],
                                    ["--dataset", "gsm8k"], ["--set", "grpo.lr=1"], ["--out", "elsewhere"]])
def test_resume_refuses_an_option_it_would_ignore(run_folder, option):
    proc = cli("train", "--resume", str(run_folder), *option, check=False)
    shown = option[1].split("=")[0] if option[0] == "--set" else option[0]
    assert proc.returncode == 2 and f"drop {option[0] + ' ' if option[0] == '--set' else ''}{shown}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_resume_applies_the_safe_changes(run_folder, capsys):
    """The trainer says what changed once it accepts the resume (tests/test_outputs.py), not before a refusal."""
    from cli import resume_config

    cfg = resume_config(str(run_folder), [], 7, ["eval.every=3"])
    assert capsys.readouterr().out == ""
    assert (cfg.run.steps, cfg.eval.every, cfg.run.out) == (7, 3, str(run_folder))
    assert cfg.grpo.prompts_per_step == 2  # the run's own settings, not the preset's
