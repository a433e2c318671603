"""The one-GPU comparison's pieces: the ceiling subset, guess rates on real benchmarks, the time planner, a
Llama-shaped model through the kit (the replication arm's family), and the recipe end to end on tiny in its smoke
profile (calibrate → subset → plan → compare → paired table and frontier), refused first by its planner."""
import json
import subprocess
import sys

import pytest

from minipsn.experiments import planner, subset
from minipsn.experiments.headroom import benchmark_guesses
from tests.conftest import REPO
from tests.test_examples import ENV
from tests.test_train import cli


def scored(c, n=10, guess=0.0, answer="\\frac{3}{7}"):
    return {"source": "b", "record": {"id": f"p{c}-{guess}-{answer}", "problem": "?", "answer": answer}, "c": c, "n": n,
            "guess": guess}


def test_pick_keeps_rare_solves_and_a_never_slice_and_leaves_out_guesses():
    pool = [scored(0), scored(0, answer="7"), scored(1), scored(1, guess=0.01), scored(2), scored(1, answer="}{"),
            scored(1, answer="8")]
    sel = subset.Selection(size=5, min_size=1, max_pass1=0.1, never=5, max_guess=1e-3)
    usable, ceiling, never, kept = subset.pick(pool, sel, 1000)
    # c = 1 of 10 (pass@1 0.1) qualifies; c = 2 does not; a guess of 0.01 per sample and an unreadable gold are out
    assert [p["record"]["answer"] for p in ceiling] == ["\\frac{3}{7}", "8"]
    assert len(never) == 2 and len(usable) == 5 and kept == {"ceiling": ceiling, "never": never}
    with pytest.raises(ValueError, match="only 2 of the pool's 7 problems .* fewer than --min-size 3"):
        subset.pick(pool, subset.Selection(size=5, min_size=3), 1000)


def test_pick_samples_by_the_selection_seed_in_pool_order():
    pool = [scored(1, answer=str(1000 + i)) for i in range(30)]
    sel = subset.Selection(size=10, min_size=5, never=0)
    a, b = subset.pick(pool, sel, 1)[3]["ceiling"], subset.pick(pool, sel, 1)[3]["ceiling"]
    other = subset.pick(pool, sel, 2)[3]["ceiling"]
    assert a == b and a != other and len(a) == 10 and a == sorted(a, key=pool.index)


def test_a_subset_chosen_with_a_seed_the_grid_evaluates_with_is_refused():
    subset.check_seeds({"selection_seed": 1000}, range(3))
    with pytest.raises(ValueError, match="chosen with seed 2, one of the grid's evaluation seeds"):
        subset.check_seeds({"selection_seed": 2}, range(3))


def test_guess_rates_of_a_real_benchmark_by_hand():
    test = [{"answer": a} for a in ("2", "2", "2", "1/3")]
    rows = [{"answers": ["2", "5"]}, {"answers": ["2/6", None]}, {"answers": ["7", "7"]}, {"answers": ["2.0", "2"]}]
    g = benchmark_guesses(test, rows)
    # each "2" problem: the others' mode is "2" (two of three); the 1/3 problem's others' mode is "2": not its answer
    assert g["mode"] == 3 / 4 and g["mode_answer"] == "2"
    # shuffled: every problem's gold against the other problems' 6 samples; "2" (= "2.0") is 3 of the 8 samples, 2/6
    # (= 1/3) one; problem 0 holds one "2" of its own, problem 3 two
    hits = (3 - 1) + 3 + 3 + 1
    assert g["shuffled"] == pytest.approx(hits / 24)
    assert g["per_problem"] == [1.0, 1.0, 1.0, pytest.approx(1 / 6)] and g["guessable"]
    assert not benchmark_guesses([{"answer": "(1, 2)"}, {"answer": "(3, 4)"}],
                                 [{"answers": ["(5, 6)"] * 4}, {"answers": ["(5,6)"] * 4}])["guessable"]


def test_the_plan_projects_each_phase_and_names_what_to_shrink():
    t = planner.Timings("a card", load_s=60, first_step_s=100, step_s=20, problem_s=9, n=256, tokens=600)
    grid = planner.Grid(trainings=9, steps=200, evaluations=10, frontier=9, problems=250, pool=500,
                        done={"calibrate": 1800})
    rows = planner.project(grid, t)
    hours = {r["phase"].split(" (")[0]: r["hours"] for r in rows}
    assert hours["calibrate"] == 0.5 and hours["subset selection"] == pytest.approx((60 + 500 * 9) / 3600)
    assert hours["training"] == pytest.approx(9 * (60 + 100 + 199 * 20) / 3600)
    assert hours["evaluation"] == pytest.approx(10 * (60 + 250 * 9) / 3600)
    assert hours["frontier"] == pytest.approx(9 * (60 + 250 * 9) / 3600)
    assert planner.total_hours(rows) == pytest.approx(0.5 + (60 + 4500 + 9 * 4140 + 10 * 2310 + 9 * 2310) / 3600)
    planner.check(rows, 24.5)  # 24.3 h
    with pytest.raises(ValueError, match=r"the plan takes 24.3 h, over the budget of 24 h; its largest phase is training "
                                         r"\(200 steps a run\) \(10.3 h\): shrink --steps from 200 to 193, or") as e:
        planner.check(rows, 24)
    assert "\n" not in str(e.value)
    shrunk = planner.project(planner.Grid(9, 193, 10, 9, 250, 500, {"calibrate": 1800}), t)
    assert planner.total_hours(shrunk) <= 24 < planner.total_hours(planner.project(planner.Grid(9, 194, 10, 9, 250, 500,
                                                                                                {"calibrate": 1800}), t))
    with pytest.raises(ValueError, match="not even 1 of --steps fits beside the other phases. 14.0 h: shrink several"):
        planner.check(rows, 10)
    # evaluations at another n scale with it
    assert planner.project(grid, t, n=512)[1]["hours"] == pytest.approx((60 + 500 * 18) / 3600)


def test_a_llama_shaped_model_trains_and_evaluates_through_the_kit(tmp_path):
    """The replication arm's family: Llama's projection names take LoRA, its tied head survives the sampler's copy,
    its chat template (begin-of-text, headers, <|eot_id|>) frames the prompt, and every declared end id stops a row."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from minipsn.run.overrides import build_config
    from minipsn.sampling.rollout import end_ids
    from minipsn.tasks.local_models import tiny_model_dir
    from minipsn.tasks.models import load_policy
    from minipsn.training.train import train

    folder = tmp_path / "llama"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                         "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, 2],
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    sets = {"run.out": str(tmp_path / "run"), "run.steps": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4",
            "rollout.max_new_tokens": "16", "lora.rank": "4", "model.gradient_checkpointing": "false"}
    model, loaded = load_policy(build_config(model=str(folder), sets=sets))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert end_ids(model, loaded)[:2] == [tok.eos_token_id, 2]
    run = train(build_config(model=str(folder), method="psn-weight", sets={**sets, "noise.sigma": "0.01"}))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["noise/kl_seq"] > 0 for r in rows)
    prompt = json.loads((run / "samples.jsonl").read_text().splitlines()[0])["prompt"]
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")


@pytest.mark.slow
def test_the_subset_command_writes_a_local_dataset_that_heldout_evaluates(tmp_path):
    out = tmp_path / "sub"
    proc = cli("subset", "--model", "tiny", "--benchmarks", "synthetic", "--n", "8", "--problems", "40", "--size", "5",
               "--min-size", "2", "--max-pass1", "0.25", "--never", "2", "--max-guess", "1", "--out", str(out))
    assert "mode guess" in proc.stdout and "chosen with seed 1000" in proc.stdout
    lines = [json.loads(x) for x in (out / "subset.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["ceiling"] * 5 + ["never"] * 2
    assert all(0 < x["base_correct"] <= 2 for x in lines[:5]) and all(x["base_correct"] == 0 for x in lines[5:])
    from minipsn.evaluation.evaluate import benchmark_records
    from minipsn.run.overrides import build_config

    cfg = build_config(model="tiny", sets={"data.dataset": str(out / "subset.jsonl"),
                                           "data.test_split": str(out / "subset.jsonl"), "eval.problems": 0})
    records = benchmark_records("heldout", cfg)
    assert [r["kind"] for r in records] == [x["kind"] for x in lines] and records[0]["problem"] == lines[0]["problem"]
    bad = cli("subset", "--model", "tiny", "--benchmarks", "synthetic", "--n", "8", "--problems", "10", "--out",
              str(tmp_path / "few"), check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "fewer than --min-size 150" in bad.stderr


@pytest.mark.slow
def test_the_plan_command_refuses_a_plan_over_its_budget_in_one_line(tmp_path):
    # training dominates by far: the other phases take ~0.05 h here, 0.16 h on a loaded machine, far under 5 h
    proc = cli("plan", "--model", "tiny", "--steps", "100000", "--set", "eval.n=8", "--set", "eval.problems=40",
               "--budget-h", "5", "--out", str(tmp_path / "plan"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "error: the plan takes" in proc.stderr and "shrink --steps from 100000 to " in proc.stderr
    assert "training (100000 steps a run)" in proc.stdout and not (tmp_path / "plan" / "timing").exists()
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["budget_hours"] == 5 and plan["total_hours"] > 5 and plan["rows"][1]["jobs"] == 10  # base + 9 runs
    with pytest.raises(ValueError, match="the phases done already take"):
        planner.check([{"phase": "calibrate (done)", "jobs": 0, "hours": 2.0, "knob": None}], 1)


def recipe(*args):
    return subprocess.run([sys.executable, str(REPO / "examples" / "one_gpu_comparison.py"), "--model", "tiny",
                           "--profile", "smoke", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=3600)


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_on_tiny_in_its_smoke_profile(tmp_path):
    out = tmp_path / "one-gpu"
    refused = recipe("--out", str(out), "--budget-h", "0.0001")  # the plan comes before the grid
    last = refused.stderr.strip().splitlines()[-1]  # one line (before it only the libraries' deprecation warnings)
    assert refused.returncode == 1 and last.startswith("error: the plan takes"), refused.stderr[-2000:]
    assert "raise --budget-h" in last and "Traceback" not in refused.stderr
    assert (out / "subset" / "subset.jsonl").is_file() and not (out / "grid").exists()

    done = recipe("--out", str(out))  # the same folder: calibration and subset reused, then the grid
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cal = json.loads((out / "calibrate" / "calibrate.json").read_text())
    chosen = json.loads((out / "subset" / "subset.json").read_text())
    assert chosen["kept"]["ceiling"] == 20 and 1 <= chosen["kept"]["never"] <= 4 and chosen["selection_seed"] == 1000
    grid = out / "grid"
    high = json.loads((grid / "psn-weight@0.01-s2" / "config.json").read_text())
    from minipsn.experiments.calibrate import suggest

    assert high["noise"]["sigma"] == round(suggest(cal["rows"], 0.01)[0], 6) and high["noise"]["space"] == "weight"
    assert high["run"]["keep_adapters"] == "3" and high["data"]["test_split"] == chosen["file"]
    base = json.loads((grid / "base" / "eval" / "eval.json").read_text())
    assert base["seed"] == 0 and base["benchmarks"]["heldout"]["problems"] == sum(chosen["kept"].values())
    md = (grid / "compare.md").read_text()
    assert "| psn-weight@0.003 | 3 |" in md and "**Δ pass@k against grpo** (heldout, never;" in md
    front = json.loads((grid / "compare_frontier.json").read_text())
    assert list(front["points"]["psn-weight@0.01"]) == ["0", "3", "5"] and front["y"] == "pass@16, all questions of heldout"
    report = (grid / "report.md").read_text()
    assert "pass@16 1.000 under the selection seed" in report and "| psn-weight@0.01 |" in report
    assert "plan: tiny, smoke, 3 arms × 3 seeds" in done.stdout and "the day profile projected" in done.stdout
