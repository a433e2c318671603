"""Crash safety: SIGKILL mid-run then --resume reproduces the uninterrupted run; Ctrl-C saves cleanly
and exits 130."""
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.test_train import ENV, cli

SETS = ["--set", "grpo.prompts_per_step=2", "--set", "grpo.group_size=4", "--set", "rollout.max_new_tokens=32",
        "--set", "run.save_every=2", "--sigma", "0.02", "--set", "noise.control=adaptive", "--set", "eval.every=0",
        "--set", "grpo.lr_schedule=cosine", "--set", "grpo.warmup_steps=2"]  # a resume must land on the schedule
COMPARED = ("reward/mean", "reward/accuracy", "loss/policy", "tis/weight_mean", "noise/sigma", "noise/seed",
            "completion/len_mean", "optim/lr", "policy/entropy")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _start(out, steps):
    args = [sys.executable, str(REPO / "cli.py"), "train", "--model", "tiny", "--steps", str(steps), "--out", str(out), *SETS]
    return subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_steps(proc, run, n, timeout=1800):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    steps = 5
    cli("train", "--model", "tiny", "--steps", str(steps), "--out", str(tmp_path / "full"), *SETS)
    full = _metrics(tmp_path / "full")

    run = tmp_path / "killed"
    proc = _start(run, steps)
    _wait_for_steps(proc, run, 3)  # past the checkpoint at step 2, before the one at step 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "latest").read_text() in ("step-000002", "step-000004")
    proc = cli("train", "--resume", str(run))
    assert "resumed" in proc.stdout
    resumed = _metrics(run)
    assert [m["step"] for m in resumed] == list(range(1, steps + 1))
    assert len({m["optim/lr"] for m in full}) == steps  # the schedule moved the rate every step
    for a, b in zip(full, resumed):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_ctrl_c_saves_a_loadable_checkpoint_and_exits_130(tmp_path):
    """The step finishes, a checkpoint is saved, one line says how to continue, and the exit code is 130
    (128 + SIGINT), so a script can tell a stopped run from a finished one."""
    run = tmp_path / "run"
    proc = _start(run, 50)
    _wait_for_steps(proc, run, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 130, out[-2000:]
    from minipsn.run import checkpoint

    ckpt = checkpoint.latest(run)
    state = checkpoint.load_state(ckpt)
    assert state["step"] == len(_metrics(run)) and (ckpt / "adapter" / "adapter_config.json").is_file()
    assert out.strip().endswith(f"stopped after step {state['step']}; checkpoint saved: continue with "
                                f"python cli.py train --resume {run}"), out[-2000:]


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = cli("train", "--resume", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not a run folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_out_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a folder cannot be made inside a file, even by root
    proc = cli("train", "--model", "tiny", "--steps", "1", "--out", str(blocker / "run"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: --out {blocker / 'run'} lies under {blocker}, which is a file; "
                                   "choose another --out")
