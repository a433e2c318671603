"""torchrun (gloo on the CPU, two processes): the same run as one process, resumable, and a failing rank ends the job."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO
from tests.test_train import ENV, cli

SETS = ["--set", "grpo.prompts_per_step=4", "--set", "grpo.group_size=4", "--set", "rollout.max_new_tokens=32",
        "--set", "eval.every=0", "--sigma", "0.02"]
DIST_ENV = {**ENV, "PYTHONPATH": str(REPO), "MINIPSN_DIST_TIMEOUT": "120"}


def torchrun_args(*args, script=None):
    """`python -m torch.distributed.run` (so PATH does not matter) with two processes on this host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(script or REPO / "cli.py"), *args]


def torchrun(*args, timeout=900):
    proc = subprocess.run(torchrun_args(*args), cwd=REPO, env=DIST_ENV, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b, samples=True):
    """metrics.jsonl values (timings aside) and adapter weights equal within floating-point tolerance."""
    from safetensors.torch import load_file

    rows_a, rows_b = metrics(a), metrics(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for x, y in zip(rows_a, rows_b):
        assert x.keys() == y.keys(), set(x) ^ set(y)
        for key in x:
            if not key.startswith("perf/"):
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), (x["step"], key)
    wa = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)
    if samples:
        assert (a / "samples.jsonl").read_text() == (b / "samples.jsonl").read_text()


def _equal_to_one_process(tmp_path, *extra):
    # both with the defaults: one generator per prompt makes the rollouts independent of the number of processes
    cli("train", "--model", "tiny", "--steps", "2", "--out", str(tmp_path / "one"), *SETS, *extra)
    proc = torchrun("train", "--model", "tiny", "--steps", "2", "--out", str(tmp_path / "two"), *SETS, *extra)
    assert proc.stdout.count("step 2/2") == 1  # rank 0 alone prints the status line
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_two_processes_equal_one_process_with_step_noise(tmp_path):
    _equal_to_one_process(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="torchrun runs (~30 s): MINIPSN_SLOW=1")
def test_two_processes_equal_one_process_with_group_noise(tmp_path):
    _equal_to_one_process(tmp_path, "--set", "noise.granularity=group")


def _wait_for_steps(proc, run, n, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="torchrun runs (~1 min): MINIPSN_SLOW=1")
def test_sigkill_under_torchrun_then_resume_matches_the_uninterrupted_run(tmp_path):
    sets = [*SETS, "--set", "run.save_every=2", "--set", "noise.control=adaptive", "--set", "control.window=2",
            "--set", "grpo.lr_schedule=cosine"]
    torchrun("train", "--model", "tiny", "--steps", "4", "--out", str(tmp_path / "full"), *sets)

    run = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_args("train", "--model", "tiny", "--steps", "4", "--out", str(run), *sets), cwd=REPO,
                            env=DIST_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_steps(proc, run, 3)  # past the checkpoint at step 2, before the one at step 4
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks at once
        proc.wait()
    assert (run / "checkpoints" / "latest").read_text() in ("step-000002", "step-000004")
    out = torchrun("train", "--resume", str(run)).stdout
    assert "resumed" in out and "process(es)" not in out  # same K: no note
    assert_same_run(tmp_path / "full", run)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="torchrun runs (~20 s): MINIPSN_SLOW=1")
def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(f"""
from minipsn.run import distributed as dist
from minipsn.run.overrides import build_config
from minipsn.training.train import train

def reward(texts, recs, truncated):
    if dist.rank() == 1:
        raise RuntimeError("rank 1 fails on purpose")
    return [0.0] * len(texts)

cfg = build_config(model="tiny", sets={{"run.out": {str(tmp_path / 'run')!r}, "run.steps": "2",
                   "grpo.prompts_per_step": "2", "grpo.group_size": "2", "rollout.max_new_tokens": "8", "eval.every": "0"}})
train(cfg, reward_fn=reward)
""")
    t0 = time.time()
    proc = subprocess.run(torchrun_args(script=script), cwd=REPO, env={**DIST_ENV, "MINIPSN_DIST_TIMEOUT": "60"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stdout + proc.stderr
    assert time.time() - t0 < 120  # rank 0, waiting in a collective, was stopped: no hang
