"""pass@k estimator, majority vote, resumable evaluation, quick_eval, and the eval/plot CLI on the tiny model."""
import importlib.util
import itertools
import json
import math
import os
from pathlib import Path

import pytest

from minipsn.evaluation import evaluate as ev
from minipsn.evaluation import scoring
from minipsn.run.config import DataConfig
from minipsn.run.overrides import build_config
from minipsn.tasks.synthetic import synthetic_split

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]
_REAL_SAMPLE = ev.sample


# ---------------------------------------------------------------- the estimator


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert scoring.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases_and_argument_checks():
    assert scoring.pass_at_k(10, 0, 3) == 0.0
    assert scoring.pass_at_k(10, 10, 3) == 1.0
    assert scoring.pass_at_k(10, 1, 10) == 1.0  # k = n: any correct sample is in the one subset
    assert scoring.pass_at_k(10, 0, 10) == 0.0
    assert scoring.pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is c / n
    assert ev.pass_at_k is scoring.pass_at_k  # public API kept where it was
    for bad in [(4, 1, 5), (4, 5, 1), (4, -1, 1), (-1, 0, 1), (4, 1, 0), (4, 1, -2), (0, 0, 1)]:
        with pytest.raises(ValueError):
            scoring.pass_at_k(*bad)
    with pytest.raises(TypeError):
        scoring.pass_at_k(4.0, 1, 1)


def test_pass_at_k_is_stable_for_large_n():
    n = 2000
    for c in (0, 1, 3, 50, 1000, 1999, 2000):
        values = [scoring.pass_at_k(n, c, k) for k in (1, 2, 4, 16, 64, 256, 1024, 2000)]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (c, values)
        assert values == sorted(values), (c, values)  # monotone in k
    assert scoring.pass_at_k(n, 1, 1) == pytest.approx(1 / n)
    assert scoring.pass_at_k(n, 1, 256) == pytest.approx(256 / n)  # one correct: pass@k = k / n exactly


def test_ks_majority_and_summary():
    assert scoring.ks_for(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert scoring.ks_for(6) == [1, 2, 4, 6]
    assert scoring.ks_for(1) == [1]
    F = False
    # correct answers form one group even when spelled differently; wrong ones group by normalised text
    assert scoring.majority_correct(["1/2", "\\frac12", "3", "3 "], [1, 1, 0, 0], [F] * 4) == 0.5  # tie of 2 groups
    assert scoring.majority_correct(["5", "5", "5", "7"], [1, 1, 1, 0], [F] * 4) == 1.0
    assert scoring.majority_correct(["5", "7", "7", "7"], [1, 0, 0, 0], [F] * 4) == 0.0
    assert scoring.majority_correct(["7", "7", "7", "5"], [0, 0, 0, 1], [F, True, True, F]) == 0.5  # truncated don't vote
    assert scoring.majority_correct([None, None, "5"], [0, 0, 1], [F] * 3) == 1.0  # no answer: no vote
    assert scoring.majority_correct(["5", "5"], [0, 0], [F, F]) == 0.0
    rows = [{"answers": ["1", "2"], "correct": [1, 0], "lengths": [10, 20], "truncated": [False, False]},
            {"answers": ["3", None], "correct": [0, 0], "lengths": [30, 48], "truncated": [False, True]}]
    s = scoring.summarize(rows)
    assert s["n"] == 2 and s["problems"] == 2
    assert s["pass@k"] == {"1": pytest.approx(0.25), "2": pytest.approx(0.5)}
    assert s["mean_acc"] == pytest.approx(0.25) and s["maj_acc"] == pytest.approx(0.25)  # 1 vs 2: a tie, 1/2
    assert s["mean_len"] == pytest.approx(27.0) and s["trunc_rate"] == pytest.approx(0.25)


# ---------------------------------------------------------------- resumable evaluation (small random policy)


def _small_cfg(**sets):
    return build_config("tiny", sets={"data.template": "plain", "eval.n": 4, "eval.max_new_tokens": 6,
                                      "rollout.batch_size": 3, **sets})


def _records(k=3):
    return synthetic_split(DataConfig(n_test=k), "test")


def _counting(monkeypatch, fail_after=None):
    calls = []

    def counted(*args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt  # what Ctrl-C raises mid-evaluation
        calls.append(args[2])
        return _REAL_SAMPLE(*args, **kwargs)

    monkeypatch.setattr(ev, "sample", counted)
    return calls


def test_interrupted_evaluation_resumes_exactly(small_policy, toy_tok, tmp_path, monkeypatch):
    cfg, recs = _small_cfg(), _records(3)
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    calls = _counting(monkeypatch)
    reference = ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, full)
    assert len(calls) == 3 and reference["problems"] == 3 and reference["n"] == 4
    lines = full.read_text().splitlines()
    assert json.loads(lines[0])["meta"]["n"] == 4 and len(lines) == 4
    assert len(json.loads(lines[1])["correct"]) == 4

    # interrupted after two problems: both are on disk, the third is sampled on resume, and only it
    _counting(monkeypatch, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, cut)
    assert len(cut.read_text().splitlines()) == 3
    calls = _counting(monkeypatch)
    resumed = ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, cut)
    assert len(calls) == 1 and resumed == reference
    assert cut.read_text() == full.read_text()  # per-problem seeds: resumption is exact

    # a finished file samples nothing; a line cut by a kill mid-write is dropped and redone
    calls = _counting(monkeypatch)
    assert ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, cut) == reference
    assert calls == []
    cut.write_text(full.read_text()[: -len(lines[-1]) // 2 - 1])
    assert ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, cut) == reference
    assert len(calls) == 1 and cut.read_text() == full.read_text()

    # a problem's samples do not depend on which other problems are evaluated
    alone = tmp_path / "alone.jsonl"
    ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs[2:], cfg, alone)
    assert alone.read_text().splitlines()[1] == lines[3]

    # other sampling settings never mix into an existing file
    with pytest.raises(ValueError, match="other settings"):
        ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, _small_cfg(**{"eval.n": 8}), cut)
    # nor another dtype (auto resolved elsewhere) or another problem under the same id (other data.* settings)
    with pytest.raises(ValueError, match="other settings .{'made_with'"):
        ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, _small_cfg(**{"model.dtype": "bfloat16"}), cut)
    moved = [{**r, "problem": r["problem"].replace("What", "Then add 1. What"), "answer": "0"} for r in recs]
    with pytest.raises(ValueError, match="samples of another problem under the id " + recs[0]["id"]):
        ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", moved, cfg, cut)


def test_quick_eval_keys_and_reproducibility(small_policy, toy_tok):
    cfg, recs = _small_cfg(**{"rollout.batch_size": 8}), _records(5)  # two problems per sampling call
    args = (small_policy, toy_tok, recs, cfg.eval, cfg.rollout, "plain", 0)
    a, b = ev.quick_eval(*args), ev.quick_eval(*args)
    assert a == b
    assert {"eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/accuracy"} <= set(a)
    assert a["eval/pass@1"] == pytest.approx(a["eval/accuracy"])
    assert a["eval/pass@1"] <= a["eval/pass@2"] <= a["eval/pass@4"]
    assert small_policy.training  # sampling left the train/eval mode as it was


def test_adapter_resolution_and_default_out(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000010" / "adapter").mkdir(parents=True)
    (run / "checkpoints" / "step-000010" / "state.pt").write_bytes(b"x")
    (run / "checkpoints" / "step-000010" / "adapter" / "adapter_config.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step-000010")
    adapter, run_dir = ev.resolve_adapter(str(run))
    assert adapter.endswith("step-000010/adapter") and run_dir == run  # no final adapter yet: latest checkpoint
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert ev.resolve_adapter(str(run)) == (str(run / "adapter"), run)
    assert ev.resolve_adapter(str(run / "adapter")) == (str(run / "adapter"), None)
    with pytest.raises(ValueError, match="neither"):
        ev.resolve_adapter(str(tmp_path))
    (run / "config.json").write_text(json.dumps(build_config("tiny", sets={"eval.n": 32}).to_dict()))
    cfg = ev.run_config(run, None, {"eval.problems": 3})
    assert cfg.eval.n == 32 and cfg.eval.problems == 3 and cfg.model.name == "tiny"
    with pytest.raises(ValueError, match="differs"):
        ev.run_config(run, "qwen-1.5b", {})
    assert ev.default_out("tiny", None, run) == run / "eval"
    assert ev.default_out("Qwen/Qwen2.5-1.5B", None, None) == Path("runs/eval-Qwen2.5-1.5B")


# ---------------------------------------------------------------- plots (no model)


def _png_ok(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0


def test_plot_draws_passk_and_training_curves(tmp_path):
    from minipsn.experiments.plot import plot

    runs = []
    for name, sigma in (("grpo", 0.0), ("psn", 3e-3)):
        run = tmp_path / name
        (run / "eval").mkdir(parents=True)
        with open(run / "metrics.jsonl", "w") as f:
            for step in range(1, 41):
                m = {"step": step, "reward/mean": step / 40, "reward/accuracy": step / 50, "noise/sigma": sigma}
                if name == "psn":
                    m["tis/clip_frac"] = 0.01
                f.write(json.dumps(m) + "\n")
                if step % 10 == 0:
                    f.write(json.dumps({"step": step, "eval/pass@1": step / 60}) + "\n")
            f.write('{"step": 41, "rew')  # a line cut by a kill is ignored
        bench = {"n": 16, "problems": 5, "pass@k": {str(k): min(1, k / 20 + sigma * 10) for k in scoring.ks_for(16)},
                 "mean_acc": .1, "maj_acc": .1, "mean_len": 20, "trunc_rate": 0}
        report = {"model": "tiny", "adapter": None, "n": 16, "benchmarks": {"synthetic": bench, "aime24": dict(bench)}}
        report["average"] = scoring.average(report["benchmarks"])
        (run / "eval" / "eval.json").write_text(json.dumps(report))
        runs.append(str(run))
    paths = plot(runs, tmp_path / "plots")
    assert [p.name for p in paths] == ["passk.png", "passk.pdf", "training.png", "training.pdf"]
    for p in paths[::2]:
        _png_ok(p)
    with pytest.raises(ValueError, match="neither"):
        plot([str(tmp_path / "plots")])


# ---------------------------------------------------------------- the CLI on the tiny model


def _cli():
    spec = importlib.util.spec_from_file_location("minipsn_cli", REPO / "cli.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_eval_and_plot_on_tiny_model(tmp_path):
    from typer.testing import CliRunner

    cli, runner, out = _cli(), CliRunner(), tmp_path / "eval"
    args = ["eval", "--model", "tiny", "--benchmarks", "synthetic", "--n", "4", "--problems", "4", "--out", str(out)]
    res = runner.invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "eval.json").read_text())
    assert {"model", "adapter", "n", "benchmarks", "average", "config"} <= set(report)
    syn = report["benchmarks"]["synthetic"]
    assert set(syn) == {"n", "problems", "pass@k", "mean_acc", "maj_acc", "mean_len", "trunc_rate"}
    assert syn["n"] == 4 and syn["problems"] == 4 and list(syn["pass@k"]) == ["1", "2", "4"]
    assert 0 < syn["mean_len"] <= 48 and report["config"]["eval"]["max_new_tokens"] == 48
    assert "synthetic" in res.output and "@4" in res.output
    assert len((out / "samples" / "synthetic.jsonl").read_text().splitlines()) == 5

    res = runner.invoke(cli.app, ["plot", str(out), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    png = tmp_path / "plots" / "passk.png"
    assert str(png) in res.output
    _png_ok(png)

    res = runner.invoke(cli.app, ["eval", "--model", "tiny", "--benchmarks", "nope", "--out", str(out)])
    assert res.exit_code == 2 and "unknown dataset" in res.output

    # a run folder: its adapter and config.json, output in RUN/eval; plot RUN draws both figures
    from minipsn.tasks.models import load_policy

    run = tmp_path / "run"
    cfg = build_config("tiny", sets={"eval.n": 2, "run.out": str(run)})
    load_policy(cfg)[0].save_pretrained(run / "adapter")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": s / 4}) + "\n" for s in range(1, 5)))
    res = runner.invoke(cli.app, ["eval", "--adapter", str(run), "--problems", "2"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "eval" / "eval.json").read_text())
    assert report["n"] == 2 and report["adapter"] == str((run / "adapter").resolve())
    assert list(report["benchmarks"]) == ["synthetic"] and report["benchmarks"]["synthetic"]["problems"] == 2
    res = runner.invoke(cli.app, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    for name in ("passk.png", "training.png"):
        _png_ok(run / "plots" / name)


def test_problems_batched_into_one_call_sample_as_they_would_alone(small_policy, toy_tok, tmp_path, monkeypatch):
    # eval.batch_size = 3·n: three problems per sampling call, each from its own generator
    recs = [{"id": f"p{i}", "problem": f"Start at {d}, add {d}. What number do you get?", "answer": str(2 * d)}
            for i, d in enumerate((3, 5, 7))]  # one length: no padding differs between the batched and lone calls
    cfg = _small_cfg(**{"eval.batch_size": 12})
    calls = _counting(monkeypatch)
    batched = tmp_path / "batched.jsonl"
    ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, batched)
    assert len(calls) == 1  # one call for all three
    for i, rec in enumerate(recs):
        alone = tmp_path / f"alone{i}.jsonl"
        ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", [rec], cfg, alone)
        assert alone.read_text().splitlines()[1] == batched.read_text().splitlines()[i + 1]


def test_evaluation_drops_ended_rows_and_a_problem_samples_the_same_in_any_call(small_policy, toy_tok, tmp_path,
                                                                                 monkeypatch):
    """Evaluation's decode path (each prompt encoded once, ended rows dropped as the batch decodes) on problems
    whose rows end far apart: a problem's samples are the same alone as in a call of three."""
    from minipsn.sampling import rollout

    recs = [{"id": f"p{i}", "problem": f"Start at {d}, add {d}. What number do you get?", "answer": str(2 * d)}
            for i, d in enumerate((3, 5, 7))]  # one length: no padding differs between the batched and lone calls
    cfg = _small_cfg(**{"eval.n": 16, "eval.max_new_tokens": 40, "eval.batch_size": 48})
    calls, decode = [], rollout.decode

    def spy(*args, **kwargs):
        calls.append((kwargs.get("repeats"), kwargs.get("drop_finished")))
        return decode(*args, **kwargs)

    monkeypatch.setattr(rollout, "decode", spy)
    batched = tmp_path / "batched.jsonl"
    ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, batched)
    assert len(calls) == 1 and calls[0][0].tolist() == [16, 16, 16] and calls[0][1]  # one prefill row per problem
    lines = batched.read_text().splitlines()[1:]
    lengths = [x for line in lines for x in json.loads(line)["lengths"]]
    assert min(lengths) < 20 and max(lengths) == 40  # rows ended far apart: most of them left the batch early
    for i, rec in enumerate(recs):
        alone = tmp_path / f"alone{i}.jsonl"
        ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", [rec], cfg, alone)
        assert alone.read_text().splitlines()[1] == lines[i]


def test_a_kind_can_have_its_own_n_and_each_problem_is_scored_with_its_own(small_policy, toy_tok, tmp_path):
    """eval.n_by_kind: the mixed task's final questions at n = 2, its steps questions at eval.n = 4; a problem samples
    the same tokens as it would at that n alone; the totals report pass@k up to the smaller n."""
    recs = synthetic_split(DataConfig(n_ops=2, answer="mixed", n_test=4), "test")
    cfg = _small_cfg(**{"eval.n_by_kind": "final=2"})
    report = ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs, cfg, tmp_path / "mixed.jsonl")
    rows = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "mixed.jsonl").read_text().splitlines()[1:]}
    assert {r["kind"]: len(r["correct"]) for r in rows.values()} == {"final": 2, "steps": 4}
    assert report["kinds"]["final"]["n"] == 2 and report["kinds"]["steps"]["n"] == 4 and report["n"] == 2
    assert set(report["pass@k"]) == {"1", "2"} and set(report["kinds"]["steps"]["pass@k"]) == {"1", "2", "4"}
    alone = ev.evaluate_benchmark(small_policy, toy_tok, "synthetic", recs[:1], _small_cfg(**{"eval.n": 2}),
                                  tmp_path / "alone.jsonl")
    assert alone["problems"] == 1
    assert json.loads((tmp_path / "alone.jsonl").read_text().splitlines()[1])["answers"] == rows[recs[0]["id"]]["answers"]
    with pytest.raises(ValueError, match="eval.n_by_kind expects kind=n"):
        _small_cfg(**{"eval.n_by_kind": "final:2"})
