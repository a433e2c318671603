"""The math of algo.py on hand-computed numbers and the invariants that break silently in GRPO stacks."""
import itertools
import math

import pytest
import torch

from minipsn.method import algo


def test_group_advantages_hand_numbers():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = algo.group_advantages(rewards)
    # mean .5, population std .5 → ±1; the all-equal group is exactly 0
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    assert torch.equal(adv[1], torch.zeros(4))
    unscaled = algo.group_advantages(rewards, scale=False)
    assert torch.equal(unscaled[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # non-representable equal rewards still give exact zeros (no 0/0, no rounding residue)
    assert torch.equal(algo.group_advantages(torch.full((1, 8), 0.1)), torch.zeros(1, 8))


def test_group_advantages_rejects_flat_input():
    with pytest.raises(ValueError, match=r"\(P, G\)"):
        algo.group_advantages(torch.ones(8))


def test_tis_weights_hand_numbers_and_cap():
    learner = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    sampler = torch.log(torch.tensor([[0.25, 0.2, 0.01]]))
    w, stats = algo.tis_weights(learner, sampler, cap=10.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 10.0]]), atol=1e-5)  # 0.9/0.01 = 90 → capped at C
    assert not w.requires_grad
    assert stats["tis/clip_frac"] == pytest.approx(1 / 3)


def test_tis_weights_exactly_one_when_policies_agree():
    logp = torch.randn(4, 7) - 3
    w, stats = algo.tis_weights(logp, logp.clone(), cap=10.0)
    assert torch.equal(w, torch.ones_like(w))
    assert stats["tis/clip_frac"] == 0.0 and stats["tis/ratio_max"] == 1.0
    assert algo.effective_sample_size(stats["tis/weight_mean"], stats["tis/weight_sq_mean"]) == 1.0


def test_tis_ess_and_max_ratio():
    learner = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    sampler = torch.log(torch.tensor([[0.5, 0.5, 0.25, 0.05]]))  # ratios 1, 1, 2, 10
    w, stats = algo.tis_weights(learner, sampler, cap=4.0, mask=torch.tensor([[1, 1, 1, 0]]))
    assert stats["tis/ratio_max"] == pytest.approx(2.0)  # the masked token's ratio 10 does not count
    # Kish: (1 + 1 + 2)² / (3 · (1 + 1 + 4)) = 16 / 18
    assert algo.effective_sample_size(stats["tis/weight_mean"], stats["tis/weight_sq_mean"]) == pytest.approx(16 / 18)


def test_tis_weights_do_not_overflow_and_are_detached():
    learner = torch.tensor([[0.0, -1000.0]], requires_grad=True)
    sampler = torch.tensor([[-1000.0, 0.0]])
    w, _ = algo.tis_weights(learner, sampler, cap=10.0)
    assert torch.isfinite(w).all() and w[0, 0] == 10.0 and w[0, 1] >= 0
    with pytest.raises(ValueError, match="cap"):
        algo.tis_weights(learner, sampler, cap=0.0)


def test_policy_loss_hand_numbers():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.5]]))  # ratios 2.0 and 1.0
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 2)
    loss, _ = algo.policy_loss(logp, old, adv, mask, None, clip_eps=0.2)
    # ratio 2 with A > 0 is clipped to 1.2; ratio 1 is 1
    assert torch.allclose(loss, torch.tensor([[-1.2, -1.0]]))
    w = torch.tensor([[0.5, 3.0]])
    loss_w, _ = algo.policy_loss(logp, old, adv, mask, w, clip_eps=0.2)
    assert torch.allclose(loss_w, torch.tensor([[-0.6, -3.0]]))
    neg, _ = algo.policy_loss(logp, old, -adv, mask, None, clip_eps=0.2)
    assert torch.allclose(neg, torch.tensor([[2.0, 1.0]]))  # A < 0: min picks the unclipped 2·(−1)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean", "dr-grpo"])
def test_aggregate_is_micro_batch_invariant(agg):
    torch.manual_seed(0)
    token_loss = torch.randn(8, 5)
    mask = (torch.rand(8, 5) > 0.3).float()
    mask[:, 0] = 1
    n_tokens = int(mask.sum())
    whole = algo.aggregate(token_loss, mask, agg, n_tokens, 8, 5)
    parts = sum(algo.aggregate(token_loss[i:i + 2], mask[i:i + 2], agg, n_tokens, 8, 5) for i in range(0, 8, 2))
    assert torch.allclose(whole, parts, atol=1e-6)
    if agg == "token-mean":
        assert torch.allclose(whole, (token_loss * mask).sum() / mask.sum())
    with pytest.raises(ValueError, match="aggregation"):
        algo.aggregate(token_loss, mask, "mean", n_tokens, 8, 5)


def test_token_logprobs_chunked_equals_naive_and_grads_match():
    torch.manual_seed(0)
    hidden = torch.randn(3, 10, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 10))
    logp = algo.token_logprobs(hidden, weight, targets, temperature=0.7, chunk=3)
    logits = (hidden @ weight.T) / 0.7
    naive = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(logp, naive, atol=1e-5)
    g1 = torch.autograd.grad(logp.sum(), (hidden, weight))
    g2 = torch.autograd.grad(naive.sum(), (hidden, weight))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-4)


def test_self_certainty_equals_direct_kl_from_uniform():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    p = torch.softmax(logits, -1)
    kl = (1 / 6 * (torch.log(torch.tensor(1 / 6)) - torch.log(p))).sum(-1)  # KL(U ‖ p) per token
    expected = torch.stack([kl[0, :2].mean(), kl[1].mean()])
    assert torch.allclose(algo.self_certainty(logits, mask), expected, atol=1e-5)
    assert algo.token_self_certainty(torch.zeros(4, 6)).abs().max() < 1e-6  # uniform → 0


def test_group_diversity_zero_for_identical_rows():
    row = torch.randn(1, 8)
    same = row.repeat(4, 1)
    assert torch.equal(algo.group_diversity(same, G=4), torch.zeros(1))
    varied = torch.randn(4, 8)
    assert algo.group_diversity(varied, G=4).item() > 0
    assert algo.ngram_diversity([[1, 2, 3]] * 4, G=4).item() == 0
    assert algo.ngram_diversity([[1, 2, 3], [3, 2, 1], [1, 2, 3], [4, 5, 6]], G=4).item() > 0


def _brute_passk_reward(rewards, k):
    """Fraction of k-subsets with at least one success: the quantity Pass@k training maximises."""
    subsets = list(itertools.combinations(range(len(rewards)), k))
    return sum(any(rewards[i] for i in s) for s in subsets) / len(subsets)


def test_passk_advantages_hand_numbers_and_brute_force():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    adv = algo.passk_advantages(r, k=2)
    # N=4, N_neg=3, k=2: R̄ = 1 − C(3,2)/C(4,2) = 0.5, σ = 0.5
    # A_pos = (1 − .5)/.5 = 1; A_neg = (1 − .5 − C(2,1)/C(3,1))/.5 = (0.5 − 2/3)/0.5 = −1/3
    assert torch.allclose(adv, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]), atol=1e-6)
    for rewards in ([1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]):
        for k in (1, 2, 3):
            t = torch.tensor([rewards], dtype=torch.float32)
            r_bar = _brute_passk_reward(rewards, k)
            std = math.sqrt(r_bar * (1 - r_bar))
            adv = algo.passk_advantages(t, k)[0]
            # positives: (1 − R̄)/σ ; the advantages of the group average to the centred group reward
            assert adv[t[0] > 0].allclose(torch.tensor((1 - r_bar) / std), atol=1e-5)
            # brute force of a negative's advantage: expected (group-of-k reward − R̄)/σ over k-subsets holding it
            neg = rewards.index(0)
            holds = [s for s in itertools.combinations(range(len(rewards)), k) if neg in s]
            expect = (sum(any(rewards[i] for i in s) for s in holds) / len(holds) - r_bar) / std
            assert adv[neg].item() == pytest.approx(expect, abs=1e-5)
    assert torch.equal(algo.passk_advantages(torch.ones(1, 4), 2), torch.zeros(1, 4))
    with pytest.raises(ValueError):
        algo.passk_advantages(r, k=5)


def test_token_logprobs_accepts_a_bf16_body_with_an_fp32_head():
    # what prepare_model_for_kbit_training gives on CUDA: bf16 hidden states, fp32 (upcast) LM head
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 16).to(torch.bfloat16)
    weight = torch.randn(40, 16)
    targets = torch.randint(0, 40, (2, 5))
    logp = algo.token_logprobs(hidden, weight, targets)
    ref = torch.log_softmax(hidden.float() @ weight.T, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert logp.dtype == torch.float32 and torch.allclose(logp, ref, atol=1e-5)


def test_policy_loss_clip_binds_where_it_should_and_zeroes_those_gradients():
    # ρ = 1.5 and 0.5 against π_old; ε = 0.2: A > 0 with ρ > 1.2 and A < 0 with ρ < 0.8 are clipped
    old = torch.log(torch.tensor([[0.2, 0.4, 0.2, 0.4]]))
    logp = torch.log(torch.tensor([[0.3, 0.2, 0.3, 0.2]])).requires_grad_()
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 4)
    for sign, bound in ((1.0, "clip_high"), (-1.0, "clip_low")):
        loss, stats = algo.policy_loss(logp, old, sign * adv, mask, None, clip_eps=0.2)
        (grad,) = torch.autograd.grad(loss.sum(), logp)
        binds = [0, 2] if sign > 0 else [1, 3]  # ρ = 1.5 for A > 0, ρ = 0.5 for A < 0
        free = [1, 3] if sign > 0 else [0, 2]
        assert torch.all(grad[0, binds] == 0) and torch.all(grad[0, free] != 0)
        assert stats[bound] == 2 and stats["clip_low" if sign > 0 else "clip_high"] == 0
    # clip-higher: ε_high = 0.6 lets ρ = 1.5 through for A > 0; the lower bound is unchanged
    loss, stats = algo.policy_loss(logp, old, adv, mask, None, clip_eps=0.2, clip_eps_high=0.6)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert torch.all(grad != 0) and stats["clip_high"] == 0
    assert torch.allclose(loss.detach(), -torch.tensor([[1.5, 0.5, 1.5, 0.5]]))
    # approx KL to π_old: Σ (ρ − 1) − log ρ over the masked tokens
    rho = torch.tensor([1.5, 0.5, 1.5, 0.5])
    assert stats["kl_old"] == pytest.approx(float((rho - 1 - rho.log()).sum()), rel=1e-6)
    _, stats = algo.policy_loss(logp, old, adv, torch.tensor([[1, 0, 0, 0]]), None, clip_eps=0.2)
    assert stats["clip_high"] == 1


def test_entropy_in_the_chunked_pass_equals_the_direct_one():
    torch.manual_seed(0)
    hidden = torch.randn(3, 10, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (3, 10))
    logp, entropy = algo.token_logprobs_and_entropy(hidden, weight, targets, temperature=0.7, chunk=3)
    p = torch.softmax((hidden @ weight.T) / 0.7, -1)
    direct = -(p * p.log()).sum(-1)  # (3, 10)
    assert torch.allclose(entropy, direct, atol=1e-5) and not entropy.requires_grad and logp.requires_grad
    assert torch.equal(logp, algo.token_logprobs(hidden, weight, targets, temperature=0.7, chunk=3))
    uniform = algo.token_logprobs_and_entropy(torch.zeros(1, 2, 16), weight, targets[:1, :2])[1]
    assert torch.allclose(uniform, torch.full((1, 2), math.log(50)))  # zero logits: log V


@pytest.mark.parametrize("schedule, want", [
    ("constant", {0: 0.0, 2: 0.5, 4: 1.0, 7: 1.0, 13: 1.0}),
    ("linear", {0: 0.0, 2: 0.5, 4: 1.0, 7: 0.75, 10: 0.5, 13: 0.25, 16: 0.0}),
    ("cosine", {0: 0.0, 2: 0.5, 4: 1.0, 10: 0.5, 16: 0.0, 7: (1 + math.cos(math.pi / 4)) / 2}),
])
def test_lr_factor_warms_up_from_zero_and_decays_to_zero_at_the_last_step(schedule, want):
    for step, factor in want.items():  # warm-up over 4 steps, 16 steps in all
        assert algo.lr_factor(step, schedule, 4, 16) == pytest.approx(factor, abs=1e-12), step
    assert algo.lr_factor(0, schedule, 0, 16) == 1.0  # no warm-up: the first step runs at the full rate
    with pytest.raises(ValueError, match="schedule"):
        algo.lr_factor(5, "step", 0, 16)
