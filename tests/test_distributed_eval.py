"""torchrun and evaluation: `eval` on two processes writes the one-process files; commands that run on
one process only refuse torchrun's environment in one line (`compare`: tests/test_distributed_compare.py)."""
import json
import os
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.test_distributed import DIST_ENV, torchrun, torchrun_args
from tests.test_evaluate import _cli
from tests.test_train import cli

# 5 problems, 2 per sampling call (eval.batch_size = 2·n): on 2 ranks round 1 is p0 p1 | p2 p3, round 2 is p4 | none
# (`--set eval.n=4`, not `--n 4`: torchrun's own parser takes --n for an abbreviation of its --nnodes, …)
EVAL = ["eval", "--model", "tiny", "--benchmarks", "synthetic", "--problems", "5", "--set", "eval.batch_size=8",
        "--set", "eval.max_new_tokens=24", "--set", "eval.n=4"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="torchrun runs (~1 min): MINIPSN_SLOW=1")
def test_eval_on_two_processes_writes_the_one_process_files(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    cli(*EVAL, "--out", str(one))
    proc = torchrun(*EVAL, "--out", str(two))
    assert proc.stdout.count("eval: ") == 1  # rank 0 alone prints the table and the path
    a, b = (json.loads((d / "eval.json").read_text()) for d in (one, two))
    assert a["benchmarks"] == b["benchmarks"] and a["average"] == b["average"] and a["config"] == b["config"]
    assert a["benchmarks"]["synthetic"]["problems"] == 5 and list(a["average"]["pass@k"]) == ["1", "2", "4"]
    samples = "samples/synthetic.jsonl"
    assert (one / samples).read_text() == (two / samples).read_text()  # the same rows, in problem order

    # resumed under torchrun after 2 problems: the 3 others are split, the file is again the one-process one
    lines = (one / samples).read_text().splitlines(keepends=True)
    (two / samples).write_text("".join(lines[:3]))
    (two / "eval.json").unlink()
    torchrun(*EVAL, "--out", str(two))
    assert (one / samples).read_text() == (two / samples).read_text()
    assert json.loads((two / "eval.json").read_text())["benchmarks"] == a["benchmarks"]

    # rank 0's error on the samples file (other settings) ends every rank at once, no collective timeout
    t0 = time.time()
    other = [*EVAL[:-1], "eval.n=8"]
    proc = subprocess.run(torchrun_args(*other, "--out", str(two)), cwd=REPO, env=DIST_ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "other settings" in proc.stderr
    assert time.time() - t0 < 100  # DIST_ENV's timeout is 120 s


@pytest.mark.parametrize("args", [["plot", "runs"], ["bench"]])
def test_one_process_commands_refuse_torchrun(args, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each process it starts
    res = CliRunner().invoke(_cli().app, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert f"error: {args[0]} runs on one process only; run it without torchrun" in res.output
    assert not (tmp_path / "out").exists()



def _split_on(rank: int, monkeypatch, samples) -> tuple[list, list, dict]:
    """_sample_split of 5 problems, 2 per call, as rank `rank` of 2 (a stand-in for torch.distributed):
    (the problems of each sampling call, the rows each gather got, the finished problems)."""
    from minipsn.evaluation import evaluate as ev

    calls, gathers, done = [], [], {}
    monkeypatch.setattr(ev.dist, "_state", {"on": True, "rank": rank, "world": 2})
    monkeypatch.setattr(ev.dist, "gather", lambda rows: gathers.append(rows) or [rows if k == rank else [] for k in (0, 1)])
    monkeypatch.setattr(ev, "sample_problems", lambda m, t, recs, *a: calls.append([r["id"] for r in recs]) or
                        [{"id": r["id"]} for r in recs])
    ev._sample_split(None, None, "synthetic", [{"id": f"p{i}"} for i in range(5)], None, None, 2, samples, done,
                     None, None, 4)
    return calls, gathers, done


def test_eval_split_gives_each_rank_contiguous_shares_of_the_one_process_calls(monkeypatch, tmp_path):
    for rank, expected in ((0, [["p0", "p1"], ["p4"]]), (1, [["p2", "p3"]])):
        calls, gathers, done = _split_on(rank, monkeypatch, tmp_path / f"rank{rank}.jsonl")
        assert calls == expected  # eval.batch_size's calls of one process: [p0 p1] [p2 p3] [p4]
        assert len(gathers) == 2  # every rank enters the same collectives, even with nothing to sample
        assert sorted(done) == sorted(p for c in expected for p in c)
        assert (tmp_path / f"rank{rank}.jsonl").exists() == (rank == 0)  # rank 0 alone writes
