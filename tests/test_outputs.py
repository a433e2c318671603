"""Outputs to paste and the small things that misled: figures that say what their bands are, in PNG and PDF; a
run folder's summary.json and log.txt (never the progress bar); a fresh folder per run without --out; compare's
worker lines labelled; the adaptive controller's window said; methods that accept a value; one `error:` line for
an example's bad argument, an uncached model, a hub that cannot be reached; the audit's one line; the T = 1 row."""
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from minipsn.evaluation import scoring
from minipsn.experiments import plot
from tests.conftest import REPO
from tests.test_examples import ENV as EXAMPLES_ENV
from tests.test_plot import RUNS
from tests.test_train import ENV, cli

# ---------------------------------------------------------------- figures


def _evals():
    bench = {"n": 16, "problems": 5, "pass@k": {str(k): min(1.0, k / 20) for k in scoring.ks_for(16)},
             "mean_acc": .1, "maj_acc": .1, "mean_len": 20, "trunc_rate": 0}
    report = {"n": 16, "benchmarks": {"synthetic": bench}}
    report["average"] = scoring.average(report["benchmarks"])
    return [("base", report), ("grpo", report)]


def _diff_result():
    r = {"k": [1, 2, 4], "diff": [0.01, 0.02, 0.03], "low": [-0.01, 0.0, 0.01], "high": [0.03, 0.04, 0.05]}
    return {"synthetic": {"kinds": {"all": {"base": r, "psn": r}}}}


def _figures():
    from minipsn.experiments import paired

    summary = {m: {"pass@k": {k: (k / 20, 0.01) for k in (1, 2, 4)}, "seeds": s} for m, s in (("base", 1), ("psn", 3))}
    return {"training": plot.training_figure(RUNS), "passk": plot.passk_figure(_evals()),
            "compare": plot.bands_figure(summary, "pass@k after RL: tiny"),
            "compare_diff": paired.diff_figure(_diff_result(), "grpo", ["base", "grpo", "psn"], 3, "tiny"),
            "compare_diff, one seed": paired.diff_figure(_diff_result(), "grpo", ["base", "grpo", "psn"], 1, "tiny")}


def test_every_figure_has_a_title_words_on_its_axes_and_says_what_its_bands_are():
    for name, fig in _figures().items():
        assert fig.get_suptitle(), name
        caption = fig.legends[0].get_title().get_text().replace("\n", " ")
        assert "band" in caption and "smooth" in caption, (name, caption)  # what the band is, and any smoothing
        for ax in fig.axes:
            if ax.get_visible():
                for label in (ax.get_xlabel(), ax.get_ylabel()):
                    assert label and not any(label.startswith(p) for p in ("reward/", "noise/", "eval/", "tis/")), (name, label)
    figs = _figures()
    assert "± 1 std over seeds" in figs["compare"].legends[0].get_title().get_text().replace("\n", " ")
    assert "95 % interval" in figs["compare_diff"].legends[0].get_title().get_text().replace("\n", " ")
    assert "no band" in figs["compare_diff, one seed"].legends[0].get_title().get_text()
    assert "trailing mean of the last 10 steps" in figs["training"].legends[0].get_title().get_text().replace("\n", " ")
    kl = next(ax for ax in figs["training"].axes if ax.get_gid() == "noise/kl_noise")
    assert kl.get_ylabel() == "KL(noisy ‖ clean) per token (nats)"


def test_plot_writes_each_figure_as_png_and_pdf(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in RUNS[1][1]))
    (run / "eval" / "eval.json").write_text(json.dumps(_evals()[0][1]))
    written = plot.plot([str(run)], tmp_path / "plots")
    assert [p.name for p in written] == ["passk.png", "passk.pdf", "training.png", "training.pdf"]
    for p in written:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF"), p


# ---------------------------------------------------------------- a run folder: summary.json, log.txt, no model card


@pytest.mark.slow
def test_a_run_folder_keeps_its_summary_and_its_log_and_a_refused_resume_says_nothing_first(tmp_path):
    run = tmp_path / "run"
    sets = ["--set", "eval.every=1", "--set", "eval.problems=2", "--set", "eval.n=2", "--set", "grpo.prompts_per_step=2",
            "--set", "grpo.group_size=4", "--set", "rollout.max_new_tokens=16", "--set", "run.save_every=1"]
    env = {**ENV, "TTY_COMPATIBLE": "1"}  # rich draws its live progress bar, as on a terminal
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "--model", "tiny", "--steps", "2", "--out",
                           str(run), *sets], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "━" in proc.stdout  # the bar was drawn on the "terminal" ...
    log = (run / "log.txt").read_text()
    assert "━" not in log and "\x1b" not in log  # ... and none of it reached the log
    assert log.startswith("── ") and "cli.py train --model tiny --steps 2" in log.splitlines()[0]
    for line in ("rollout engine:", "step 0/2 | held-out pass@1", "step 1/2 | reward", "step 2/2 | reward",
                 "held-out pass@1: "):
        assert line in log, line
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps_done"], summary["steps"], summary["finished"]) == (2, 2, True)
    assert summary["held_out"]["steps"] == [0, 2] and len(summary["held_out"]["pass@1"]) == 2
    assert summary["command"].startswith("python ") and "--steps 2" in summary["command"] and summary["wall_s"] > 0
    assert summary["rollout_accuracy"]["steps_averaged"] == 1
    # peft's model card (empty, with this machine's path) is not written beside any adapter
    assert not list(run.rglob("README.md")) and (run / "adapter" / "adapter_config.json").is_file()

    proc = cli("train", "--resume", str(run), "--steps", "3")
    assert f"resumed {run} at step 2; run.steps 2 → 3" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_done"] == 3 and [i["steps"] for i in summary["invocations"]] == [[0, 2], [2, 3]]
    log = (run / "log.txt").read_text()
    assert log.count("\n── ") == 1 and "--resume" in log and log.count("step 3/3 | reward") == 1  # no terminal: once

    for bad in (["--steps", "0"], ["--set", "eval.n=0"]):  # refused: the refusal alone, nothing about applying it
        proc = cli("train", "--resume", str(run), *bad, check=False)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc


def test_without_out_each_run_gets_a_fresh_folder_and_runs_latest_follows(tmp_path, monkeypatch):
    import cli as cli_module

    monkeypatch.chdir(tmp_path)
    small = ["--model", "tiny", "--steps", "1", "--set", "grpo.prompts_per_step=2", "--set", "grpo.group_size=4",
             "--set", "rollout.max_new_tokens=8", "--set", "eval.every=0"]
    folders = []
    for method in ("grpo", "psn"):
        result = CliRunner().invoke(cli_module.app, ["train", "--method", method, *small])
        assert result.exit_code == 0, result.output
        said = next(line for line in result.output.splitlines() if line.startswith("run folder: runs/"))
        folders.append(tmp_path / said.split()[2])
        assert folders[-1].name.startswith(f"tiny-{method}-") and (folders[-1] / "metrics.jsonl").is_file()
        assert os.readlink(tmp_path / "runs" / "latest") == folders[-1].name
    assert folders[0] != folders[1]
    result = CliRunner().invoke(cli_module.app, ["train", "--resume", "runs/latest", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert f"resumed {folders[1].relative_to(tmp_path)} at step 1" in result.output  # the run itself, not the link
    assert len((folders[1] / "metrics.jsonl").read_text().splitlines()) == 2
    assert len((folders[0] / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_data_error_leaves_no_run_folder(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no problem or answer column"}) + "\n")
    out = tmp_path / "run"
    import cli as cli_module

    result = CliRunner().invoke(cli_module.app, ["train", "--model", "tiny", "--dataset", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "error: no problem column" in result.output, result.output
    assert not out.exists()  # data loads before the run folder is made


# ---------------------------------------------------------------- compare's workers, the window, the methods


def test_a_workers_lines_start_with_its_job(capsys):
    from rich.console import Console
    from rich.progress import Progress

    from minipsn.run.printlog import labelled

    with labelled("psn-s1"):
        print("── training psn, seed 1")
        with Progress(transient=True) as bar:  # what train prints through: no live bar in a worker
            bar.add_task("train", total=2)
            bar.console.print("step 1/2 | reward 0.25", highlight=False, soft_wrap=True)
        Console().print("step 2/2 | reward 0.50", highlight=False)
        print("two\nlines", end="")
        print(" at once")
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.strip()] == ["[psn-s1] ── training psn, seed 1", "[psn-s1] step 1/2 | reward 0.25",
                                "[psn-s1] step 2/2 | reward 0.50", "[psn-s1] two", "[psn-s1] lines at once"]


@pytest.mark.parametrize("steps, said", [(11, True), (12, False)])
def test_an_adaptive_run_within_its_window_is_said_to_be_a_fixed_one(steps, said, capsys):
    """σ first moves for step window + 2: a run of window + 1 steps samples every step at σ₀, as psn does."""
    from minipsn.method.sigma_control import make_controller
    from minipsn.run.config import ControlConfig, NoiseConfig

    ctl = make_controller(NoiseConfig(sigma=0.01, control="adaptive"), ControlConfig(window=10), steps)
    assert ("the same as one with noise.control=fixed" in capsys.readouterr().out) == said
    used = []
    for step in range(steps):
        used.append(ctl.sigma)
        ctl.update({"kl_noise": 0.003, "diversity": 0.1 + (step % 3) / 10, "certainty": 1.0 + (step % 2) / 5})
    assert (len(set(used)) == 1) == said


def test_a_method_that_fixes_a_setting_names_the_methods_that_accept_the_value():
    from minipsn.run.overrides import build_config

    with pytest.raises(ValueError) as e:
        build_config(model="tiny", method="grpo", sets={"noise.sigma": "0.02"})
    accepts = str(e.value).split("accepts it (")[1].rstrip(")").split(", ")
    assert accepts == ["psn", "psn-notis", "psn-kl", "psn-adaptive", "psn-paper", "psn-weight", "c3po", "psn-passk"]
    with pytest.raises(ValueError, match=r"accepts it \(psn-kl\)$"):
        build_config(model="tiny", method="grpo", sets={"noise.control": "kl"})


def test_compare_suggests_the_method_meant(tmp_path):
    from minipsn.experiments.compare import compare

    with pytest.raises(ValueError, match=r"unknown method 'psn-adaptiv'; .* \(did you mean psn-adaptive\?\)"):
        compare("tiny", ["grpo", "psn-adaptiv"], 1, tmp_path / "grid")
    assert not (tmp_path / "grid").exists()


# ---------------------------------------------------------------- examples and the hub: one line


def test_an_examples_bad_argument_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), "two", str(tmp_path / "q")],
                          cwd=REPO, env=EXAMPLES_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: STEPS must be a whole number, got 'two' "
                                   "(usage: python examples/quickstart.py [STEPS] [RUN_DIR])")


@pytest.mark.parametrize("offline", [True, False])
def test_a_qwen_example_checks_its_model_before_any_data_in_one_line(offline, tmp_path, monkeypatch):
    """Offline: the cache is looked at; online with no network: one request, not half a minute of retries."""
    import importlib.util

    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    def no_network(self, repo, timeout=None):
        raise HfHubHTTPError.__bases__[0]("[Errno -2] Name or service not known")

    def no_data(*a, **k):
        raise AssertionError("data was loaded before the model was checked")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(HfApi, "model_info", no_network)
    monkeypatch.setattr("minipsn.experiments.calibrate.load_problems", no_data)
    monkeypatch.setattr("minipsn.training.train.problems", no_data)
    monkeypatch.setattr(sys, "argv", ["qwen_gsm8k.py", "", str(tmp_path / "out")])
    spec = importlib.util.spec_from_file_location("qwen_gsm8k", REPO / "examples" / "qwen_gsm8k.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # defines main(); runs nothing
    from minipsn.run import script

    with pytest.raises(SystemExit) as exc:
        script.run(example.main)
    said = str(exc.value)
    assert said.startswith("error: model qwen-1.5b (Qwen/Qwen2.5-1.5B-Instruct)") and "\n" not in said
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot be reached") in said
    assert not (tmp_path / "out").exists()


def test_a_bundled_set_from_an_unreachable_hub_is_one_request_and_one_line(monkeypatch, capsys):
    from pathlib import Path

    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    from minipsn.tasks import data

    calls = []

    def no_network(self, repo, timeout=None):
        calls.append((repo, timeout))
        raise HfHubHTTPError.__bases__[0]("[Errno -2] Name or service not known")

    def load_dataset(*a, **k):
        raise AssertionError("datasets was asked, with its half minute of retries")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "dataset_info", no_network)
    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    sys.modules["datasets"].load_dataset = load_dataset
    monkeypatch.setattr(data, "BUNDLED_DIR", Path("/no/bundled/data"))
    with pytest.raises(ValueError, match=r"^gsm8k train is not in a local folder and the Hugging Face hub cannot be "
                                         r"reached for openai/gsm8k \(\w+\); .*data_dir"):
        data.load_benchmark("gsm8k", "train")
    assert calls == [("openai/gsm8k", 10)] and capsys.readouterr().out == ""


# ---------------------------------------------------------------- verify-audit, calibrate's temperature table


def test_verify_audit_with_nothing_to_report_is_one_line(tmp_path):
    import cli as cli_module
    from minipsn.run.overrides import build_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(build_config(model="tiny").to_dict()))
    row = {"step": 1, "row": 0, "prompt": "p", "reward": 1.0, "correct": True, "truncated": False,
           "completion": "so \\boxed{4}", "gold": "4"}
    (run / "samples.jsonl").write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(cli_module.app, ["verify-audit", str(run)])
    assert result.exit_code == 0 and result.output == "0 of 1 answers judged differently by strict and math-verify\n"


def test_calibrates_temperature_table_starts_at_the_policy_itself():
    from rich.console import Console

    from minipsn.experiments.calibrate import table

    row = {"sigma": 0.0, "kl_noise": 0.0, "kl_numerics": 1e-7, "accuracy": 0.25, "accuracy_clean": 0.25,
           "diversity": 0.1234, "delta_w_rel": 0.0}
    report = {"model": "tiny", "targets": "all", "lora_rank": 8, "prompts": 8, "group_size": 8, "draws": 1, "rows": [row],
              "temperature": {"rows": [{"temperature": 1.2, "kl": 0.01, "accuracy": 0.2, "diversity": 0.2}]},
              "settings": {"config": {"rollout": {"temperature": 1.0}}}}
    console = Console(width=200, record=True)
    console.print(table(report)[-1])
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in console.export_text().splitlines() if "│" in line]
    assert rows == [["1 (σ = 0)", "0", "0.250", "0.1234"], ["1.2", "1.00e-02", "0.200", "0.2000"]]
