"""minipsn.verify.is_equivalent_many: a batch's sympy checks on a pool of workers give the same
verdicts, in order, as one by one; a hung check holds up only itself; workers=1 is the serial path.
The hang is injected into the strict stage, so these checks ask the strict verifier (a hang inside
Math-Verify: test_verify_mathverify.py)."""

import time

import pytest

from minipsn import verify
from minipsn.rewards import correctness_reward, correctness_rewards
from minipsn.run.config import RewardConfig
from minipsn.verify import is_equivalent, is_equivalent_many, verify_stats, warm_up, worker

SLACK = 5.0  # seconds a check may take beyond its limit (killing the worker, a busy machine)
COUNTERS = ("checks", "timeouts", "errors", "worker_checks")
MIXED = [
    ("3", "3"),  # cheap: exact
    ("\\sqrt{8}", "2\\sqrt{2}"),  # sympy: equal
    ("\\hang", "1"),  # hangs in the worker: a timeout
    ("0.5", "\\frac12"),  # cheap: numbers
    ("10^{10^{10^{10}}}", "1"),  # refused by the size guard before sympy evaluates it
    ("(x+1)^2", "x^2+2x+1"),  # sympy: equal
    ("\\sqrt{8}", "3\\sqrt{2}"),  # sympy: unequal
    ("\\{1,2\\}", "\\{2,1\\}"),  # sympy: sets
]
EXPECTED = [True, True, False, True, False, True, False, True]


def _sympy_or_hang(pred: str, gold: str) -> bool:
    """The sympy stage, except that "\\hang" never returns (injected with verify._restart_worker)."""
    from minipsn.verify import symbolic

    if "hang" in pred:
        time.sleep(600)
    return symbolic.symbolic_equal(pred, gold)


@pytest.fixture(scope="module", autouse=True)
def _hanging_workers():
    verify._restart_worker(_sympy_or_hang)
    warm_up(2)
    yield
    verify._restart_worker(None)


def _run(fn):
    warm_up(2)  # a worker killed by the timeout is ready again before the next measurement
    before = verify_stats()
    verdicts = fn()
    after = verify_stats()
    return verdicts, {k: after[k] - before[k] for k in COUNTERS}


def test_workers_1_is_the_serial_path():
    serial = _run(lambda: [is_equivalent(p, g, timeout=1.0, verifier="strict") for p, g in MIXED])
    batch = _run(lambda: is_equivalent_many(MIXED, timeout=1.0, workers=1, verifier="strict"))
    assert serial == batch
    assert serial[0] == EXPECTED
    assert serial[1] == {"checks": 8, "timeouts": 1, "errors": 0, "worker_checks": 6}


def test_two_workers_give_the_same_verdicts_in_order():
    one = _run(lambda: is_equivalent_many(MIXED, timeout=1.0, workers=1, verifier="strict"))
    two = _run(lambda: is_equivalent_many(MIXED, timeout=1.0, workers=2, verifier="strict"))
    assert one == two
    assert two[0] == EXPECTED
    three = _run(lambda: is_equivalent_many(MIXED[::-1] * 3, timeout=1.0, workers=3, verifier="strict"))
    assert three[0] == EXPECTED[::-1] * 3


def test_a_hung_check_holds_up_only_itself():
    pairs = [("\\hang", "1")] + [(f"\\sqrt{{{4 * k * k}}}", f"{2 * k}") for k in range(2, 14)]
    warm_up(2)
    start = time.monotonic()
    verdicts = is_equivalent_many(pairs, timeout=1.0, workers=2, verifier="strict")
    assert time.monotonic() - start < 1.0 + SLACK
    assert verdicts == [False] + [True] * 12
    assert not all(s.worker.ready for s in worker._slots(2))  # nobody waited on the replacement


def test_reward_batch_equals_one_by_one():
    texts = ["so \\boxed{2\\sqrt{2}}", "\\boxed{3}", "no answer here", "\\boxed{(x+1)^2}", "\\boxed{7}"]
    answers = ["\\sqrt{8}", "3", "1", "x^2+2x+1", "7"]
    cut = [False, False, False, False, True]
    one = [correctness_reward(t, a, c, -1.0, 1.0) for t, a, c in zip(texts, answers, cut)]
    assert one == [1.0, 1.0, 0.0, 1.0, -1.0]
    for workers in (1, 2):
        assert correctness_rewards(texts, answers, cut, -1.0, 1.0, workers=workers) == one


def test_workers_are_validated():
    with pytest.raises(ValueError, match="reward.verify_workers must be >= 1"):
        RewardConfig(verify_workers=0)
    with pytest.raises(ValueError, match="workers >= 1"):
        is_equivalent_many([("1", "2")], workers=0)
    assert RewardConfig().verify_workers == 1
