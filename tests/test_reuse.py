"""A stored result is reused only with the settings it was made with: compare's jobs (training and
evaluation) and base row, and calibrate.json in the examples. Training and evaluation are stand-ins
that write what the real ones write (config.json through the trainer's own set-up, eval.json with the
config), so these run in a second."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from minipsn.evaluation.evaluate import benchmark_records
from minipsn.evaluation.provenance import provenance
from minipsn.evaluation.scoring import ks_for
from minipsn.experiments import calibrate, compare
from minipsn.run import folders
from minipsn.run.overrides import build_config


@pytest.fixture
def jobs(monkeypatch):
    """Stand-ins for train and evaluate; returns the list of what ran, ("train" | "eval", folder name)."""
    from minipsn.training.train import prepare_run_dir

    ran = []

    def train(cfg, resume=False):
        run = prepare_run_dir(cfg, resume)
        (run / "adapter").mkdir(exist_ok=True)
        (run / "adapter" / "adapter_config.json").write_text("{}")
        folders.release(run)
        ran.append(("train", run.name))
        return run

    def evaluate(cfg, benchmarks, out, adapter=None):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        bench = {"n": cfg.eval.n, "problems": 2, "pass@k": {str(k): 0.25 for k in ks_for(cfg.eval.n)}, "mean_acc": 0.25,
                 "maj_acc": 0.5,
                 "mean_len": 3.0, "trunc_rate": 0.0}
        report = {"model": cfg.model.name, "adapter": adapter, "n": cfg.eval.n, "seed": cfg.run.seed,
                  "benchmarks": {b: bench for b in benchmarks}, "average": bench, "config": cfg.to_dict(),
                  "provenance": provenance(cfg, {b: benchmark_records(b, cfg) for b in benchmarks})}
        (out / "eval.json").write_text(json.dumps(report))
        (out / "samples").mkdir(exist_ok=True)
        for b in benchmarks:  # what compare's paired differences read: one row per problem
            rows = [{"meta": {}}] + [{"id": f"p{i}", "correct": [i % 2] * cfg.eval.n} for i in range(2)]
            (out / "samples" / f"{b}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ran.append(("eval", out.parent.name))
        return report

    monkeypatch.setattr("minipsn.training.train.train", train)
    monkeypatch.setattr("minipsn.evaluation.evaluate.evaluate", evaluate)
    return ran


SETS = {"run.steps": 4, "eval.n": 2, "eval.problems": 2}


def test_a_rerun_reuses_only_what_was_made_with_the_same_settings(tmp_path, jobs):
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo", "psn"], 1, out, SETS)
    assert sorted(jobs) == [("eval", "base"), ("eval", "grpo-s0"), ("eval", "psn-s0"), ("train", "grpo-s0"),
                            ("train", "psn-s0")]
    jobs.clear()
    compare.compare("tiny", ["grpo", "psn"], 1, out, {**SETS, "run.log_to": "jsonl,tensorboard"})  # bookkeeping only
    assert jobs == []
    for key, value, said, stale in (("run.steps", 5, "run.steps (4 → 5)", "grpo-s0, psn-s0"),
                                    ("grpo.lr", 1e-2, "grpo.lr (0.0002 → 0.01)", "grpo-s0, psn-s0"),
                                    ("eval.n", 4, "eval.n (2 → 4)", "base, grpo-s0, psn-s0"),
                                    ("noise.sigma", 0.05, "noise.sigma (0.021 → 0.05)", "psn-s0")):
        with pytest.raises(ValueError) as e:
            compare.compare("tiny", ["grpo", "psn"], 1, out, {**SETS, key: value})
        assert str(e.value) == (f"{out} holds results made with other settings: {stale} differ in {said}; "
                                "rerun with --recompute to redo them, or choose another --out")
        assert jobs == []  # refused before anything ran
    with pytest.raises(ValueError, match=r"base, grpo-s0 differ in benchmarks \(synthetic → synthetic,aime24\)"):
        compare.compare("tiny", ["grpo"], 1, out, SETS, benchmarks=("synthetic", "aime24"))


def test_recompute_redoes_the_training_or_only_the_evaluation(tmp_path, jobs):
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo"], 1, out, SETS)
    jobs.clear()
    compare.compare("tiny", ["grpo"], 1, out, {**SETS, "run.steps": 5}, recompute=True)
    assert jobs == [("train", "grpo-s0"), ("eval", "grpo-s0")]  # the base row does not depend on run.steps
    assert json.loads((out / "grpo-s0" / "config.json").read_text())["run"]["steps"] == 5
    jobs.clear()
    compare.compare("tiny", ["grpo"], 1, out, {**SETS, "run.steps": 5, "eval.n": 4}, recompute=True)
    assert jobs == [("eval", "base"), ("eval", "grpo-s0")]  # the training is still the one asked for
    assert json.loads((out / "compare.json").read_text())["n"] == 4


def test_cli_compare_with_other_steps_fails_in_one_line_naming_run_steps(tmp_path, jobs):
    import cli

    out = tmp_path / "grid"
    args = ["compare", "--model", "tiny", "--methods", "grpo", "--seeds", "1", "--n", "2", "--out", str(out)]
    assert CliRunner().invoke(cli.app, [*args, "--steps", "4"]).exit_code == 0
    result = CliRunner().invoke(cli.app, [*args, "--steps", "2"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "differ in run.steps (4 → 2)" in line and "--recompute" in line, line
    assert "reusing" not in result.output
    result = CliRunner().invoke(cli.app, [*args, "--steps", "2", "--recompute"])
    assert result.exit_code == 0, result.output
    assert "| grpo | 1 | 25.0 |" in result.output  # one seed: no "± 0.0"


def test_one_seed_prints_no_spread_and_several_do():
    summary = compare.summarize({"base": [_report(0.1)], "grpo": [_report(0.2)], "psn": [_report(0.2), _report(0.4)]})
    table = compare.markdown(summary)
    assert "| base (before RL) | 1 | 10.0 |" in table and "| grpo | 1 | 20.0 |" in table
    assert "| psn | 2 | 30.0 ± 10.0 |" in table and "± 0.0" not in table


def _report(p):
    r = {"pass@k": {"1": p}, "mean_acc": p, "maj_acc": p}
    return {"average": r}


def test_calibrate_json_is_reused_only_with_its_settings(tmp_path):
    cfg, sigmas = build_config("tiny"), [0.0, 0.01, 0.02]
    path = tmp_path / "calibrate.json"
    assert calibrate.reuse(path, cfg, sigmas, 0.003, 2) is None
    report = json.loads(json.dumps({"suggested_sigma": 0.019, "settings": calibrate.settings(cfg, sigmas, 0.003, 2, None)}))
    path.write_text(json.dumps(report))
    assert calibrate.reuse(path, cfg, sigmas, 0.003, 2) == report
    longer = build_config("tiny", sets={"run.steps": 500, "grpo.lr": 1e-3})  # not what σ is measured with
    assert calibrate.reuse(path, longer, sigmas, 0.003, 2) == report
    with pytest.raises(ValueError, match=r"measured with other settings: draws \(2 → 1\)"):
        calibrate.reuse(path, cfg, sigmas, 0.003, 1)
    with pytest.raises(ValueError, match=r"measured with other settings: lora.rank \(8 → 16\)"):
        calibrate.reuse(path, build_config("tiny", sets={"lora.rank": 16}), sigmas, 0.003, 2)
    other = json.loads(json.dumps(report))
    other["settings"]["provenance"]["dtype"] = "bfloat16"  # measured in another dtype: another σ
    path.write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"measured with other settings: dtype \(bfloat16 → float32\)"):
        calibrate.reuse(path, cfg, sigmas, 0.003, 2)
    with pytest.raises(ValueError, match=r"dtype \(bfloat16 → float32\)"):  # other code reuses the code only
        calibrate.reuse(path, cfg, sigmas, 0.003, 2, other_code=True)
    other["settings"]["provenance"]["dtype"] = report["settings"]["provenance"]["dtype"]
    other["settings"]["provenance"]["code"]["source"] = "0" * 16  # measured by other code
    path.write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"measured with other settings: source \(0{16} → "):
        calibrate.reuse(path, cfg, sigmas, 0.003, 2)
    assert calibrate.reuse(path, cfg, sigmas, 0.003, 2, other_code=True) == other
    del other["settings"]["config"]["rollout"]["guard_every"]  # that code had no such setting
    path.write_text(json.dumps(other))
    assert calibrate.reuse(path, cfg, sigmas, 0.003, 2, other_code=True) == other
    with pytest.raises(ValueError, match=r"rollout.guard_every \(absent → 10\)"):
        calibrate.reuse(path, cfg, sigmas, 0.003, 2)
    other["settings"]["provenance"]["code"]["source"] = report["settings"]["provenance"]["code"]["source"]
    path.write_text(json.dumps(other))  # this code's result without a key it has: not another code's
    with pytest.raises(ValueError, match=r"rollout.guard_every \(absent → 10\)"):
        calibrate.reuse(path, cfg, sigmas, 0.003, 2, other_code=True)
    path.write_text(json.dumps({"suggested_sigma": 0.019}))  # made before the settings were stored
    with pytest.raises(ValueError, match="does not record the settings"):
        calibrate.reuse(path, cfg, sigmas, 0.003, 2)


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("where, change, said", [
    ("grpo-s0/config.json", lambda d: d["reward"].pop("verifier"), "grpo-s0 differ in reward.verifier (absent → math-verify)"),
    ("grpo-s0/config.json", lambda d: d["provenance"]["code"].update(source="0123456789abcdef"),
     "grpo-s0 differ in source (0123456789abcdef → "),
    ("base/eval/eval.json", lambda d: d["provenance"].update(model="another-build"), "base differ in model (another-build → "),
    ("grpo-s0/eval/eval.json", lambda d: d["provenance"].update(dtype="bfloat16"), "grpo-s0 differ in dtype (bfloat16 → float32)"),
    ("grpo-s0/eval/eval.json", lambda d: d["provenance"].pop("torch"), "grpo-s0 differ in torch (absent → "),
    ("grpo-s0/eval/eval.json", lambda d: d["provenance"]["records"].update(synthetic="other-problems"),
     "grpo-s0 differ in records.synthetic (other-problems → "),
])
def test_a_result_made_by_other_code_build_dtype_or_data_is_refused_naming_it(tmp_path, jobs, where, change, said):
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo"], 1, out, SETS)
    _edit(out / where, change)
    jobs.clear()
    with pytest.raises(ValueError) as e:
        compare.compare("tiny", ["grpo"], 1, out, SETS)
    assert said in str(e.value) and jobs == []


def test_other_code_is_reused_only_when_asked_and_then_said(tmp_path, jobs):
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo"], 1, out, SETS)
    for where in ("grpo-s0/config.json", "grpo-s0/eval/eval.json"):
        _edit(out / where, lambda d: d["provenance"]["code"].update(source="0123456789abcdef"))
    with pytest.raises(ValueError, match="or --other-code to reuse results of other code"):
        compare.compare("tiny", ["grpo"], 1, out, SETS)
    jobs.clear()
    payload = compare.compare("tiny", ["grpo"], 1, out, SETS, other_code=True)
    assert jobs == [] and payload["code"]["0123456789abcdef"] == ["grpo-s0"] and len(payload["code"]) == 2
    assert "**Made by 2 code versions**" in (out / "compare.md").read_text()


def test_a_setting_other_code_lacked_is_reused_only_for_that_code_and_then_listed(tmp_path, jobs):
    """A key a result lacks because its code had no such setting: reused under --other-code, listed in compare.json
    and compare.md; a result of this code that lacks a key is still refused."""
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo"], 1, out, SETS)

    def older(d):
        del d["rollout"]["guard_every"]
        d["provenance"]["code"].update(source="0123456789abcdef")

    _edit(out / "grpo-s0" / "config.json", older)
    with pytest.raises(ValueError, match=r"rollout.guard_every \(absent → 10\)"):
        compare.compare("tiny", ["grpo"], 1, out, SETS)
    jobs.clear()
    payload = compare.compare("tiny", ["grpo"], 1, out, SETS, other_code=True)
    assert jobs == [] and payload["lacked"] == {"rollout.guard_every": ["grpo-s0"]}
    assert "did not have (they ran as that code did): rollout.guard_every: grpo-s0" in (out / "compare.md").read_text()
    _edit(out / "grpo-s0" / "config.json", lambda d: d["provenance"]["code"].update(
        source=json.loads((out / "base" / "eval" / "eval.json").read_text())["provenance"]["code"]["source"]))
    with pytest.raises(ValueError, match=r"grpo-s0 differ in rollout.guard_every \(absent → 10\)"):
        compare.compare("tiny", ["grpo"], 1, out, SETS, other_code=True)


def test_values_that_resolve_alike_and_benchmark_order_do_not_refuse(tmp_path, jobs):
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo"], 1, out, SETS, benchmarks=("synthetic", "aime24"))
    _edit(out / "grpo-s0" / "config.json", lambda d: d["rollout"].update(rng="auto"))  # auto is prompt
    jobs.clear()
    compare.compare("tiny", ["grpo"], 1, out, SETS, benchmarks=("aime24", "synthetic"))
    assert jobs == []


def test_a_resume_under_another_build_is_refused_and_under_other_code_is_recorded(tmp_path, capsys):
    from minipsn.training.train import _resumed_provenance

    stored = {"code": {"source": "a"}, "model": "m1", "device": "cpu", "dtype": "float32", "torch": "2.13",
              "records": {"train": "r1"}}
    assert _resumed_provenance(tmp_path, stored, json.loads(json.dumps(stored))) == stored
    with pytest.raises(ValueError, match=r"started with another model \(m1 → m2\)"):
        _resumed_provenance(tmp_path, stored, {**stored, "model": "m2"})
    with pytest.raises(ValueError, match=r"another records.train \(r1 → r2\)"):
        _resumed_provenance(tmp_path, stored, {**stored, "records": {"train": "r2"}})
    now = {**stored, "code": {"source": "b"}}
    made = _resumed_provenance(tmp_path, stored, now)
    assert made["resumes"] == [now] and made["code"] == {"source": "a"}
    assert "resuming" in capsys.readouterr().out


def test_arms_of_one_method_each_take_their_own_overrides(tmp_path, jobs):
    """LABEL=METHOD: several arms of one method in one grid (a dose-response), each its own folders and σ."""
    out = tmp_path / "grid"
    payload = compare.compare("tiny", ["grpo", "psn-low=psn", "psn-high=psn"], 1, out, SETS,
                              per_method={"psn-low": {"noise.sigma": 0.01}, "psn-high": {"noise.sigma": 0.05}})
    cfgs = {arm: json.loads((out / f"{arm}-s0" / "config.json").read_text()) for arm in ("grpo", "psn-low", "psn-high")}
    assert cfgs["psn-low"]["noise"]["sigma"] == 0.01 and cfgs["psn-high"]["noise"]["sigma"] == 0.05
    assert cfgs["psn-high"]["noise"]["control"] == "fixed" and cfgs["grpo"]["noise"]["sigma"] == 0.0  # the method's keys
    assert set(payload["paired"]["benchmarks"]["synthetic"]["kinds"]["all"]) == {"base", "psn-low", "psn-high"}
    with pytest.raises(ValueError, match=r"unknown method .psm.; choose from .*\(did you mean psn\?\)"):
        compare.compare("tiny", ["grpo", "x=psm"], 1, tmp_path / "g2", SETS)
    with pytest.raises(ValueError, match="repeated"):
        compare.compare("tiny", ["grpo", "grpo=psn"], 1, tmp_path / "g3", SETS)
