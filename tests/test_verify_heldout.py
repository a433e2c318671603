"""The held-out suite of forms (tests/data/verify_heldout.jsonl, issue 35): whole completions with known verdicts
in the forms the default verifier used to miss (sets from several boxes, thousands written 11,\\! 111, answers in
LaTeX without a box, relations, labelled answers), half of them wrong variants, written to the issue's list of
forms; every scorer agrees on >= 95 % with no false positive, and each known miss is listed with its reason."""

import collections
import json
from pathlib import Path

import pytest

from minipsn.rewards import correctness_rewards
from minipsn.verify import warm_up

TABLE = Path(__file__).resolve().parent / "data" / "verify_heldout.jsonl"
ROWS = [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines() if line.strip()]
KINDS = {"several_boxes", "thousands", "unboxed_latex", "relations", "labelled"}
LABELS = "a label that is not a product of letters (f(2), \\angle, \\tan, \\overline) is not dropped by strict"
KNOWN = {  # (verifier, extract) -> {completion: why it is missed}
    ("math-verify", "math-verify"): {},
    **{(v, "math-verify"): {"\\boxed{f(2) = 7}": LABELS, "\\boxed{m\\angle A = 30^\\circ}": LABELS,
                            "\\boxed{\\tan \\theta = \\frac{3}{4}}": LABELS, "\\boxed{\\overline{AD} = 6}": LABELS}
       for v in ("strict", "both")},
    ("math-verify", "kit"): {
        "Answer \\( (9+1) \\)": "the kit reads the last number of unboxed text without an 'is' or 'answer is'",
        "Hence the sum equals \\[\\frac{11}{2}.\\]": "as above: display math is not a closing sentence",
        "So $p - q$ is the sum.": "the math comes before 'is', not after",
        "Thus $0 < t < 1$.": "the last number of unboxed text"},
}


@pytest.fixture(scope="module", autouse=True)
def _worker():
    warm_up()


def test_suite_covers_every_form_right_and_wrong():
    kinds = collections.defaultdict(set)
    for row in ROWS:
        assert set(row) == {"kind", "completion", "gold", "label"} and isinstance(row["label"], bool)
        kinds[row["kind"]].add(row["label"])
    assert set(kinds) == KINDS and all(labels == {True, False} for labels in kinds.values())
    assert len(ROWS) >= 140 and abs(sum(r["label"] for r in ROWS) - len(ROWS) / 2) <= 2


@pytest.mark.parametrize("verifier,extract", sorted(KNOWN))
def test_each_scorer_agrees_on_95_percent_with_no_false_positive(verifier, extract):
    got = correctness_rewards([r["completion"] for r in ROWS], [r["gold"] for r in ROWS], [False] * len(ROWS),
                              verifier=verifier, extract=extract)
    agree, missed = collections.Counter(), []
    for row, reward in zip(ROWS, got):
        assert not (reward and not row["label"]), f"false positive: {row}"
        agree[row["kind"]] += (reward == 1.0) == row["label"]
        if (reward == 1.0) != row["label"]:
            missed.append(row["completion"])
    for kind in sorted(KINDS):
        print(f"{kind:16s} {agree[kind]:3d}/{sum(r['kind'] == kind for r in ROWS):3d}")
    assert sorted(missed) == sorted(KNOWN[verifier, extract])
    assert sum(agree.values()) >= 0.95 * len(ROWS)
