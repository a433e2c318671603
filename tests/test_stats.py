"""The paired bootstrap of pass@k differences (minipsn/stats.py): estimates, coverage, pairing, shapes."""
import numpy as np
import pytest

from minipsn.scoring import pass_at_k
from minipsn.stats import paired_bootstrap, pass_at_k_table


def test_table_is_the_unbiased_estimator_per_seed_and_problem():
    counts = np.array([[0, 3, 16], [1, 8, 15]])
    table = pass_at_k_table(counts, 16, [1, 4, 16])
    assert table.shape == (2, 3, 3)
    for s in range(2):
        for p in range(3):
            for j, k in enumerate((1, 4, 16)):
                assert table[s, p, j] == pass_at_k(16, int(counts[s, p]), k)
    with pytest.raises(ValueError, match="0..n"):
        pass_at_k_table(np.array([[17]]), 16, [1])


def test_the_difference_is_the_mean_over_seeds_and_problems():
    method, reference = np.array([[4, 0], [2, 2]]), np.array([[0, 0]])
    r = paired_bootstrap(method, reference, 4, [1, 4], resamples=200)
    # pass@1: method (1 + 0 + .5 + .5) / 4 = .5, reference 0; pass@4: method (1 + 0 + 1 + 1) / 4
    assert r["diff"] == pytest.approx([0.5, 0.75]) and r["reference"] == [0.0, 0.0]
    assert r["seeds"] == [2, 1] and "one reference seed" in r["resampled"]
    assert all(lo <= d <= hi for lo, d, hi in zip(r["low"], r["diff"], r["high"]))
    one = paired_bootstrap(method[:1], reference, 4, [1])
    assert one["resampled"].startswith("problems only")
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap(method, np.zeros((1, 3), int), 4, [1])
    with pytest.raises(ValueError, match="1..n"):
        paired_bootstrap(method, reference, 4, [8])


# Synthetic pass/fail data with a known difference: problem p's logit a_p ~ N(mu, 1.5) is shared by both
# methods (the pairing); each training seed adds a run effect u ~ N(0, tau) to all its problems; the method
# adds delta. c ~ Binomial(n, sigmoid(logit)). The population difference E[1 − (1 − q)^k] (the estimator's
# expectation) is integrated by Gauss-Hermite quadrature over a and u.
N, KS = 64, [1, 8, 64]


def _truth(mu, delta, tau):
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    a, u = mu + 1.5 * x[:, None], tau * x[None, :]
    weight = w[:, None] * w[None, :]

    def passk(shift):
        q = 1 / (1 + np.exp(-(a + u + shift)))
        return np.array([(weight * (1 - (1 - q) ** k)).sum() for k in KS])

    return passk(delta) - passk(0.0)


def _draw(rng, mu, delta, tau, seeds, problems):
    a = rng.normal(mu, 1.5, problems)
    side = lambda shift: rng.binomial(N, 1 / (1 + np.exp(-(a + rng.normal(0, tau, (seeds, 1)) + shift))))
    return side(delta), side(0.0)


@pytest.mark.parametrize("mu, delta, tau", [(-2.0, -0.6, 0.3), (-3.0, 0.5, 0.05), (-1.0, -0.3, 0.6)],
                         ids=["both-spreads", "problem-spread", "seed-spread"])
def test_the_95_percent_interval_covers_the_truth(mu, delta, tau):
    rng, truth, covered = np.random.default_rng(1), _truth(mu, delta, tau), np.zeros(len(KS))
    for rep in range(200):
        method, reference = _draw(rng, mu, delta, tau, 5, 100)
        r = paired_bootstrap(method, reference, N, KS, resamples=1000, seed=rep)
        covered += (np.array(r["low"]) <= truth) & (truth <= np.array(r["high"]))
    rate = covered / 200
    # nominal 0.95; 200 replications give a binomial sd of 0.015
    assert np.all((0.90 <= rate) & (rate <= 0.99)), (rate, truth)


def test_a_shift_shared_by_both_methods_does_not_widen_the_interval():
    rng = np.random.default_rng(0)
    method, reference = _draw(rng, 0.0, 0.4, 0.05, 3, 80)
    method, reference = np.clip(method, 20, 44), np.clip(reference, 20, 44)
    shift = rng.integers(-20, 21, 80)  # per problem, the same on both sides: at k = 1 a shift of pass@1 by shift/n
    base = paired_bootstrap(method, reference, N, [1], seed=3)
    moved = paired_bootstrap(method + shift, reference + shift, N, [1], seed=3)
    assert moved["diff"] == pytest.approx(base["diff"], abs=1e-12)
    assert moved["high"][0] - moved["low"][0] == pytest.approx(base["high"][0] - base["low"][0], abs=1e-12)
    # the test can see a failure: drawn apart for each side, the shifted problems alone would add a spread
    # of √2·sd(shift/n)/√P to Δ, a 95 % width of more than twice the paired one
    unpaired_extra = 2 * 1.96 * np.sqrt(2) * np.std(shift / N) / np.sqrt(80)
    assert unpaired_extra > 2 * (base["high"][0] - base["low"][0])


def test_count_matrix_pairs_problems_by_id_and_kind():
    from minipsn.stats import count_matrix

    a = [{"id": "b", "kind": "steps", "correct": [1, 1, 0]}, {"id": "a", "kind": "steps", "correct": [0, 0, 0]},
         {"id": "c", "kind": "final", "correct": [1, 1, 1]}]
    b = [a[2], {"id": "a", "kind": "steps", "correct": [1, 0, 0]}, {"id": "b", "kind": "steps", "correct": [1, 1, 1]}]
    counts, n, ids = count_matrix([a, b], kind="steps")
    assert ids == ["a", "b"] and n == 3 and counts.tolist() == [[0, 2], [1, 3]]  # file order does not matter
    assert count_matrix([a])[0].tolist() == [[0, 2, 3]]
    with pytest.raises(ValueError, match="different problems"):
        count_matrix([a, b[:2]])
    with pytest.raises(ValueError, match="numbers of samples"):
        count_matrix([a, [*b[:2], {"id": "b", "kind": "steps", "correct": [1]}]])
