"""The exploration testbed's task knobs and the guess rates that say whether large-k headroom is luck.
(The measured headroom of the built testbed is in docs/RESULTS.md and `make test-slow`, not here.)"""
import hashlib
import json
import os

import pytest

from minipsn.config import DataConfig
from minipsn.data import synthetic_split
from minipsn.headroom import guess_rates
from minipsn.models import LOCAL_MODELS, resolve_name


def test_the_default_task_is_unchanged_by_the_new_knobs():
    # every cached tiny model was warm-started on these problems: new knobs must not reshuffle them
    for split, digest in (("train", "e137fa787856596e"), ("test", "ccb9d81f704ab4cd")):
        got = hashlib.sha256(json.dumps(synthetic_split(DataConfig(), split)).encode()).hexdigest()[:16]
        assert got == digest, split


def test_max_start_and_min_ops_shape_the_problems():
    recs = synthetic_split(DataConfig(n_ops=4, min_ops=2, max_start=9999, n_train=500, n_test=50), "train")
    starts = [int(r["problem"].split(",")[0].removeprefix("Start at ")) for r in recs]
    ops = [r["problem"].count(",") for r in recs]
    assert max(starts) > 1000 and min(starts) >= 1 and set(ops) == {2, 3, 4}
    for r in recs:  # the worked solution still ends in the answer, whatever the length
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}.") and r["solution"].count("\n") == r["problem"].count(",")
    with pytest.raises(ValueError, match="min_ops"):
        DataConfig(n_ops=2, min_ops=3)
    with pytest.raises(ValueError, match="max_start"):
        DataConfig(max_start=1)


def test_guess_rates_count_what_a_guess_would_score():
    train = [{"answer": a} for a in ("5", "5", "7", "9")]
    test = [{"answer": "5"}, {"answer": "8"}, {"answer": "100"}]
    rows = [{"answers": ["8", "8"]}, {"answers": ["5", None]}, {"answers": ["100", "5"]}]
    g = guess_rates(test, rows, train)
    assert g["mode"] == pytest.approx(1 / 3)  # "5" is the train mode; one test answer is 5
    # problem 0 (gold 5) sees others' answers 5, None, 100, 5 → 2 hits; problem 1 (gold 8) sees 8, 8, 100, 5 → 2;
    # problem 2 (gold 100) sees 8, 8, 5, None → 0: 4 hits out of 12 answers of other problems
    assert g["shuffled"] == pytest.approx(4 / 12)
    assert g["range"] == [5, 100] and g["uniform"] == pytest.approx((3 / 3) / 96)
    with pytest.raises(ValueError, match="one row"):
        guess_rates(test, rows[:2], train)


def test_testbed_is_a_local_model_like_tiny(tmp_path, monkeypatch):
    assert set(LOCAL_MODELS) == {"tiny", "testbed"}
    monkeypatch.setenv("MINIPSN_CACHE", str(tmp_path))
    version = LOCAL_MODELS["testbed"][0]
    (tmp_path / f"testbed-{version}").mkdir()
    (tmp_path / f"testbed-{version}" / "done").write_text("{}")  # a finished build is reused, never rebuilt
    assert resolve_name("testbed") == str(tmp_path / f"testbed-{version}")
    with pytest.raises(ValueError, match="testbed"):
        resolve_name("testbd")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="builds the testbed (~8 min): MINIPSN_SLOW=1")
def test_testbed_has_headroom_at_large_k_that_guessing_does_not_explain(tmp_path):
    from minipsn.config import build_config
    from minipsn.headroom import headroom

    result = headroom(build_config(model="testbed", sets={"eval.n": 256, "eval.problems": 50}), tmp_path)
    p = result["pass@k"]
    assert max(result["guess"][k] for k in ("mode", "shuffled", "uniform")) < 1e-3
    assert p["256"] - p["1"] > 0.3  # room between one sample and 256
