"""The route testbed: the route task's records and held-out pool, its two-route warm start with slips, the
route classifier on hand-written completions, its config, preset and recipe (offline, no model is built), and (slow)
the shipped build's bands."""
import collections
import dataclasses
import json
import os
import random

import pytest

from minipsn.evaluation.scoring import summarize
from minipsn.experiments.frontier import mix_pass1
from minipsn.run.config import DataConfig
from minipsn.run.overrides import build_config
from minipsn.run.presets import LOCAL_MODELS, NOT_SHIPPED
from minipsn.tasks.route import (
    ROUTES,
    chain_values,
    common_route,
    parse_chain,
    rare_route,
    route_counts,
    route_of,
)
from minipsn.tasks.sft import demonstration
from minipsn.tasks.synthetic import pool_size, synthetic_split

ROUTE = DataConfig(n_ops=4, answer="route", neg_share=0.25, n_train=400, n_test=40)
PROBLEM = "Start at 3, subtract 5, add 2, subtract 7, add 4. What number do you get after each step?"
KEPT = "Shift by 10: 3 + 10 = 13\n13 - 5 = 8\n8 + 2 = 10\n10 - 7 = 3\n3 + 4 = 7\nThe answer is \\boxed{(-2, 0, -7, -3)}."
chain = lambda r: r["problem"].rsplit(". ", 1)[0]  # noqa: E731
box = lambda text: text.rsplit("\\boxed{", 1)[1].removesuffix("}.")  # noqa: E731


def test_the_two_routes_written_out_on_the_issues_example():
    start, ops = parse_chain(PROBLEM)
    assert (start, ops) == (3, [("-", 5), ("+", 2), ("-", 7), ("+", 4)]) and chain_values(start, ops) == [-2, 0, -7, -3]
    assert rare_route(start, ops, 10) == KEPT
    assert common_route(start, ops) == "3 - 5 = 2\n2 + 2 = 4\n4 - 7 = 3\n3 + 4 = 7\nThe answer is \\boxed{(2, 4, 3, 7)}."
    # a slip at operation 2: line 2 starts from the unshifted -2 and goes on in the common form; the box still decodes
    assert rare_route(start, ops, 10, slip_at=2).split("\n")[2:] == [
        "-2 + 2 = 0", "0 - 7 = 7", "7 + 4 = 11", "The answer is \\boxed{(-2, -10, -3, 1)}."]
    with pytest.raises(ValueError, match="slip_at=5"):
        rare_route(start, ops, 10, slip_at=5)


def test_route_records_kinds_golds_and_which_route_is_right():
    train, test = synthetic_split(ROUTE, "train"), synthetic_split(ROUTE, "test")
    for r in train + test:
        assert set(r) == {"id", "problem", "answer", "solution", "kind"}
        start, ops = parse_chain(r["problem"])
        values = chain_values(start, ops)
        assert len(ops) == 4 and min(values) >= 1 - ROUTE.route_offset and r["problem"].endswith("after each step?")
        assert r["answer"] == "(" + ", ".join(map(str, values)) + ")"
        assert r["kind"] == ("neg" if min(values) < 0 else "pos")
        assert box(r["solution"]) == r["answer"] and route_of(r["solution"], r["problem"]) == "rare-kept"
        shifted = [int(line.rsplit("= ", 1)[1]) for line in r["solution"].split("\n")[:-1]]
        assert min(shifted) >= 1  # the ledger never writes a negative number
        common = common_route(start, ops)
        assert route_of(common, r["problem"]) == "common"
        assert (box(common) == r["answer"]) == (r["kind"] == "pos")  # the common route is right exactly on pos


def test_a_seed_gives_the_same_problems_and_another_seed_others():
    assert synthetic_split(ROUTE, "train") == synthetic_split(ROUTE, "train")
    assert synthetic_split(ROUTE, "test") == synthetic_split(ROUTE, "test")
    assert synthetic_split(ROUTE, "train", seed=1) != synthetic_split(ROUTE, "train")


def test_the_held_out_pool_alternates_stays_put_and_is_never_trained_on():
    pool = synthetic_split(dataclasses.replace(ROUTE, n_test=pool_size(ROUTE)), "test")
    assert len({chain(r) for r in pool}) == len(pool) == pool_size(ROUTE) == 500
    assert [r["kind"] for r in pool] == ["pos", "neg"] * 250  # any prefix of 2m holds m of each
    for n_train, n_test, share in ((400, 40, 0.25), (1000, 200, 0.0), (2000, 7, 1.0), (300, 500, 0.6)):
        cfg = dataclasses.replace(ROUTE, n_train=n_train, n_test=n_test, neg_share=share)
        train = synthetic_split(cfg, "train")
        assert synthetic_split(cfg, "test") == pool[:n_test]  # whatever the sizes and the share
        assert not {chain(r) for r in pool} & {chain(r) for r in train}
        assert len({chain(r) for r in train}) == n_train
        assert collections.Counter(r["kind"] for r in train)["neg"] == round(share * n_train)
    kinds = [r["kind"] for r in synthetic_split(ROUTE, "train")]
    assert kinds.count("neg") == 100 and kinds[:100].count("neg") not in (0, 100)  # 25 %, in a seeded order


def test_the_warm_start_mixes_the_routes_per_kind_and_slips_some_rare_demonstrations():
    rng, rare, slip = random.Random(0), {"pos": 0.2, "neg": 0.4}, 0.25
    took = collections.defaultdict(collections.Counter)
    for r in synthetic_split(dataclasses.replace(ROUTE, neg_share=0.5, n_train=1000), "train") * 4:
        demo = demonstration(r, rng, rare, slip)
        route = route_of(demo, r["problem"])
        took[r["kind"]][route] += 1
        assert route != "other"
        if route == "common":
            assert demo == common_route(*parse_chain(r["problem"]))
        if route == "rare-kept":
            assert demo == r["solution"]
    for kind, share in rare.items():  # 2000 draws per kind: ±0.033 is 3 sd of the rare share at 0.4
        n = sum(took[kind].values())
        rare_n = took[kind]["rare-kept"] + took[kind]["rare-broken"]
        assert abs(rare_n / n - share) < 0.035, (kind, took[kind])
        assert abs(took[kind]["rare-broken"] / rare_n - slip) < 0.08, (kind, took[kind])  # ≥ 400 rare draws
    # a record with no share for its kind fails in one line
    with pytest.raises(ValueError, match="per kind"):
        demonstration(synthetic_split(ROUTE, "train")[0], rng, {"final": 0.5})


def test_a_slip_breaks_the_box_and_reads_as_rare_broken():
    offset = ROUTE.route_offset
    lucky = 0
    for r in synthetic_split(dataclasses.replace(ROUTE, neg_share=0.5), "train"):
        start, ops = parse_chain(r["problem"])
        values = chain_values(start, ops)
        for j in range(1, len(ops) + 1):
            slipped = rare_route(start, ops, offset, slip_at=j)
            assert route_of(slipped, r["problem"]) == "rare-broken"
            # wrong on every problem, pos or neg, but where the slipped line's |v| lands back on the ledger
            if abs(values[j - 1]) == values[j - 1] + offset:
                lucky += 1
                assert box(slipped) == r["answer"]
            else:
                assert box(slipped) != r["answer"]
                assert box(slipped).split(", ")[j - 1].strip("()") != str(values[j - 1])  # from the slipped line on
    assert 0 < lucky < 0.1 * 400 * 4


@pytest.mark.parametrize("completion, route", [
    (KEPT, "rare-kept"),
    (KEPT.replace("Shift by 10: 3 + 10 = 13\n13 - 5 = 8\n8 + 2 = 10\n10 - 7 = 3\n3 + 4 = 7",  # another offset, kept
                  "Shift by 20: 3 + 20 = 23\n23 - 5 = 18\n18 + 2 = 20\n20 - 7 = 13\n13 + 4 = 17"), "rare-kept"),
    # slips at line 2 and at the last line: a line from the unshifted value, the box still decoding
    ("Shift by 10: 3 + 10 = 13\n13 - 5 = 8\n-2 + 2 = 0\n0 - 7 = 7\n7 + 4 = 11\nThe answer is \\boxed{(-2, -10, -3, 1)}.",
     "rare-broken"),
    ("Shift by 10: 3 + 10 = 13\n13 - 5 = 8\n8 + 2 = 10\n10 - 7 = 3\n-7 + 4 = 3\nThe answer is \\boxed{(-2, 0, -7, -7)}.",
     "rare-broken"),
    (KEPT.replace("(-2, 0, -7, -3)", "(-2, 0, -7, 3)"), "rare-broken"),  # a wrong decode in the box
    (KEPT.replace("(-2, 0, -7, -3)", "(8, 10, 3, 7)"), "rare-broken"),  # the shifted values boxed undecoded
    (KEPT.replace("8 + 2 = 10\n", ""), "rare-broken"),  # an operation skipped
    (KEPT.replace("13 - 5 = 8", "13 + 5 = 8"), "rare-broken"),  # an operation changed
    (KEPT.replace("10 - 7 = 3", "10 - 7 = 4"), "rare-broken"),  # an arithmetic slip
    (KEPT.replace("Shift by 10: 3 + 10 = 13", "Shift by 10: 4 + 10 = 14"), "rare-broken"),  # the wrong start shifted
    (KEPT + "\nThe answer is \\boxed{(1, 2, 3, 4)}.", "rare-broken"),  # more after the box
    ("Shift by 10: 3 + 10 = 13\n13 - 5 = 8\n8 + 2 =", "rare-broken"),  # truncated mid-line
    ("Shift by 1", "rare-broken"),  # truncated in the shift line
    ("3 - 5 = 2\n2 + 2 = 4\n4 - 7 = 3\n3 + 4 = 7\nThe answer is \\boxed{(2, 4, 3, 7)}.", "common"),  # the sign drop
    ("3 - 5 = -2\n-2 + 2 = 0\n0 - 7 = -7\n-7 + 4 = -3\nThe answer is \\boxed{(-2, 0, -7, -3)}.", "common"),  # none
    ("3 - 5 = 2\n2 + 2", "common"),  # truncated mid-line
    ("3 - 5 =", "other"),  # truncated in the first line
    ("5 - 3 = 2\nThe answer is \\boxed{(2)}.", "other"),  # not from the start value
    ("The answer is \\boxed{(-2, 0, -7, -3)}.", "other"),  # a box and no work
    ("I think it is about 42, but let me check the steps again.", "other"),
    ("banana }{ \\boxed{", "other"),
    ("", "other"),
    ("  \n\n ", "other"),
])
def test_route_of_names_the_route_a_completion_took(completion, route):
    assert route_of(completion, PROBLEM) == route


def test_route_counts_counts_every_route_and_keeps_zeros():
    counts = route_counts([KEPT, KEPT, "3 - 5 = 2", "", KEPT.replace("13 - 5", "3 - 5")], PROBLEM)
    assert counts == {"rare-kept": 2, "rare-broken": 1, "common": 1, "other": 1} and tuple(counts) == ROUTES
    assert route_counts([], PROBLEM) == dict.fromkeys(ROUTES, 0)
    with pytest.raises(ValueError, match="not a synthetic chain problem"):
        route_of(KEPT, "What is 2 + 2?")


def test_route_settings_fail_in_one_line_naming_what_to_fix():
    with pytest.raises(ValueError, match=r"data.neg_share must be in \[0, 1\], got 1.5"):
        DataConfig(answer="route", neg_share=1.5)
    with pytest.raises(ValueError, match="data.route_offset must be >= 2"):
        DataConfig(answer="route", route_offset=1)
    with pytest.raises(ValueError, match="data.answer=route needs data.ops='\\+-'"):
        DataConfig(answer="route", ops="+-*")
    with pytest.raises(ValueError, match="data.answer='routes' is not one of final, steps, mixed, route"):
        DataConfig(answer="routes")
    with pytest.raises(ValueError, match="route task too small"):
        synthetic_split(DataConfig(answer="route", n_ops=1, max_operand=30, n_train=900, n_test=5), "train")


def test_the_route_preset_and_recipe_without_building_the_model(monkeypatch, tmp_path):
    from transformers import AutoTokenizer

    from minipsn.tasks import local_models, models

    built = []
    monkeypatch.setattr(local_models, "build_tiny", lambda folder, **kw: built.append((folder, kw)))
    monkeypatch.setenv("MINIPSN_CACHE", str(tmp_path))
    cfg = build_config(model="route")
    assert not built  # a config never builds
    recipe = LOCAL_MODELS["route"]
    for key in ("n_ops", "min_ops", "ops", "max_operand", "max_start", "answer", "n_train", "route_offset"):
        assert getattr(cfg.data, key) == getattr(recipe["data"], key), key
    assert cfg.data.neg_share == 0.2 != recipe["data"].neg_share  # RL draws its own mix; the pool does not move
    assert synthetic_split(cfg.data, "test")[:200] == synthetic_split(recipe["data"], "test")
    assert cfg.eval.n_for({"kind": "pos"}) == 32 and cfg.eval.n_for({"kind": "neg"}) == 256
    # the longest rare solution with a shipped tokenizer (81 tokens; 78 with the route's own), its end token, headroom
    tok = AutoTokenizer.from_pretrained(local_models.SHIPPED / local_models.folder_name("ceiling"))
    longest = max(len(tok(r["solution"])["input_ids"]) for r in synthetic_split(cfg.data, "test"))
    assert cfg.rollout.max_new_tokens == cfg.eval.max_new_tokens >= 1.5 * (longest + 1)
    assert recipe["habit"] == {"pos": 0.065, "neg": 0.065} and recipe["slip"] == 0.15 and recipe["cue"] == 0.3
    assert "route" not in NOT_SHIPPED and local_models.folder_name("route") == "route-v3"
    assert models.resolve_name("route") == str(local_models.SHIPPED / "route-v3") and not built  # seed 0 ships
    shipped = json.loads((local_models.SHIPPED / "route-v3" / "done").read_text())
    assert {k: shipped[k] for k in ("habit", "slip", "cue", "warm_steps", "seed")} == {
        "habit": recipe["habit"], "slip": 0.15, "cue": 0.3, "warm_steps": recipe["steps"], "seed": 0}
    assert DataConfig(**shipped["data"]) == recipe["data"]  # the shipped bits are this recipe's build
    assert local_models.local_spec("route-b2") == ("route", 2)
    models.resolve_name("route-b2")  # another build seed: built on first use, with the recipe's knobs
    (folder, kw), = built
    assert folder == tmp_path / "route-b2-v3" and kw["slip"] == 0.15 and kw["habit"] == recipe["habit"] and kw["cue"] == 0.3
    assert kw["data"] == recipe["data"] and kw["seed"] == 2


def test_slip_and_cue_belong_to_the_route_task():
    from minipsn.tasks.local_models import build_tiny

    with pytest.raises(ValueError, match="slip=0.1 is the route task's warm-start knob"):
        build_tiny("unused", DataConfig(), slip=0.1)
    with pytest.raises(ValueError, match="cue=0.3 is the route task's warm-start knob"):
        build_tiny("unused", DataConfig(), cue=0.3)


def test_a_cued_row_asks_for_the_ledger_and_works_it_and_cue_0_draws_nothing_more():
    from minipsn.tasks.sft import CUE, warm_pair

    records = synthetic_split(dataclasses.replace(ROUTE, neg_share=0.5, n_train=1000), "train")
    rng, rare, cued, kept = random.Random(1), {"pos": 0.0, "neg": 0.0}, 0, 0
    for r in records * 2:
        prompt, demo = warm_pair(r, rng, rare, 0.25, cue=0.3)
        if prompt == CUE + r["problem"]:
            cued += 1
            assert route_of(demo, r["problem"]) in ("rare-kept", "rare-broken")  # the ledger, slips included
            kept += route_of(demo, r["problem"]) == "rare-kept"
        else:  # the plain question, here with no rare share: always the common route
            assert prompt == r["problem"] and demo == common_route(*parse_chain(r["problem"]))
    assert abs(cued / 2000 - 0.3) < 0.031 and abs(kept / cued - 0.75) < 0.06  # 3 sd of 2000 and of ~600 draws
    plain = synthetic_split(ROUTE, "train")[:50]  # other tasks, and cue = 0: the same draws as `demonstration`
    a, b = random.Random(2), random.Random(2)
    assert [warm_pair(r, a, 0.5, 0.1) for r in plain] == [(r["problem"], demonstration(r, b, 0.5, 0.1)) for r in plain]
    assert a.random() == b.random()


def test_pos_and_neg_flow_through_the_evaluation_like_the_ceilings_kinds():
    def row(kind, correct):
        return {"kind": kind, "answers": ["(1, 2)"] * len(correct), "correct": correct, "lengths": [9] * len(correct),
                "truncated": [False] * len(correct)}

    s = summarize([row("pos", [1, 1]), row("neg", [0, 0]), row("neg", [1, 0])])
    assert set(s["kinds"]) == {"neg", "pos"} and s["kinds"]["neg"]["pass@k"]["1"] == pytest.approx(0.25)
    report = {"benchmarks": {"synthetic": s}, "config": {"data": {"neg_share": 0.2}}}
    assert mix_pass1(report) == pytest.approx(0.8 * 1.0 + 0.2 * 0.25)  # the training mix, 80/20 pos/neg


def test_route_choice_pools_the_rare_starts_and_averages_the_rare_rate():
    from minipsn.experiments.preflight import route_choice

    rows = [{"routes": {"rare-kept": 2, "rare-broken": 2, "common": 4, "other": 0}},
            {"routes": {"rare-kept": 0, "rare-broken": 0, "common": 7, "other": 1}},
            {"answers": ["1"]}]  # a row of another task: not counted
    out = route_choice(rows)
    assert out["problems"] == 2 and out["rare_rate"] == (4 / 8 + 0 / 8) / 2 and out["keep_rate"] == 2 / 4
    assert out["routes"] == {"rare-kept": 2, "rare-broken": 2, "common": 11, "other": 1}
    assert route_choice([rows[1]])["keep_rate"] is None and route_choice([rows[2]]) == {}


def test_the_mechanism_probe_at_sigma_0_is_clean_sampling_and_counts_every_sample(tmp_path):
    """The pre-flight on route problems (the tiny model, whatever it writes): lora:0 samples exactly what clean does,
    route for route, and every sample of a problem is counted once under one route."""
    import json

    from minipsn.experiments.preflight import preflight
    from minipsn.run.overrides import build_config

    cfg = build_config(model="tiny", sets={"data.answer": "route", "data.n_ops": 4, "data.n_test": 6, "eval.n": 4,
                                           "eval.problems": 6})
    report = preflight(cfg, ["clean", "lora:0"], [1], tmp_path / "pre")
    clean, zero = report["results"]
    assert clean["route"] == zero["route"] and clean["pass@k"] == zero["pass@k"]
    assert sum(clean["route"]["routes"].values()) == 6 * 4 and set(clean["kinds"]) == {"pos", "neg"}
    rows = lambda name: [json.loads(x) for x in (tmp_path / "pre" / "samples" / name).read_text().splitlines()]  # noqa: E731
    assert [(r["answers"], r["routes"]) for r in rows("clean-D1.jsonl")] == [(r["answers"], r["routes"])
                                                                            for r in rows("lora-0-D1.jsonl")]
    assert all(sum(r["routes"].values()) == 4 for r in rows("clean-D1.jsonl"))


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]  # the first line is the meta


@pytest.fixture(scope="module")
def route_base(tmp_path_factory):
    from minipsn.experiments.headroom import headroom

    out = tmp_path_factory.mktemp("route-base")
    return headroom(build_config(model="route", sets={"eval.problems": 200}), out), out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="evaluates the shipped route model on 100 neg problems "
                    "at n = 256 (~3 min): MINIPSN_SLOW=1")
def test_route_base_band_and_guess_rate(route_base):
    """Issue 33's base band on the shipped v3 build: measured neg pass@256 58 % (docs/RESULTS.md, the route testbed)."""
    result, _ = route_base
    neg = result["kinds"]["neg"]
    assert neg["problems"] == 100
    assert max(neg["guess"][g] for g in ("mode", "shuffled", "uniform")) <= 1e-3 and not neg["guessable"]
    assert 0.50 <= neg["pass@k"]["256"] <= 0.90


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="one GRPO run on the route model and its evaluation "
                    "(~5 min after the base test): MINIPSN_SLOW=1")
def test_one_grpo_seed_narrows_the_neg_kind(route_base, tmp_path):
    """A reduced check of issue 33's narrowing band: one seed, an interval over problems only. Measured over 5 seeds:
    neg pass@256 58.0 → 29.4 ± 3.7 (seeds 25–35 %), so one seed is held to 10 points of narrowing."""
    from minipsn.evaluation.evaluate import evaluate
    from minipsn.experiments.stats import count_matrix, paired_difference
    from minipsn.training.train import train

    _, base_dir = route_base
    cfg = build_config(model="route", method="grpo", sets={"run.out": str(tmp_path / "run"), "eval.problems": 200})
    evaluate(cfg, ["synthetic"], tmp_path / "eval", adapter=str(train(cfg) / "adapter"))
    base, grpo = _rows(base_dir / "samples" / "synthetic.jsonl"), _rows(tmp_path / "eval" / "samples" / "synthetic.jsonl")
    m, n, _ = count_matrix([grpo], "neg")
    r, _, _ = count_matrix([base], "neg")
    result = paired_difference(m, r, n, [1, 256])
    assert result["diff"][1] <= -0.10 and result["high"][1] < 0, result
