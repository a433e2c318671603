"""Examples are programs: each runs on the tiny model here, so it cannot drift from the code; run twice,
each continues or reuses what the first run made."""
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_train import ENV

# examples import minipsn as an installed package (`make install` runs `pip install -e .`); the checkout on
# PYTHONPATH makes them run in a checkout that is not installed too
ENV = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), ENV.get("PYTHONPATH")]))}


def run_example(name, *args):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / name), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]  # no stray library warnings (is_gradient_checkpointing)
    return proc.stdout


def test_quickstart_trains_and_samples(tmp_path):
    out = run_example("quickstart.py", "2", str(tmp_path / "q"))
    assert out.count("Q: ") == 3 and "gold answer" in out
    assert (tmp_path / "q" / "adapter" / "adapter_config.json").is_file()


def test_custom_reward_is_used(tmp_path):
    run_example("custom_reward.py", "2", str(tmp_path / "c"))
    rows = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # the shaped reward differs from plain accuracy (brevity bonus / missing-box penalty)
    assert any(abs(r["reward/mean"] - r["reward/accuracy"]) > 1e-6 for r in rows)


def test_trl_reward_example_sums_its_format_reward_with_the_verifier(tmp_path):
    """examples/trl_reward.py: reward = 1·verifier + 0.5·format_reward, each function's mean logged by name."""
    run_example("trl_reward.py", "2", str(tmp_path / "t"))
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["reward/verifier"] == r["reward/accuracy"]
        assert r["reward/mean"] == pytest.approx(r["reward/verifier"] + 0.5 * r["reward/format_reward"], abs=1e-6)


@pytest.mark.slow
def test_gpu_recipes_run_on_the_tiny_model(tmp_path):
    env_tiny = {**ENV, "TINY": "1"}
    for name in ("qwen_gsm8k.py", "qwen_math.py"):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, str(REPO / "examples" / name), "", str(out)], cwd=REPO, env=env_tiny,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "Warning" not in proc.stderr, proc.stderr[-3000:]
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
        # the recipe's σ is the one calibrate suggested for the paper's noise KL of 0.003
        suggested = json.loads((out / "calibrate" / "calibrate.json").read_text())["suggested_sigma"]
        assert json.loads((out / "config.json").read_text())["noise"]["sigma"] == suggested
    assert (tmp_path / "qwen_math.py" / "eval" / "eval.json").is_file()
    # run again: the calibration is reused and the finished run resumes (nothing redone, no traceback)
    out = tmp_path / "qwen_gsm8k.py"
    calibrated = (out / "calibrate" / "calibrate.json").read_text()
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "qwen_gsm8k.py"), "", str(out)], cwd=REPO,
                          env=env_tiny, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"resumed {out} at step 2" in proc.stdout and (out / "calibrate" / "calibrate.json").read_text() == calibrated
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_psn_vs_grpo_example_writes_its_table(tmp_path):
    args = (str(tmp_path / "cmp"), "1", "1", "4", "4")
    out = run_example("psn_vs_grpo_tiny.py", *args)
    assert "| base (before RL) | 1 |" in out and "| grpo | 1 |" in out and "| psn-adaptive | 1 |" in out
    for f in ("compare.md", "compare.json", "compare.png", "compare.pdf", "compare_diff.png", "compare_diff.pdf"):
        assert (tmp_path / "cmp" / f).is_file()
    again = run_example("psn_vs_grpo_tiny.py", *args)  # a rerun reuses every finished job
    assert again.count("done, reusing") == 4 and ": training " not in again  # no job trained again


def test_psn_vs_grpo_example_takes_each_argument_it_names():
    """[OUT] [STEPS] [SEEDS] [N] [PROBLEMS]: any prefix of them, the rest at their defaults."""
    spec = importlib.util.spec_from_file_location("psn_vs_grpo_tiny", REPO / "examples" / "psn_vs_grpo_tiny.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # defines main() and parse(); runs nothing
    assert example.parse([]) == ("runs/psn-vs-grpo-tiny", 40, 3, 64, 100)
    assert example.parse(["o", "5", "2", "8"]) == ("o", 5, 2, 8, 100)  # the 4 arguments that used to fail
    assert example.parse(["o", "5", "2", "8", "9"]) == ("o", 5, 2, 8, 9)
    for bad in (["o", "x"], ["o", "1", "1", "1", "1", "1"]):
        with pytest.raises(SystemExit, match="error: "):
            example.parse(bad)


def test_exploration_example_refuses_bad_arguments_in_one_line(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("exploration", REPO / "examples" / "exploration.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # defines main(); runs nothing
    for argv in (["tiny", str(tmp_path / "a"), "abc"], ["tiny", str(tmp_path / "b"), *"111111"], ["nosuch", str(tmp_path / "c")]):
        monkeypatch.setattr(sys, "argv", ["exploration.py", *argv])
        with pytest.raises(SystemExit, match="error: ") as exc:
            example.main()
        assert "\n" not in str(exc.value) and not (tmp_path / argv[1].rsplit("/", 1)[-1]).exists(), exc.value


def _generator_calls(path):
    """([(line, device argument or None)] of every `torch.Generator(...)` call, {name: values assigned}) of a file."""
    import ast

    tree = ast.parse(path.read_text())
    assigned, calls = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    assigned.setdefault(t.id, []).append(node.value)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.Generator":
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "device"), None)
            calls.append((node.lineno, arg))
    return calls, assigned


def _from_a_tensor(arg, assigned) -> bool:
    """`x.device` (a parameter's, the model's, the trainer's), or a name only ever assigned one."""
    import ast

    if isinstance(arg, ast.Attribute) and arg.attr == "device":
        return True
    if isinstance(arg, ast.Name) and arg.id in assigned:
        return all(_from_a_tensor(v, {}) for v in assigned[arg.id])
    return False


def test_every_generator_is_made_on_the_models_device():
    """A bare `torch.Generator()` is a CPU generator: sampling on CUDA with it fails. Static check, so it
    runs without a GPU: every call in examples/ and minipsn/ passes a device taken from a tensor."""
    files = sorted((REPO / "examples").glob("*.py")) + sorted((REPO / "minipsn").rglob("*.py"))
    seen, bad = 0, []
    for f in files:
        calls, assigned = _generator_calls(f)
        seen += len(calls)
        bad += [f"{f.relative_to(REPO)}:{line}" for line, arg in calls if not _from_a_tensor(arg, assigned)]
    assert seen >= 5  # quickstart, train, evaluate (2), noise, bench: the check sees them
    assert not bad, f"torch.Generator without the model's device at {bad}"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="calibrates 3 grids and trains 9 arms (~3 min): MINIPSN_SLOW=1")
def test_the_exploration_example_runs_every_arm_on_the_tiny_model(tmp_path):
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "exploration.py"), "tiny", str(out), "1", "1", "2",
                           "4", "1"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "compare.json").read_text())
    assert result["methods"] == ["grpo", "psn", "psn-adaptive", "psn-kl", "psn-paper", "psn-weight", "temperature",
                                 "passk", "psn-passk"]
    cfgs = {m: json.loads((out / f"{m}-s0" / "config.json").read_text()) for m in result["methods"]}
    cal = json.loads((out / "calibrate" / "calibrate.json").read_text())
    assert cfgs["psn-weight"]["noise"]["space"] == "weight"
    assert cfgs["psn-weight"]["noise"]["sigma"] == round(cal["weight"]["suggested_sigma"], 4)
    assert cfgs["psn"]["noise"]["sigma"] == round(cal["suggested_sigma"], 4)
    assert cfgs["temperature"]["rollout"]["temperature"] == round(cal["temperature"]["suggested_temperature"], 3)
    assert set(result["paired"]["benchmarks"]["synthetic"]["kinds"]["all"]) == {"base", *result["methods"]} - {"grpo"}
    assert (out / "compare_diff.png").is_file()


def _example(monkeypatch, name):
    """examples/NAME.py as a module (it defines run() and main(); runs nothing), with examples/ on the path: the
    experiments import each other's recipes."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _route_experiment(monkeypatch):
    return _example(monkeypatch, "route_experiment")


def test_route_experiment_keep_difference_pairs_problems_and_refuses_an_unknown_part(tmp_path, monkeypatch):
    example = _route_experiment(monkeypatch)
    a, b = [(5, 10), (0, 0), (2, 4)], [(2, 10), (1, 2), (2, 4)]
    d, lo, hi = example.keep_difference(a, b)
    assert d == pytest.approx(7 / 14 - 5 / 16) and lo <= d <= hi
    assert example.keep_difference(b, b) == (0.0, 0.0, 0.0)  # the same problems resampled on both sides
    many = [(8, 10)] * 30, [(2, 10)] * 30  # every problem keeps 80 % against 20 %: the interval excludes 0
    assert example.keep_difference(*many)[1] == pytest.approx(0.6)
    monkeypatch.setattr(sys, "argv", ["route_experiment.py", "arm", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="error: no part 'arm': calibrate, probe") as exc:
        example.main()
    assert "\n" not in str(exc.value) and not (tmp_path / "x").exists()  # refused before anything is calibrated


def test_experiment_command_line_passes_other_code_and_refuses_extra_arguments(tmp_path, monkeypatch):
    example, calls = _route_experiment(monkeypatch), []
    monkeypatch.setattr(example, "run", lambda *args: calls.append(args))
    for argv in (["extras", str(tmp_path), "3", "--other-code"], ["--other-code", "extras"], ["report"]):
        monkeypatch.setattr(sys, "argv", ["route_experiment.py", *argv])
        example.main()
    assert calls == [("extras", tmp_path, 3, 2, True), ("extras", Path("runs/route-experiment"), 5, 2, True),
                     ("report", Path("runs/route-experiment"), 5, 2, False)]
    for argv in (["extras", "out", "5", "2", "more"], ["extras", "out", "five"], ["--other-code"],
                 ["extras", "--othercode"]):  # a misspelt flag is not taken for OUT
        monkeypatch.setattr(sys, "argv", ["route_experiment.py", *argv])
        with pytest.raises(SystemExit, match=r"usage: python examples/route_experiment.py PART .*\[--other-code\]"):
            example.main()


def test_route_experiment_probe_grpo_probes_the_kept_adapters(tmp_path, monkeypatch):
    import minipsn.experiments.preflight as preflight

    example, calls = _route_experiment(monkeypatch), []
    run = tmp_path / "grid" / "grpo-s0"
    for folder in (run / "adapter", run / "adapters" / "step-20" / "adapter", run / "adapters" / "step-40" / "adapter"):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")  # what a kept adapter's folder holds (train.py)
    dose = {"lora": 0.03, "weight": 0.02, "temperature": 1.3, "tokens": 59}
    monkeypatch.setattr(example, "doses", lambda *a: {0.003: dose, 0.03: dose})
    monkeypatch.setattr(preflight, "preflight", lambda cfg, settings, draws, out, adapter, kind, other_code: calls.append(
        (settings, draws, out.name, adapter, kind)))
    example.run("probe-grpo", tmp_path, 5, 2)
    assert [c[2] for c in calls] == ["probe-grpo-20", "probe-grpo-40", "probe-grpo-60"]
    assert all((Path(c[3]) / "adapter_config.json").is_file() for c in calls)  # the adapters, not their step folders
    assert calls[0][:2] == (["clean", "lora:0.03", "weight:0.02", "temperature:1.3"], [256]) and calls[0][4] == "neg"


def test_route_experiment_builds_runs_the_arms_on_another_build_at_its_own_sigma_for_the_dose(tmp_path, monkeypatch):
    """The dose is a noise KL per token: on route-b1 psn (a draw per step and per rollout) and temperature take the
    σ and T of route-b1's own calibration (OUT/calibrate-route-b1), not the shipped build's; Pass@k runs there too."""
    example, calls, asked = _route_experiment(monkeypatch), [], []
    shipped = {"lora": 0.033471, "weight": 0.01931, "temperature": 1.33079, "tokens": 59}
    own = {"lora": 0.041234, "weight": 0.0222, "temperature": 1.40123, "tokens": 61}

    def doses(out, model="route", kls=(0.003, 0.03), other_code=False, folder="calibrate"):
        asked.append((model, kls, folder, other_code))
        return {kl: own if model == "route-b1" else shipped for kl in kls}

    monkeypatch.setattr(example, "doses", doses)
    monkeypatch.setattr(example, "compare", lambda model, arms, seeds, out, sets, **kw: calls.append(
        (model, arms, seeds, out, kw["per_method"], kw["other_code"])))
    example.run("builds", tmp_path, 5, 2, other_code=True)
    assert ("route-b1", (0.03,), "calibrate-route-b1", True) in asked
    arms = ["grpo", "psn", "psn-rollout=psn", "temperature", "passk", "psn-weight", "psn-weight-rollout=psn-weight", "c3po"]
    assert calls == [("route-b1", arms, 5, tmp_path / "grid-route-b1",
                      {"psn": {"noise.sigma": 0.04123}, "psn-rollout": {"noise.sigma": 0.04123, "noise.granularity": "rollout"},
                       "temperature": {"rollout.temperature": 1.4012}, "psn-weight": {"noise.sigma": 0.0222},
                       "psn-weight-rollout": {"noise.sigma": 0.0222, "noise.granularity": "rollout"},
                       "c3po": {"noise.sigma": 0.04123}}, True)]


def test_route_experiment_low_trains_the_second_dose_at_its_own_sigma_after_grpo(tmp_path, monkeypatch):
    """The low part: the grid's arms plus psn (per step and per rollout), psn-weight and temperature at 0.003 per
    token, with that dose's σ and T (not the 0.03 arms'), right after GRPO so they run first; 0.03's arms keep theirs."""
    example, calls = _route_experiment(monkeypatch), []
    low = {"lora": 0.021395, "weight": 0.0082124, "temperature": 1.15641, "tokens": 59}
    high = {"lora": 0.033471, "weight": 0.01931, "temperature": 1.33079, "tokens": 59}
    monkeypatch.setattr(example, "doses", lambda *a: {0.003: low, 0.03: high})
    monkeypatch.setattr(example, "compare", lambda model, arms, seeds, out, sets, **kw: calls.append(
        (model, arms, out.name, kw["ref"], kw["per_method"])))
    example.run("low", tmp_path, 5, 2)
    (model, arms, out, ref, per_method), = calls
    assert (model, out, ref) == ("route", "grid", "grpo")
    assert arms == ["grpo", "psn@0.003=psn", "psn-rollout@0.003=psn", "psn-weight@0.003=psn-weight",
                    "temperature@0.003=temperature", "psn", "psn-weight", "temperature", "psn-rollout=psn",
                    "psn-weight-rollout=psn-weight", "passk", "c3po"]
    assert per_method["psn@0.003"] == {"noise.sigma": 0.0214} and per_method["psn"] == {"noise.sigma": 0.03347}
    assert per_method["psn-rollout@0.003"] == {"noise.sigma": 0.0214, "noise.granularity": "rollout"}
    assert per_method["psn-weight@0.003"] == {"noise.sigma": 0.00821}
    assert per_method["temperature@0.003"] == {"rollout.temperature": 1.1564}
    assert per_method["temperature"] == {"rollout.temperature": 1.3308}


def test_route_experiment_frontier_evaluates_each_grid_it_finds(tmp_path, monkeypatch):
    """Each grid found (the shipped build's, route-b1's): every arm it began, in its order; no grid: one line."""
    import minipsn.experiments.frontier as frontier

    example, calls = _route_experiment(monkeypatch), []
    monkeypatch.setattr(frontier, "frontier", lambda model, arms, seeds, out, steps, sets, kind, workers: calls.append(
        (model, arms, out.name, steps, sets, kind)))
    with pytest.raises(ValueError, match="grid/compare.json is missing: run the arms part"):
        example.run("frontier", tmp_path, 5, 2)
    build_arms = ["grpo", "psn", "psn-rollout", "temperature", "passk", "psn-weight", "psn-weight-rollout", "c3po"]
    for grid, arms in (("grid-route-b1", build_arms), ("grid", ["grpo", "psn@0.003", "psn", "passk"])):
        for arm in arms:
            (tmp_path / grid / f"{arm}-s0").mkdir(parents=True)
        methods = [*arms, "not-begun"]  # in the grid, no folder yet: nothing to evaluate
        (tmp_path / grid / "compare.json").write_text(json.dumps({"methods": methods, "overrides": {"run.keep_adapters": "20,40"}}))
        calls.clear()
        example.run("frontier", tmp_path, 5, 2)
    sets = {"run.keep_adapters": "20,40"}
    assert calls == [("route", ["grpo", "psn@0.003", "psn", "passk"], "grid", [20, 40], sets, "neg"),
                     ("route-b1", build_arms, "grid-route-b1", [20, 40], sets, "neg")]
    assert [a.split("=")[0] for a in example.BUILD_ARMS] == build_arms


def test_ceiling_experiment_builds_runs_the_best_arm_at_each_builds_own_sigma_for_its_dose(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("ceiling_experiment", REPO / "examples" / "ceiling_experiment.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # psn at 0.1 has the largest Δ but its training broke (its mix pass@1 ends below the base's): not a candidate
    diffs = {"psn": 1.1, "psn@0.03": 3.8, "psn@0.1": 5.0, "psn-weight": 1.8, "psn-weight@0.03": 3.3, "temperature": -0.3}
    final = {"base": 0.30, **{f"{arm}-s0": 0.40 for arm in diffs}, "psn@0.1-s0": 0.25}  # the final kind's pass@1
    for run, p in final.items():
        (tmp_path / "grid" / run / "eval").mkdir(parents=True)
        (tmp_path / "grid" / run / "eval" / "eval.json").write_text(json.dumps({"benchmarks": {"synthetic": {"kinds": {
            "final": {"pass@k": {"1": p}}, "steps": {"pass@k": {"1": 0.01}}}}}, "config": {"data": {"steps_share": 0.3}}}))
    (tmp_path / "grid" / "compare.json").write_text(json.dumps({"seeds": 1, "paired": {"benchmarks": {"synthetic": {
        "kinds": {"steps": {arm: {"diff": [0.0, d]} for arm, d in diffs.items()}}}}}}))
    assert example.best_doses(tmp_path) == {"psn": 0.03, "psn-weight": 0.03, "temperature": 0.003}
    sigma = {"ceiling": 0.035, "ceiling-b1": 0.041, "ceiling-b2": 0.029}  # each build its own σ at a KL of 0.03
    asked, calls = [], []

    def doses(out, model="ceiling", kls=example.DOSES, other_code=False, folder="calibrate"):
        asked.append((model, folder))
        return {kl: {"lora": sigma[model], "weight": 0.018, "temperature": 1.35, "tokens": 37} for kl in kls}

    monkeypatch.setattr(example, "doses", doses)
    monkeypatch.setattr(example, "compare", lambda model, arms, seeds, out, sets, **kw: calls.append(
        (model, arms, out.name, kw["per_method"])))
    example.run("builds", tmp_path, 5, 2)
    assert asked[-2:] == [("ceiling-b1", "calibrate-ceiling-b1"), ("ceiling-b2", "calibrate-ceiling-b2")]
    assert calls == [(b, ["grpo", "psn@0.03=psn", "passk"], f"grid-{b}", {"psn@0.03": {"noise.sigma": sigma[b]}})
                     for b in ("ceiling-b1", "ceiling-b2")]
    # temperature at 0.1 lifts more than the best parameter noise: the builds run both, each at its build's own value
    diffs["temperature@0.1"] = 6.0
    (tmp_path / "grid" / "temperature@0.1-s0" / "eval").mkdir(parents=True)
    (tmp_path / "grid" / "temperature@0.1-s0" / "eval" / "eval.json").write_text(
        (tmp_path / "grid" / "psn-s0" / "eval" / "eval.json").read_text())
    (tmp_path / "grid" / "compare.json").write_text(json.dumps({"seeds": 1, "paired": {"benchmarks": {"synthetic": {
        "kinds": {"steps": {arm: {"diff": [0.0, d]} for arm, d in diffs.items()}}}}}}))
    calls.clear()
    example.run("builds", tmp_path, 5, 2)
    assert calls == [(b, ["grpo", "psn@0.03=psn", "temperature@0.1=temperature", "passk"], f"grid-{b}",
                      {"psn@0.03": {"noise.sigma": sigma[b]}, "temperature@0.1": {"rollout.temperature": 1.35}})
                     for b in ("ceiling-b1", "ceiling-b2")]


def _two_problem_evaluation(folder, right, other_pass1, kind, other, share):
    """An eval folder of two problems of `kind` at n = 4 (problem a's `right`, b never right) and `other`'s pass@1."""
    (folder / "samples").mkdir(parents=True)
    rows = [{"id": "a", "kind": kind, "correct": right}, {"id": "b", "kind": kind, "correct": [0] * 4}]
    (folder / "samples" / "synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"meta": {}}, *rows]))
    by_kind = {other: {"pass@k": {"1": other_pass1}}, kind: {"pass@k": {"1": sum(right) / 8}}}
    (folder / "eval.json").write_text(json.dumps({"benchmarks": {"synthetic": {"kinds": by_kind}},
                                                  "config": {"data": {share: 0.3}}}))


@pytest.mark.parametrize("kinds,share", [(("final", "steps"), "steps_share"), (("pos", "neg"), "neg_share")])
def test_ceiling_report_frontier_table_pairs_each_arms_last_step_with_grpos_kept_step(tmp_path, monkeypatch, kinds, share):
    """An arm's step 60 against GRPO's step 40 on the same seeds and problems of the ceiling's kind (the ceiling's steps
    questions, the route's neg problems): here it reaches one problem GRPO's step 40 lost on every seed (Δ pass@4 =
    +50 points, 2 problems), and the mix pass@1 of each side is the 70/30 mix of the two kinds."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("ceiling_report", REPO / "examples" / "ceiling_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    grid, (other, kind) = tmp_path / "grid", kinds

    evaluation = functools.partial(_two_problem_evaluation, kind=kind, other=other, share=share)

    for s in (0, 1):
        evaluation(grid / f"grpo-s{s}" / "eval-step40", [0] * 4, 0.5)
        evaluation(grid / f"psn-s{s}" / "eval", [1, 0, 0, 0], 0.4)
    c = {"seeds": 2, "summary": {"base": {}, "grpo": {}, "psn": {}}}
    header, _, row = report.frontier_table(grid, c, kind=kind).splitlines()
    assert header == "| arm (last step) | mix pass@1 | Δ@4 vs grpo at step 40 (mix 35.0) |"  # 0.7·0.5 + 0.3·0
    assert row.startswith("| psn | 31.7 | +50.0 [")  # 0.7·0.4 + 0.3·(1/8) = 0.3175
    assert report.frontier_table(grid, c, steps=(20,), kind=kind) == ""  # GRPO's step 20 not evaluated: no table


def test_ceiling_report_same_step_table_pairs_each_kept_step_with_grpos_and_skips_arms_not_evaluated(tmp_path,
                                                                                                     monkeypatch):
    """psn's step 20 reaches problem a on every seed where GRPO's step 20 never does (Δ pass@4 = +50 points); at step 40
    they are equal; temperature's kept steps were not evaluated, so it has no row."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("ceiling_report", REPO / "examples" / "ceiling_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    grid = tmp_path / "grid"
    evaluation = functools.partial(_two_problem_evaluation, other_pass1=0.5, kind="neg", other="pos", share="neg_share")
    for s in (0, 1):
        evaluation(grid / f"grpo-s{s}" / "eval-step20", [0] * 4)
        evaluation(grid / f"psn-s{s}" / "eval-step20", [1, 0, 0, 0])
        for arm in ("grpo", "psn"):
            evaluation(grid / f"{arm}-s{s}" / "eval-step40", [1, 0, 0, 0])
    c = {"seeds": 2, "summary": {"base": {}, "grpo": {}, "psn": {}, "temperature": {}}}
    header, _, row = report.same_step_table(grid, c, kind="neg").splitlines()
    assert header == "| arm | Δ@4 vs grpo at step 20 | Δ@4 vs grpo at step 40 |"
    assert row.startswith("| psn | +50.0 [") and row.endswith("| +0.0 [+0.0, +0.0] |")
    assert report.same_step_table(grid, c, steps=(60,), kind="neg") == ""  # no kept step 60: no table


def test_ceiling_report_builds_table_reads_the_arm_the_builds_ran_not_todays_best(tmp_path, monkeypatch):
    """The builds part ran psn@0.03 and temperature@0.1; a dose added later (psn-weight@0.1) has a larger Δ on the
    shipped grid. The table still pairs the builds on the arms they ran, and its across-builds row pools the three
    builds' Δ of each."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("ceiling_report", REPO / "examples" / "ceiling_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)

    def grid(folder, diffs):
        folder.mkdir()
        cell = lambda d: {"k": [256], "diff": [d], "se": [0.01], "low": [d - 0.02], "high": [d + 0.02]}  # noqa: E731
        summary = {a: {"kinds": {"steps": {"pass@k": {"256": [p, 0.0]}}}} for a, p in (("base", 0.6), ("grpo", 0.1))}
        (folder / "compare.json").write_text(json.dumps({"summary": summary, "paired": {"benchmarks": {"synthetic": {
            "kinds": {"steps": {a: cell(d) for a, d in diffs.items()}}}}}}))

    grid(tmp_path / "grid", {"base": 0.5, "psn@0.03": 0.04, "psn-weight@0.1": 0.2, "temperature@0.1": 0.10, "passk": 0.27})
    grid(tmp_path / "grid-ceiling-b1", {"base": 0.5, "psn@0.03": 0.02, "temperature@0.1": 0.0, "passk": 0.53})
    grid(tmp_path / "grid-ceiling-b2", {"base": 0.5, "psn@0.03": 0.03, "temperature@0.1": 0.05, "passk": 0.32})
    lines = report.builds_table(tmp_path).splitlines()
    assert lines[0] == "| build | base pass@256 | grpo pass@256 | Δ psn@0.03 | Δ temperature@0.1 | Δ passk |"
    assert lines[2] == "| ceiling (b0) | 60.0 | 10.0 | +4.0 [+2.0, +6.0] ✱ | +10.0 [+8.0, +12.0] ✱ | +27.0 [+25.0, +29.0] ✱ |"
    assert lines[-1].startswith("| across builds (random effect) | | | +3.0 [")  # equal SEs: the mean of 4, 2, 3
    assert "| +5.0 [" in lines[-1]  # temperature@0.1: the mean of 10, 0, 5


def test_route_experiment_probe_table_reads_the_counts_and_marks_a_separated_keep_rate(tmp_path, monkeypatch):
    example = _route_experiment(monkeypatch)
    folder = tmp_path / "probe"
    (folder / "samples").mkdir(parents=True)
    rows = {"clean-D1": [(1, 9), (2, 8)] * 10, "lora-0.02-D256": [(9, 1), (8, 2)] * 10,
            "weight-0.01-D256": [(3, 7), (0, 10)] * 10, "temperature-1.2-D1": [(2, 8), (2, 8)] * 10}
    results = []
    for name, counts in rows.items():
        (folder / "samples" / f"{name}.jsonl").write_text("".join(
            json.dumps({"routes": {"rare-kept": k, "rare-broken": b, "common": 50, "other": 0}}) + "\n" for k, b in counts))
        setting, draws = name.rsplit("-D", 1)
        kept, broken = sum(k for k, _ in counts), sum(b for _, b in counts)
        results.append({"setting": setting.replace("-", ":", 1), "draws": int(draws), "pass@k": {"1": 0.01, "256": 0.5},
                        "route": {"rare_rate": 0.1, "routes": {"rare-kept": kept, "rare-broken": broken}}})
    (folder / "preflight.json").write_text(json.dumps({"problems": 20, "n": 256, "adapter": None, "results": results}))
    clean, lora, weight, hot = example.probe_table(folder).splitlines()[-4:]
    assert clean.startswith("| clean | 1 |") and "| 200 | 30 (15.0 %) |  |  |" in clean
    # 85 % kept against clean's 15 % and the temperature's 20 %: both intervals exclude 0
    assert "| 200 | 170 (85.0 %) | +70.0 [" in lora and "✱ | +65.0 [" in lora and lora.endswith("✱ |")
    # as many kept as clean, +2 on half the problems and −2 on the others: the interval straddles 0
    assert "| 200 | 30 (15.0 %) | +0.0 [-" in weight and "| -5.0 [" in weight and "✱" not in weight
    assert hot.startswith("| temperature:1.2 | 1 |") and hot.endswith("|  |")  # no temperature column of its own


def test_route_experiment_keep_interval_covers_under_data_like_the_probes(monkeypatch):
    """The keep-rate interval's coverage, simulated: 50 problems whose open rates (mostly a few %, some 30 %) and keep
    rates (0–90 %) differ as the probe's do, two settings with the same per-problem rates (no difference) or the
    first keeping 10 points less; 200 simulations each. Measured on the probe's own rates: 94.5 % and 96 %."""
    import random

    example = _route_experiment(monkeypatch)
    rng = random.Random(0)
    opens = [rng.choice([0.0, 0.01, 0.03, 0.08, 0.3]) for _ in range(50)]
    keeps = [rng.uniform(0.0, 0.9) for _ in range(50)]

    def draw(shift):
        out = []
        for o, k in zip(opens, keeps):
            opened = sum(rng.random() < o for _ in range(256))
            out.append((sum(rng.random() < max(0.0, k + shift) for _ in range(opened)), opened))
        return out

    for shift in (0.0, -0.1):
        truth = sum(o * (max(0.0, k + shift) - k) for o, k in zip(opens, keeps)) / sum(opens)
        hits = sum(lo <= truth <= hi for lo, hi in (example.keep_difference(draw(shift), draw(0.0), reps=500, seed=s)[1:]
                                                    for s in range(200)))
        assert hits >= 0.9 * 200, (shift, hits)


def test_ceiling_report_preflight_table_pairs_each_setting_with_clean_sampling_on_its_problems(tmp_path, monkeypatch):
    """Three steps questions × 256: clean sampling solves none of problem a; the adapter's noise solves it once, so
    its Δ pass@256 is +1/3 (the interval over 3 problems holds 0), and the KL comes from the calibration's σ."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("ceiling_report", REPO / "examples" / "ceiling_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    folder = tmp_path / "preflight"
    (folder / "samples").mkdir(parents=True)
    results = []
    for setting, space, value, d, right in (("clean", "clean", 0.0, 1, [0, 256, 3]), ("lora:0.035", "lora", 0.035, 256, [1, 256, 3]),
                                            ("temperature:1.3471", "temperature", 1.3471, 1, [0, 256, 3])):
        rows = [{"id": i, "kind": "steps", "correct": [1] * c + [0] * (256 - c)} for i, c in zip("abc", right)]
        (folder / "samples" / f"{setting.replace(':', '-')}-D{d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        results.append({"setting": setting, "space": space, "value": value, "draws": d,
                        "pass@k": {"1": 0.3, "16": 0.5, "256": sum(c > 0 for c in right) / 3}})
    (folder / "preflight.json").write_text(json.dumps({"problems": 3, "n": 256, "results": results}))
    # the part writes each value with 5 digits: T 1.347114 from the calibration is the setting temperature:1.3471
    found = {0.03: {"lora": 0.035, "weight": 0.018, "temperature": 1.347114, "tokens": 37}}
    clean, lora, hot = report.preflight_part(tmp_path, tmp_path, found).splitlines()[-3:]
    assert clean.startswith("| clean | 0.0 | 1 | 30.0 | 50.0 | 66.7 |  |")
    assert lora.startswith("| lora:0.035 | 0.03 | 256 | 30.0 | 50.0 | 100.0 | +33.3 [-") and "✱" not in lora
    assert hot.startswith("| temperature:1.3471 | 0.03 | 1 | 30.0 | 50.0 | 66.7 | +0.0 [")
    (folder / "samples" / "lora-0.035-D256.jsonl").write_text(json.dumps({"id": "z", "correct": [0] * 256}) + "\n" * 3)
    with pytest.raises(ValueError, match="other problems than clean sampling's"):
        report.preflight_part(tmp_path, tmp_path, found)


def test_ceiling_experiment_frontier_keeps_the_arms_an_earlier_run_evaluated(tmp_path, monkeypatch):
    """temperature's best dose moved from 0.03 to 0.1 after its kept steps were evaluated: the frontier part evaluates
    temperature@0.1 and keeps temperature@0.03 in compare_frontier.json (reused, nothing evaluated again)."""
    import minipsn.experiments.frontier as frontier

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("ceiling_experiment", REPO / "examples" / "ceiling_experiment.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    dose = {"lora": 0.035, "weight": 0.018, "temperature": 1.35, "tokens": 37}
    monkeypatch.setattr(example, "doses", lambda *a, **k: {kl: dose for kl in example.DOSES})
    monkeypatch.setattr(example, "best_doses", lambda out: {"psn": 0.03, "psn-weight": 0.03, "temperature": 0.1})
    methods = ["grpo", "psn", "passk", "psn@0.03", "psn-weight@0.03", "temperature@0.03", "temperature@0.1", "c3po2"]
    monkeypatch.setattr(frontier, "read_grid", lambda out: {"methods": methods})
    for arm in ("grpo", "passk", "psn@0.03", "temperature@0.03"):
        (tmp_path / "grid" / f"{arm}-s0" / "eval-step20").mkdir(parents=True)
        (tmp_path / "grid" / f"{arm}-s0" / "eval-step20" / "eval.json").write_text("{}")
    (tmp_path / "grid" / "compare.json").write_text(json.dumps({"overrides": {"run.keep_adapters": "20,40"}}))
    calls = []
    monkeypatch.setattr(frontier, "frontier", lambda model, arms, seeds, out, steps, sets, workers: calls.append(arms))
    example.run("frontier", tmp_path, 5, 2)
    assert calls == [["grpo", "passk", "psn@0.03", "psn-weight@0.03", "temperature@0.1", "temperature@0.03"]]


def test_ceiling_experiment_preflight_testbed_runs_testbed_v2_at_its_own_calibration(tmp_path, monkeypatch):
    """The testbed part asks testbed v2 (every problem a tuple) with σ and T from its own calibration
    (OUT/calibrate-testbed), a draw per sample, 100 problems, into OUT/preflight-testbed."""
    import minipsn.experiments.preflight as preflight

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    spec = importlib.util.spec_from_file_location("ceiling_experiment", REPO / "examples" / "ceiling_experiment.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    asked, calls = [], []

    def doses(out, model="ceiling", kls=example.DOSES, other_code=False, folder="calibrate", weight_sigmas="0.04"):
        asked.append((model, kls, folder))
        sigma = 0.02 if model == "testbed" else 0.035
        # testbed v2's weights measured σ 0.025 at 0.03 per token: 0.1 needs about 0.046, beyond a grid ending at 0.04
        top = max(float(x) for x in weight_sigmas.split(","))
        return {kl: {"lora": sigma * 10 * kl, "weight": 0.01 if kl < 0.1 or top > 0.046 else None,
                     "temperature": 1 + kl, "tokens": 40} for kl in kls}

    monkeypatch.setattr(example, "doses", doses)
    monkeypatch.setattr(preflight, "preflight", lambda cfg, settings, draws, out, other_code: calls.append(
        (cfg.model.name, (cfg.eval.problems, cfg.eval.n), settings, draws, out.name, other_code)))
    example.run("preflight-testbed", tmp_path, 5, 2, other_code=True)
    assert asked[-1] == ("testbed", (0.003, 0.03, 0.1), "calibrate-testbed")
    name, problems, settings, draws, folder, other = calls[0]
    assert (problems, draws, folder, other) == ((100, 256), [256], "preflight-testbed", True)  # n = 256, not the preset's 16
    assert settings == ["clean", "lora:0.0006", "weight:0.01", "temperature:1.003", "lora:0.006", "weight:0.01",
                        "temperature:1.03", "lora:0.02", "weight:0.01", "temperature:1.1"] and "testbed" in name
    # the ceiling's own grid (GRIDS) stops at 0.04: the testbed's calibration reaches the weights at 0.1 with a wider one
    assert doses(tmp_path, "testbed", (0.1,), weight_sigmas=example.GRIDS["weight_sigmas"])[0.1]["weight"] is None


def test_ceiling_experiment_preflight_grpo_runs_the_base_and_each_seeds_kept_adapters(tmp_path, monkeypatch):
    """The base (step 0), then seeds 0–2's adapters at steps 20 and 40 and the final one, each under clean sampling and
    the 0.03 dose's settings (a draw per sample) on the first 50 steps questions; a missing adapter names the part."""
    import minipsn.experiments.preflight as preflight

    example = _example(monkeypatch, "ceiling_experiment")
    dose = {"lora": 0.035012, "weight": 0.018, "temperature": 1.347114, "tokens": 37}
    monkeypatch.setattr(example, "doses", lambda *a, **k: {kl: {**dose, "lora": kl} for kl in example.DOSES} | {0.03: dose})
    calls = []
    monkeypatch.setattr(preflight, "preflight", lambda cfg, settings, draws, out, adapter, kind, other_code: calls.append(
        (cfg.model.name, cfg.eval.problems, settings, draws, out.relative_to(tmp_path).as_posix(), adapter, kind)))
    for s in range(4):
        run = tmp_path / "grid" / f"grpo-s{s}"
        for folder in (run / "adapter", run / "adapters" / "step-20" / "adapter", run / "adapters" / "step-40" / "adapter"):
            folder.mkdir(parents=True)
    example.run("preflight-grpo", tmp_path, 5, 2)  # 5 seeds in the grid: the part probes 3
    assert [c[4] for c in calls] == ["preflight-grpo/step0"] + [f"preflight-grpo/s{s}-step{t}" for s in range(3)
                                                                for t in (20, 40, 60)]
    assert calls[0][5] is None and calls[3][5] == str(tmp_path / "grid" / "grpo-s0" / "adapter")
    assert calls[1][5] == str(tmp_path / "grid" / "grpo-s0" / "adapters" / "step-20" / "adapter")
    assert calls[0][1:4] == (100, ["clean", "lora:0.035012", "weight:0.018", "temperature:1.3471"], [256])
    assert {c[0] for c in calls} == {"ceiling"} and {c[6] for c in calls} == {"steps"}
    (tmp_path / "grid" / "grpo-s1" / "adapters" / "step-40" / "adapter").rmdir()
    calls.clear()
    monkeypatch.setattr(example, "doses", lambda *a, **k: pytest.fail("calibrated before the adapters were found"))
    with pytest.raises(ValueError, match="grpo-s1/adapters/step-40/adapter is missing: run the arms part first"):
        example.run("preflight-grpo", tmp_path, 5, 2)
    assert calls == []


def test_ceiling_report_checkpoint_table_pairs_noise_with_clean_at_the_same_checkpoints(tmp_path, monkeypatch):
    """Two seeds' checkpoints at step 20, 4 steps questions × 256: clean boxes a tuple in 2 samples a problem, the
    adapter's noise in 10 on seed 0 and 6 on seed 1, so its share is 3.12 % against 0.78 %, Δ +2.34 points; clean
    solves problem a on seed 0 only, the noise on both: Δ pass@256 +12.5 points (1 of 8 cells)."""
    report = _example(monkeypatch, "ceiling_report")

    def write(folder, boxed, right):
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        results = []
        for (setting, d), box, ok in zip((("clean", 1), ("lora:0.035", 256)), boxed, right):
            rows = [{"id": i, "kind": "steps", "gold": "(1, 2)", "answers": ["(1, 2)"] * c + ["(3, 4)"] * (box - c)
                     + ["7"] * (256 - box), "correct": [1] * c + [0] * (256 - c)} for i, c in zip("abcd", [ok, 0, 0, 0])]
            (folder / "samples" / f"{setting.replace(':', '-')}-D{d}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows))
            results.append({"setting": setting, "draws": d})
        (folder / "preflight.json").write_text(json.dumps({"results": results}))

    write(tmp_path / "preflight-grpo" / "s0-step20", (2, 10), (1, 1))
    write(tmp_path / "preflight-grpo" / "s1-step20", (2, 6), (0, 1))
    clean, lora = report.checkpoint_part(tmp_path, tmp_path).splitlines()[-2:]
    assert clean.startswith("| 20 | clean | 2 | 0.05 | 12.5 |  | 0.78 % |  |"), clean
    assert lora.startswith("| 20 | lora:0.035 | 2 | 0.10 | 25.0 | +12.5 [") and "| 3.12 % | +2.34 [" in lora, lora
    assert (tmp_path / "preflight-grpo.png").is_file()
    (tmp_path / "preflight-grpo" / "s1-step20" / "samples" / "lora-0.035-D256.jsonl").unlink()
    (tmp_path / "preflight-grpo" / "s1-step20" / "preflight.json").write_text(json.dumps(
        {"results": [{"setting": "clean", "draws": 1}]}))
    with pytest.raises(ValueError, match="at step 20: lora:0.035 and clean sampling hold other checkpoints"):
        report.checkpoint_part(tmp_path, tmp_path)
    assert report.checkpoint_part(tmp_path / "nothing", tmp_path) == ""
