"""Every method runs on the tiny model; PSN with σ = 0 is exactly GRPO; real datasets train end to end."""
import pytest

from minipsn.run.overrides import build_config
from minipsn.run.presets import METHODS
from minipsn.training.train import Trainer
from tests.conftest import TRAIN_DATA

SMALL = {"run.steps": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4", "rollout.max_new_tokens": "24"}
SAME = ("reward/mean", "reward/accuracy", "loss/policy", "tis/weight_mean", "tis/clip_frac", "noise/sigma",
        "completion/len_mean", "loss/grad_norm")


def run_steps(tmp_path, name, method, sets, steps=2):
    tr = Trainer(build_config(model="tiny", method=method, sets={**SMALL, "run.out": str(tmp_path / name), **sets}))
    return [tr.step(s) for s in range(steps)], tr


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_two_steps(tmp_path, method):
    rows, tr = run_steps(tmp_path, method, method, {"grpo.passk_k": "2"})
    assert [r["step"] for r in rows] == [1, 2]
    noisy = METHODS[method].get("noise.sigma") != 0.0  # every PSN variant and c3po
    assert (rows[0]["noise/sigma"] > 0) == noisy
    assert tr.cfg.grpo.tis == (method != "psn-notis")
    if method == "temperature":
        assert tr.cfg.rollout.temperature > tr.cfg.grpo.temperature
    if "passk" in method:
        assert tr.cfg.grpo.advantage == "passk"


def test_psn_with_sigma_zero_equals_grpo_exactly(tmp_path):
    grpo, _ = run_steps(tmp_path, "grpo", "grpo", {}, steps=3)
    psn, _ = run_steps(tmp_path, "psn", "psn", {"noise.sigma": "0"}, steps=3)
    for a, b in zip(grpo, psn):
        for key in SAME:
            assert a[key] == b[key], key


@pytest.mark.skipif(not TRAIN_DATA.is_dir(), reason="../shared/data (GSM8K and MATH train) is absent")
@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_real_dataset_trains_end_to_end(tmp_path, dataset):
    rows, tr = run_steps(tmp_path, dataset, None, {"data.dataset": dataset, "data.data_dir": str(TRAIN_DATA),
                                                    "model.max_prompt_tokens": "2048"}, steps=1)
    assert tr.records[0]["id"].startswith("gsm8k-train" if dataset == "gsm8k" else "train/")
    assert 0.0 <= rows[0]["reward/accuracy"] <= 1.0 and rows[0]["completion/len_mean"] > 0


def test_kl_to_the_base_is_zero_before_the_first_update_and_positive_after(tmp_path):
    # peft starts LoRA B at 0, so the policy equals the base (adapter disabled) until the first update;
    # alternating rewards give every group a spread, so the first update moves the policy
    def alternating(completions, records, truncated):
        return [float(i % 2) for i in range(len(completions))]

    cfg = build_config(model="tiny", method="grpo", sets={**SMALL, "run.out": str(tmp_path / "kl"),
                                                          "grpo.kl_beta": "0.1", "grpo.lr": "1e-2"})
    tr = Trainer(cfg, reward_fn=alternating)
    first, second = tr.step(0), tr.step(1)
    assert first["loss/grad_norm"] > 0 and first["loss/kl"] == pytest.approx(0.0, abs=1e-7)
    assert second["loss/kl"] > 1e-6
    # loss/policy is the policy term alone; loss/total is what was back-propagated
    assert second["loss/total"] == pytest.approx(second["loss/policy"] + 0.1 * second["loss/kl"], rel=1e-5)
    assert second["loss/policy"] != pytest.approx(second["loss/total"], rel=1e-4)


@pytest.mark.slow
def test_grpo_raises_held_out_accuracy_on_the_tiny_task(tmp_path):
    """End to end on the real reward: the warm-started tiny model answers after the first step in
    about half its samples (almost always wrong); GRPO learns to finish the computation, and held-out
    accuracy of the clean policy rises within 20 steps.

    Both evaluations draw with one sampling seed, so a policy that has not changed gains exactly 0.
    Builds differ from machine to machine, so the margin comes from a measured spread, not one build
    (docs/RESULTS.md, "Is the tiny build the same everywhere?"): over 5 run seeds on one build the
    gain was 0.074–0.172; over 3 builds (build seeds 0, 1, 2; run seed 0) 0.172, 0.121 and 0.051;
    another machine's build gained 0.066 (with separate eval seeds). Accuracy before RL ranged
    0.18–0.31. The test asks for a gain above 0.02, below every measured one, and a starting accuracy
    in (0.1, 0.45): it checks that GRPO learns, not how fast, which varies with the build."""
    cfg = build_config(model="tiny", method="grpo", sets={"run.out": str(tmp_path / "learn"), "grpo.lr": "1e-3",
                                                          "eval.problems": "32", "eval.n": "8"})
    tr = Trainer(cfg)
    before = tr.evaluate(0)["eval/accuracy"]
    for s in range(20):
        tr.step(s)
    after = tr.evaluate(0)["eval/accuracy"]  # the same problems and sampling seed as `before`
    assert 0.1 < before < 0.45 and after > before + 0.02, (before, after)


def test_periodic_evaluation_logs_held_out_pass_at_k(tmp_path, capsys):
    import json

    from minipsn.training.train import train

    cfg = build_config(model="tiny", sets={**SMALL, "run.steps": "2", "run.out": str(tmp_path / "ev"),
                                           "eval.every": "2", "eval.n": "2", "eval.problems": "3"})
    rows = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0].keys() == {"step", "eval/pass@1", "eval/pass@2", "eval/accuracy", "eval/maj_accuracy",
                              "eval/truncated_frac"}  # the starting policy, before any update
    assert "eval/pass@1" not in rows[1]
    assert {"eval/pass@1", "eval/pass@2", "eval/accuracy"} <= rows[2].keys()
    assert 0.0 <= rows[2]["eval/pass@1"] <= rows[2]["eval/pass@2"] <= 1.0
    assert (f"held-out pass@1: {rows[0]['eval/pass@1']:.3f} at step 0 → {rows[2]['eval/pass@1']:.3f} at step 2 "
            "(3 problems × 2 samples)") in capsys.readouterr().out


@pytest.mark.slow
def test_compare_with_two_workers_gives_the_same_grid_as_one(tmp_path, capfd):
    from minipsn.experiments.compare import compare

    sets = {"run.steps": 1, "grpo.prompts_per_step": 2, "grpo.group_size": 4, "rollout.max_new_tokens": 16,
            "eval.n": 4, "eval.problems": 3, "eval.max_new_tokens": 16}
    one = compare("tiny", ["grpo", "psn"], 1, tmp_path / "one", sets, workers=1)
    capfd.readouterr()
    two = compare("tiny", ["grpo", "psn"], 1, tmp_path / "two", sets, workers=2)
    printed = capfd.readouterr()
    steps = [line for line in printed.out.splitlines() if "step 1/1 |" in line]  # the workers' lines interleave:
    assert sorted(line.split(" ")[0] for line in steps) == ["[grpo-s0]", "[psn-s0]"]  # each says whose it is
    assert "is_gradient_checkpointing" not in printed.err and "Warning" not in printed.err, printed.err[-2000:]
    assert one["summary"] == two["summary"]  # each job is seeded by itself, so where it ran does not matter
    assert (tmp_path / "two" / "psn-s0" / "eval" / "eval.json").is_file()
    for job in ("base/eval", "psn-s0/eval"):  # evaluated in 2 shares, joined: the rows one evaluation writes
        rows = [(tmp_path / grid / job / "samples" / "synthetic.jsonl").read_text().splitlines()[1:] for grid in ("one", "two")]
        assert rows[0] == rows[1] and len(rows[0]) == 3
        assert not (tmp_path / "two" / job / "shares").exists()
