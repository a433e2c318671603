"""A step's numbers have one source. The row and group metrics come from sums and counts over the processes
(metrics.py), and on one process they are bit for bit torch's mean and std of the step's tensors, and what the
step's own samples give; a run twice is the same run, on one process and on two (tests/same_run.py compares
run folders exactly: every metric but perf/*, samples.jsonl, the adapter's bits)."""
import json
import os
from types import SimpleNamespace

import pytest
import torch

from minipsn.training import metrics
from tests.conftest import REPO
from tests.same_run import VARIANTS, differences, train


def fake_rollouts(lengths, truncated, certainty):
    T = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    return SimpleNamespace(completion_mask=mask, truncated=torch.tensor(truncated), certainty=certainty,
                           n_tokens=int(mask.sum()))


def cases():
    """Rewards that are exact in float32 and ones that are not: 0/1, a format bonus, DAPO's penalties, constant
    non-dyadic groups (where a one-pass Σx² − (Σx)²/n formula breaks down), N that is not a power of 2."""
    gen = torch.Generator().manual_seed(0)
    for P, G in ((1, 2), (3, 4), (6, 8), (8, 8), (5, 7)):
        N = P * G
        yield P, G, torch.randint(0, 2, (N,), generator=gen).float()
        yield P, G, torch.randint(0, 2, (N,), generator=gen).float() * 1.1 + 0.1
        yield P, G, -torch.rand(N, generator=gen) * torch.randint(0, 2, (N,), generator=gen)
        yield P, G, torch.full((N,), 0.1)
        yield P, G, torch.randn(N, generator=gen) * 3 + 1


@pytest.mark.parametrize("P,G,rewards", list(cases()))
def test_the_step_means_are_torchs_bit_for_bit_on_one_process(P, G, rewards):
    from minipsn.method.algo import group_advantages

    gen = torch.Generator().manual_seed(P * G)
    N = P * G
    correct = (rewards > 0.5).float()
    adv = group_advantages(rewards.view(P, G))
    lengths = torch.randint(1, 40, (N,), generator=gen).tolist()
    truncated = [n == 39 for n in lengths]
    certainty, diversity = torch.rand(N, generator=gen) * 9, torch.rand(P, generator=gen) / 7
    got = metrics.step_means(rewards, correct, adv, fake_rollouts(lengths, truncated, certainty), diversity,
                             {"timeouts": 2, "errors": 0, "disagree": 1})
    lengths = torch.tensor(lengths).float()
    want = {"reward/mean": rewards.mean().item(), "reward/std": rewards.std().item(),
            "reward/accuracy": correct.mean().item(), "verify/timeouts": 2, "verify/errors": 0, "verify/disagree": 1,
            "reward/zero_adv_frac": (adv == 0).all(1).float().mean().item(),
            "completion/len_mean": lengths.mean().item(), "completion/truncated_frac": torch.tensor(truncated).float().mean().item()}
    assert got.metrics == want and list(got.metrics) == list(want)  # == on floats: bit for bit
    assert got.signals == {"diversity": diversity.mean().item(), "certainty": certainty.mean().item()}
    assert got.tokens == int(lengths.sum())


def test_a_steps_metrics_are_what_its_samples_give(tmp_path):
    """Every row written to samples.jsonl (run.log_samples = N); the step's metrics, recomputed from them with
    torch, are the logged ones exactly. Soft overlong penalties make the rewards non-dyadic, N = 12."""
    from minipsn.run.overrides import build_config
    from minipsn.training.train import Trainer

    P, G = 3, 4
    cfg = build_config(model="tiny", sets={"run.out": str(tmp_path / "r"), "grpo.prompts_per_step": str(P),
                                           "grpo.group_size": str(G), "rollout.max_new_tokens": "24",
                                           "reward.overlong": "soft", "reward.overlong_window": "20",
                                           "run.log_samples": str(P * G), "eval.every": "0"})
    tr = Trainer(cfg)
    for step in range(2):
        m = tr.step(step)
        rows = tr.samples
        assert [r["row"] for r in rows] == list(range(P * G))
        rewards = torch.tensor([r["reward"] for r in rows])  # float(float32): exact
        adv = torch.tensor([r["advantage"] for r in rows]).view(P, G)
        assert m["reward/mean"] == rewards.mean().item() and m["reward/std"] == rewards.std().item()
        assert m["reward/accuracy"] == torch.tensor([float(r["correct"]) for r in rows]).mean().item()
        assert m["reward/zero_adv_frac"] == (adv == 0).all(1).float().mean().item()
        assert m["completion/truncated_frac"] == torch.tensor([float(r["truncated"]) for r in rows]).mean().item()
    assert json.loads(json.dumps(m)) == m


SMALL = ["--model", "tiny", "--steps", "2", "--set", "grpo.prompts_per_step=2", "--set", "grpo.group_size=4",
         "--set", "rollout.max_new_tokens=24", "--set", "eval.every=1", "--set", "eval.problems=2",
         "--set", "eval.n=2", "--set", "run.log_samples=8"]


@pytest.mark.slow
def test_a_run_twice_is_the_same_run(tmp_path):
    a, b = (train(REPO, tmp_path / name, 1, SMALL) for name in ("a", "b"))
    assert differences(a, b) == []


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="4 runs of 6 steps, two under torchrun: MINIPSN_SLOW=1")
@pytest.mark.parametrize("procs", [1, 2])
def test_the_equality_check_run_twice_is_the_same_run(tmp_path, procs):
    """The before/after check of a refactor (docs/RESULTS.md) means something only if a run repeats exactly."""
    a, b = (train(REPO, tmp_path / name, procs, VARIANTS["a"]) for name in ("a", "b"))
    assert differences(a, b) == []
