"""The ceiling testbed: the mixed task, its mirror warm start, per-kind reports, and (slow) its bands.
(The measured bands of the built model are in docs/RESULTS.md, "The ceiling testbed".)"""
import collections
import json
import os
import random

import numpy as np
import pytest

from minipsn.evaluation.scoring import summarize
from minipsn.experiments.headroom import GUESSABLE, _with_guesses
from minipsn.run.config import DataConfig
from minipsn.run.overrides import build_config
from minipsn.tasks.local_models import LOCAL_MODELS
from minipsn.tasks.synthetic import synthetic_split

MIXED = DataConfig(n_ops=3, answer="mixed", steps_share=0.25, n_train=400, n_test=40)
chain = lambda r: r["problem"].rsplit(". ", 1)[0]


def test_mixed_task_asks_both_kinds_about_disjoint_chains():
    train, test = synthetic_split(MIXED, "train"), synthetic_split(MIXED, "test")
    assert collections.Counter(r["kind"] for r in train) == {"final": 300, "steps": 100}
    assert [r["kind"] for r in test[:4]] == ["final", "steps", "final", "steps"]  # any prefix is balanced
    assert not {chain(r) for r in train} & {chain(r) for r in test}  # whichever kind asks
    assert len({chain(r) for r in train + test}) == 440
    for r in train + test:
        values = [line.split("= ")[-1] for line in r["solution"].split("\n")[:-1]]
        gold = "(" + ", ".join(values) + ")" if r["kind"] == "steps" else values[-1]
        assert r["answer"] == gold and r["solution"].endswith(f"\\boxed{{{gold}}}.")
        assert r["problem"].endswith("after each step?") == (r["kind"] == "steps")


def test_mixed_test_split_stays_put_when_the_training_mix_changes():
    other = DataConfig(n_ops=3, answer="mixed", steps_share=0.5, n_train=800, n_test=40)
    assert synthetic_split(other, "test") == synthetic_split(MIXED, "test")
    with pytest.raises(ValueError, match="steps_share"):
        DataConfig(answer="mixed", steps_share=1.5)


def test_mirror_habit_answers_each_kind_with_the_others_answer():
    from minipsn.tasks.sft import demonstration

    rng, habit = random.Random(0), {"final": 0.3, "steps": 0.9}
    took = collections.defaultdict(list)
    for r in synthetic_split(MIXED, "train"):
        demo = demonstration(r, rng, habit)
        lines = r["solution"].split("\n")[:-1]
        assert demo.split("\n")[:-1] == lines  # every step is always worked
        tuple_ = "(" + ", ".join(line.split("= ")[-1] for line in lines) + ")"
        mirror = lines[-1].split("= ")[-1] if r["kind"] == "steps" else tuple_
        assert demo in (r["solution"], "\n".join(lines) + f"\nThe answer is \\boxed{{{mirror}}}.")
        took[r["kind"]].append(demo != r["solution"])
    # 300 final and 100 steps draws: ±0.09 and ±0.09 are 3 sd of the shares
    assert abs(np.mean(took["final"]) - 0.3) < 0.09 and abs(np.mean(took["steps"]) - 0.9) < 0.09
    final = next(r for r in synthetic_split(MIXED, "train") if r["kind"] == "final")
    with pytest.raises(ValueError, match="per kind"):
        demonstration(final, rng, {"steps": 0.5})


def test_a_kinds_habit_can_depend_on_the_first_operation():
    from minipsn.tasks.sft import habit_share

    habit = {"final": {"add": 0.0, "subtract": 0.5}, "steps": 0.9}
    recs = synthetic_split(MIXED, "train")
    shares = {(r["kind"], r["problem"].split(", ")[1].split()[0]): habit_share(r, habit) for r in recs}
    assert shares == {("final", "add"): 0.0, ("final", "subtract"): 0.5, ("steps", "add"): 0.9,
                      ("steps", "subtract"): 0.9}


def _row(kind, correct, answers):
    return {"kind": kind, "answers": answers, "correct": correct, "lengths": [5] * len(correct),
            "truncated": [False] * len(correct)}


def test_summaries_break_down_by_kind_next_to_the_totals():
    rows = [_row("final", [1, 1], ["3", "3"]), _row("steps", [0, 0], ["2", "2"]), _row("steps", [1, 0], ["(1)", "1"])]
    s = summarize(rows)
    assert s["pass@k"]["1"] == pytest.approx(0.5) and s["problems"] == 3  # the totals as before
    assert set(s["kinds"]) == {"final", "steps"}
    assert s["kinds"]["final"]["pass@k"] == {"1": 1.0, "2": 1.0} and s["kinds"]["final"]["problems"] == 1
    assert s["kinds"]["steps"]["pass@k"]["1"] == pytest.approx(0.25) and s["kinds"]["steps"]["pass@k"]["2"] == 0.5
    assert "kinds" not in summarize([{k: v for k, v in r.items() if k != "kind"} for r in rows])


def test_a_mixed_evaluation_writes_each_problems_kind_and_reports_each_kind(small_policy, toy_tok, tmp_path):
    from minipsn.evaluation.evaluate import evaluate_benchmark

    cfg = build_config("tiny", sets={"data.template": "plain", "eval.n": 4, "eval.max_new_tokens": 6,
                                     "rollout.batch_size": 8})
    recs = synthetic_split(MIXED, "test")[:4]
    report = evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, tmp_path / "s.jsonl")
    lines = _rows(tmp_path / "s.jsonl")
    assert [r["kind"] for r in lines] == ["final", "steps", "final", "steps"]
    steps = summarize([r for r in lines if r["kind"] == "steps"])
    assert report["kinds"]["steps"] == {k: v for k, v in steps.items() if k != "kinds"}
    assert report["kinds"]["final"]["problems"] == 2 and report["problems"] == 4


def test_a_kind_whose_answers_a_guess_hits_is_flagged():
    # final answers are small integers: the mode of training answers is the gold of a test problem
    train = [{"answer": a} for a in ("4", "4", "5", "(1, 2, 3)")]
    small = [{"answer": "4"}, {"answer": "5"}]
    rows = [_row("final", [1, 0], ["4", "5"]), _row("final", [1, 1], ["5", "5"])]
    numbers = summarize(rows)
    flagged = _with_guesses(numbers, small, rows, train[:3])
    assert flagged["guessable"] and flagged["guess"]["mode"] == 0.5 > GUESSABLE
    assert flagged["guess_pass@k"]["2"] == pytest.approx(1 - (1 - 0.5) ** 2)
    big = [{"answer": "(11, 7, -2)"}, {"answer": "(3, 12, 4)"}]
    rows = [_row("steps", [1, 0], ["(11, 7, -2)", "(9, 9, 9)"]), _row("steps", [0, 0], ["(1, 1, 1)", None])]
    clean = _with_guesses(summarize(rows), big, rows, [{"answer": "(1, 2, 3)"}, {"answer": "(20, 30, 40)"}])
    assert not clean["guessable"] and clean["guess"]["shuffled"] == 0


def test_ceiling_is_a_local_model_whose_preset_trains_on_its_task():
    assert "ceiling" in LOCAL_MODELS
    built, used = LOCAL_MODELS["ceiling"]["data"], build_config(model="ceiling").data
    for key in ("n_ops", "min_ops", "ops", "max_operand", "max_start", "answer", "n_train"):
        assert getattr(used, key) == getattr(built, key), key
    # RL draws its own mix of the kinds; the held-out problems do not depend on it
    assert used.steps_share != built.steps_share
    assert synthetic_split(used, "test")[: built.n_test] == synthetic_split(built, "test")  # one pool, the preset uses more of it
    assert set(LOCAL_MODELS["ceiling"]["habit"]) == {"final", "steps"}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]  # the first line is the meta


@pytest.fixture(scope="module")
def ceiling_base(tmp_path_factory):
    from minipsn.experiments.headroom import headroom

    out = tmp_path_factory.mktemp("ceiling-base")
    return headroom(build_config(model="ceiling", sets={"eval.n": 256, "eval.problems": 200}), out), out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="builds the ceiling model (~8 min) and evaluates it "
                    "(~4 min): MINIPSN_SLOW=1")
def test_ceiling_base_band_and_per_kind_guess_rates(ceiling_base):
    result, _ = ceiling_base
    steps, final = result["kinds"]["steps"], result["kinds"]["final"]
    assert steps["problems"] == final["problems"] == 100
    # the ceiling is measured where a guess is rarely right, and the final kind is flagged as guessable
    assert max(steps["guess"][g] for g in ("mode", "shuffled", "uniform")) <= 1e-3 and not steps["guessable"]
    assert final["guessable"]
    assert 0.50 <= steps["pass@k"]["256"] <= 0.90  # issue 24's base band


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="one GRPO run on the ceiling model and its evaluation "
                    "(~5 min after the base test): MINIPSN_SLOW=1")
def test_one_grpo_seed_narrows_the_steps_kind_and_lifts_the_mix(ceiling_base, tmp_path):
    """A reduced check of issue 24's GRPO bands: one seed instead of five, so the interval covers problems
    only. Measured (docs/RESULTS.md, the exploration experiment): steps pass@256 71.0 → 25–40 over 5 seeds;
    the mix's pass@1 +10.1 to +13.6 per seed (+11.8 mean, the band is 10 on the mean; on the code before
    issue 23's fixes, +8.9 to +13.3): one seed is held to 6 points, about 3 seed sd below the mean."""
    from minipsn.evaluation.evaluate import evaluate
    from minipsn.experiments.stats import count_matrix, paired_difference
    from minipsn.training.train import train

    _, base_dir = ceiling_base
    cfg = build_config(model="ceiling", method="grpo", sets={"run.out": str(tmp_path / "run")})
    evaluate(cfg, ["synthetic"], tmp_path / "eval", adapter=str(train(cfg) / "adapter"))
    base, grpo = _rows(base_dir / "samples" / "synthetic.jsonl"), _rows(tmp_path / "eval" / "samples" / "synthetic.jsonl")
    gain = {}
    for kind in ("steps", "final"):
        m, n, _ = count_matrix([grpo], kind)
        r, _, _ = count_matrix([base], kind)
        result = paired_difference(m, r, n, [1, 256])
        gain[kind] = result["diff"][0]
        if kind == "steps":  # narrowed by at least 5 points, and the interval excludes 0
            assert result["diff"][1] <= -0.05 and result["high"][1] < 0, result
    share = cfg.data.steps_share
    assert share * gain["steps"] + (1 - share) * gain["final"] >= 0.06, gain


def test_a_build_runs_on_the_threads_it_is_given(tmp_path, monkeypatch):
    import torch

    import minipsn.tasks.sft
    from minipsn.tasks.local_models import build_tiny

    seen = []
    monkeypatch.setattr(minipsn.tasks.sft, "warm_start", lambda *a, **k: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's setting, which the build must neither use nor lose
    try:
        data = DataConfig(n_ops=3, answer="mixed", n_train=64, n_test=8)
        build_tiny(tmp_path / "a", data=data, threads=1)
        monkeypatch.setenv("MINIPSN_BUILD_THREADS", "1")
        build_tiny(tmp_path / "b", data=data)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        monkeypatch.setenv("MINIPSN_BUILD_THREADS", "two")
        with pytest.raises(ValueError, match="MINIPSN_BUILD_THREADS"):
            build_tiny(tmp_path / "c", data=data)
    finally:
        torch.set_num_threads(before)
