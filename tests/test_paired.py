"""compare's paired differences: every method against `--ref` on the same problems, per kind of question,
with the interval marked when it excludes 0. Training and evaluation are stand-ins that write the files the
real ones write (eval.json from the samples' own summary), with correct counts chosen per method, kind and
seed so every number below is known."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from minipsn.evaluation.evaluate import benchmark_records
from minipsn.evaluation.provenance import provenance
from minipsn.evaluation.scoring import summarize
from minipsn.experiments import compare, plot
from minipsn.run import folders

N, PROBLEMS = 4, 20  # half final, half steps questions, as the mixed task's held-out split alternates them


def correct_count(method: str, kind: str, seed: int, problem: int) -> int:
    """grpo never solves a steps question; psn solves 2 of 4 samples (3 on half of seed 1's); both
    solve 1 of 4 final samples; the base model solves 1 of 4 of each."""
    if method == "base":
        return 1
    if kind == "final":
        return 1
    if method == "grpo":
        return 0
    return 3 if seed == 1 and problem % 4 == 1 else 2


@pytest.fixture
def jobs(monkeypatch):
    from minipsn.training.train import prepare_run_dir

    def train(cfg, resume=False):
        run = prepare_run_dir(cfg, resume)
        (run / "adapter").mkdir(exist_ok=True)
        (run / "adapter" / "adapter_config.json").write_text("{}")
        folders.release(run)
        return run

    def evaluate(cfg, benchmarks, out, adapter=None):
        out = Path(out)
        method = "base" if out.parent.name == "base" else out.parent.name.rsplit("-s", 1)[0]
        rows = []
        for i in range(PROBLEMS):
            kind = ("final", "steps")[i % 2]
            c = correct_count(method, kind, cfg.run.seed, i)
            rows.append({"id": f"p{i:02d}", "kind": kind, "answers": ["1"] * N, "correct": [1] * c + [0] * (N - c),
                         "lengths": [3] * N, "truncated": [False] * N})
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "samples" / "synthetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"meta": {}}, *rows]))
        bench = summarize(rows)
        report = {"model": cfg.model.name, "adapter": adapter, "n": N, "seed": cfg.run.seed,
                  "benchmarks": {"synthetic": bench}, "average": {k: v for k, v in bench.items() if k != "kinds"},
                  "config": cfg.to_dict(),
                  "provenance": provenance(cfg, {b: benchmark_records(b, cfg) for b in benchmarks})}
        (out / "eval.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr("minipsn.training.train.train", train)
    monkeypatch.setattr("minipsn.evaluation.evaluate.evaluate", evaluate)


SETS = {"run.steps": 2, "eval.n": N, "eval.problems": PROBLEMS}


def test_paired_differences_are_per_kind_and_marked_only_where_the_interval_excludes_zero(tmp_path, jobs):
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo", "psn"], 3, out, SETS, ref="grpo")
    result = json.loads((out / "compare.json").read_text())["paired"]
    assert result["ref"] == "grpo"
    kinds = result["benchmarks"]["synthetic"]["kinds"]
    assert set(kinds) == {"all", "final", "steps"} and set(kinds["steps"]) == {"base", "psn"}
    steps, final = kinds["steps"]["psn"], kinds["final"]["psn"]
    # steps pass@1: psn (2/4 on every problem, 3/4 on half of seed 1's) − grpo (0) = (0.5·2 + 0.5·0.5 + 0.5·0.75)/3
    assert steps["k"][0] == 1 and steps["diff"][0] == pytest.approx((0.5 + 0.5 + (0.5 + 0.75) / 2) / 3)
    assert steps["low"][0] > 0 and steps["seeds"] == [3, 3]
    assert final["diff"] == [0.0] * len(final["k"]) and final["low"][0] == final["high"][0] == 0.0
    assert kinds["steps"]["base"]["diff"][0] == pytest.approx(0.25)  # the base's 1 of 4 against grpo's none
    md = (out / "compare.md").read_text()
    steps_table = md[md.index("(synthetic, steps;"):]
    psn_steps = next(line for line in steps_table.splitlines() if line.startswith("| psn |"))
    psn_final = next(line for line in md[md.index("(synthetic, final;"):].splitlines() if line.startswith("| psn |"))
    assert psn_steps.count("✱") == len(steps["k"]) and "✱" not in psn_final
    # the absolute numbers per kind, next to the Δ: grpo's steps pass@1 is 0, psn's final pass@1 is 25
    assert "**steps** (the held-out problems of this kind)" in md
    steps_abs = md[md.index("**steps**"):md.index("**Δ pass@k")]
    assert "| grpo | 3 | 0.0 ± 0.0 |" in steps_abs and "| base (before RL) | 1 | 25.0 |" in steps_abs
    assert "| psn | 3 | 25.0 ± 0.0 |" in md[md.index("**final**"):md.index("**steps**")]


def test_the_figures_have_a_panel_per_kind(tmp_path, jobs):
    out = tmp_path / "grid"
    payload = compare.compare("tiny", ["grpo", "psn"], 2, out, SETS)
    from minipsn.experiments import paired

    fig = paired.diff_figure(payload["paired"]["benchmarks"], "grpo", ["base", "grpo", "psn"], 2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["synthetic: pass@k − grpo", "synthetic, final questions: pass@k − grpo",
                      "synthetic, steps questions: pass@k − grpo"]
    steps_ax = fig.axes[2]
    psn_line = next(line for line in steps_ax.get_lines() if line.get_label() == "psn")
    assert psn_line.get_ydata()[0] == pytest.approx(100 * payload["paired"]["benchmarks"]["synthetic"]["kinds"]["steps"]
                                                    ["psn"]["diff"][0])
    summary = compare.summarize({"base": [json.loads((out / "base" / "eval" / "eval.json").read_text())]})
    assert [ax.get_title() for ax in plot.bands_figure(summary).axes] == ["all problems", "final questions",
                                                                          "steps questions"]
    for name in ("compare.png", "compare.pdf", "compare_diff.png", "compare_diff.pdf"):  # to look at, to paste
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize("seeds, ref", [(2, "grpo"), (1, "base")])
def test_compare_md_opens_with_what_was_compared_and_its_tables_share_the_k_columns(seeds, ref, tmp_path, jobs):
    out = tmp_path / "grid"
    compare.compare("tiny", ["grpo", "psn"], seeds, out, SETS, ref=ref)
    md = (out / "compare.md").read_text()
    head = md[:md.index("| method |")]
    assert head.startswith("# compare: grpo, psn on tiny\n")
    for said in (f"{seeds} seed{'s' if seeds > 1 else ''} per method", "2 training steps each",
                 "the base row is the model before RL", f"synthetic ({PROBLEMS} problems), n = {N} samples per problem",
                 "pass@k is the unbiased estimator"):
        assert said in head, said
    against = "the model before RL's" if ref == "base" else "grpo's"
    if seeds > 1:
        assert "mean ± std over the seeds (population std)" in head and "with a 95 % interval paired on seeds" in head
    else:  # one seed: neither a spread nor an interval is claimed
        assert "one seed each: no spread is measured" in head and "without an interval" in head and "±" not in head
    assert f"minus {against}, in points" in head
    headers = [line for line in md.splitlines() if line.startswith("| method |")]
    ks = {tuple(c.strip().removeprefix("pass@").removeprefix("Δ@") for c in h.split("|")[2:] if "@" in c) for h in headers}
    assert ks == {("1", "4")} and len(headers) == 6  # three pass@k tables (all, final, steps) and three Δ tables


def test_a_reference_outside_the_grid_fails_in_one_line(tmp_path):
    result = CliRunner().invoke(cli.app, ["compare", "--model", "tiny", "--methods", "grpo,psn", "--ref", "passk",
                                          "--out", str(tmp_path / "g")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "--ref passk is not in the grid" in line, result.output
    assert not (tmp_path / "g").exists()  # refused before anything ran or was written


def test_a_method_set_outside_the_grid_fails_in_one_line(tmp_path):
    result = CliRunner().invoke(cli.app, ["compare", "--model", "tiny", "--methods", "grpo", "--method-set",
                                          "psn:noise.sigma=0.1", "--out", str(tmp_path / "g")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "--method-set names psn, not in the grid" in line, result.output
    assert not (tmp_path / "g").exists()


def _samples(folder: Path, rows: list[tuple[str, list[int]]]) -> Path:
    (folder / "samples").mkdir(parents=True)
    lines = [{"meta": {}}, *({"id": i, "correct": c} for i, c in rows)]
    (folder / "samples" / "synthetic.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_each_side_is_scored_with_its_own_n_and_seeds_pair_by_seed(tmp_path):
    from minipsn.experiments import paired

    ref = {s: _samples(tmp_path / f"grpo-s{s}", [("a", [0] * 8), ("b", [1] + [0] * 7)]) for s in (0, 1)}
    method = {s: _samples(tmp_path / f"psn-s{s}", [("a", [1, 1, 0, 0]), ("b", [1, 0, 0, 0])]) for s in (0, 1)}
    base = {None: _samples(tmp_path / "base", [("a", [0] * 8), ("b", [0] * 8)])}
    result = paired.paired({"base": base, "grpo": ref, "psn": method}, "grpo", ["synthetic"], (1, 4))
    psn = result["synthetic"]["kinds"]["all"]["psn"]
    # psn pass@1 (2/4 + 1/4)/2 = 0.375 from its own n = 4; grpo's (0/8 + 1/8)/2 = 0.0625 from n = 8
    assert psn["n"] == [4, 8] and psn["method"][0] == pytest.approx(0.375) and psn["reference"][0] == pytest.approx(0.0625)
    assert psn["k"] == [1, 4] and psn["pairing"] == "seeds and problems"
    assert result["synthetic"]["kinds"]["all"]["base"]["pairing"] == "problems (seeds drawn apart)"
    assert result["synthetic"]["counts"]["psn"] == {"seeds": [0, 1], "n": [4, 4], "correct": [[2, 1], [2, 1]]}
    assert result["synthetic"]["ids"] == ["a", "b"] and result["synthetic"]["counts"]["base"]["seeds"] == [None]


def test_sides_on_other_problems_are_refused_naming_the_method_and_the_first_id(tmp_path):
    from minipsn.experiments import paired

    ref = {0: _samples(tmp_path / "grpo-s0", [("a", [0, 1]), ("b", [1, 1]), ("c", [0, 0])])}
    method = {0: _samples(tmp_path / "psn-s0", [("a", [0, 1]), ("d", [1, 1]), ("c", [0, 0])])}
    with pytest.raises(ValueError, match="psn was evaluated on other problems than grpo on synthetic .first id only in "
                                         "psn: d; only in grpo: b"):
        paired.paired({"grpo": ref, "psn": method}, "grpo", ["synthetic"], (1,))
