"""The labelled table of answer pairs (tests/data/verify_pairs.jsonl, issue 14): every label agrees.

Each row is {kind, pred, gold, label[, completion]}; gold is a real MATH-500 / OlympiadBench /
Minerva (or MATH train, for ratios and times) answer, pred a way a model writes it. With
completion=true, pred is a whole completion and goes through extract_answers() first. Every
verifier (math-verify, strict, both) is held to the table; pairs a verifier is known not to handle are
listed in KNOWN with the reason; nothing is skipped silently.
"""

import collections
import json
from pathlib import Path

import pytest

from minipsn.verify import VERIFIERS, extract_answer, extract_answers, is_equivalent, warm_up

TABLE = Path(__file__).resolve().parent / "data" / "verify_pairs.jsonl"
ROWS = [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines() if line.strip()]
KINDS = {"sets", "tuples", "labelled", "inequalities", "matrices", "equations", "decimal_commas", "numbers",
         "latex", "intervals_fractions_units", "ratios_times", "several_answers", "prose", "percent_currency"}
PROSE = {  # (pred, gold) -> why the verifier disagrees with the label
    ("So she ends up facing east.", "\\text{east}"):
        "a word answer in prose is not read: unboxed prose yields only inline math or a number after "
        "is/are/equals, or what follows 'the answer is'",
    ("She is facing east.", "\\text{east}"): "as above: 'is facing east' names no math or number",
}
STRICT = {  # forms only Math-Verify reads (issue 25)
    ("|AB|=1", "1"): "a label inside |...| is not dropped (a product of letters, AB=4,CD=5, is: issue 35)",
    ("0<f(x)<1", "(0,1)"): "a chain bounds one variable only, and f(x) reads as f·x",
    ("\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"):
        "doubled backslashes are not LaTeX to the strict reader",
}
KNOWN = {"math-verify": PROSE, "strict": {**PROSE, **STRICT}, "both": {**PROSE, **STRICT}}
GUARDS = [  # the false positives of other verifiers (issue 14): each must stay False both ways
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}"), ("1}}}}}", "1"), ("1-1/e", "1+1/e"), ("1-\\frac{1}{e}", "1+\\frac1e"),
    ("1.5e3", "1.5\\cdot e\\cdot 3"), ("1.5e3", "1.5"), ("50", "0.5"), ("32, 349", "32349"),
]


@pytest.fixture(scope="module", autouse=True)
def _worker():
    warm_up()


def _verdict(row: dict, verifier: str) -> bool:
    pred = extract_answers([row["pred"]])[0] if row.get("completion") else row["pred"]
    return pred is not None and is_equivalent(pred, row["gold"], verifier=verifier)


def test_table_is_big_balanced_and_covers_every_kind():
    assert len(ROWS) >= 200
    by_kind = collections.defaultdict(set)
    for row in ROWS:
        assert set(row) <= {"kind", "pred", "gold", "label", "completion"} and isinstance(row["label"], bool)
        by_kind[row["kind"]].add(row["label"])
    assert set(by_kind) == KINDS
    assert all(labels == {True, False} for labels in by_kind.values()), by_kind  # equal and unequal in each
    assert set().union(*KNOWN.values()) <= {(r["pred"], r["gold"]) for r in ROWS}


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_every_label_agrees_per_kind(verifier):
    agree, total, wrong = collections.Counter(), collections.Counter(), []
    for row in ROWS:
        total[row["kind"]] += 1
        if _verdict(row, verifier) == row["label"]:
            agree[row["kind"]] += 1
        elif (row["pred"], row["gold"]) not in KNOWN[verifier]:
            wrong.append((row["kind"], row["pred"], row["gold"], row["label"]))
    for kind in sorted(total):
        print(f"{kind:28s} {agree[kind]:3d}/{total[kind]:3d}")
    print(f"{'all':28s} {sum(agree.values()):3d}/{len(ROWS):3d} ({len(KNOWN[verifier])} known unsupported)")
    assert wrong == []
    assert sum(agree.values()) == len(ROWS) - len(KNOWN[verifier])  # a KNOWN pair that starts to agree leaves KNOWN


@pytest.mark.parametrize("verifier", VERIFIERS)
@pytest.mark.parametrize("pred,gold", GUARDS)
def test_false_positive_guards(pred, gold, verifier):
    assert is_equivalent(pred, gold, verifier=verifier) is False
    assert is_equivalent(gold, pred, verifier=verifier) is False


def test_prose_answers_follow_the_unboxed_flag():
    text = "The largest $n$ is 34."
    assert extract_answer(text) == "34" and extract_answer(text, last_number=False) is None  # a bare number
    assert extract_answer("The largest $n$ is $34$.", last_number=False) == "34"
    assert extract_answer(text, unboxed=False) is None  # reward.unboxed_answer=false insists on \boxed{}
    assert extract_answer("So the probability is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert extract_answer("The total is 12 apples.") == "12"
    assert extract_answer("This is 5 or 6.") == "6"  # not a closing "is X": the last number
    assert extract_answer("It is clear.\nWe stop.") is None
