"""The paired difference of pass@k and its interval (minipsn/experiments/stats.py): estimates, variance, coverage,
pairing."""
import numpy as np
import pytest

from minipsn.evaluation.scoring import pass_at_k
from minipsn.experiments.stats import (
    DATA_MODELS,
    count_matrix,
    coverage,
    difference_interval,
    paired_difference,
    pass_at_k_table,
    simulate,
    t_quantile,
    truth,
)


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


@pytest.mark.parametrize("q, df, value", [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764),
                                          (0.975, 9, 2.2622), (0.975, 30, 2.0423), (0.8, 4, 0.9410),
                                          (0.995, 10, 3.1693), (0.025, 4, -2.7764), (0.975, float("inf"), 1.9600)])
def test_t_quantiles_match_the_tables(q, df, value):
    assert t_quantile(q, df) == pytest.approx(value, abs=1e-4)


def test_the_difference_is_the_mean_over_seeds_and_problems_each_side_with_its_own_n():
    method, reference = np.array([[4, 0], [2, 2]]), np.array([[0, 0]])
    r = paired_difference(method, reference, 4, [1, 4])
    # pass@1: method (1 + 0 + .5 + .5) / 4 = .5, reference 0; pass@4: method (1 + 0 + 1 + 1) / 4
    assert r["diff"] == pytest.approx([0.5, 0.75]) and r["reference"] == [0.0, 0.0]
    assert r["seeds"] == [2, 1] and "one reference seed" in r["covers"] and r["pairing"].startswith("problems")
    assert all(lo <= d <= hi for lo, d, hi in zip(r["low"], r["diff"], r["high"]))
    # 2 of 4 right is pass@1 0.5 on the method's side whatever the reference's n (8 here, 0 of 8 right)
    own_n = paired_difference(np.array([[2, 2]]), np.array([[0, 0]]), 4, [1, 4], n_reference=8)
    assert own_n["method"][0] == 0.5 and own_n["diff"][0] == 0.5 and own_n["n"] == [4, 8]
    with pytest.raises(ValueError, match="1..n = 4"):
        paired_difference(np.array([[2, 2]]), np.array([[0, 0]]), 4, [8], n_reference=8)
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(method, np.zeros((1, 3), int), 4, [1])
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(method, reference, 4, [1], paired_seeds=True)


def test_the_paired_variance_is_the_two_way_formula_by_hand():
    """D (S=2, P=3) = [[1, 0, 2], [3, 1, 2]]: row means 1, 2 (variance .5), column means 2, .5, 2 (variance .75),
    residuals [−.5, 0, .5], [.5, 0, −.5] give MSE = 1/((S−1)(P−1)) = .5; Var = .5/2 + .75/3 − .5/6 = 5/12."""
    reference = np.zeros((2, 3))
    r = difference_interval(np.array([[1.0, 0, 2], [3, 1, 2]]), reference, paired_seeds=True)
    assert r["diff"] == pytest.approx(1.5) and r["se"] == pytest.approx((5 / 12) ** 0.5)
    df = (5 / 12) ** 2 / (0.25 ** 2 + 0.25 ** 2 / 2 + (0.5 / 6) ** 2 / 2)  # Satterthwaite
    assert r["df"] == pytest.approx(df)
    assert r["high"] - r["diff"] == pytest.approx(t_quantile(0.975, df) * (5 / 12) ** 0.5)
    assert r["cell"] == pytest.approx({"seed": 0.5 - 0.5 / 3, "problem": 0.75 - 0.5 / 2, "residual": 0.5})


def test_no_interval_has_zero_width_when_the_residual_outweighs_both_margins():
    """D = [[1, 0], [0, 1]]: row and column means all .5 (no margin), MSE = 1, so rows/S + cols/P − MSE/(S·P) < 0;
    the residual part MSE/(S·P) = 1/4 stands in: Δ = .5 ± t(1)·.5, not [.5, .5] (a zero-width interval excluding 0)."""
    r = difference_interval(np.array([[1.0, 0], [0, 1]]), np.zeros((2, 2)), paired_seeds=True)
    assert r["diff"] == pytest.approx(0.5) and r["se"] == pytest.approx(0.5) and r["df"] == 1
    assert r["low"] < 0 < r["high"]


def test_seed_effects_shared_by_both_sides_cancel_from_the_paired_interval():
    rng = np.random.default_rng(3)
    a = rng.normal(0.5, 0.2, 40)
    run = np.array([[-0.2], [0.0], [0.25], [0.1], [-0.1]])  # seed s moves every problem, on both sides alike
    noise = rng.normal(0, 0.01, (5, 40))
    reference, method = a + run, a + run + 0.03 + noise
    paired = difference_interval(method, reference, paired_seeds=True)
    apart = difference_interval(method, reference, paired_seeds=False)
    assert paired["diff"] == pytest.approx(0.03, abs=0.005) == apart["diff"]
    assert paired["low"] > 0.02 and paired["high"] < 0.04  # the run effects are gone
    assert apart["high"] - apart["low"] > 10 * (paired["high"] - paired["low"])  # they dominate when seeds are apart


@pytest.mark.parametrize("name", list(DATA_MODELS))
def test_the_95_percent_interval_covers_the_truth_under_grid_like_data(name):
    """1,000 simulated grids per data model (P = 100 problems, n = 64, k = 1, 8, 64): 93-98 % coverage with 5
    seeds below k = n, at least 93 % at k = n (where pass@k of a cell is 0 or 1 and the interval is conservative,
    up to 100 %), at least 90 % with 3 (`python -m minipsn.experiments.stats` prints the table docs/evaluation.md states)."""
    five, three = coverage(DATA_MODELS[name], 5), coverage(DATA_MODELS[name], 3)
    assert all(0.93 <= c <= 0.98 for c in five["coverage"][:-1]) and five["coverage"][-1] >= 0.93, five
    assert all(c >= 0.90 for c in three["coverage"]), three


@pytest.mark.parametrize("delta", [0.0, -0.5])
def test_one_evaluation_per_side_on_the_same_problems_covers_like_the_ceilings_preflight(delta):
    """The pre-flight's Δ against clean sampling: one evaluation of a fixed model per setting, the same 100 problems,
    n = 256, the base's pass@256 about 70 % as on the ceiling's steps questions (mean logit −5), a setting that moves
    each problem's logit (sd 0.3) and all of them by δ. 300 simulations: 92.7–94.3 % measured at k = 16 and 256."""
    model = {"u": 0.0, "v": 0.0, "xi": 0.0, "eta": 0.0, "w": 0.3, "shared": False, "base": True}
    rng, ks = np.random.default_rng(0), [16, 256]
    target, hits = truth(model, ks, mu=-5, delta=delta), np.zeros(2)
    for _ in range(300):
        method, reference = simulate(model, 1, rng, 100, 256, mu=-5, delta=delta)
        r = paired_difference(method, reference, 256, ks)
        hits += (np.array(r["low"]) <= target) & (target <= np.array(r["high"]))
    assert all(0.90 <= h / 300 <= 0.98 for h in hits), hits / 300


@pytest.mark.parametrize("k, mu, delta, band", [(1, -5, 0.25, (0.88, 0.99)), (1, -6, 1.0, (0.88, 0.99)),
                                                 (256, -6.5, 0.4, (0.93, 1.0))])
def test_three_checkpoints_paired_with_clean_sampling_cover_like_the_ceilings_checkpoint_preflight(k, mu, delta, band):
    """The pre-flight at GRPO's checkpoints: each of 3 seeds' checkpoints under clean sampling and under noise, the
    same 50 steps questions × 256, paired on seeds and problems. As measured there: a checkpoint's logit spread across
    seeds about 0.3 (0.16–0.49), samples that box a tuple 0.15–1.7 % (k = 1 of those counts; parameter noise a logit
    shift of 0.2–0.4, temperature 1.0–1.7), right ones 0.03–0.5 %. 300 simulations: 92–97 % at k = 1 (87.5 % at
    the rarest rate with temperature's shift), 97–99.5 % at k = 256."""
    model = {"u": 0.3, "v": 0.5, "xi": 0.1, "eta": 0.2, "w": 0.3, "shared": True}
    rng, target, hits = np.random.default_rng(0), truth(model, [k], mu=mu, delta=delta)[0], 0
    for _ in range(300):
        method, reference = simulate(model, 3, rng, 50, 256, mu=mu, delta=delta)
        r = paired_difference(method, reference, 256, [k], paired_seeds=True)
        hits += r["low"][0] <= target <= r["high"][0]
    assert band[0] <= hits / 300 <= band[1], hits / 300


def test_shared_seeds_give_a_narrower_interval_than_the_same_spread_unshared():
    shared = DATA_MODELS["shared seeds"]
    apart = {**shared, "shared": False}
    a, b = coverage(shared, 5, reps=200), coverage(apart, 5, reps=200)
    assert all(w1 < 0.5 * w2 for w1, w2 in zip(a["width"], b["width"])), (a, b)


def test_a_shift_shared_by_both_methods_does_not_widen_the_interval():
    rng = np.random.default_rng(0)
    method = rng.integers(22, 43, (3, 80))
    reference = method + rng.integers(-2, 3, (3, 80))
    shift = rng.integers(-19, 20, 80)  # per problem, the same on both sides: at k = 1 a shift of pass@1 by shift/n
    base = paired_difference(method, reference, 64, [1], paired_seeds=True)
    moved = paired_difference(method + shift, reference + shift, 64, [1], paired_seeds=True)
    assert moved["diff"] == pytest.approx(base["diff"], abs=1e-12)
    assert moved["high"][0] - moved["low"][0] == pytest.approx(base["high"][0] - base["low"][0], abs=1e-12)


def test_the_minimum_detectable_effect_is_t_plus_t_power_standard_errors():
    rng = np.random.default_rng(1)
    r = paired_difference(rng.integers(0, 65, (5, 60)), rng.integers(0, 65, (5, 60)), 64, [1, 64], paired_seeds=True)
    for se, df, mde in zip(r["se"], r["df"], r["mde"]):
        assert mde == pytest.approx((t_quantile(0.975, df) + t_quantile(0.8, df)) * se)


def test_count_matrix_pairs_problems_by_id_and_kind():
    a = [{"id": "b", "kind": "steps", "correct": [1, 1, 0]}, {"id": "a", "kind": "steps", "correct": [0, 0, 0]},
         {"id": "c", "kind": "final", "correct": [1, 1, 1]}]
    b = [a[2], {"id": "a", "kind": "steps", "correct": [1, 0, 0]}, {"id": "b", "kind": "steps", "correct": [1, 1, 1]}]
    counts, n, ids = count_matrix([a, b], kind="steps")
    assert ids == ["a", "b"] and n == 3 and counts.tolist() == [[0, 2], [1, 3]]  # file order does not matter
    assert count_matrix([a])[0].tolist() == [[0, 2, 3]]
    with pytest.raises(ValueError, match="different problems .first differing id c"):
        count_matrix([a, b[1:]])
    with pytest.raises(ValueError, match="numbers of samples"):
        count_matrix([a, [*b[:2], {"id": "b", "kind": "steps", "correct": [1]}]])


def test_across_builds_is_the_hartung_knapp_random_effects_mean():
    from minipsn.experiments.stats import across_builds

    same = across_builds([0.05, 0.05, 0.05], [0.01, 0.02, 0.01])
    assert same["diff"] == pytest.approx(0.05) and same["tau2"] == 0.0 and same["high"] - same["low"] < 1e-12
    # three builds that disagree beyond their SEs: τ² > 0 and the interval spans them, t with 2 df
    r = across_builds([-0.10, 0.00, 0.10], [0.01, 0.01, 0.01])
    assert r["diff"] == pytest.approx(0.0, abs=1e-12) and r["tau2"] == pytest.approx(0.01 - 0.0001, rel=1e-6)
    assert r["high"] == pytest.approx(t_quantile(0.975, 2) * (0.01 / 3) ** 0.5, rel=1e-6)  # sd 0.1, a mean of 3
    with pytest.raises(ValueError, match="at least 2 builds"):
        across_builds([0.1], [0.01])


@pytest.mark.parametrize("tau", [0.0, 0.02, 0.05])
def test_across_builds_interval_covers_with_three_builds_like_the_ceilings(tau):
    """3 builds, each Δ with a paired SE like the ceiling grids' at k = 256 (1.8-4.5 points, estimated from ~200
    problems), a between-build spread τ of 0 to 5 points: the interval holds about its 95 %, where the same SE with a
    normal quantile (what a naive pooling would use) does not."""
    from minipsn.experiments.stats import across_builds

    rng, ses, reps = np.random.default_rng(7), np.array([0.018, 0.03, 0.045]), 1000
    hk = normal = 0
    for _ in range(reps):
        d = rng.normal(0, tau, 3) + rng.normal(0, ses)
        r = across_builds(list(d), list(ses * np.sqrt(rng.chisquare(200, 3) / 200)))
        hk += r["low"] <= 0 <= r["high"]
        half = (r["high"] - r["low"]) / 2 / t_quantile(0.975, 2) * 1.96
        normal += abs(r["diff"]) <= half
    assert hk / reps >= 0.91
    assert normal / reps < 0.88
