"""Trackers and samples.jsonl: run.log_to parsing, a missing tracker said in one line, TensorBoard events
equal to metrics.jsonl across a resume after a kill, W&B offline, samples.jsonl's fields and values."""
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from minipsn.rewards import correctness_reward, shaped_reward
from minipsn.run.overrides import apply_overrides, build_config, config_from_dict
from minipsn.training import trackers
from minipsn.verify import extract_answers

SMALL = {"run.steps": "3", "run.save_every": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4",
         "rollout.max_new_tokens": "32", "eval.every": "0", "run.log_samples": "3"}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_to_parses_from_the_cli_and_files_and_refuses_unknown_names(tmp_path):
    cfg = build_config(model="tiny", sets={"run.log_to": "jsonl, tensorboard"})
    assert cfg.run.log_to == ("jsonl", "tensorboard") and build_config().run.log_to == ("jsonl",)
    (tmp_path / "c.toml").write_text('[run]\nlog_to = ["jsonl", "wandb"]\nlog_samples = 0\n')
    cfg = build_config(file=str(tmp_path / "c.toml"))
    assert cfg.run.log_to == ("jsonl", "wandb") and cfg.run.log_samples == 0
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # a run folder's config.json round-trips
    with pytest.raises(ValueError, match="run.log_to has 'mlflow'; choose from jsonl, tensorboard, wandb"):
        build_config(sets={"run.log_to": "jsonl,mlflow"})
    with pytest.raises(ValueError, match="run.log_to expects comma-separated names"):
        apply_overrides(cfg, {"run.log_to": [1, 2]})
    with pytest.raises(ValueError, match="run.log_samples must be >= 0"):
        build_config(sets={"run.log_samples": "-1"})


def test_a_tracker_that_is_not_installed_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg = build_config(sets={"run.log_to": "wandb"})
    sinks = trackers.open_sinks(cfg, tmp_path, 0)
    assert [type(s) for s in sinks] == [trackers.JsonlSink]
    out = capsys.readouterr().out
    assert out == "run.log_to: wandb is not installed (pip install wandb); logging without it\n"
    for s in sinks:
        s.close()


def test_pick_samples_spreads_over_the_prompts_with_their_reward_and_advantage():
    cfg = build_config(sets={"grpo.prompts_per_step": "2", "grpo.group_size": "4", "run.log_samples": "4"})
    texts = ["so \\boxed{3}", "\\boxed{5}", "then 7", "\\boxed{3}", "\\boxed{4}", "\\boxed{4}", "x \\boxed{4}", "4"]
    ro = SimpleNamespace(texts=texts, truncated=torch.tensor([False] * 7 + [True]))
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1])
    adv = torch.tensor([1.0, -1, -1, 1, 0, 0, 0, 0])  # [1,0,0,1 | 1,1,1,1] → ±1 and exactly 0
    recs = [{"answer": "3"}] * 4 + [{"answer": "4"}] * 4
    rows = trackers.pick_samples(7, cfg, ["p0", "p1"], recs, ro, rewards, rewards, adv, [11] * 4 + [12] * 4)
    assert [(r["row"], r["group"], r["prompt"]) for r in rows] == [(0, 0, "p0"), (2, 0, "p0"), (4, 1, "p1"), (6, 1, "p1")]
    assert rows[1] == {"step": 7, "row": 2, "group": 0, "prompt": "p0", "completion": "then 7", "answer": "7",
                       "gold": "3", "reward": 0.0, "correct": False, "advantage": -1.0, "truncated": False,
                       "noise_seed": 11}
    assert [r["advantage"] for r in rows] == [1.0, -1.0, 0.0, 0.0] and rows[3]["noise_seed"] == 12
    cfg0 = apply_overrides(cfg, {"run.log_samples": "0"})
    assert trackers.pick_samples(7, cfg0, ["p0", "p1"], recs, ro, rewards, rewards, adv, [0] * 8) == []


def _scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class Killed(Exception):
    pass


def test_tensorboard_and_samples_match_metrics_after_a_kill_and_resume(tmp_path, tiny_model):
    """Step 3 is logged, then the run dies before its checkpoint; the resume redoes step 3, and neither
    the event files nor samples.jsonl hold it twice."""
    pytest.importorskip("tensorboard")
    from minipsn.training.train import Trainer

    run = tmp_path / "run"
    cfg = build_config(model="tiny", sets={**SMALL, "run.out": str(run), "run.log_to": "jsonl,tensorboard"})

    def die_after_step_3(m):
        if m["step"] == 3:
            raise Killed

    with pytest.raises(Killed):
        Trainer(cfg).run(on_step=die_after_step_3)
    assert [r["step"] for r in _rows(run / "samples.jsonl")] == [1] * 3 + [2] * 3 + [3] * 3
    Trainer(cfg, resume=True).run()

    metrics = _rows(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    events = _scalars(run)
    assert set(events) == set(trackers.scalars(metrics[0]))  # every number of the metrics line, nothing else
    for tag, points in events.items():
        want = [(m["step"], float(torch.tensor(m[tag], dtype=torch.float32))) for m in metrics if tag in m]
        assert points == want, tag  # float32 in the event file
    samples = _rows(run / "samples.jsonl")
    assert [s["step"] for s in samples] == [1] * 3 + [2] * 3 + [3] * 3
    r = cfg.reward
    for s, m in zip(samples, [m for m in metrics for _ in range(3)]):
        assert s["row"] in (0, 2, 5) and s["group"] == s["row"] // 4 and s["noise_seed"] == m["noise/seed"]
        read = extract_answers([s["completion"]], r.extract, r.last_number, r.unboxed_answer, r.timeout)[0]
        assert s["answer"] == (None if s["truncated"] else read)  # what the verifier graded
        correct = correctness_reward(s["completion"], s["gold"], s["truncated"], 0.0, r.timeout, r.last_number,
                                     r.unboxed_answer)
        assert s["correct"] == bool(correct)
        assert s["reward"] == shaped_reward(correct, s["completion"], s["truncated"], r.format_weight, r.truncated_reward)
        assert s["prompt"] and isinstance(s["advantage"], float)


def test_wandb_offline_writes_a_run_and_a_resume_continues_it(tmp_path, monkeypatch):
    """Both W&B runs start in the same second (the clock W&B stamps a run's folder with is frozen), as
    they may on any machine: the resume must still get a folder and a file of its own."""
    wandb = pytest.importorskip("wandb")
    from wandb.sdk import wandb_init

    monkeypatch.setattr(wandb_init, "time", types.SimpleNamespace(time=lambda: 1_700_000_000.25))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    sink = trackers.WandbSink(tmp_path, {"run": {"steps": 2}})
    run_id = sink.run.id
    sink.log({"step": 1, "reward/mean": 0.5, "noise/row_seeds": [1, 2]})
    sink.close()
    assert (tmp_path / "wandb" / "run_id").read_text() == run_id
    again = trackers.WandbSink(tmp_path, {"run": {"steps": 2}})
    assert again.run.id == run_id  # the resumed run logs into the same W&B run
    again.log({"step": 2, "reward/mean": 0.75})
    again.close()
    # one folder per start; a second start in the same second gets a numbered suffix (`-1`)
    offline = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert len(offline) == 2 and all(f.stat().st_size > 0 for f in offline), wandb.__version__
    assert len({f.parent.name.split("-")[2] for f in offline}) == 1  # the same second, as frozen


def test_a_resume_may_change_where_it_logs(tmp_path):
    from cli import resume_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(build_config(sets={"run.out": str(run)}).to_dict()))
    cfg = resume_config(str(run), [], None, ["run.log_to=jsonl,tensorboard", "run.log_samples=0"])
    assert cfg.run.log_to == ("jsonl", "tensorboard") and cfg.run.log_samples == 0
