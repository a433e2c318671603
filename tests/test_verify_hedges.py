"""No hedge pays (issue 35): a final answer that states several different values is wrong unless the gold is
those values, under every verifier and both extractions; a later box that corrects an earlier one is not a
hedge. Each form is checked as a whole completion (rewards.correctness_reward) and, where it is an answer,
with is_equivalent; the Math-Verify readings the guards exist for are pinned as well."""

import pytest

from minipsn.rewards import correctness_reward
from minipsn.verify import EXTRACTS, VERIFIERS, extract_answers, is_equivalent, normalise, warm_up

SCORERS = [(v, e) for v in VERIFIERS for e in EXTRACTS]

# (completion, the values it offers as its final answer); every one is wrong for a gold of one of the values
HEDGES = [
    ("So $\\boxed{x = 14 = 13}$.", "14, 13"),  # an equation chain whose sides differ
    ("So $\\boxed{x = 5+5 = 13}$.", "10, 13"),
    ("so $x = 14 = 13$.", "14, 13"),  # the same, unboxed: Math-Verify's extraction reads it
    ("\\boxed{x = 12 \\mid x = 13}", "12, 13"),  # disjunctions, in every notation
    ("\\boxed{x = 12 \\quad x = 13}", "12, 13"),
    ("\\boxed{x = 12 \\qquad x = 13}", "12, 13"),
    ("\\boxed{x = 12 \\; x = 13}", "12, 13"),
    ("\\boxed{x = 12 x = 13}", "12, 13"),
    ("\\boxed{12 \\lor 13}", "12, 13"),
    ("\\boxed{12 \\vee 13}", "12, 13"),
    ("\\boxed{x = 12 \\lor x = 13}", "12, 13"),
    ("\\boxed{12 \\text{ or } 13}", "12, 13"),
    ("\\boxed{x = 12 \\text{ or } x = 13}", "12, 13"),
    ("so $12 \\lor 13$.", "12, 13"),
    ("The answer is $x = 12 \\mid x = 13$.", "12, 13"),
    ("\\boxed{12} or \\boxed{13}", "12, 13"),  # boxes offered as alternatives
    ("$\\boxed{12}$ or $\\boxed{13}$", "12, 13"),
    ("\\boxed{12}, \\boxed{13}", "12, 13"),
    ("\\boxed{12} \\quad \\boxed{13}", "12, 13"),
    ("$\\boxed{12} \\lor \\boxed{13}$", "12, 13"),
    ("$x = \\boxed{12}$ or $x = \\boxed{13}$", "12, 13"),
    ("\\boxed{12} \\text{ or } \\boxed{13}", "12, 13"),
    ("\\boxed{\\{12, 13\\}}", "12, 13"),  # a set where the gold is one element
    ("\\boxed{12, 13}", "12, 13"),
    ("This is 12 or 13.", "12, 13"),  # alternatives in prose
    ("The answer is 12 or 13, depending on the order.", "12, 13"),
    ("so $12$ or $13$.", "12, 13"),
    ("The answer is 12 because 11 + 2 = 13", "13"),  # Math-Verify reads the 13 after "=": the stated 12 refuses it
]
TUPLES = "\\boxed{x = (1, 2, 3) \\lor x = (12, 9, 13)}"


@pytest.fixture(scope="module", autouse=True)
def _worker():
    warm_up()


@pytest.mark.parametrize("verifier,extract", SCORERS)
@pytest.mark.parametrize("completion,values", HEDGES, ids=[f"hedge{i}" for i in range(len(HEDGES))])
def test_no_hedge_pays(completion, values, verifier, extract):
    for gold in values.split(", "):
        assert correctness_reward(completion, gold, False, verifier=verifier, extract=extract) == 0.0, gold


@pytest.mark.parametrize("verifier,extract", SCORERS)
def test_a_disjunction_of_tuples_pays_for_neither(verifier, extract):
    for gold in ("(12, 9, 13)", "(1, 2, 3)", "x = (12, 9, 13)"):
        assert correctness_reward(TUPLES, gold, False, verifier=verifier, extract=extract) == 0.0


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_several_values_are_right_when_the_gold_is_those_values(verifier):
    alternatives = [c for c, values in HEDGES if values == "12, 13" and "because" not in c]
    for completion in alternatives:
        for gold in ("12, 13", "13, 12", "\\{12, 13\\}", "12 \\text{ or } 13"):
            assert correctness_reward(completion, gold, False, verifier=verifier) == 1.0, (completion, gold)
        assert correctness_reward(completion, "12, 13, 14", False, verifier=verifier) == 0.0


@pytest.mark.parametrize("verifier,extract", SCORERS)
def test_a_later_box_corrects_an_earlier_one(verifier, extract):
    traces = ["So \\boxed{12}. Wait, recount the cases: \\boxed{13}",
              "The answer is $\\boxed{12}$.\n\nHmm, that misses one case. Counting again gives $\\boxed{13}$.",
              "First \\boxed{12}, finally \\boxed{13}."]
    for text in traces:
        assert correctness_reward(text, "13", False, verifier=verifier, extract=extract) == 1.0
        assert correctness_reward(text, "12", False, verifier=verifier, extract=extract) == 0.0
        assert correctness_reward(text, "12, 13", False, verifier=verifier, extract=extract) == 0.0


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_one_value_said_twice_is_no_hedge(verifier):
    for text, gold in (("\\boxed{\\frac{1}{2}} or \\boxed{0.5}", "\\frac12"), ("$\\boxed{28}$ or $\\boxed{28_9}$", "28"),
                       ("$\\boxed{15\\frac{39}{40}},$ or $\\boxed{\\frac{639}{40}}$", "\\frac{639}{40}"),
                       ("\\boxed{x = 5+8 = 13}", "13"), ("\\boxed{x = 5+5+1 = 11}", "11")):
        assert correctness_reward(text, gold, False, verifier=verifier) == 1.0, text
    assert correctness_reward("\\boxed{\\frac{1}{2}} or \\boxed{0.6}", "\\frac12", False, verifier=verifier) == 0.0


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_hedged_answers_are_wrong_to_is_equivalent(verifier):
    for answer, gold in (("x = 14 = 13", "13"), ("14 = 13 = 13", "13"), ("x = p - q = 13", "13"),
                         ("x = 5+5 = 13", "x = 13"), ("x = 12 \\mid x = 13", "13"), ("x = 12 \\quad x = 13", "x = 13"),
                         ("12 \\lor 13", "13"), ("12 \\vee 13", "12"), ("x=12 \\text{ or } x=13", "13"), ("\\{12, 13\\}", "13")):
        assert is_equivalent(answer, gold, verifier=verifier) is False, answer
        assert is_equivalent(gold, answer, verifier=verifier) is False, answer
    assert is_equivalent("12 \\lor 13", "12 \\text{ or } 13", verifier=verifier) is True
    assert is_equivalent("x = 12 \\mid x = 13", "\\{13, 12\\}", verifier=verifier) is True


def test_math_verify_alone_would_pay_the_hedges_the_guards_refuse():
    """Math-Verify 0.9.0's own verdicts, that judge._several and extract_answers' statement check refuse."""
    import math_verify

    from minipsn.verify import judge

    for answer in ("x = 14 = 13", "x = 5+5 = 13", "x = 12 \\mid x = 13", "x = 12 \\quad x = 13", "12 \\lor 13"):
        gold, pred = (math_verify.parse(f"${a}$", parsing_timeout=None) for a in ("13", answer))
        assert math_verify.verify(gold, pred, timeout_seconds=None) is True, answer
        assert is_equivalent(answer, "13", verifier="math-verify") is False, answer
    assert judge.extract("The answer is 12 because 11 + 2 = 13") == "13"
    assert extract_answers(["The answer is 12 because 11 + 2 = 13"]) == [None]


def test_spellings_that_become_several_values():
    assert normalise("x = 12 \\quad x = 13") == normalise("x = 12 \\mid x = 13") == "x=12,x=13"
    assert normalise("12 \\lor 13") == normalise("12 \\vee 13") == "12,13"
    assert normalise("-2 \\le x \\le 7") == "-2≤x≤7"  # one statement: a chain, not two
    assert normalise("x \\ge 2 \\quad y \\le 3") == "x≥2,y≤3"
    assert normalise("11,\\! 111,\\! 111,\\! 100") == "11111111100"  # thousands, also with a space after \!


def test_several_boxes_are_one_answer_and_a_word_ends_it():
    texts = ["\\boxed{12} or \\boxed{13}", "$x = \\boxed{-2}$ or $x = \\boxed{1}$",
             "\\boxed{1} \\text{ and } \\boxed{2}", "\\boxed{12}. Wait: \\boxed{13}", "\\boxed{12} then \\boxed{13}"]
    assert extract_answers(texts) == extract_answers(texts, "kit") == ["12, 13", "-2, 1", "1, 2", "13", "13"]
