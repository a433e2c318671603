"""Figures a researcher can read: one colour per source in every panel and one legend per figure, the
panels a PSN run is judged by, flat panels on a stated range, a smoothing window fixed in steps. Checked
on the matplotlib Figure objects (no model, no PNG decoding)."""
import math

import pytest

from minipsn.evaluation import scoring
from minipsn.experiments import plot


def _metrics(steps: int, sigma: float, shaped: float = 0.0, seed: int = 0) -> list[dict]:
    rows = [{"step": 0, "eval/pass@1": 0.2}]
    for s in range(1, steps + 1):
        acc = (s % 7) / 10 + seed / 100
        rows.append({"step": s, "reward/accuracy": acc, "reward/mean": acc + shaped, "noise/sigma": sigma,
                     "noise/kl_noise": 0.003 * (sigma > 0) * (1 + (s % 3) / 10), "tis/ess": 1 - (sigma > 0) * (s % 5) / 100,
                     "policy/entropy": 1 - s / 1000, "reward/zero_adv_frac": (s % 4) / 8, "completion/len_mean": 30 + s % 9})
        if s % 20 == 0:
            rows.append({"step": s, "eval/pass@1": 0.2 + s / 1000})
    return rows


RUNS = [("grpo", _metrics(60, 0.0)), ("psn", _metrics(60, 0.02, seed=1)), ("psn-adaptive", _metrics(60, 0.02, seed=2))]


def _source(line) -> str:
    return line.get_label().removeprefix("_raw ")


def _assert_one_colour_per_source_and_one_legend(fig, labels: list[str], legend_texts: list[str]):
    colours = {}
    for ax in fig.axes:
        assert ax.get_legend() is None  # no per-panel legend
        for line in ax.get_lines():
            colours.setdefault(_source(line), set()).add(line.get_color())
    assert set(colours) == set(labels)
    assert all(len(c) == 1 for c in colours.values()), colours  # the same colour in every panel
    assert len({next(iter(c)) for c in colours.values()}) == len(labels)  # and another for each source
    assert len(fig.legends) == 1
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == legend_texts
    for handle, label in zip(legend.legend_handles, labels):  # the legend names each source in its colour
        assert handle.get_color() == next(iter(colours[label]))


def test_training_figure_one_colour_per_run_in_every_panel_and_one_legend():
    fig = plot.training_figure(RUNS)
    _assert_one_colour_per_source_and_one_legend(fig, ["grpo", "psn", "psn-adaptive"], ["grpo", "psn", "psn-adaptive"])


def test_training_panels_are_what_a_psn_run_is_judged_by():
    keys = [ax.get_gid() for ax in plot.training_figure(RUNS).axes if ax.get_visible()]
    assert keys == ["reward/accuracy", "eval/pass@1", "noise/sigma", "noise/kl_noise", "tis/ess", "policy/entropy",
                    "reward/zero_adv_frac", "completion/len_mean"]  # reward/mean equals the accuracy: no twin panel
    shaped = [("custom", _metrics(60, 0.02, shaped=0.1))]
    keys = [ax.get_gid() for ax in plot.training_figure(shaped).axes if ax.get_visible()]
    assert keys[:2] == ["reward/accuracy", "reward/mean"]  # a shaped reward gets its own panel


def test_a_flat_panel_spans_a_stated_range_and_says_its_value():
    fig = plot.training_figure([("grpo", _metrics(60, 0.0))])
    kl = next(ax for ax in fig.axes if ax.get_gid() == "noise/kl_noise")  # exactly 0 at σ = 0
    lo, hi = kl.get_ylim()
    assert lo <= 0 and hi >= 1 and "constant: 0" in [t.get_text() for t in kl.texts]
    bench = {"n": 4, "problems": 2, "pass@k": {str(k): 0.0 for k in scoring.ks_for(4)}, "mean_acc": 0, "maj_acc": 0,
             "mean_len": 3, "trunc_rate": 0}
    fig = plot.passk_figure([("base", {"n": 4, "benchmarks": {"aime24": bench}, "average": bench})])
    assert fig.axes[0].get_ylim()[1] >= 100  # pass@k that is 0 everywhere, on 0 … 100 %


def test_the_smoothing_window_is_fixed_in_steps_not_a_share_of_the_run():
    """Step 30 of a run looks the same whether the run has 40 steps or 400."""
    def smoothed_at_30(steps):
        fig = plot.training_figure([("run", _metrics(steps, 0.02))])
        ax = next(ax for ax in fig.axes if ax.get_gid() == "reward/accuracy")
        line = next(line for line in ax.get_lines() if line.get_label() == "run")
        return dict(zip(line.get_xdata(), line.get_ydata()))[30]

    assert smoothed_at_30(40) == smoothed_at_30(400)
    raw = [m["reward/accuracy"] for m in _metrics(40, 0.02) if "reward/accuracy" in m]
    assert smoothed_at_30(40) == pytest.approx(sum(raw[30 - plot.SMOOTH:30]) / plot.SMOOTH)


def test_passk_figure_one_colour_per_eval_in_every_panel_and_one_legend():
    evals = []
    for i, name in enumerate(("base", "grpo", "psn")):
        bench = {"n": 16, "problems": 5, "pass@k": {str(k): min(1.0, k / 20 + i / 10) for k in scoring.ks_for(16)},
                 "mean_acc": .1, "maj_acc": .1, "mean_len": 20, "trunc_rate": 0}
        report = {"n": 16, "benchmarks": {"synthetic": bench, "aime24": dict(bench)}}
        report["average"] = scoring.average(report["benchmarks"])
        evals.append((name, report))
    fig = plot.passk_figure(evals)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["synthetic", "aime24", "average"]
    _assert_one_colour_per_source_and_one_legend(fig, ["base", "grpo", "psn"],
                                                 ["base (n=16)", "grpo (n=16)", "psn (n=16)"])


def test_compare_png_colours_methods_as_plot_does():
    summary = {m: {"pass@k": {k: (k / 20 + i / 10, 0.01) for k in (1, 2, 4)}, "seeds": s}
               for i, (m, s) in enumerate((("base", 1), ("grpo", 3), ("psn", 3)))}
    fig = plot.bands_figure(summary)
    ax = fig.axes[0]
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colours == {"base, no RL": "C0", "grpo (3 seeds)": "C1", "psn (3 seeds)": "C2"}
    assert list(colours.values()) == list(plot.palette(list(summary)).values())
    assert len(ax.collections) == 2  # a ±1 std band for the methods with several seeds, none for the base row
    assert not any(math.isnan(y) for line in ax.get_lines() for y in line.get_ydata())


def test_many_sources_still_get_distinct_colours():
    from matplotlib.colors import to_hex

    colours = plot.palette([f"run{i}" for i in range(40)])
    assert len({to_hex(c) for c in colours.values()}) == 40 and colours["run0"] == "C0"
