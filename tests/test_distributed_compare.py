"""torchrun and `compare`: every job of the grid trains and evaluates on all the ranks, in turn; the
summary is the one-process summary, finished jobs are reused, and `--workers` is refused."""
import json
import os

import pytest

from tests.test_distributed import torchrun
from tests.test_evaluate import _cli
from tests.test_train import cli

# n with --set (torchrun's parser takes --n for its --nnodes); 5 problems, 2 per sampling call
COMPARE = ["compare", "--model", "tiny", "--methods", "grpo,psn", "--seeds", "1", "--steps", "2", "--sigma", "0.02",
           "--set", "grpo.prompts_per_step=4", "--set", "grpo.group_size=4", "--set", "rollout.max_new_tokens=24",
           "--set", "eval.problems=5", "--set", "eval.n=4", "--set", "eval.batch_size=8",
           "--set", "eval.max_new_tokens=24"]


def _summary(out):
    return json.loads((out / "compare.json").read_text())["summary"]


def _assert_same_summary(a, b):
    assert a.keys() == b.keys() == {"base", "grpo", "psn"}
    for method in a:
        assert a[method]["seeds"] == b[method]["seeds"] and a[method]["pass@k"].keys() == b[method]["pass@k"].keys()
        for key in ("acc", "maj"):
            assert a[method][key] == pytest.approx(b[method][key], rel=1e-4, abs=1e-5), (method, key)
        for k in a[method]["pass@k"]:
            assert a[method]["pass@k"][k] == pytest.approx(b[method]["pass@k"][k], rel=1e-4, abs=1e-5), (method, k)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="torchrun runs (~1 min): MINIPSN_SLOW=1")
def test_compare_on_two_processes_gives_the_one_process_summary(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    cli(*COMPARE, "--out", str(one))  # the defaults: one generator per prompt on one process too
    proc = torchrun(*COMPARE, "--out", str(two))
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone prints
    _assert_same_summary(_summary(one), _summary(two))
    for job in ("grpo-s0", "psn-s0"):
        assert (two / job / "adapter" / "adapter_config.json").is_file()
        assert json.loads((two / job / "eval" / "eval.json").read_text())["benchmarks"]["synthetic"]["problems"] == 5
        rows = [(d / job / "eval" / "samples" / "synthetic.jsonl").read_text().splitlines()[1:] for d in (one, two)]
        assert rows[0] == rows[1]  # the same scored samples (the meta line names each grid's adapter path)

    # again under torchrun: every job is finished (rank 0 decides), nothing is redone, the same summary
    (two / "compare.json").unlink()
    proc = torchrun(*COMPARE, "--out", str(two))
    assert proc.stdout.count("done, reusing") == 3 and "training" not in proc.stdout
    _assert_same_summary(_summary(one), _summary(two))


def test_compare_refuses_workers_under_torchrun(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each process it starts
    res = CliRunner().invoke(_cli().app, ["compare", "--seeds", "1", "--workers", "2", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "error: --workers N runs on one process; under torchrun the jobs run one after another" in res.output
    assert not (tmp_path / "out").exists()
