"""Output folders: a bad --out is one line before any work, for every command that writes; a run folder
has one writer at a time, and a killed writer leaves no lock behind."""
import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from minipsn.run import folders
from tests.conftest import REPO

# every command that writes, with what it needs besides --out (--model tiny is never loaded: see _no_model)
COMMANDS = {
    "train": ["train", "--model", "tiny", "--steps", "1"],
    "calibrate": ["calibrate", "--model", "tiny"],
    "eval": ["eval", "--model", "tiny", "--benchmarks", "synthetic"],
    "headroom": ["headroom", "--model", "tiny"],
    "plot": ["plot", "RUN"],
    "compare": ["compare", "--model", "tiny", "--seeds", "1"],
    "bench": ["bench", "--quick", "--no-trl"],
}


def invoke(*args):
    import cli

    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def _no_model(monkeypatch):
    """Loading a model is the work a bad --out must come before."""
    def load_base(*a, **k):
        raise AssertionError("a model was loaded before --out was checked")
    monkeypatch.setattr("minipsn.tasks.models.load_base", load_base)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_bad_out_is_one_line_before_any_work(command, where, tmp_path, _no_model):
    run = tmp_path / "run"  # a source for `plot`
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/accuracy": 0.5}) + "\n")
    file = tmp_path / "taken"
    file.write_text("not a folder")
    out = file if where == "a file" else file / "sub"
    args = [str(run) if a == "RUN" else a for a in COMMANDS[command]]
    code, output = invoke(*args, "--out", str(out))
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out ") and str(out) in lines[0], output
    assert ("is a file" if where == "a file" else f"lies under {file}") in lines[0]
    assert file.read_text() == "not a folder"


def _holder(folder):
    """Another process that holds `folder` (as a running train or compare would), once it says so."""
    code = (f"from minipsn.run import folders; folders.hold({str(folder)!r}); print('held', flush=True); "
            "import time; time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_fails_at_once_naming_the_holder_and_a_killed_one_leaves_no_lock(tmp_path, _no_model):
    from minipsn.run.overrides import build_config

    run = tmp_path / "run"
    holder = _holder(run)
    try:
        busy = f"error: {run} is in use by another minipsn process (pid {holder.pid})"
        with pytest.raises(ValueError, match=rf"is in use by another minipsn process \(pid {holder.pid}\)"):
            folders.hold(run)
        code, output = invoke("train", "--model", "tiny", "--steps", "1", "--out", str(run))
        assert code == 2 and output.strip().startswith(busy) and len(output.strip().splitlines()) == 1, output
        assert not (run / "config.json").exists()
        (run / "config.json").write_text(json.dumps(build_config("tiny", sets={"run.out": str(run)}).to_dict()))
        code, output = invoke("train", "--resume", str(run))
        assert code == 2 and output.strip().startswith(busy), output
        code, output = invoke("compare", "--model", "tiny", "--seeds", "1", "--out", str(run))
        assert code == 2 and output.strip().startswith(busy), output
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock with the process
        holder.wait()
    assert (run / folders.LOCK_FILE).is_file()  # the file stays; it holds no lock
    folders.hold(run)
    folders.release(run)


def test_one_process_may_hold_a_folder_again_and_the_last_release_frees_it(tmp_path):
    run = tmp_path / "run"
    folders.hold(run)
    folders.hold(run)  # a trainer and its resume in one process
    folders.release(run)
    probe = [sys.executable, "-c", f"from minipsn.run import folders; folders.hold({str(run)!r})"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run(probe, cwd=REPO, env=env, capture_output=True).returncode != 0  # still held once
    folders.release(run)
    proc = subprocess.run(probe, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
