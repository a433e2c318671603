"""minipsn.rewards.field (issue 35): the completions built from MATH-500's solutions carry the verdicts their form
says, and the subset table in docs/verifier.md is what the code gives (python -m minipsn.rewards.field --problems 8)."""

import json
import re
import subprocess
import sys

import pytest

from minipsn.rewards.field import FORMS, audit, field_pairs, markdown
from minipsn.verify import boxed_contents, warm_up
from tests.conftest import DATA, REPO

ROWS = [json.loads(line) for line in (DATA / "math500_test.jsonl").read_text(encoding="utf-8").splitlines()]
DOC = REPO / "docs" / "verifier.md"


@pytest.fixture(scope="module", autouse=True)
def _worker():
    warm_up()


def test_each_form_is_built_as_its_verdict_says():
    pairs = field_pairs(ROWS[:30])
    by = {(p["id"], p["form"]): p for p in pairs}
    assert {p["form"] for p in pairs} == set(FORMS) and all(p["label"] is FORMS[p["form"]] for p in pairs)
    row = ROWS[3]  # math500-003: gold 9, the solution ends "... there are $\boxed{9}$ divisors of 196."
    text = lambda form: by[row["id"], form]["completion"]
    assert text("solution") == row["solution"] and [c for c in boxed_contents(text("changed")) if c][-1] == "10"
    assert "\\boxed{10}$ or $\\boxed{9}" in text("box-or") and "\\boxed{x = 10 = 9}" in text("chain")
    assert "\\boxed{\\{10, 9\\}}" in text("set") and text("correction").endswith("the answer is $\\boxed{9}$.")
    assert text("late-wrong").startswith(row["solution"]) and text("late-wrong").endswith("$\\boxed{10}$.")
    assert "\\boxed" not in text("unboxed") and "$9$ divisors" in text("unboxed")
    assert (row["id"], "unboxed-changed") not in by  # "divisors of 196" follows the box: a change may still be right
    notations = {re.search(r"\\lor|\\mid|\\quad|\\text\{ or \}", by[r["id"], "disjunction"]["completion"])[0]
                 for r in ROWS[:4]}
    assert notations == {"\\lor", "\\mid", "\\quad", "\\text{ or }"}


def test_the_docs_subset_table_is_what_the_code_gives():
    block = re.search(r"<!-- field-subset -->\n```\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, f"{DOC} has no field-subset block"
    assert markdown(audit(field_pairs(ROWS[:8]))) == block[1]


def test_the_script_fails_in_one_line():
    run = lambda *args: subprocess.run([sys.executable, "-m", "minipsn.rewards.field", *args], capture_output=True,
                                       text=True, cwd=REPO)
    for args, says in ((["--problems", "-1"], "--problems must be >= 0"), (["--data", "nowhere.jsonl"], "not found")):
        result = run(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and says in result.stderr
