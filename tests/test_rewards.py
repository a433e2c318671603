"""minipsn.rewards: hand-computed rewards for correctness, truncation, format and their sum."""

import pytest

from minipsn.rewards import build_reward_fn, correctness_reward, format_reward

GOOD = "We get $x = \\frac{1}{2}$, so the answer is $\\boxed{\\frac12}$."
WRONG = "So the answer is $\\boxed{2}$."
NO_BOX = "Adding up, 3 + 4 = 7 apples."
TWO_BOXES = "First $\\boxed{1}$, then $\\boxed{0.5}$."


@pytest.mark.parametrize("completion,answer,expected", [
    (GOOD, "0.5", 1.0),
    (GOOD, "\\dfrac{1}{2}", 1.0),
    (WRONG, "0.5", 0.0),
    (NO_BOX, "7", 1.0),  # last number
    (NO_BOX, "4", 0.0),
    (TWO_BOXES, "1/2", 1.0),  # the last box counts
    ("#### 1,234", "1234", 1.0),
    ("I don't know.", "5", 0.0),
    ("\\boxed{}", "0", 0.0),  # an empty box answers nothing
])
def test_correctness_reward(completion, answer, expected):
    assert correctness_reward(completion, answer, truncated=False) == expected


def test_correctness_without_last_number():
    assert correctness_reward(NO_BOX, "7", False, last_number=False) == 0.0


def test_truncated_completions_get_truncated_reward():
    assert correctness_reward(GOOD, "0.5", truncated=True) == 0.0
    assert correctness_reward(GOOD, "0.5", truncated=True, truncated_reward=-1.0) == -1.0
    assert correctness_reward(WRONG, "0.5", truncated=True, truncated_reward=0.25) == 0.25


@pytest.mark.parametrize("completion,expected", [
    (GOOD, 1.0),
    (WRONG, 1.0),
    (NO_BOX, 0.0),
    (TWO_BOXES, 0.0),
    ("\\boxed{}", 0.0),
    ("\\boxed{  }", 0.0),
    ("\\boxed{3", 0.0),
    ("\\boxed 3", 0.0),
    ("\\fbox{3}", 1.0),
    ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", 1.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


def test_build_reward_fn_combines_correctness_and_format():
    records = [{"answer": "0.5"}, {"answer": "0.5"}, {"answer": "7"}, {"answer": "0.5"}]
    completions = [GOOD, WRONG, NO_BOX, GOOD]
    truncated = [False, False, False, True]
    assert build_reward_fn()(completions, records, truncated) == [1.0, 0.0, 1.0, 0.0]
    fn = build_reward_fn(format_weight=0.5, truncated_reward=-1.0)
    # correct+boxed, wrong+boxed, correct unboxed, truncated (its box still earns format credit)
    assert fn(completions, records, truncated) == [1.5, 0.5, 1.0, -0.5]
    assert build_reward_fn(last_number=False)(completions, records, truncated)[2] == 0.0


def test_reward_fn_checks_its_inputs():
    fn = build_reward_fn()
    with pytest.raises(ValueError, match="must match"):
        fn([GOOD, WRONG], [{"answer": "1"}], [False, False])
    with pytest.raises(KeyError, match="answer"):
        fn([GOOD], [{"final": "1"}], [False])


def test_reward_unboxed_answer_false_insists_on_a_box():
    from minipsn.evaluation.scoring import score_rows
    from minipsn.rewards import build_reward_fn, correctness_reward
    from minipsn.run.overrides import build_config

    unboxed = ["The answer is 5.", "#### 5", "so 2 + 3 = 5"]
    for text in unboxed:
        assert correctness_reward(text, "5", False) == 1.0  # the default reads them
        assert correctness_reward(text, "5", False, unboxed=False) == 0.0
    assert correctness_reward("so \\boxed{5}", "5", False, unboxed=False) == 1.0
    strict = build_reward_fn(unboxed=False)
    assert strict(["The answer is 5.", "\\boxed{5}"], [{"answer": "5"}] * 2, [False, False]) == [0.0, 1.0]
    rows = score_rows(["The answer is 5.", "\\boxed{5}"], [False, False], [4, 4], "5", unboxed=False)
    assert rows["correct"] == [0, 1] and rows["answers"] == [None, "5"]
    assert build_config(model="tiny", sets={"reward.unboxed_answer": "false"}).reward.unboxed_answer is False


def test_soft_overlong_penalty_at_the_edges_of_its_window():
    import torch

    from minipsn.rewards import overlong_penalty

    # limit 100, window 20: 0 up to 80 tokens, then −1/20 per token, −1 at 100
    lengths = torch.tensor([1.0, 80.0, 81.0, 90.0, 99.0, 100.0])
    got = overlong_penalty(lengths, 100, 20)
    assert torch.allclose(got, torch.tensor([0.0, 0.0, -0.05, -0.5, -0.95, -1.0]))
    assert overlong_penalty(80, 100, 20) == 0.0 and overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(100, 100, 100) == -1.0 and overlong_penalty(0, 100, 100) == 0.0
    with pytest.raises(ValueError, match="window"):
        overlong_penalty(lengths, 100, 101)
