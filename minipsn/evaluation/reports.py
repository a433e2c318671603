"""The report of an evaluation as a rich table (`results_table`: one row per benchmark, a mixed task's
kinds under its row, an average row; pass@k, mean and majority-vote accuracy, mean length, truncation)
and `print_table`, which prints it at full width on any terminal; `cli.py eval` shows it after `evaluate`.
"""
from __future__ import annotations

import math


def results_table(report: dict):
    """A rich table: one row per benchmark and an average row; pass@k columns for k = 1, 2, 4, ..."""
    from rich import box
    from rich.table import Table

    ks = list(report["average"]["pass@k"])
    title = report["model"] + (f" + {report['adapter']}" if report.get("adapter") else "")
    table = Table(title=f"{title}, n = {report['n']}", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="@k: pass@k, acc: mean accuracy, maj: majority vote, trunc: truncated (all in %); len: tokens")
    table.add_column("benchmark", no_wrap=True)
    for col in ("problems", *(f"@{k}" for k in ks), "acc", "maj", "len", "trunc"):
        table.add_column(col, justify="right", no_wrap=True)
    rows = [(f"{name} · {kind}" if kind else name, r) for name, b in report["benchmarks"].items()
            for kind, r in [(None, b), *b.get("kinds", {}).items()]]  # a mixed task's kinds under its row
    rows += [("average", report["average"])] if len(report["benchmarks"]) > 1 else []
    for i, (name, r) in enumerate(rows):
        table.add_row(name, str(r["problems"]), *(f"{100 * r['pass@k'].get(k, math.nan):.1f}" for k in ks),
                      f"{100 * r['mean_acc']:.1f}", f"{100 * r['maj_acc']:.1f}", f"{r['mean_len']:.0f}",
                      f"{100 * r['trunc_rate']:.1f}", end_section=i == len(rows) - 1 - (len(report["benchmarks"]) > 1))
    return table


def print_table(table) -> None:
    """Print at full width even on a narrow terminal: wrapped lines beat numbers cut to "…"."""
    from rich.console import Console

    console = Console()
    width = console.measure(table, options=console.options.update(max_width=1000)).maximum
    (console if width <= console.width else Console(width=width)).print(table)
