"""The mechanism metrics: hand-computed groups for every granularity and σ = 0, and the logged values of a run."""
import json

import pytest
import torch

from minipsn.method import mechanism
from minipsn.method.noise import row_seeds
from minipsn.training.metrics import draw_accuracy

# four groups of G = 4: all right | one right | two right | none right
CORRECT = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.float32)
ADV = torch.tensor([[0, 0, 0, 0], [-.5, 1.5, -.5, -.5], [1, -1, -1, 1], [0, 0, 0, 0]])


def seeds(granularity, draws=1):
    return torch.tensor(row_seeds(123, 4, 4, granularity, draws)).view(4, 4)


def test_signal_groups_are_the_groups_with_a_non_zero_advantage():
    assert mechanism.signal_groups(ADV).tolist() == [False, True, True, False]


def test_one_draw_per_group_counts_every_signal_group_with_a_right_row():
    for granularity in ("step", "group"):
        assert mechanism.noise_owed(CORRECT, ADV, seeds(granularity), 0.02).tolist() == [False, True, True, False]


def test_a_draw_per_row_counts_the_groups_with_one_right_row():
    assert mechanism.noise_owed(CORRECT, ADV, seeds("rollout"), 0.02).tolist() == [False, True, False, False]


def test_several_draws_count_the_groups_whose_right_rows_lie_in_one_draw():
    # D = 2: rows 0, 1 take draw 0 and rows 2, 3 draw 1; group 2's right rows (0 and 3) span both draws
    assert mechanism.noise_owed(CORRECT, ADV, seeds("step", 2), 0.02).tolist() == [False, True, False, False]
    right_in_one = torch.tensor([[0, 0, 1, 1]], dtype=torch.float32)
    assert mechanism.noise_owed(right_in_one, torch.tensor([[-1., -1, 1, 1]]), seeds("step", 2)[:1], 0.02).tolist() == [True]


def test_nothing_is_owed_to_the_noise_at_sigma_zero():
    for granularity in ("step", "group", "rollout"):
        assert not mechanism.noise_owed(CORRECT, ADV, seeds(granularity), 0.0).any()


def test_the_noise_kl_per_completion_is_the_sum_over_its_tokens():
    kl = torch.tensor([[0.1, 0.2, 0.5], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert mechanism.kl_per_completion(kl, mask).tolist() == pytest.approx([0.3, 0.3])
    assert mechanism.kl_per_completion(None, mask).tolist() == [0.0, 0.0]


def test_per_draw_accuracy_takes_each_draws_rows_of_every_group():
    correct = CORRECT.view(-1)  # draw 0: rows 0, 1 of each group (4 right of 8); draw 1: rows 2, 3 (3 right of 8)
    got = draw_accuracy(correct, 4, 2)
    assert got["explore/draw_acc"] == pytest.approx([4 / 8, 3 / 8]) and got["explore/draw_acc_range"] == pytest.approx(1 / 8)
    assert draw_accuracy(correct, 4, 1) == {}


def test_a_run_logs_the_mechanism_every_step(tmp_path):
    from minipsn.training.train import train
    from tests.test_train import tiny_cfg

    out = train(tiny_cfg(tmp_path / "psn", **{"noise.sigma": "0.05", "noise.control": "fixed", "noise.draws": "2"}))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["explore/signal_frac"] == pytest.approx(1 - r["reward/zero_adv_frac"])
        assert 0 <= r["explore/noise_owed_frac"] <= 1 and len(r["explore/draw_acc"]) == 2
        assert r["noise/kl_seq"] > r["noise/kl_noise"] > 0  # a completion holds many tokens
        # the per-draw accuracies average to the step's (each draw has the same number of rows)
        assert sum(r["explore/draw_acc"]) / 2 == pytest.approx(r["reward/accuracy"], abs=1e-6)
    grpo = train(tiny_cfg(tmp_path / "grpo", **{"noise.sigma": "0"}))
    for r in map(json.loads, (grpo / "metrics.jsonl").read_text().splitlines()):
        assert r["explore/noise_owed_frac"] == 0 and r["noise/kl_seq"] == 0 and "explore/draw_acc" not in r
