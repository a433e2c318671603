"""Paired differences for `compare`: every method against a reference on the same problems, with intervals.

    Δ(k) = mean over seeds and problems of pass@k(method) − the same of the reference (`--ref`, default grpo)

Each (method, seed) and the base model leave one samples file per benchmark (RUN/eval/samples/<name>.jsonl:
each problem's `correct` list, and `kind` on a task with several question types). `stats.paired_difference`
turns their counts into Δ(k) with a 95 % interval: where both sides hold the same seeds (every method of a
grid), seed s is paired with seed s (they share the data order, init and generators) and problems with
problems; against the one-evaluation base model only the problems pair. Each side's pass@k comes from its
own n, and the two sides must hold the same problem ids (checked, not assumed). An interval that excludes 0 is
marked in the table (✱). With one seed there is no run-to-run spread, so no interval is printed (compare.json
keeps the problems-only one, labelled so).

Written here: the `paired` part of compare.json (with each method's per-(seed, problem) counts, so an analysis
can be redone without rerunning), the difference table of compare.md, and compare_diff.png/.pdf (method −
reference against k, with the interval as a band; a panel per kind of question too), one colour per method as
in compare.png.
"""
from __future__ import annotations

import json
from pathlib import Path

from minipsn.experiments.stats import count_matrix, paired_difference

MARK = "✱"  # the interval excludes 0


def read_rows(path: Path) -> list[dict]:
    """A samples file's problem rows (its first line is the sampling settings)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines[1:]]


def _ks(n: int, table_ks: tuple[int, ...]) -> list[int]:
    """table_ks up to n, and n itself: the k columns of compare's tables."""
    ks = [k for k in table_ks if k <= n]
    return ks if n in ks else [*ks, n]


def _side(name: str, runs: list[list[dict]], kind: str | None) -> tuple:
    try:
        return count_matrix(runs, kind)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def paired(folders: dict[str, dict[int | None, Path]], ref: str, benchmarks: list[str],
           table_ks: tuple[int, ...]) -> dict:
    """{benchmark: {"n", "ids", "kinds": {kind or "all": {method: paired_difference of method − ref}}, "counts"}}
    for every method in `folders` ({method: {seed: its eval folder}}; the base model's seed is None) but the
    reference itself. Seeds pair where both sides hold the same seeds; the problem ids must be the same."""
    if ref not in folders:
        raise ValueError(f"--ref {ref} is not in the grid; choose one of {', '.join(folders)}")
    out = {}
    for bench in benchmarks:
        runs = {m: [read_rows(f / "samples" / f"{bench}.jsonl") for f in fs.values()] for m, fs in folders.items()}
        ref_ids = sorted(r["id"] for r in runs[ref][0])
        kinds = sorted({r["kind"] for r in runs[ref][0] if "kind" in r})
        one_n = len({len(r["correct"]) for r in runs[ref][0]}) == 1  # else each kind has its own (eval.n_by_kind)
        counts = {}
        for m in runs:
            ids = sorted(r["id"] for r in runs[m][0])
            if ids != ref_ids:
                only = lambda a, b: next(iter(sorted(set(a) - set(b))), "none")  # noqa: E731
                raise ValueError(f"{m} was evaluated on other problems than {ref} on {bench} (first id only in {m}: "
                                 f"{only(ids, ref_ids)}; only in {ref}: {only(ref_ids, ids)}); pair them on the same "
                                 "problems (same eval.problems and data.*)")
            by_id = [{r["id"]: r["correct"] for r in rows} for rows in runs[m]]  # one per seed
            counts[m] = {"seeds": list(folders[m]), "n": [len(by_id[0][i]) for i in ids],  # (P,), ids in "ids"
                         "correct": [[sum(seed[i]) for i in ids] for seed in by_id]}  # (S, P)
        by_kind, n_ref = {}, None
        for kind in ([None] if one_n else []) + kinds:
            ref_counts, n_ref, _ = _side(ref, runs[ref], kind)
            by_kind[kind or "all"] = {}
            for m, rows in runs.items():
                if m == ref:
                    continue
                m_counts, n_m, _ = _side(m, rows, kind)
                same_seeds = None not in folders[m] and list(folders[m]) == list(folders[ref])
                by_kind[kind or "all"][m] = paired_difference(m_counts, ref_counts, n_m, _ks(min(n_m, n_ref), table_ks),
                                                              n_ref, paired_seeds=same_seeds)
        out[bench] = {"n": n_ref, "ids": ref_ids, "kinds": by_kind, "counts": counts}
    return out


def markdown(result: dict, ref: str, seeds: int) -> str:
    """One table per benchmark and kind: Δ pass@k in points, with the 95 % interval when there are seeds."""
    parts = []
    for bench, b in result.items():
        for kind, methods in b["kinds"].items():
            ks = next(iter(methods.values()))["k"]
            title = f"**Δ pass@k against {ref}** ({bench}{'' if kind == 'all' else ', ' + kind}; points; "
            title += (f"95 % interval over seeds and problems, seed s paired with seed s and problem with problem "
                      f"(against the base model: problems only); {MARK}: excludes 0)" if seeds > 1 else "one seed: no interval)")
            lines = [title, "", "| method | " + " | ".join(f"Δ@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
            for method, r in methods.items():
                cells = []
                for d, lo, hi in zip(r["diff"], r["low"], r["high"]):
                    cell = f"{100 * d:+.1f}"
                    if seeds > 1:
                        cell += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" + (f" {MARK}" if lo > 0 or hi < 0 else "")
                    cells.append(cell)
                lines.append(f"| {'base (before RL)' if method == 'base' else method} | " + " | ".join(cells) + " |")
            if seeds > 1:  # what this design can see: the difference a test at 5 % finds 4 times in 5
                mde = [sorted(r["mde"][j] for r in methods.values())[len(methods) // 2] for j in range(len(ks))]
                lines += ["", "minimum detectable effect (80 % power, two-sided 5 %; median over the methods): "
                          + ", ".join(f"@{k} {100 * x:.1f}" for k, x in zip(ks, mde)) + " points"]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def diff_figure(result: dict, ref: str, order: list[str], seeds: int, title: str = ""):
    """Δ pass@k (method − ref) against k, one panel per benchmark and kind of question (all problems first),
    interval bands; `title` says what was compared (compare.write_figures)."""
    from minipsn.experiments.plot import MARKERS, legend, palette, panel_grid
    from minipsn.experiments.plot import title as set_title

    colors = palette(order)  # the colours compare.png gives the same methods
    panels = [(bench, kind, methods) for bench, b in result.items() for kind, methods in b["kinds"].items()]
    fig, axes = panel_grid(len(panels), 5.5, 3.8)
    names = {}
    for ax, (bench, kind, methods) in zip(axes, panels):
        for method, r in methods.items():
            i = order.index(method)
            names[method] = "base, no RL" if method == "base" else method
            ax.plot(r["k"], [100 * d for d in r["diff"]], marker=MARKERS[i % len(MARKERS)], color=colors[method],
                    label=names[method])
            if seeds > 1:
                ax.fill_between(r["k"], [100 * x for x in r["low"]], [100 * x for x in r["high"]],
                                color=colors[method], alpha=0.15)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
        where = bench if kind == "all" else f"{bench}, {kind} questions"
        ax.set(title=f"{where}: pass@k − {ref}", xlabel="k (samples per problem)", ylabel=f"Δ pass@k vs {ref} (points)")
        ax.grid(alpha=0.3)
    set_title(fig, f"pass@k minus {ref}'s" + (f": {title}" if title else ""))
    band = (f"band: 95 % interval over seeds and problems, seed s paired with seed s and problem with problem "
            f"(against the base model: problems only); {MARK} in compare.md where it excludes 0"
            if seeds > 1 else "one seed: no band (no run-to-run spread to pair)")
    shown = [m for m in order if m in names]
    legend(fig, {m: colors[m] for m in shown}, f"line: mean Δ over seeds and problems; {band}; not smoothed", names,
           {m: MARKERS[order.index(m) % len(MARKERS)] for m in shown})
    return fig
