"""minipsn.verify: real benchmark answers, a table of known pitfalls, extraction, adversarial input,
the time limit from a thread and from a daemonic pool process, and a hypothesis property test."""

import json
import multiprocessing
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minipsn import verify
from minipsn.verify import VERIFIERS, bench_verifier, extract_answer, is_equivalent, verify_stats, warm_up
from tests.conftest import data_file

SLACK = 5.0  # seconds a check may take beyond its limit (killing the worker, scheduling on a busy machine)
# README: these two MATH solutions end in an empty \boxed{}; their `answer` was set to 0 by hand
EMPTY_BOX_IDS = {"train/number_theory/7115.json", "train/number_theory/7117.json"}
# these MATH solutions box several values together ("$k = \boxed{5}$ or $k = \boxed{-3}$") while the gold keeps
# the last: boxes offered together are one answer, right only for a gold of all of them (issue 35: no hedge pays);
# number_theory/837 boxes 20:34 "or" 8:34 p.m., two spellings the kit does not equate
SEVERAL_VALUES_IDS = {"train/algebra/152.json", "train/algebra/1771.json", "train/intermediate_algebra/396.json",
                      "train/intermediate_algebra/1486.json", "train/intermediate_algebra/1964.json",
                      "train/number_theory/837.json", "train/precalculus/860.json", "train/precalculus/1040.json",
                      "train/precalculus/1089.json", "train/precalculus/1149.json"}


def _rows(name: str) -> list[dict]:
    path = data_file(name)
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module", autouse=True)
def _worker():
    warm_up()  # start-up (~2 s) is outside every check's time limit


def _hang(pred: str, gold: str) -> bool:
    """Stands in for a sympy call that never returns (injected with verify._restart_worker)."""
    time.sleep(600)
    return True


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize("name", ["math500_test.jsonl", "math_train.jsonl"])
def test_math_gold_equals_itself_and_its_solution_box(name):
    bad = []
    for row in _rows(name):
        if row["id"] in EMPTY_BOX_IDS | SEVERAL_VALUES_IDS:
            assert row["id"] in EMPTY_BOX_IDS or not is_equivalent(extract_answer(row["solution"]), row["answer"])
            continue
        boxed = extract_answer(row["solution"])
        if not is_equivalent(row["answer"], row["answer"]) or boxed is None or not is_equivalent(
                boxed, row["answer"]):
            bad.append((row["id"], boxed, row["answer"]))
    assert bad == []


@pytest.mark.parametrize("name", ["gsm8k_test.jsonl", "gsm8k_train.jsonl"])
def test_gsm8k_final_is_extracted(name):
    bad = [(r["id"], r["final"]) for r in _rows(name) if extract_answer(r["answer"]) != r["final"]]
    assert bad == []


def test_math500_gold_through_sympy_stage():
    """Every MATH-500 answer survives the sympy stage itself, not only the exact-match path, and
    sympy's own LaTeX spelling of it (or 12 digits of it) is accepted while gold+1 is refused."""
    import sympy

    from minipsn.verify import parse, symbolic

    rows = _rows("math500_test.jsonl")
    norm = [verify.normalise(r["answer"]) for r in rows]
    assert [n for n in norm if not verify._ask_worker(n, n, 5.0)] == []
    checked = 0
    for row, n in zip(rows, norm):
        value = parse.parse_answer(n)
        if verify._is_words(n) or symbolic._kind(value) != "expr" or value.has(sympy.I):
            continue  # words are compared as text; sympy prints complex numbers as 6 - 5 i
        checked += 1
        assert is_equivalent(sympy.latex(value), row["answer"]), row["answer"]
        assert not is_equivalent(sympy.latex(value + 1), row["answer"]), row["answer"]
        if value.is_number:
            assert is_equivalent(str(sympy.N(value, 12)), row["answer"]), row["answer"]
    assert checked > 400


# ---------------------------------------------------------------- pitfalls

CASES = [
    # (label, pred, gold, expected)
    ("fraction-vs-decimal", "1/2", "0.5", True),
    ("frac-vs-decimal", "\\frac{1}{2}", "0.5", True),
    ("sqrt-shorthand", "\\frac{\\sqrt3}{2}", "\\sqrt{3}/2", True),
    ("percent-is-not-rescaled", "50", "0.5", False),
    ("percent-sign-dropped", "50\\%", "50", True),
    ("percent-vs-fraction", "0.5", "50\\%", False),
    ("e-sign", "1-1/e", "1+1/e", False),
    ("set-order", "\\{1,2\\}", "\\{2,1\\}", True),
    ("set-size", "\\{1,2\\}", "\\{1,2,3\\}", False),
    ("tuple-order", "(1,2)", "(2,1)", False),
    ("var-eq-pred", "x=5", "5", True),
    ("var-eq-gold", "5", "x = 5", True),
    ("var-eq-wrong", "5", "x=6", False),
    ("pi-over-2", "\\pi/2", "\\dfrac{\\pi}{2}", True),
    ("tower-vs-1", "10^{10^{10}}", "1", False),
    ("tower-allowed", "2^{2^{2^{2^{2}}}}", "2^{65536}", True),
    ("tiny-factorials", "1/2004!", "1/2006!", False),
    ("thousands", "1,000", "1000", True),
    ("thousands-latex", "10,\\!080", "10080", True),
    ("dollars", "\\$32,\\!348", "32348", True),
    ("degrees", "30^\\circ", "30", True),
    ("degrees-braced", "30^{\\circ}", "30", True),
    ("choice-text", "\\text{(C)}", "C", True),
    ("choice-paren", "(C)", "\\text{(C)}", True),
    ("choice-bold", "\\textbf{(C) }12", "C", True),
    ("choice-wrong", "(B)", "C", False),
    ("choice-vs-number", "3", "\\text{(C)}", False),
    ("half-open-vs-closed", "[1,2)", "[1,2]", False),
    ("open-vs-closed", "(1,2)", "[1,2]", False),
    ("interval-spaces", "(-\\infty, 0]", "(-\\infty,0]", True),
    ("union-order", "(0,9) \\cup (9,36)", "(9,36)\\cup(0,9)", True),
    ("radical", "2\\sqrt{2}", "\\sqrt{8}", True),
    ("radical-wrong", "2\\sqrt{2}", "\\sqrt{6}", False),
    ("scientific", "8.7e8", "8.7\\times10^{8}", True),
    ("scientific-exponent", "8.7e8", "8.7e9", False),
    ("scientific-int", "3\\times10^{5}", "300000", True),
    ("scientific-negative", "1e-5", "10^{-5}", True),
    ("euler-not-exponent", "2e+1", "1+2e", True),
    ("tfrac-shorthand", "\\tfrac34", "\\dfrac{3}{4}", True),
    ("left-right", "\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)", True),
    ("units-mbox", "864 \\mbox{ inches}^2", "864", True),
    ("units-text", "5.4 \\text{ cents}", "5.4", True),
    ("units-degrees", "\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True),
    ("variable-not-unit", "6 m", "6", False),
    ("mixed-number", "1\\frac{4}{5}", "9/5", True),
    ("multi-answer", "69,84", "84,69", True),
    ("multi-answer-wrong", "1,2", "1,3", False),
    ("plus-minus", "1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", True),
    ("set-with-pm", "\\{1\\pm\\sqrt{5},-2\\}", "-2, 1-\\sqrt5, 1+\\sqrt5", True),
    ("line", "y = 2x+1", "y=1+2x", True),
    ("line-scaled", "2y - 4x = 2", "y = 2x + 1", True),
    ("line-wrong", "y=2x+1", "y=2x-1", False),
    ("plane", "5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0", True),
    ("polynomial", "x^2+2x+1", "(x+1)^2", True),
    ("polynomial-wrong", "x^2+2x+1", "(x+1)^3", False),
    ("trig-identity", "\\sin^2 x + \\cos^2 x", "1", True),
    ("complex", "6-5i", "-5i+6", True),
    ("complex-conjugate", "i", "-i", False),
    ("euler", "e^{i\\pi}", "-1", True),
    ("word-text", "\\text{Evelyn}", "Evelyn", True),
    ("word-case", "even", "\\text{Even}", True),
    ("word-wrong", "\\text{Evelyn}", "Navin", False),
    ("repeating-approx", "0.333333", "\\frac13", True),
    ("coarse-approx", "0.33", "\\frac13", False),
    ("pi-digits", "3.14159265", "\\pi", True),
    ("pi-coarse", "3.14", "\\pi", False),
    ("big-int-off-by-one", "3986730", "3986729", False),
    ("nested-radical", "\\sqrt{2}+\\sqrt{3}", "\\sqrt{5+2\\sqrt6}", True),
    ("matrix", "\\begin{pmatrix} 2/2 \\\\ 4/2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("matrix-order", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    ("base-subscript", "52_8", "52", True),
    ("log-base", "\\log_2 8", "3", True),
    ("set-builder-in", "x \\in [-2,7]", "[-2,7]", True),
    ("inequality-flip", "k \\geq 2", "2 \\le k", True),
    ("inequality-wrong", "x > 2", "x < 2", False),
    ("infinity-sign", "-\\infty", "\\infty", False),
    ("negative-fraction", "-\\frac{1}{2}", "\\frac{-1}{2}", True),
    ("reciprocal", "2", "\\frac{1}{2}", False),
    ("empty-pred", "", "5", False),
    ("empty-gold", "5", "", False),
    ("garbage", "abc}{", "5", False),
    ("boxed-wrapper", "\\boxed{7}", "7", True),
]


ONE_WAY = {"choice-bold"}  # a gold letter accepts "(C) 12"; the reverse is not a choice answer


@pytest.mark.parametrize("label,pred,gold,expected", CASES, ids=[c[0] for c in CASES])
def test_equivalence_table(label, pred, gold, expected):
    assert is_equivalent(pred, gold) is expected
    if label not in ONE_WAY:
        assert is_equivalent(gold, pred) is expected


def test_table_is_big_and_balanced():
    assert len(CASES) >= 60
    assert sum(c[3] for c in CASES) >= 20 and sum(not c[3] for c in CASES) >= 20


# ---------------------------------------------------------------- extraction

EXTRACTIONS = [
    ("nested", "So $\\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
    ("last-box", "First \\boxed{1}, finally \\boxed{2}.", "2"),
    ("fbox", "The result: \\fbox{7}", "7"),
    ("boxed-space", "so $x = \\boxed 5$.", "5"),
    ("unclosed-last", "\\boxed{3} and then \\boxed{4", "3"),
    ("empty-box", "there are $\\boxed{}$ primes, 1 of them", None),
    ("gsm8k", "She pays 2 * 3 = 6.\n#### 1,234", "1234"),
    ("answer-is", "Thus the answer is 42.", "42"),
    ("answer-is-latex", "The final answer is: $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("answer-colon", "Answer: 3.5", "3.5"),
    ("last-number", "I think 3 apples and 5 pears", "5"),
    ("last-number-thousands", "it costs 1,000 dollars", "1000"),
    ("last-number-negative", "it is -7 degrees", "-7"),
    ("last-number-fraction", "x is 3/4 here", "3/4"),
    ("nothing", "no numbers here", None),
    ("empty", "", None),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in EXTRACTIONS], ids=[c[0] for c in EXTRACTIONS])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_without_last_number():
    assert extract_answer("I think 3", last_number=False) is None
    assert extract_answer("\\boxed{3}", last_number=False) == "3"


def test_wrong_types_raise():
    with pytest.raises(TypeError, match="expects str"):
        is_equivalent(0.5, "1/2")
    with pytest.raises(TypeError, match="for gold"):
        is_equivalent("1/2", None)
    with pytest.raises(TypeError):
        extract_answer(None)


# ---------------------------------------------------------------- adversarial input and limits

ADVERSARIAL = [
    "10^{10^{10}}", "10^{10^{10^{10}}}", "9^{9^{9}}", "2^{2^{2^{2^{2^{2}}}}}", "1000000!",
    "(10^{100})!", "((5!)!)!", "\\binom{10^{9}}{5\\cdot 10^{8}}", "(x+1)^{10^{9}}", "x^{10^{10}}",
    "\\sqrt{2}^{10^{10}}", "10^{10^{10}+\\pi}", "1e99999999", "8.7e123456789", "1" * 10_000,
    "0." + "3" * 5000, "{" * 5000, "}" * 5000, "\\frac{" * 2000, "(" * 3000 + "1" + ")" * 3000,
    "\\left(" * 1000, "\\text{" * 3000, "\\boxed{" * 1000, "$" * 10_000, "x" * 10_000,
    "\\sin" * 2000, "a_{" * 1000, "\\begin{pmatrix}" * 300, "|" * 1001, ",".join("1" * 5000),
    "\\sqrt[0]{2}", "1/0", "\\frac{0}{0}", "\\log_1 5", "(-1)!", "\\infty-\\infty",
    "eval('1')", "lambda: 1", "exec('print(1)')", "import os",
]


@pytest.mark.parametrize("verifier", VERIFIERS)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=[f"adv{i}" for i in range(len(ADVERSARIAL))])
def test_adversarial_input_is_fast_false_and_clean(text, verifier):
    before = verify_stats()
    for pred, gold in ((text, "1"), ("1", text), (text, text + "1"), (text + "0", text)):
        warm_up()
        start = time.monotonic()
        result = is_equivalent(pred, gold, timeout=2.0, verifier=verifier)
        assert time.monotonic() - start < 2.0 + SLACK
        assert result is False or "1" not in (pred, gold)  # text vs text+"1" may be equal
    assert is_equivalent(text, text, verifier=verifier) is True
    extract_answer(text)
    after = verify_stats()
    assert (after["timeouts"], after["errors"]) == (before["timeouts"], before["errors"])


def test_model_text_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    for pred, gold in ((code, "0"), ("0", code), (code, code.replace("touch", "rm"))):
        assert is_equivalent(pred, gold) is False
    assert not marker.exists()


def test_time_limit_from_a_thread():
    verify._restart_worker(_hang)
    try:
        before = verify_stats()
        out = {}

        def check():
            start = time.monotonic()
            out["result"] = is_equivalent("\\sqrt{2}", "\\sqrt{3}", timeout=1.0, verifier="strict")  # _hang is strict's
            out["seconds"] = time.monotonic() - start

        thread = threading.Thread(target=check)
        thread.start()
        thread.join(60)
        assert out["result"] is False
        assert out["seconds"] < 1.0 + SLACK
        assert verify_stats()["timeouts"] == before["timeouts"] + 1
        assert is_equivalent("3", "3") is True  # the cheap stages never wait on the worker
    finally:
        verify._restart_worker(None)
    assert is_equivalent("\\sqrt{8}", "2\\sqrt{2}") is True  # a fresh worker took over


def test_works_inside_a_daemonic_pool_process():
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(is_equivalent, ("\\sqrt{8}", "2\\sqrt{2}")) is True
        assert pool.apply(is_equivalent, ("\\sqrt{8}", "3\\sqrt{2}")) is False


def test_stats_and_bench():
    stats = verify_stats()
    assert {"checks", "timeouts", "errors"} <= stats.keys()
    result = bench_verifier([("1/2", "0.5"), ("\\sqrt{8}", "2\\sqrt2"), ("7", "7")])
    assert result["checks"] == 3 and result["equivalent"] == 3 and result["checks_per_s"] > 0
    assert verify_stats()["checks"] >= stats["checks"] + 3


# ---------------------------------------------------------------- property

LATEXISH = st.lists(st.sampled_from(list("0123456789+-*/^_{}()[],.=!|$%x e i") + [
    "\\frac", "\\sqrt", "\\pi", "\\cdot", "\\{", "\\}", "\\left(", "\\right)", "\\boxed{",
    "\\text{", "\\infty", "\\cup", "\\pm", "\\sin", "\\begin{pmatrix}", "\\\\", "&", "^{10^{10}}",
]), max_size=40).map("".join)


@pytest.mark.parametrize("verifier", VERIFIERS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), LATEXISH), st.one_of(st.text(max_size=30), LATEXISH))
def test_arbitrary_text_never_raises(verifier, text, other):
    warm_up()
    errors = verify_stats()["errors"]
    start = time.monotonic()
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert isinstance(is_equivalent(text, other, timeout=2.0, verifier=verifier), bool)
    assert isinstance(is_equivalent(other, text, timeout=2.0, verifier=verifier), bool)
    assert time.monotonic() - start < 2 * 2.0 + SLACK
    assert verify_stats()["errors"] == errors, verify_stats()["last_error"]


@pytest.mark.parametrize("pred, gold, same", [
    ("(12,9,13)", "(12, 9, 13)", True), ("(12, 9, 14)", "(12, 9, 13)", False), ("13", "(12, 9, 13)", False),
    ("(12, 9)", "(12, 9, 13)", False), ("(1.0, -2)", "(1, -2)", True), ("\\left(12, 9, 13\\right)", "(12, 9, 13)", True),
    ("(-3, -5, -2)", "(-3, -5, -2)", True), ("(3, 5, 2)", "(-3, -5, -2)", False)])
def test_tuples_of_plain_numbers_are_decided_without_the_worker(pred, gold, same):
    """The synthetic tasks' tuple answers: most checks of a ceiling evaluation; the cheap stage decides them, as the
    judge would."""
    from minipsn.verify import _cheap_verdict

    assert _cheap_verdict(pred, gold)[0] is same
    assert is_equivalent(pred, gold) is same
