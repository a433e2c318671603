"""Paired differences for `compare`: every method against a reference on the same problems, with intervals.

    Δ(k) = mean over seeds and problems of pass@k(method) − the same of the reference (`--ref`, default grpo)

Each (method, seed) and the base model leave one samples file per benchmark (RUN/eval/samples/<name>.jsonl:
each problem's `correct` list, and `kind` on a task with several question types); `stats.paired_bootstrap`
turns their counts into Δ(k) with a 95 % interval that resamples seeds and problems, paired on the problems.
An interval that excludes 0 is marked in the table (✱). With one seed there is no run-to-run spread to
resample, so no interval is printed (compare.json keeps the problems-only one, labelled so).

Written here: the `paired` part of compare.json, the difference table of compare.md, and compare_diff.png
(method − reference against k, with the interval as a band; a panel per kind of question too), one colour
per method as in compare.png.
"""
from __future__ import annotations

import json
from pathlib import Path

from minipsn.stats import count_matrix, paired_bootstrap

MARK = "✱"  # the interval excludes 0


def read_rows(path: Path) -> list[dict]:
    """A samples file's problem rows (its first line is the sampling settings)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines[1:]]


def _ks(n: int, table_ks: tuple[int, ...]) -> list[int]:
    ks = [k for k in table_ks if k <= n]
    return ks if n in ks else [*ks, n]


def paired(folders: dict[str, list[Path]], ref: str, benchmarks: list[str], table_ks: tuple[int, ...],
           resamples: int = 2000) -> dict:
    """{benchmark: {"n", "kinds": {kind or "all": {method: bootstrap of method − ref}}}} for every method in
    `folders` ({method: [its eval folders, one per seed]}; "base" has one) but the reference itself."""
    if ref not in folders:
        raise ValueError(f"--ref {ref} is not in the grid; choose one of {', '.join(folders)}")
    out = {}
    for bench in benchmarks:
        runs = {m: [read_rows(f / "samples" / f"{bench}.jsonl") for f in fs] for m, fs in folders.items()}
        kinds = sorted({r["kind"] for r in runs[ref][0] if "kind" in r})
        by_kind, n = {}, None
        for kind in [None, *kinds]:
            ref_counts, n, _ = count_matrix(runs[ref], kind)
            ks = _ks(n, table_ks)
            by_kind[kind or "all"] = {m: paired_bootstrap(count_matrix(rows, kind)[0], ref_counts, n, ks, resamples)
                                      for m, rows in runs.items() if m != ref}
        out[bench] = {"n": n, "kinds": by_kind}
    return out


def markdown(result: dict, ref: str, seeds: int) -> str:
    """One table per benchmark and kind: Δ pass@k in points, with the 95 % interval when there are seeds."""
    parts = []
    for bench, b in result.items():
        for kind, methods in b["kinds"].items():
            ks = next(iter(methods.values()))["k"]
            title = f"**Δ pass@k against {ref}** ({bench}{'' if kind == 'all' else ', ' + kind}; points; "
            title += (f"95 % interval over seeds and problems, paired on the problems; {MARK}: excludes 0)"
                      if seeds > 1 else "one seed: no interval)")
            lines = [title, "", "| method | " + " | ".join(f"Δ@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
            for method, r in methods.items():
                cells = []
                for d, lo, hi in zip(r["diff"], r["low"], r["high"]):
                    cell = f"{100 * d:+.1f}"
                    if seeds > 1:
                        cell += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" + (f" {MARK}" if lo > 0 or hi < 0 else "")
                    cells.append(cell)
                lines.append(f"| {'base (before RL)' if method == 'base' else method} | " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def diff_figure(result: dict, ref: str, order: list[str], seeds: int):
    """Δ pass@k (method − ref) against k, one panel per benchmark and kind of question (all problems first),
    interval bands."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from minipsn.plot import MARKERS, palette

    colors = palette(order)  # the colours compare.png gives the same methods
    panels = [(bench, kind, methods) for bench, b in result.items() for kind, methods in b["kinds"].items()]
    fig = Figure(figsize=(5.5 * len(panels), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (bench, kind, methods) in zip(axes, panels):
        for method, r in methods.items():
            i = order.index(method)
            diff = [100 * d for d in r["diff"]]
            ax.plot(r["k"], diff, marker=MARKERS[i % len(MARKERS)], color=colors[method],
                    label="base, no RL" if method == "base" else method)
            if seeds > 1:
                ax.fill_between(r["k"], [100 * x for x in r["low"]], [100 * x for x in r["high"]],
                                color=colors[method], alpha=0.15)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
        where = bench if kind == "all" else f"{bench}, {kind} questions"
        ax.set(title=f"{where}: pass@k − {ref}", xlabel="k (samples per problem)", ylabel="Δ pass@k (points)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig
