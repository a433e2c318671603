"""minipsn.verify.extract_answers (issue 35): boxes read alike by both extractions; an unboxed completion read
by Math-Verify in the worker (the default) or by the kit's rules (reward.extract=kit); the kit's reading stands
in where Math-Verify finds nothing and a reading that contradicts "the answer is X" is no answer, each counted;
reward.unboxed_answer, reward.last_number and truncation hold; a hung extraction is a timeout, not a hang."""

import json
import time

import pytest

from minipsn import verify
from minipsn.evaluation.scoring import score_rows
from minipsn.rewards import correctness_rewards
from minipsn.run.config import RewardConfig
from minipsn.run.overrides import build_config
from minipsn.verify import extract_answers, verify_stats, warm_up

SLACK = 5.0  # seconds a request may take beyond its limit (killing the worker, a busy machine)

# (completion, Math-Verify's reading, the kit's reading): unboxed forms where they differ
UNBOXED = [
    ("Answer \\( (9+1) \\)", "(9+1)", "1"),
    ("Hence the sum equals \\[\\frac{11}{2}.\\]", "\\frac{11}{2}.", "2"),
    ("So $p - q$ is the sum.", "p - q", None),
    ("Thus $0 < t < 1$.", "0 < t < 1", "1"),
    ("We get $\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$.",
     "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "4"),
]


@pytest.fixture(scope="module", autouse=True)
def _worker():
    warm_up()


def _hang(text: str, last_number: bool) -> str:
    """Stands in for an extraction whose regexes never return (injected with verify._restart_worker)."""
    time.sleep(600)
    return "1"


def _counts(fn):
    before = verify_stats()
    out = fn()
    after = verify_stats()
    return out, {k: after[k] - before[k] for k in ("extracts", "extract_fallbacks", "extract_conflicts", "timeouts")}


def test_unboxed_latex_is_read_by_math_verify():
    from minipsn.verify import judge  # the worker's module, imported here to ask it directly

    texts = [t for t, _, _ in UNBOXED]
    assert extract_answers(texts) == [mv for _, mv, _ in UNBOXED]
    assert extract_answers(texts, "kit") == [kit for _, _, kit in UNBOXED]
    assert judge.extract("so the answer is $\\sin 2t$.") == "\\sin 2t"  # its unit stripping would drop t


def test_the_pick_is_math_verifys_own():
    """judge.extract keeps Math-Verify's LaTeX parser aside (only joined matches need it): the same picks as
    math_verify.parse with TRL's first-match settings, on MATH-500 solutions without their boxes."""
    import math_verify

    from minipsn.rewards.field import field_pairs
    from minipsn.verify import judge
    from tests.conftest import DATA

    rows = [json.loads(line) for line in (DATA / "math500_test.jsonl").read_text(encoding="utf-8").splitlines()[:60]]
    texts = [p["completion"] for p in field_pairs(rows) if p["form"].startswith("unboxed")] + [t for t, _, _ in UNBOXED]
    for last_number in (True, False):
        own = [math_verify.parse(t, [judge._LATEX, judge._EXPR[last_number]], extraction_mode="first_match",
                                 fallback_mode="first_match", parsing_timeout=None) for t in texts]
        assert [judge.extract(t, last_number) for t in texts] == [
            (o[-1].strip() if o and isinstance(o[-1], str) else "") or None for o in own]
    assert any(" and " in (judge.extract(t) or "") for t in texts)  # the joined case is among them


def test_boxes_are_read_alike_in_the_caller():
    texts = ["so $\\boxed{\\frac{1}{2}}$.", "\\boxed{2}, \\boxed{3}", "it is 12. So \\boxed{}", "\\fbox{7}",
             "$x = \\boxed 5$."]
    (answers, counts) = _counts(lambda: extract_answers(texts))
    assert answers == extract_answers(texts, "kit") == ["\\frac{1}{2}", "2, 3", None, "7", "5"]
    assert counts["extracts"] == 0  # no worker request for a completion that boxes


def test_the_kits_reading_stands_in_where_math_verify_finds_nothing():
    answers, counts = _counts(lambda: extract_answers(["The answer is Evelyn.", "No idea."]))
    assert answers == ["Evelyn", None]
    assert counts == {"extracts": 2, "extract_fallbacks": 1, "extract_conflicts": 0, "timeouts": 0}


def test_a_reading_that_contradicts_the_stated_answer_is_no_answer():
    texts = ["The answer is 6 because 2 + 3 = 5", "The answer is 5 because 2 + 3 = 5", "Answer: x = 5"]
    answers, counts = _counts(lambda: extract_answers(texts))
    assert answers == [None, "5", "5"]
    assert counts["extract_conflicts"] == 1
    assert extract_answers(texts[:1], "kit") == ["6"]  # the kit reads the stated answer


def test_unboxed_answer_and_last_number_hold():
    texts = ["The answer is 12.", "we get 7 then 12", "so $\\boxed{12}$"]
    answers, counts = _counts(lambda: extract_answers(texts, unboxed=False))
    assert answers == [None, None, "12"] and counts["extracts"] == 0
    for extract in ("math-verify", "kit"):
        assert extract_answers(texts, extract, last_number=False) == ["12", None, "12"]
        assert extract_answers(texts, extract) == ["12", "12", "12"]


def test_a_truncated_completion_is_not_read():
    texts, golds = ["The answer is 12.", "\\boxed{12}"], ["12", "12"]
    rewards, counts = _counts(lambda: correctness_rewards(texts, golds, [True, True], truncated_reward=-1.0))
    assert rewards == [-1.0, -1.0] and counts["extracts"] == 0
    assert correctness_rewards(texts, golds, [False, False]) == [1.0, 1.0]


def test_a_hung_extraction_is_a_timeout_and_no_answer():
    verify._restart_worker(_hang, stage="extract")
    try:
        start = time.monotonic()
        answers, counts = _counts(lambda: extract_answers(["The answer is 12.", "\\boxed{3}"], timeout=1.0))
        assert time.monotonic() - start < 1.0 + SLACK
        assert answers == ["12", "3"]  # no answer from the worker: the kit's reading stands in, and says so
        assert counts["timeouts"] == 1 and counts["extract_fallbacks"] == 1
    finally:
        verify._restart_worker(None)
    assert extract_answers(["so $x \\lt 3$."]) == ["x \\lt 3"]  # a fresh worker took over


def test_a_pool_of_workers_reads_the_same_answers():
    texts = [t for t, _, _ in UNBOXED] * 2
    assert extract_answers(texts, workers=2) == extract_answers(texts, workers=1)


def test_the_extraction_reaches_the_scorers():
    texts = ["Answer \\( (9+1) \\)", "\\boxed{10}"]
    assert score_rows(texts, [False, False], [3, 3], "10") == {
        "answers": ["(9+1)", "10"], "correct": [1, 1], "lengths": [3, 3], "truncated": [False, False], "gold": "10"}
    assert score_rows(texts, [False, False], [3, 3], "10", extract="kit")["correct"] == [0, 1]
    assert correctness_rewards(texts, ["10", "10"], [False, False], extract="kit") == [0.0, 1.0]


def test_bad_settings_fail_in_one_line():
    with pytest.raises(ValueError, match="unknown extract 'regex'; use math-verify, kit"):
        extract_answers(["1"], "regex")
    with pytest.raises(TypeError, match="expects str completions"):
        extract_answers([None])
    with pytest.raises(ValueError, match="reward.extract='regex' is not one of math-verify, kit"):
        RewardConfig(extract="regex")
    assert RewardConfig().extract == "math-verify"
    assert build_config(model="tiny", sets={"reward.extract": "kit"}).reward.extract == "kit"
