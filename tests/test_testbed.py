"""The exploration testbed's task knobs and the guess rates that say whether large-k headroom is luck.
(The measured headroom of the built testbed is in docs/RESULTS.md and `make test-slow`, not here.)"""
import collections
import hashlib
import json
import os
import random

import pytest

from minipsn.experiments.headroom import guess_rates
from minipsn.run.config import DataConfig
from minipsn.tasks.local_models import LOCAL_MODELS
from minipsn.tasks.models import resolve_name
from minipsn.tasks.synthetic import synthetic_split


def test_the_default_task_is_unchanged_by_the_new_knobs():
    # the tiny model was warm-started on these problems: new knobs must not reshuffle them (the held-out pool,
    # drawn first so that no training split holds a test problem, changed them once, with tiny v4)
    for split, digest in (("train", "3f2b743fc24e6650"), ("test", "eb70449e2b581d55")):
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


def test_steps_answers_are_the_ordered_tuple_of_values_and_graded_in_order():
    from minipsn.rewards import correctness_reward

    recs = synthetic_split(DataConfig(n_ops=3, answer="steps", n_train=300, n_test=20), "train")
    for r in recs:
        values = [line.split("= ")[-1] for line in r["solution"].split("\n")[:-1]]
        assert r["answer"] == "(" + ", ".join(values) + ")" and r["problem"].endswith("after each step?")
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}.")
    rec = next(r for r in recs if len(set(r["answer"].strip("()").split(", "))) == 3)
    a, b, c = rec["answer"].strip("()").split(", ")
    assert correctness_reward(f"\\boxed{{({a}, {b}, {c})}}", rec["answer"], False) == 1.0
    assert correctness_reward(f"\\boxed{{({b}, {a}, {c})}}", rec["answer"], False) == 0.0  # order matters
    assert correctness_reward(f"\\boxed{{({a}, {b})}}", rec["answer"], False) == 0.0
    assert correctness_reward(f"\\boxed{{{c}}}", rec["answer"], False) == 0.0  # the habit: the last value alone
    # the default task's problems are untouched (the hash test above), and the knob is checked
    with pytest.raises(ValueError, match="data.answer"):
        DataConfig(answer="all")


def test_habit_share_per_first_operation():
    from minipsn.tasks.sft import demonstration, first_operation

    recs = synthetic_split(DataConfig(n_ops=3, answer="steps", n_train=400, n_test=20), "train")
    assert {first_operation(r["problem"]) for r in recs} == {"add", "subtract"}
    rng, share = random.Random(0), {"add": 0.3, "subtract": 1.0}
    finished = collections.defaultdict(list)
    for r in recs:
        demo = demonstration(r, rng, share)
        finished[first_operation(r["problem"])].append(demo == r["solution"])
        if demo != r["solution"]:  # the habit: every step worked, then the last value boxed alone
            assert demo.split("\n")[:-1] == r["solution"].split("\n")[:-1]
            assert demo.endswith(f"\\boxed{{{r['answer'].strip('()').split(', ')[-1]}}}.")
    assert not any(finished["subtract"])  # never demonstrated
    assert 0.6 < sum(finished["add"]) / len(finished["add"]) < 0.8  # 0.7 expected, ~200 draws: ±0.1 is 3 sd


def test_guess_rates_count_what_a_guess_would_score():
    train = [{"answer": a} for a in ("5", "5", "7", "9")]
    test = [{"answer": "5"}, {"answer": "8"}, {"answer": "100"}]
    rows = [{"answers": ["8", "8"]}, {"answers": ["5", None]}, {"answers": ["100", "5"]}]
    g = guess_rates(test, rows, train)
    assert g["mode"] == pytest.approx(1 / 3)  # "5" is the train mode; one test answer is 5
    # problem 0 (gold 5) sees others' answers 5, None, 100, 5 → 2 hits; problem 1 (gold 8) sees 8, 8, 100, 5 → 2;
    # problem 2 (gold 100) sees 8, 8, 5, None → 0: 4 hits out of 12 answers of other problems
    assert g["shuffled"] == pytest.approx(4 / 12)
    assert g["range"] == [[5, 100]] and g["uniform"] == pytest.approx((3 / 3) / 96)
    # tuple answers: one uniform draw per position, from that position's range (here 2 × 3 values)
    tuples = [{"answer": a} for a in ("(1, 5)", "(2, 7)", "(1, 6)")]
    g = guess_rates(tuples[:2], [{"answers": ["(1, 5)"]}, {"answers": ["(2, 7)"]}], tuples)
    assert g["range"] == [[1, 2], [5, 7]] and g["uniform"] == pytest.approx(1 / 6) and g["shuffled"] == 0
    # answers compare as the verifier compares them, not as strings: "(2,7)" and "\left(2, 7\right)" are (2, 7)
    spelled = [{"answers": ["(2,7)", "\\left(2, 7\\right)"]}, {"answers": ["(1, 5.0)", "(1, 5, 0)"]}]
    g = guess_rates(tuples[:2], spelled, tuples)
    # gold (1, 5) is problem 1's "(1, 5.0)"; gold (2, 7) is both of problem 0's answers: 3 hits of 4
    assert g["shuffled"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="one row"):
        guess_rates(test, rows[:2], train)


def test_testbed_is_a_local_model_like_tiny(tmp_path, monkeypatch):
    from minipsn.tasks.local_models import SHIPPED, folder_name, local_spec

    assert set(LOCAL_MODELS) == {"tiny", "testbed", "ceiling", "route"}
    assert local_spec("testbed") == ("testbed", 0) and local_spec("testbed-b3") == ("testbed", 3)
    assert local_spec("testbed-3") is None and local_spec("nope-b1") is None
    assert resolve_name("testbed") == str(SHIPPED / folder_name("testbed"))  # the shipped build
    monkeypatch.setenv("MINIPSN_CACHE", str(tmp_path))
    built = tmp_path / folder_name("testbed-b1")  # another build seed: built on first use, cached
    built.mkdir()
    (built / "done").write_text("{}")  # a finished build is reused, never rebuilt
    assert resolve_name("testbed-b1") == str(built) and built.name == f"testbed-b1-{LOCAL_MODELS['testbed']['version']}"
    with pytest.raises(ValueError, match="testbed"):
        resolve_name("testbd")


def test_testbed_preset_trains_on_the_task_its_model_was_built_on():
    from minipsn.run.overrides import build_config

    built, used = LOCAL_MODELS["testbed"]["data"], build_config(model="testbed").data
    for key in ("n_ops", "min_ops", "ops", "max_operand", "max_start", "answer", "n_train"):
        assert getattr(used, key) == getattr(built, key), key


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="builds the testbed (~8 min with the check): MINIPSN_SLOW=1")
def test_testbed_has_headroom_at_large_k_that_guessing_does_not_explain(tmp_path):
    from minipsn.experiments.headroom import headroom
    from minipsn.run.overrides import build_config

    result = headroom(build_config(model="testbed", sets={"eval.n": 256, "eval.problems": 100}), tmp_path)
    p = result["pass@k"]
    assert max(result["guess"][k] for k in ("mode", "shuffled", "uniform")) < 1e-3
    # issue 13's bands (measured on the development machine's build: 0.098 and 0.47)
    assert 0.05 <= p["1"] <= 0.35 and 0.40 <= p["256"] <= 0.85


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="trains GRPO on the testbed (~3 min): MINIPSN_SLOW=1")
def test_grpo_lifts_the_testbeds_pass_at_1_by_ten_points(tmp_path):
    from minipsn.run.overrides import build_config
    from minipsn.training.train import train

    cfg = build_config(model="testbed", method="grpo",
                       sets={"run.steps": 50, "run.out": str(tmp_path / "run"), "eval.every": 50})
    metrics = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    before, after = (m["eval/pass@1"] for m in metrics if "eval/pass@1" in m)
    # measured: +0.25 in 50 steps (docs/RESULTS.md), +0.19 to +0.31 over three seeds in 60 steps
    assert after - before >= 0.10
