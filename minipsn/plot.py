"""Plots as PNG files: pass@k curves from eval.json files and training curves from metrics.jsonl.

    passk.png     pass@k (%) against k on a log2 axis, one panel per benchmark (and their average),
                  one line per run or eval: where the curves cross is the paper's headline (Fig. 1)
    training.png  reward/mean, reward/accuracy, noise/sigma, tis/clip_frac (and eval/pass@1 when the
                  run logged it) against step, one line per run; raw values faint, a moving average solid

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting works on a machine
without a display and never touches a user's interactive backend.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from minipsn.checkpoint import read_metrics

TRAIN_KEYS = ("reward/mean", "reward/accuracy", "noise/sigma", "tis/clip_frac")
OPTIONAL_KEYS = ("eval/pass@1",)  # drawn only when some run logged them


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


def _grid(n_panels: int, width: float = 4.2, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def plot_passk(evals: list[tuple[str, dict]], path: Path) -> Path:
    """One panel per benchmark (plus the average when there are several), one line per eval."""
    names = list(dict.fromkeys(b for _, rep in evals for b in rep["benchmarks"]))
    if len(names) > 1:
        names.append("average")
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        for label, rep in evals:
            r = rep["average"] if name == "average" else rep["benchmarks"].get(name)
            if r is None:
                continue
            ks = sorted(int(k) for k in r["pass@k"])
            ax.plot(ks, [100 * r["pass@k"][str(k)] for k in ks], marker="o", ms=3, label=f"{label} (n={r['n']})")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
        ax.set(title=name, xlabel="k", ylabel="pass@k (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def _smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_training(runs: list[tuple[str, list[dict]]], path: Path) -> Path:
    """One panel per metric, one line per run."""
    keys = [*TRAIN_KEYS, *(k for k in OPTIONAL_KEYS if any(k in m for _, rows in runs for m in rows))]
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        positive = True
        for i, (label, rows) in enumerate(runs):
            pts = [(m["step"], m[key]) for m in rows if key in m and "step" in m and m[key] is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            positive &= min(ys) > 0
            color = f"C{i % 10}"
            window = max(1, len(ys) // 20)
            if window > 1:
                ax.plot(xs, ys, color=color, alpha=0.25, lw=0.8)
            ax.plot(xs, _smooth(list(ys), window), color=color, lw=1.5, label=label)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif key == "noise/sigma" and positive:
            ax.set_yscale("log")  # σ moves multiplicatively under the σ controllers
        ax.set(title=key, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def default_out(paths: list[str]) -> Path:
    """ARG/plots for one folder (or the folder of one eval.json), runs/plots for several."""
    if len(paths) == 1:
        p = Path(paths[0])
        return (p if p.is_dir() else p.parent) / "plots"
    return Path("runs") / "plots"


def plot(paths: list[str], out: str | Path | None = None) -> list[Path]:
    """Draw passk.png (when any eval.json) and training.png (when any metrics.jsonl) into `out`."""
    if not paths:
        raise ValueError("give at least one run folder, eval folder or eval.json")
    evals, runs = find_sources(paths)
    out = Path(out) if out else default_out(paths)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if evals:
        written.append(plot_passk(evals, out / "passk.png"))
    if runs:
        written.append(plot_training(runs, out / "training.png"))
    return written
