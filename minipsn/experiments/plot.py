"""Figures, each as PNG and PDF side by side: pass@k curves from eval.json, training curves from metrics.jsonl,
and compare's pass@k with bands over seeds.

    passk         pass@k (%) against k on a log2 axis, one panel per benchmark (and their average),
                  one line per run or eval: where the curves cross is the paper's headline (Fig. 1)
    training      what a PSN-GRPO run is judged by, against step: the verifier's accuracy of the
                  sampled rollouts, held-out pass@1 of the clean policy, σ, the noise's KL per token,
                  the TIS effective sample size, the policy's entropy, the share of zero-advantage
                  groups and the completion length (and the shaped reward, when some run's reward is
                  not its accuracy); raw values faint, a moving average solid
    compare       pass@k of every method, the mean over seeds with a ±1 std band (compare.py)

Every figure has a title, axes in words (units where there are any), and says on itself what its lines
and bands are and how they were smoothed (the legend's title), so a figure pasted alone still does. A
source keeps one colour in every panel, named once in one legend. The moving average is trailing over
the last SMOOTH (10) steps whatever the run's length; a run shorter than 2·SMOOTH steps is drawn raw, and
the sparse held-out evaluations are never smoothed. A flat panel is drawn over a stated range with its
value written in it, not magnified into noise. Drawn on matplotlib's Agg canvas (no pyplot, no display).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from minipsn.run.checkpoint import read_metrics
from minipsn.run.folders import check_writable

# (metric, panel title, y axis): what a PSN-GRPO run is judged by, in this order; the key is the panel's gid
TRAIN_PANELS = (
    ("reward/accuracy", "accuracy of the sampled rollouts", "share the verifier accepts"),
    ("eval/pass@1", "held-out pass@1 (clean policy)", "pass@1"),
    ("noise/sigma", "noise scale σ", "σ (std of the noise)"),
    ("noise/kl_noise", "noise KL per token", "KL(noisy ‖ clean) per token (nats)"),
    ("tis/ess", "TIS effective sample size", "ESS / tokens"),
    ("policy/entropy", "policy entropy", "entropy per token (nats)"),
    ("reward/zero_adv_frac", "zero-advantage groups", "share of groups"),
    ("completion/len_mean", "completion length", "tokens (mean)"))
SHAPED = ("reward/mean", "reward (shaped)", "mean reward")  # a panel only when some run's reward differs from its accuracy
FRACTIONS = {"reward/accuracy", "eval/pass@1", "tis/ess", "reward/zero_adv_frac", "reward/mean"}
SPARSE = {"eval/pass@1"}  # logged every eval.every steps: points, never smoothed
SMOOTH = 10  # steps in the trailing moving average


def palette(labels: list[str]) -> dict[str, str]:
    """One colour per source, in the order given: matplotlib's 10-colour cycle, then the light shades of
    the same ten (tab20's odd entries), then tab20b; 40 sources before a colour repeats."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    extra = [to_hex(c) for c in colormaps["tab20"].colors[1::2] + colormaps["tab20b"].colors]
    return {label: f"C{i}" if i < 10 else extra[(i - 10) % len(extra)] for i, label in enumerate(labels)}


def _label(folder: Path) -> str:
    """A run's name: RUN for RUN/eval/eval.json and RUN/, the folder's name otherwise."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "eval" else folder.name


def find_sources(paths: list[str]) -> tuple[list[tuple[str, dict]], list[tuple[str, list[dict]]]]:
    """Arguments → ([(label, eval report)], [(label, metrics rows)]). An argument is an eval.json, an
    eval folder, or a run folder (its metrics.jsonl, and RUN/eval/eval.json when present)."""
    evals, runs = [], []
    for arg in paths:
        p = Path(arg)
        if p.is_file() and p.suffix == ".json":
            evals.append((_label(p.parent), json.loads(p.read_text())))
        elif p.is_dir():
            found = False
            for ej in (p / "eval.json", p / "eval" / "eval.json"):
                if ej.is_file():
                    evals.append((_label(ej.parent), json.loads(ej.read_text())))
                    found = True
                    break
            if (p / "metrics.jsonl").is_file():
                runs.append((_label(p), read_metrics(p / "metrics.jsonl", note=True)))
                found = True
            if not found:
                raise ValueError(f"{p} holds neither eval.json, eval/eval.json nor metrics.jsonl")
        else:
            raise ValueError(f"{arg} is not an eval.json file or a run/eval folder")
    return _unique(evals), _unique(runs)


def _unique(items: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Two sources with one name (runs/a/x, runs/b/x) get numbered labels, not one merged legend entry."""
    seen: dict[str, int] = {}
    out = []
    for label, value in items:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label} ({seen[label]})", value))
    return out


FORMATS = ("png", "pdf")  # PNG to look at, PDF (vector) to paste into a paper


def save(fig, path: Path) -> list[Path]:
    """`fig` as PATH.png and PATH.pdf side by side; returns both paths."""
    written = []
    for fmt in FORMATS:
        target = Path(path).with_suffix(f".{fmt}")
        # no creation date in the PDF: the same figure is the same bytes
        fig.savefig(target, dpi=120, metadata={"CreationDate": None} if fmt == "pdf" else None)
        written.append(target)
    return written


def panel_grid(n_panels: int, width: float = 4.2, height: float = 3.2):
    """A figure of n_panels panels, up to 3 a row, and its visible axes; room for the title and the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


MARKERS = "os^Dv<>ph*"  # pass@k curves also differ by marker: overlapping curves stay apart, and in grey print


def legend(fig, colors: dict[str, str], caption: str, names: dict[str, str] | None = None,
           markers: bool | dict[str, str] = False) -> None:
    """One legend for the whole figure, below the panels: each source once, in its colour (and marker: MARKERS in
    order, or {source: marker}), under a caption that says what the lines and bands are (and any smoothing)."""
    from matplotlib.lines import Line2D

    if markers is True:
        markers = {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(colors)}
    handles = [Line2D([], [], color=c, lw=2, marker=(markers or {}).get(label), ms=5) for label, c in colors.items()]
    labels = [(names or {}).get(label, label) for label in colors]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9, frameon=False,
               title=_wrap(fig, caption, 9), title_fontsize=9)


def title(fig, text: str) -> None:
    """The figure's title, above its panels, wrapped to the figure's width."""
    fig.suptitle(_wrap(fig, text, 12), fontsize=12)


def _wrap(fig, text: str, fontsize: float) -> str:
    """`text` in lines that fit 90 % of the figure's width (a character is about 0.62 of the font size wide)."""
    import textwrap

    return textwrap.fill(text, max(30, int(0.9 * fig.get_figwidth() * 72 / (0.62 * fontsize))), break_on_hyphens=False)


def _flat(ax, key: str, percent: bool = False) -> None:
    """A panel whose values are all one number: a stated range and the value, not a magnified ±0.04."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if math.isfinite(y)]
    if not ys or max(ys) - min(ys) > 1e-12 * max(1.0, abs(max(ys))):
        return
    v, top = ys[0], 100.0 if percent else 1.0
    if key in FRACTIONS or percent or v == 0:
        ax.set_ylim(-0.02 * top, 1.02 * top) if 0 <= v <= top else ax.set_ylim(v - 1, v + 1)
    else:
        ax.set_ylim(v - abs(v) / 2, v + abs(v) / 2)
    ax.text(0.5, 0.5, f"constant: {v:.3g}", ha="center", va="center", transform=ax.transAxes, color="gray")


def passk_figure(evals: list[tuple[str, dict]]):
    """One panel per benchmark (plus the average when there are several), one line per eval."""
    names = list(dict.fromkeys(b for _, rep in evals for b in rep["benchmarks"]))
    if len(names) > 1:
        names.append("average")
    colors = palette([label for label, _ in evals])
    fig, axes = panel_grid(len(names))
    for ax, name in zip(axes, names):
        for i, (label, rep) in enumerate(evals):
            r = rep["average"] if name == "average" else rep["benchmarks"].get(name)
            if r is None:
                continue
            ks = sorted(int(k) for k in r["pass@k"])
            ax.plot(ks, [100 * r["pass@k"][str(k)] for k in ks], marker=MARKERS[i % len(MARKERS)], ms=4,
                    color=colors[label], label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
        ax.set(title=name, xlabel="k (samples per problem)", ylabel="pass@k (%)")
        ax.grid(alpha=0.3)
        _flat(ax, name, percent=True)
    title(fig, "pass@k of the clean policy on held-out problems")
    legend(fig, colors, "one evaluation per line, no band: unbiased pass@k from n samples per problem, the mean over "
           "the problems; not smoothed", {label: f"{label} (n={rep['n']})" for label, rep in evals}, markers=True)
    return fig


def _smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _panels(runs: list[tuple[str, list[dict]]]) -> list[tuple[str, str, str]]:
    """TRAIN_PANELS, and the shaped reward after the accuracy when some run's differs from it."""
    shaped = any("reward/mean" in m and m["reward/mean"] != m.get("reward/accuracy") for _, rows in runs for m in rows)
    return [TRAIN_PANELS[0], *([SHAPED] if shaped else []), *TRAIN_PANELS[1:]]


def training_figure(runs: list[tuple[str, list[dict]]]):
    """One panel per metric (`_panels`), one colour per run across them all, one legend."""
    panels = _panels(runs)
    colors = palette([label for label, _ in runs])
    fig, axes = panel_grid(len(panels))
    for ax, (key, heading, ylabel) in zip(axes, panels):
        positive = True
        for label, rows in runs:
            pts = [(m["step"], m[key]) for m in rows if "step" in m and m.get(key) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            positive &= min(ys) > 0
            if key in SPARSE:
                ax.plot(xs, ys, color=colors[label], lw=1.5, marker="o", ms=3, label=label)
                continue
            smooth = len(ys) >= 2 * SMOOTH
            if smooth:
                ax.plot(xs, ys, color=colors[label], alpha=0.25, lw=0.8, label=f"_raw {label}")
            ax.plot(xs, _smooth(list(ys), SMOOTH) if smooth else ys, color=colors[label], lw=1.5, label=label)
        ax.set_title(heading, fontsize=10)
        ax.set(xlabel="training step", ylabel=ylabel, gid=key)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif key == "noise/sigma" and positive:
            ax.set_yscale("log")  # σ moves multiplicatively under the σ controllers
        _flat(ax, key)
    title(fig, f"training: {runs[0][0]}" if len(runs) == 1 else f"training: {len(runs)} runs")
    legend(fig, colors, f"faint: each step; solid: trailing mean of the last {SMOOTH} steps (runs of "
           f"{2 * SMOOTH}+ steps); dots: held-out evaluations, not smoothed; no band (one run per line)")
    return fig


def default_out(paths: list[str]) -> Path:
    """ARG/plots for one folder (or the folder of one eval.json), runs/plots for several."""
    if len(paths) == 1:
        p = Path(paths[0])
        return (p if p.is_dir() else p.parent) / "plots"
    return Path("runs") / "plots"


def plot(paths: list[str], out: str | Path | None = None) -> list[Path]:
    """Draw passk.png/.pdf (when any eval.json) and training.png/.pdf (when any metrics.jsonl) into `out`."""
    if not paths:
        raise ValueError("give at least one run folder, eval folder or eval.json")
    out = check_writable(out if out else default_out(paths))
    evals, runs = find_sources(paths)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if evals:
        written += save(passk_figure(evals), out / "passk")
    if runs:
        written += save(training_figure(runs), out / "training")
    return written


def bands_figure(summary: dict[str, dict], heading: str = "pass@k after RL"):
    """compare.png: pass@k, mean over seeds with a ±1 std band, one colour and marker per method as the other
    figures give their sources; one panel for all problems, then one per kind of question when the task has kinds.
    `summary` is compare.summarize's ({method: {"pass@k": {k: (mean, std)}, "seeds", "kinds"?}})."""
    kinds = list(next(iter(summary.values())).get("kinds", {}))
    fig, axes = panel_grid(1 + len(kinds), 5.5, 3.8)
    colors = palette(list(summary))
    for ax, kind in zip(axes, [None, *kinds]):
        for i, (method, s) in enumerate(summary.items()):
            s = s if kind is None else s["kinds"][kind]
            ks = sorted(s["pass@k"])
            mean = [100 * s["pass@k"][k][0] for k in ks]
            std = [100 * s["pass@k"][k][1] for k in ks]
            label = "base, no RL" if method == "base" else f"{method} ({s['seeds']} seed{'s' if s['seeds'] > 1 else ''})"
            ax.plot(ks, mean, marker=MARKERS[i % len(MARKERS)], color=colors[method], label=label)
            if s["seeds"] > 1:
                ax.fill_between(ks, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                                color=colors[method], alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
        ax.set(xlabel="k (samples per problem)", ylabel="pass@k (%)")
        if kinds:
            ax.set_title("all problems" if kind is None else f"{kind} questions")
        ax.grid(alpha=0.3)
    title(fig, heading)
    names = {m: line.get_label() for m, line in zip(summary, axes[0].get_lines())}
    legend(fig, colors, "line: mean over seeds; band: ± 1 std over seeds (population std; none with one seed); "
           "not smoothed", names, markers=True)
    return fig
