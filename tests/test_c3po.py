"""The c3po arm (3PO's C3PO): a group split over N noise draws, advantages over the whole group, Seq-MIS on top of TIS;
and weight-space noise with several draws (per group, per rollout, C3PO), which the copy applies through hooks."""
import math

import pytest
import torch

from minipsn.method import algo
from minipsn.method.noise import derive_seed, row_seeds
from minipsn.run.overrides import build_config
from minipsn.sampling import engine as E
from minipsn.training.batch import advantages
from minipsn.training.train import Trainer

SMALL = {"run.steps": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4", "rollout.max_new_tokens": "24"}


def test_n_draws_split_every_group_and_the_advantages_stay_over_the_whole_group():
    seeds = row_seeds(7, 2, 4, "step", draws=2)  # P = 2, G = 4: rows 0-1 and 4-5 draw 0, rows 2-3 and 6-7 draw 1
    assert seeds == [derive_seed(7, "draw", d) for d in (0, 0, 1, 1, 0, 0, 1, 1)]
    assert row_seeds(7, 2, 4, "step", draws=1) == [7] * 8 and len(set(row_seeds(7, 2, 4, "step", draws=4))) == 4
    with pytest.raises(ValueError, match="must divide"):
        row_seeds(7, 2, 4, "step", draws=3)
    with pytest.raises(ValueError, match="must divide grpo.group_size=8"):
        build_config(model="tiny", method="c3po", sets={"noise.draws": 3})
    # pooled: a group's rewards [1, 0 | 0, 0] over both draws → (r − 1/4)/std of all four (population std √3/4),
    # not per draw (that would give draw 1 all zeros and draw 0 ±1)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    adv = advantages(rewards, rewards, build_config(model="tiny", method="c3po").grpo)
    assert adv[0].tolist() == pytest.approx([0.75 / (3 ** 0.5 / 4)] + [-0.25 / (3 ** 0.5 / 4)] * 3, rel=1e-5)


def test_seq_mis_keeps_the_rows_whose_sequence_ratio_is_within_its_bounds():
    """log π_θ − log π_θ̃ per token, summed: row 0 +0.2 + 0.3 = 0.5 (ratio 1.65, kept); row 1 0.8 (2.23, out); row 2
    −0.75 (0.47, out); row 3 −0.69 (0.50, in: ln 0.5 = −0.693); row 4 has its big term on a masked token (kept)."""
    learner = torch.tensor([[0.2, 0.3], [0.5, 0.3], [-0.5, -0.25], [-0.69, 0.0], [0.1, 5.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]])
    keep = algo.seq_mis_keep(learner, torch.zeros(5, 2), mask, 0.5, 2.0)
    assert keep.tolist() == [True, False, False, True, True]
    assert math.exp(-0.69) > 0.5 > math.exp(-0.75) and math.exp(0.5) < 2 < math.exp(0.8)


def test_c3po_trains_on_tiny_and_one_draw_is_psn_with_seq_mis(tmp_path):
    run = lambda name, method, sets: Trainer(build_config(model="tiny", method=method, sets={  # noqa: E731
        **SMALL, "run.out": str(tmp_path / name), "noise.sigma": "0.05", **sets}))
    c3po = run("c3po", "c3po", {})
    rows = [c3po.step(s) for s in range(2)]
    assert c3po.engine.name == "lean" and len(set(rows[0]["noise/row_seeds"])) == 2  # two draws, per-row hooks
    assert 0.0 <= rows[1]["tis/seq_masked_frac"] <= 1.0 and rows[1]["noise/kl_noise"] > 0
    one, psn = run("one", "c3po", {"noise.draws": "1"}), run("psn", "psn", {"grpo.seq_mis": "true"})
    for s in range(2):
        a, b = one.step(s), psn.step(s)
        for key in ("reward/mean", "loss/policy", "tis/weight_mean", "tis/seq_masked_frac", "noise/kl_noise"):
            assert a[key] == b[key], key


@pytest.fixture
def weight_engine(small_policy):
    return E.CopyEngine(small_policy.eval(), 8, static_cache=False, compile_step=False, space="weight")


def test_weight_noise_per_row_is_each_rows_own_one_draw_noise(weight_engine):
    """Rows with seeds 3, 3, 5, 9 in one batch: each row's logits are the one-draw path's with its own seed (W + σ·ε
    folded, an fp32 copy), up to fp32 rounding; the hooks leave nothing behind."""
    ids = torch.randint(2, 64, (4, 6), generator=torch.Generator().manual_seed(0))
    seeds = [3, 3, 5, 9]
    with torch.no_grad():
        with weight_engine.policy(0.05, seeds, "mlp") as (model, row_noise):
            row_noise.select(torch.arange(4))
            batched = model(input_ids=ids).logits
        for r, s in enumerate(seeds):
            with weight_engine.policy(0.05, [s], "mlp") as (model, _):
                alone = model(input_ids=ids[r:r + 1]).logits
            torch.testing.assert_close(batched[r:r + 1], alone, rtol=1e-4, atol=1e-5)
        clean = weight_engine.plain(input_ids=ids).logits
        with weight_engine.policy(0.0, [0], "mlp") as (model, _):
            assert torch.equal(model(input_ids=ids).logits, clean)  # no hook stays attached
    assert (batched - clean).abs().max() > 1e-3  # the noise moved the logits


def test_a_weight_space_run_with_rollout_noise_trains_and_measures_its_kl(tmp_path):
    tr = Trainer(build_config(model="tiny", method="psn-weight", sets={**SMALL, "run.out": str(tmp_path / "r"),
                                                                       "noise.granularity": "rollout"}))
    m = tr.step(0)
    assert tr.engine.name == "fast" and len(set(m["noise/row_seeds"])) == 8
    assert m["noise/kl_noise"] > 0 and m["guard/decode_gap"] < 1e-4


def test_the_preflight_at_one_clean_draw_is_the_evaluation_and_each_draw_logs_its_seed(tmp_path):
    """D = 1 at σ = 0 samples what `eval` samples; with D = n and σ > 0 every sample has its own draw (its seed
    logged), the same D draws for every problem; a temperature is sampled once."""
    import json

    from minipsn.evaluation.evaluate import evaluate
    from minipsn.experiments.preflight import preflight

    cfg = build_config(model="tiny", sets={"eval.n": 4, "eval.problems": 3})
    evaluate(cfg, ["synthetic"], tmp_path / "eval")
    report = preflight(cfg, ["clean", "lora:0.05", "temperature:1.2"], [1, 4], tmp_path / "pre")
    # a temperature, like clean sampling, has no draws: one row, D = 1
    assert [(r["setting"], r["draws"]) for r in report["results"]] == [("clean", 1), ("lora:0.05", 1), ("lora:0.05", 4),
                                                                     ("temperature:1.2", 1)]
    rows = lambda p: [json.loads(x) for x in p.read_text().splitlines() if "meta" not in x]  # noqa: E731
    want = rows(tmp_path / "eval" / "samples" / "synthetic.jsonl")
    got = rows(tmp_path / "pre" / "samples" / "clean-D1.jsonl")
    assert [(r["id"], r["answers"], r["correct"]) for r in got] == [(r["id"], r["answers"], r["correct"]) for r in want]
    per_sample = rows(tmp_path / "pre" / "samples" / "lora-0.05-D4.jsonl")
    assert all(len(set(r["noise_seeds"])) == 4 for r in per_sample)  # one draw per sample
    assert len({tuple(r["noise_seeds"]) for r in per_sample}) == 1  # the same draws for every problem
    one_draw = rows(tmp_path / "pre" / "samples" / "lora-0.05-D1.jsonl")
    assert all(len(set(r["noise_seeds"])) == 1 and r["noise_seeds"][0] is not None for r in one_draw)


def test_a_stopped_preflight_continues_with_its_finished_settings_and_refuses_other_settings(tmp_path, monkeypatch):
    """Killed during its second setting, the pre-flight has written the first; run again, it samples only the rest,
    and its report equals an unbroken run's. Into the same folder with another n it refuses, naming the key."""
    import json

    import minipsn.experiments.preflight as pre

    cfg = build_config(model="tiny", sets={"eval.n": 4, "eval.problems": 3})
    settings, real, sampled = ["clean", "lora:0.05"], pre.sample_setting, []

    def dies_on_noise(model, engines, tok, records, cfg, space, value, draws):
        if space == "lora":
            raise KeyboardInterrupt  # a kill during the second setting
        return real(model, engines, tok, records, cfg, space, value, draws)

    monkeypatch.setattr(pre, "sample_setting", dies_on_noise)
    with pytest.raises(KeyboardInterrupt):
        pre.preflight(cfg, settings, [2], tmp_path / "pre")
    stopped = json.loads((tmp_path / "pre" / "preflight.json").read_text())
    assert not stopped["complete"] and [r["setting"] for r in stopped["results"]] == ["clean"]

    def counts(*args):
        sampled.append(args[5])
        return real(*args)

    monkeypatch.setattr(pre, "sample_setting", counts)
    resumed = pre.preflight(cfg, settings, [2], tmp_path / "pre")
    assert sampled == ["lora"] and resumed["complete"]  # clean was kept, not sampled again
    whole = pre.preflight(cfg, settings, [2], tmp_path / "whole")
    assert resumed["results"] == whole["results"]
    with pytest.raises(ValueError, match=r"made with other settings: .*eval\.n \(4 → 8\)"):
        pre.preflight(build_config(model="tiny", sets={"eval.n": 8, "eval.problems": 3}), settings, [2], tmp_path / "pre")
    (tmp_path / "pre" / "preflight.json").write_text("{half a report")  # a torn file says which file, in one line
    with pytest.raises(ValueError, match=r"preflight.json is not a pre-flight report"):
        pre.preflight(cfg, settings, [2], tmp_path / "pre")


def test_the_frontier_evaluates_the_kept_adapters_of_a_grid(tmp_path):
    """A grid trained with run.keep_adapters=1 (2 steps): the frontier evaluates each run's step-1 adapter and puts
    the base (step 0), step 1 and the final step on one line per arm, each point a mean over seeds."""
    import json

    from minipsn.experiments.compare import compare
    from minipsn.experiments.frontier import frontier

    sets = {"run.steps": 2, "grpo.prompts_per_step": 2, "grpo.group_size": 4, "rollout.max_new_tokens": 16,
            "eval.n": 4, "eval.problems": 3, "eval.max_new_tokens": 16, "run.keep_adapters": "1"}
    out = tmp_path / "grid"
    grid = compare("tiny", ["grpo", "psn"], 2, out, sets)
    assert (out / "psn-s1" / "adapters" / "step-1" / "adapter" / "adapter_config.json").is_file()
    result = frontier("tiny", ["grpo", "psn"], 2, out, [1], grid["overrides"], kind="steps", k=4)
    assert list(result["points"]["psn"]) == ["0", "1", "2"] and len(result["points"]["psn"]["1"]["x"]) == 2
    step1 = json.loads((out / "psn-s1" / "eval-step1" / "eval.json").read_text())
    assert result["points"]["psn"]["1"]["x"][1] == step1["benchmarks"]["synthetic"]["pass@k"]["1"]  # no kinds: all
    final = json.loads((out / "grpo-s0" / "eval" / "eval.json").read_text())
    assert result["points"]["grpo"]["2"]["y"][0] == final["benchmarks"]["synthetic"]["pass@k"]["4"]
    assert (out / "compare_frontier.png").stat().st_size > 0 and (out / "compare_frontier.pdf").stat().st_size > 0
    with pytest.raises(ValueError, match="kept no adapter at step 2"):
        frontier("tiny", ["grpo"], 2, out, [2], grid["overrides"])


def test_the_frontier_of_a_folder_without_a_grid_is_one_line(tmp_path):
    from minipsn.experiments.frontier import frontier

    with pytest.raises(ValueError, match="holds no compare.json; give --out a finished compare grid") as err:
        frontier("tiny", ["grpo"], 1, tmp_path / "none", [20], {})
    assert "\n" not in str(err.value)
