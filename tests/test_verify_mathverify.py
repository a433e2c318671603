"""reward.verifier (issue 25): Math-Verify in the sandboxed worker behind the strict guards (the default),
strict, and both. The forms only Math-Verify reads, each guard against one of its false positives, a hung
check inside Math-Verify, the reward rules under every verifier, the choice reaching every scorer, and
the verify-audit command."""

import json
import time
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from minipsn import verify
from minipsn.rewards import build_reward_fn, correctness_reward
from minipsn.run.config import RewardConfig
from minipsn.run.overrides import build_config
from minipsn.verify import VERIFIERS, is_equivalent, verify_stats, warm_up
from minipsn.verify.judge import math_verify_equal

SLACK = 5.0  # seconds a check may take beyond its limit (killing the worker, a busy machine)


@pytest.fixture(scope="module", autouse=True)
def _worker():
    warm_up()


# (completion, gold, a wrong variant of the completion): forms models and benchmarks use
FORMS = [
    ("\\boxed{-2} and \\boxed{1}", "-2, 1", "\\boxed{-2} and \\boxed{2}"),
    ("\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}", "(2, 2), (6, 2)",
     "\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(2, 6)}"),
    ("Final Answer: The largest $n$ is 34.", "34", "Final Answer: The largest $n$ is 35."),
    ("So the sum is $10,455$. I hope it is correct.", "10455", "So the sum is $10,456$. I hope it is correct."),
    ("Therefore $x \\geq 5$ is the solution.", "x \\ge 5", "Therefore $x > 5$ is the solution."),
    ("The only solution is $(7, 6)$.", "(7, 6)", "The only solution is $(6, 7)$."),
    ("Hence $\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$ is the answer.",
     "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "Hence $\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}$ is the answer."),
    ("\\boxed{|AB|=4,|CD|=5}", "4, 5", "\\boxed{|AB|=4,|CD|=6}"),
    ("\\boxed{|AB|=1}", "1", "\\boxed{|AB|=2}"),
    ("\\boxed{V_{1}:V_{2}=11:21}", "11:21", "\\boxed{V_{1}:V_{2}=11:12}"),
    ("\\boxed{\\pm 2021}", "\\{-2021, 2021\\}", "\\boxed{\\pm 2020}"),
    ("\\boxed{x \\in [-2,7]}", "-2 \\le x \\le 7", "\\boxed{x \\in (-2,7]}"),
    ("\\boxed{0<f(x)<1}", "(0,1)", "\\boxed{0<f(x)<2}"),
    ("\\boxed{28 percent}", "28", "\\boxed{27 percent}"),
    ("\\boxed{28 pct}", "28", "\\boxed{82 pct}"),
    ("It costs 2,74 $.", "2.74", "It costs 2,47 $."),
    ("\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)",
     "\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{4} \\\\right)}"),
]


@pytest.mark.parametrize("completion,gold,wrong", FORMS, ids=[f"form{i}" for i in range(len(FORMS))])
def test_the_default_verifier_reads_each_form_and_refuses_its_wrong_variant(completion, gold, wrong):
    assert RewardConfig().verifier == "math-verify"
    assert correctness_reward(completion, gold, False) == 1.0
    assert correctness_reward(wrong, gold, False) == 0.0


# Each guard: a pair Math-Verify 0.9.0 alone accepts, that the default verifier refuses (both ways round)
GUARDS = {
    "factorials-exact": ("\\frac{1}{2004!}", "\\frac{1}{2006!}"),
    "powers-exact": ("\\frac{1}{2^{64}}", "\\frac{1}{2^{65}}"),
    "tiny-powers-exact": ("10^{-20}", "2\\cdot 10^{-20}"),
    "exponentials-exact": ("e^{-50}", "e^{-51}"),
    "e-notation": ("1.5e3", "1.5\\cdot e\\cdot 3"),
    "false-numeric-equation": ("5+5=11", "11"),
    "set-is-no-pair": ("\\{1,2\\}", "(1,2)"),
    "unbalanced-braces": ("1}}}}}", "1"),
    "unit-stripping-drops-a-variable": ("\\cos 2t + \\sin 2", "\\cos 2t + \\sin 2t"),
    "unsolved-inequality": ("x^2<3", "(-\\sqrt{3}, \\sqrt{3})"),
    "unsolved-absolute-value": ("|x|<3", "(-3,3)"),
    "names-keep-their-case": ("\\pi r^2", "\\pi R^2"),
    "a-named-answer-keeps-its-variable": ("x \\equiv 1 \\pmod 3", "x \\equiv 2 \\pmod 3"),
    "percent-is-never-rescaled": ("50\\%x", "0.5x"),
    "a-labelled-list-is-no-pair": ("x=3, y=2", "(2,3)"),
}


def _math_verify_alone(pred: str, gold: str) -> bool:
    import math_verify

    read = lambda s: math_verify.parse(f"${s}$", parsing_timeout=None)  # noqa: E731
    return math_verify.verify(read(gold), read(pred), timeout_seconds=None, allow_set_relation_comp=True)


@pytest.mark.parametrize("name", GUARDS)
def test_each_guard_refuses_a_math_verify_false_positive(name):
    pred, gold = GUARDS[name]
    assert _math_verify_alone(pred, gold) or _math_verify_alone(gold, pred)  # the false positive is real
    for verifier in ("math-verify", "both"):
        assert is_equivalent(pred, gold, verifier=verifier) is False
        assert is_equivalent(gold, pred, verifier=verifier) is False


def test_size_guard_refuses_towers_before_sympy():
    before = verify_stats()
    start = time.monotonic()
    assert is_equivalent("10^{10^{10}}", "10^{10^{10}}+1", timeout=2.0) is False
    assert is_equivalent("1000000!", "1000001!", timeout=2.0) is False
    assert time.monotonic() - start < 2 * 2.0 + SLACK
    assert verify_stats()["timeouts"] == before["timeouts"]


def test_inequalities_turn_round_and_not_equal_too():
    assert is_equivalent("3 \\ne x", "x \\neq 3") is True
    assert is_equivalent("4 \\ne x", "x \\neq 3") is False
    assert is_equivalent("x \\ge 5", "[5, \\infty)") is True
    assert is_equivalent("x > 5", "[5, \\infty)") is False


def test_both_accepts_only_what_both_accept_and_counts_disagreements():
    before = verify_stats()["disagree"]
    assert is_equivalent("|AB|=4,|CD|=5", "4, 5", verifier="strict") is False
    assert is_equivalent("|AB|=4,|CD|=5", "4, 5", verifier="math-verify") is True
    assert is_equivalent("|AB|=4,|CD|=5", "4, 5", verifier="both") is False
    assert verify_stats()["disagree"] == before + 1
    assert is_equivalent("\\sqrt{8}", "2\\sqrt{2}", verifier="both") is True
    assert verify_stats()["disagree"] == before + 1
    with pytest.raises(ValueError, match="unknown verifier"):
        is_equivalent("1", "2", verifier="sympy")
    with pytest.raises(ValueError, match="reward.verifier"):
        RewardConfig(verifier="sympy")


def _math_verify_or_hang(raw_pred: str, raw_gold: str, readings=None):
    """Math-Verify, except that an answer with \\hang never returns (injected with verify._restart_worker)."""
    if "hang" in raw_pred:
        time.sleep(600)
    return math_verify_equal(raw_pred, raw_gold, readings)


def test_a_hung_math_verify_is_bounded_by_the_worker_and_counted_as_a_timeout():
    from minipsn.training.batch import score

    verify._restart_worker(_math_verify_or_hang, stage="math-verify")
    try:
        before = verify_stats()
        start = time.monotonic()
        assert is_equivalent("x + \\hang", "x", timeout=1.0) is False
        assert time.monotonic() - start < 1.0 + SLACK
        assert verify_stats()["timeouts"] == before["timeouts"] + 1
        warm_up()  # the replacement worker is ready before the scored step
        ro = SimpleNamespace(texts=["\\boxed{x + \\hang}", "\\boxed{|AB|=4,|CD|=5}"], truncated=torch.tensor([False, False]))
        before = verify_stats()
        _, correct = score(None, ro, [{"answer": "x"}, {"answer": "4, 5"}], RewardConfig(timeout=1.0))
        assert correct.tolist() == [0.0, 1.0]
        assert verify_stats()["timeouts"] == before["timeouts"] + 1  # what train logs as verify/timeouts
    finally:
        verify._restart_worker(None)
    assert is_equivalent("|AB|=4,|CD|=5", "4, 5") is True  # a fresh worker took over


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_reward_rules_hold_with_every_verifier(verifier):
    good, unboxed = "so \\boxed{\\frac{1}{2}}", "The answer is 0.5 because 1/2 = 0.5."
    assert correctness_reward(good, "0.5", False, verifier=verifier) == 1.0
    assert correctness_reward(good, "0.5", True, verifier=verifier) == 0.0  # truncated counts as wrong
    assert correctness_reward(good, "0.5", True, truncated_reward=-1.0, verifier=verifier) == -1.0
    assert correctness_reward(unboxed, "0.5", False, verifier=verifier) == 1.0
    assert correctness_reward(unboxed, "0.5", False, unboxed=False, verifier=verifier) == 0.0  # insists on a box
    assert correctness_reward("we get 7 then 12", "12", False, verifier=verifier) == 1.0
    assert correctness_reward("we get 7 then 12", "12", False, last_number=False, verifier=verifier) == 0.0
    assert correctness_reward("it is 12. So \\boxed{}", "12", False, verifier=verifier) == 0.0  # boxes only
    fn = build_reward_fn(format_weight=0.5, verifier=verifier)
    assert fn([good, unboxed, good], [{"answer": "0.5"}] * 3, [False, False, True]) == [1.5, 1.0, 0.5]


def test_the_verifier_reaches_every_scorer():
    from minipsn.evaluation.evaluate import sampling_meta
    from minipsn.evaluation.scoring import score_rows
    from minipsn.training.batch import score

    texts, gold = ["\\boxed{|AB|=4,|CD|=5}", "\\boxed{4, 6}"], "4, 5"
    assert score_rows(texts, [False, False], [3, 3], gold)["correct"] == [1, 0]
    assert score_rows(texts, [False, False], [3, 3], gold, verifier="strict")["correct"] == [0, 0]
    ro = SimpleNamespace(texts=texts, truncated=torch.tensor([False, False]))
    recs = [{"answer": gold}] * 2
    assert score(None, ro, recs, RewardConfig())[1].tolist() == [1.0, 0.0]
    assert score(None, ro, recs, RewardConfig(verifier="strict"))[1].tolist() == [0.0, 0.0]
    metas = {v: sampling_meta(build_config(model="tiny", sets={"reward.verifier": v}), "math500", None) for v in VERIFIERS}
    assert len({json.dumps(m, sort_keys=True) for m in metas.values()}) == 3  # another verifier: samples not reused


def _run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "eval" / "samples").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(build_config(model="tiny").to_dict()))
    row = {"step": 1, "row": 0, "prompt": "p", "reward": 0.0, "correct": False, "truncated": False}
    rows = [{**row, "completion": "so \\boxed{|AB|=4,|CD|=5}", "gold": "4, 5"},
            {**row, "row": 1, "completion": "so \\boxed{4, 5}", "gold": "4, 5"},
            {**row, "row": 2, "completion": "so \\boxed{|AB|=1", "gold": "1", "truncated": True}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = [{"meta": {"benchmark": "olympiadbench"}},
             {"id": "ob-1", "answers": ["|AB|=1", "2", None], "correct": [1, 0, 0], "truncated": [False] * 3, "gold": "1"},
             {"id": "ob-2", "answers": ["|AB|=1"], "correct": [1], "truncated": [False]}]
    (run / "eval" / "samples" / "olympiadbench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    return run


def test_verify_audit_lists_the_disagreements(tmp_path):
    from minipsn.verify.audit import audit

    report = audit(_run_folder(tmp_path))
    assert report["checked"] == 4 and report["skipped"] == 1
    found = {(d["source"].split(" ")[0], d["answer"], d["strict"], d["math-verify"]) for d in report["disagree"]}
    assert found == {("samples.jsonl:1", "|AB|=4,|CD|=5", False, True),
                     ("eval/samples/olympiadbench.jsonl:2", "|AB|=1", False, True)}


def test_verify_audit_command(tmp_path):
    from cli import app

    result = CliRunner().invoke(app, ["verify-audit", str(_run_folder(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "|AB|=4,|CD|=5" in result.output and "2 of 4 answers" in result.output
    result = CliRunner().invoke(app, ["verify-audit", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


def test_math_verify_reads_every_math500_gold():
    import math_verify
    import sympy

    from minipsn.verify.judge import _as_math
    from tests.conftest import DATA

    path = DATA / "math500_test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    golds = [json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    unread = [g for g in golds if not isinstance(next(iter(math_verify.parse(_as_math(g), parsing_timeout=None)), None),
                                                 (sympy.Basic, sympy.MatrixBase))]
    assert unread == []  # \$36 included: the escaped dollar is a currency sign


def test_no_adversarial_pair_strict_refuses_gets_through():
    """tests/data/verify_adversarial.jsonl: near misses written to trip a verifier (exact and rounded
    numbers, dropped or renamed letters, unsolved relations, units, percent, labels), checked both ways."""
    from tests.conftest import REPO

    rows = [json.loads(line) for line in (REPO / "tests" / "data" / "verify_adversarial.jsonl").read_text().splitlines()]
    assert len(rows) >= 130
    through = []
    for pred, gold in [(r["a"], r["b"]) for r in rows] + [(r["b"], r["a"]) for r in rows]:
        strict, mv = (is_equivalent(pred, gold, verifier=v) for v in ("strict", "math-verify"))
        assert is_equivalent(pred, gold, verifier="both") is (strict and mv)
        if mv and not strict:
            through.append((pred, gold))
    assert through == []
