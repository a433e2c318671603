"""The figures and tables of the ceiling experiment (examples/ceiling_experiment.py report), from its folder alone.

    python examples/ceiling_experiment.py report [OUT]

Reads OUT/grid/compare.json (the arms and doses, every difference against grpo paired on seeds and problems),
each job's eval.json (the training mix's pass@1 per seed), OUT/grid-ceiling-b*/compare.json (the other builds),
OUT/preflight/preflight.json (and OUT/preflight-testbed/'s), OUT/grid/compare_frontier.json and GRPO's evaluations
at its kept steps (the frontier part) where they exist, and writes OUT/report/: report.md (the tables of
docs/RESULTS.md; the frontier's: each arm's last step against GRPO's steps 40 and 20, paired on seeds and problems),
dose_response.png/.pdf (Δ pass@256 and Δ pass@16 of the steps questions against the noise KL, per space, with the
paired 95 % intervals), cost.png/.pdf (the mix's pass@1 against the same KL) and preflight.png/.pdf (noise without
training; preflight-testbed.png/.pdf on testbed v2).
"""
import json
from pathlib import Path

from matplotlib.ticker import NullFormatter

from minipsn.experiments.frontier import mix_pass1
from minipsn.experiments.stats import across_builds, count_matrix, paired_difference

SPACES = {"psn": "σ on the adapter (psn)", "psn-weight": "σ on the weights (psn-weight)",
          "temperature": "temperature (action space)"}


def _label(arm: str, kl: float) -> str:
    return arm if kl == 0.003 else f"{arm}@{kl:g}"


def _mix(grid: Path, arm: str, seeds: int) -> list[float]:
    return [mix_pass1(json.loads((grid / f"{arm}-s{s}" / "eval" / "eval.json").read_text())) for s in range(seeds)]


def _cell(d: dict, j: int, digits: int = 1) -> str:
    """Δ [low, high] in points (a fraction × 100), ✱ where the interval excludes 0."""
    mark = " ✱" if d["low"][j] > 0 or d["high"][j] < 0 else ""
    f = lambda x: f"{100 * x:+.{digits}f}"  # noqa: E731
    return f"{f(d['diff'][j])} [{f(d['low'][j])}, {f(d['high'][j])}]{mark}"


def arms_table(c: dict, grid: Path) -> str:
    """Every arm on the steps questions: pass@k (mean ± std over seeds) and Δ against grpo with its interval."""
    seeds, summ = c["seeds"], c["summary"]
    paired = c["paired"]["benchmarks"]["synthetic"]["kinds"]["steps"]
    ks = paired[next(iter(paired))]["k"]
    cols = [k for k in (1, 16, 64, 256) if k in ks]
    lines = ["| arm | mix pass@1 | " + " | ".join(f"pass@{k}" for k in cols) + " | " + " | ".join(f"Δ@{k}" for k in cols[1:]) + " |",
             "|" + "---|" * (2 + 2 * len(cols) - 1)]
    for arm, s in summ.items():
        st = s["kinds"]["steps"]["pass@k"]
        mix = [mix_pass1(json.loads((grid / "base" / "eval" / "eval.json").read_text()))] if arm == "base" else _mix(grid, arm, seeds)
        m = sum(mix) / len(mix)
        cells = [f"{100 * m:.1f}"] + [f"{100 * st[str(k)][0]:.1f}" + (f" ± {100 * st[str(k)][1]:.1f}" if arm != "base" else "")
                                      for k in cols]
        d = paired.get(arm)
        cells += [_cell(d, ks.index(k)) if d else "" for k in cols[1:]]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dose_rows(c: dict, grid: Path, doses: tuple, found: dict) -> list[dict]:
    seeds = c["seeds"]
    paired = c["paired"]["benchmarks"]["synthetic"]["kinds"]["steps"]
    grpo_mix = _mix(grid, "grpo", seeds)
    rows = []
    for arm in SPACES:
        for kl in doses:
            label = _label(arm, kl)
            if label not in paired:
                continue
            d, ks = paired[label], paired[label]["k"]
            mix = _mix(grid, label, seeds)
            dmix = [a - b for a, b in zip(mix, grpo_mix)]  # seed-paired
            rows.append({"arm": arm, "kl": kl, "traj": kl * found[kl]["tokens"], "value": found[kl]["temperature" if arm ==
                         "temperature" else "lora" if arm == "psn" else "weight"], "d256": d, "i256": ks.index(256),
                         "i16": ks.index(16), "mix": sum(mix) / seeds, "dmix": sum(dmix) / seeds,
                         "mde256": d["mde"][ks.index(256)], "cell": d["cell"][ks.index(256)]})
    return rows


def dose_table(rows: list[dict]) -> str:
    lines = ["| arm | KL / token | KL / trajectory | σ or T | Δ@16 | Δ@256 | mix pass@1 (Δ vs grpo) | MDE @256 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['kl']:g} | {r['traj']:.2g} | {r['value']:.4g} | {_cell(r['d256'], r['i16'])} | "
                     f"{_cell(r['d256'], r['i256'])} | {100 * r['mix']:.1f} ({100 * r['dmix']:+.1f}) | {100 * r['mde256']:.1f} |")
    return "\n".join(lines)


def _figure(panels: int, width: float = 5.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def dose_figure(rows: list[dict], tokens: float):
    fig, axes = _figure(2)
    for ax, (j, k) in zip(axes, (("i256", 256), ("i16", 16))):
        for shift, (arm, name) in zip((0.93, 1.0, 1.07), SPACES.items()):  # side by side, so the bars do not overlap
            rs = [r for r in rows if r["arm"] == arm]
            if not rs:
                continue
            x = [r["kl"] * shift for r in rs]
            y = [100 * r["d256"]["diff"][r[j]] for r in rs]
            err = [[100 * (r["d256"]["diff"][r[j]] - r["d256"]["low"][r[j]]) for r in rs],
                   [100 * (r["d256"]["high"][r[j]] - r["d256"]["diff"][r[j]]) for r in rs]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        kls = sorted({r["kl"] for r in rows})
        ax.set_xticks(kls, [f"{kl:g}" for kl in kls])  # the doses run, by name
        ax.set(xlabel="noise KL per token (nats, log scale)", ylabel=f"Δ pass@{k} vs GRPO (points)",
               title=f"steps questions: Δ pass@{k} against the noise's size")
        top = ax.secondary_xaxis("top", functions=(lambda v: v * tokens, lambda v: v / tokens))
        top.set_xlabel(f"KL per trajectory (nats, at {tokens:.0f} tokens)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="bars: paired 95 % interval (5 seeds × problems)", title_fontsize=7)
    return fig


def cost_figure(rows: list[dict], grpo_mix: list[float]):
    fig, axes = _figure(1, 6.5)
    ax = axes[0]
    for arm, name in SPACES.items():
        rs = [r for r in rows if r["arm"] == arm]
        if rs:
            ax.plot([r["kl"] for r in rs], [100 * r["mix"] for r in rs], marker="o", label=name)
    g = 100 * sum(grpo_mix) / len(grpo_mix)
    ax.axhline(g, color="black", lw=0.8, ls="--", label=f"grpo ({g:.1f})")
    ax.set_xscale("log")
    ax.set(xlabel="noise KL per token (nats, log scale)", ylabel="pass@1 on the training mix (%)",
           title="what the noise costs: the mix's pass@1 after 60 steps (mean over 5 seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def frontier_table(grid: Path, c: dict, steps: tuple[int, ...] = (40, 20), kind: str = "steps") -> str:
    """Each arm's last step against GRPO's own path: Δ pass@256 of the `kind` questions (the ceiling's steps, the
    route's neg) against GRPO's kept adapters at `steps` (evaluated by the frontier part), paired on seeds and
    problems, next to the mix's pass@1 of each. An arm that learned about as much as GRPO at step 40 and reaches less
    sits below GRPO's frontier: it learns less, it does not explore more. Arms whose own kept adapters were evaluated
    get their path (compare_frontier.json)."""
    from minipsn.experiments.paired import paired

    seeds = c["seeds"]
    steps = [t for t in steps if all((grid / f"grpo-s{s}" / f"eval-step{t}" / "eval.json").is_file() for s in range(seeds))]
    if not steps:
        return ""
    arms = [a for a in c["summary"] if a not in ("base", "grpo")]
    mix = {a: sum(_mix(grid, a, seeds)) / seeds for a in arms}
    cols = []
    for t in steps:
        ref = f"grpo@{t}"
        folders = {ref: {s: grid / f"grpo-s{s}" / f"eval-step{t}" for s in range(seeds)},
                   **{a: {s: grid / f"{a}-s{s}" / "eval" for s in range(seeds)} for a in arms}}
        ref_mix = [mix_pass1(json.loads((folders[ref][s] / "eval.json").read_text())) for s in range(seeds)]
        cols.append((f"vs grpo at step {t} (mix {100 * sum(ref_mix) / seeds:.1f})",
                     paired(folders, ref, ["synthetic"], (256,))["synthetic"]["kinds"][kind]))
    k = cols[0][1][arms[0]]["k"][-1]
    lines = ["| arm (last step) | mix pass@1 | " + " | ".join(f"Δ@{k} {name}" for name, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    lines += [f"| {a} | {100 * mix[a]:.1f} | " + " | ".join(_cell(d[a], -1) for _, d in cols) + " |" for a in arms]
    path = grid / "compare_frontier.json"
    if path.is_file():
        lines += ["", f"| arm | (mix pass@1, {kind} pass@{k}) at each step, mean over seeds |", "|---|---|"]
        for arm, by_step in json.loads(path.read_text())["points"].items():
            pts = [f"{t}: ({100 * sum(p['x']) / len(p['x']):.1f}, {100 * sum(p['y']) / len(p['y']):.1f})" for t, p in by_step.items()]
            lines.append(f"| {arm} | " + " → ".join(pts) + " |")
    return "\n".join(lines)


def same_step_table(grid: Path, c: dict, steps: tuple[int, ...] = (20, 40), kind: str = "steps") -> str:
    """Each arm's kept step against GRPO's kept step of the same number: Δ pass@k_max of the `kind` questions, paired
    on seeds and problems, for the arms whose kept steps the frontier part evaluated on every seed."""
    from minipsn.experiments.paired import paired

    seeds = c["seeds"]
    done = lambda a, t: all((grid / f"{a}-s{s}" / f"eval-step{t}" / "eval.json").is_file() for s in range(seeds))  # noqa: E731
    steps = [t for t in steps if done("grpo", t)]
    arms = [a for a in c["summary"] if a not in ("base", "grpo") and steps and all(done(a, t) for t in steps)]
    if not arms:
        return ""
    cols = [paired({m: {s: grid / f"{m}-s{s}" / f"eval-step{t}" for s in range(seeds)} for m in ["grpo", *arms]},
                   "grpo", ["synthetic"], (256,))["synthetic"]["kinds"][kind] for t in steps]
    k = cols[0][arms[0]]["k"][-1]
    lines = ["| arm | " + " | ".join(f"Δ@{k} vs grpo at step {t}" for t in steps) + " |", "|---|" + "---|" * len(steps)]
    lines += [f"| {a} | " + " | ".join(_cell(d[a], -1) for d in cols) + " |" for a in arms]
    return "\n".join(lines)


def builds_table(out: Path) -> str:
    """Δ pass@256 of the steps questions against grpo per build, and across builds (the build a random effect), for
    each arm the builds part ran (the best ones when it ran: later doses may have moved the best since)."""
    grids = [("ceiling (b0)", out / "grid")] + [(g.name.removeprefix("grid-"), g) for g in sorted(out.glob("grid-ceiling-b*"))]
    if len(grids) < 2:
        return ""
    ran = json.loads((grids[1][1] / "compare.json").read_text())["paired"]["benchmarks"]["synthetic"]["kinds"]["steps"]
    arms = [a for a in ran if a not in ("base", "passk")] + ["passk"]
    lines = ["| build | base pass@256 | grpo pass@256 | " + " | ".join(f"Δ {a}" for a in arms) + " |",
             "|---|---|---|" + "---|" * len(arms)]
    per = {a: [] for a in arms}
    for name, g in grids:
        c = json.loads((g / "compare.json").read_text())
        p = c["paired"]["benchmarks"]["synthetic"]["kinds"]["steps"]
        st = c["summary"]
        cells = [f"{100 * st['base']['kinds']['steps']['pass@k']['256'][0]:.1f}",
                 f"{100 * st['grpo']['kinds']['steps']['pass@k']['256'][0]:.1f}"]
        for arm in arms:
            d, j = p[arm], p[arm]["k"].index(256)
            cells.append(_cell(d, j))
            per[arm].append((d["diff"][j], d["se"][j]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for key in arms:
        r = across_builds([x for x, _ in per[key]], [s for _, s in per[key]])
        cells.append(f"{100 * r['diff']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] (τ² {1e4 * r['tau2']:.1f} pt²)")
    lines.append("| across builds (random effect) | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _preflight_counts(folder: Path, result: dict) -> tuple:
    """(counts (1, P), n, problem ids) of one pre-flight setting from its samples file (one problem row a line)."""
    text = (folder / "samples" / f"{result['setting'].replace(':', '-')}-D{result['draws']}.jsonl").read_text()
    return count_matrix([[json.loads(line) for line in text.splitlines() if line.strip()]])


def preflight_part(out: Path, report_dir: Path, found: dict, name: str = "preflight", what: str = "steps questions") -> str:
    path = out / name / "preflight.json"
    if not path.is_file():
        return ""
    pf = json.loads(path.read_text())
    key = lambda space, value: (space, f"{value:.5g}")  # noqa: E731  (the preflight part writes each value with 5 digits)
    kl_of = {key(space, d[space]): kl for kl, d in found.items() for space in ("lora", "weight", "temperature") if d[space]}
    lines = ["| setting | KL / token | D | pass@1 | pass@16 | pass@256 | Δ pass@256 − clean | boxes a tuple | right |",
             "|---|---|---|---|---|---|---|---|---|"]
    counts = lambda r: _preflight_counts(path.parent, r)  # noqa: E731
    clean = next(counts(r) for r in pf["results"] if r["space"] == "clean")
    fig, axes = _figure(1, 6.5)
    curves = {}
    for r in pf["results"]:
        kl = 0.0 if r["space"] == "clean" else kl_of.get(key(r["space"], r["value"]))
        p, (c, n, ids) = r["pass@k"], counts(r)
        if ids != clean[2]:
            raise ValueError(f"the pre-flight's {r['setting']} (D = {r['draws']}) holds other problems than clean sampling's")
        # paired on problems, one evaluation on each side: the interval holds the problems and each side's sampling
        d = "" if r["space"] == "clean" else _cell(paired_difference(c, clean[0], n, [256], clean[1]), 0)
        lines.append(f"| {r['setting']} | {kl if kl is not None else '?'} | {r['draws']} | {100 * p['1']:.1f} | {100 * p['16']:.1f} | "
                     f"{100 * p['256']:.1f} | {d} | {100 * r.get('tuple_rate', 0):.2f} % | {100 * r.get('right_rate', 0):.2f} % |")
        if r["space"] == "clean":
            axes[0].axhline(100 * p["256"], color="black", lw=0.8, ls="--", label=f"clean sampling ({100 * p['256']:.1f})")
        elif kl is not None:
            curves.setdefault((r["space"], r["draws"]), []).append((kl, 100 * p["256"]))
    for (space, draws), pts in sorted(curves.items()):
        pts.sort()
        axes[0].plot([x for x, _ in pts], [y for _, y in pts], marker="o" if draws == 1 else "s",
                     ls="-" if draws == 1 else ":", label=f"{space}, D = {draws}")
    axes[0].set_xscale("log")
    axes[0].set(xlabel="noise KL per token (nats, log scale)", ylabel=f"pass@256, {what} (%)",
                title=f"noise without training: the base model, {pf['problems']} {what} × {pf['n']}")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="D: noise draws per problem's 256 samples", title_fontsize=7)
    for ext in ("png", "pdf"):
        fig.savefig(report_dir / f"{name}.{ext}", dpi=120)
    return "\n".join(lines)


def _checkpoint_counts(folder: Path, result: dict) -> tuple:
    """(correct counts, boxed-a-tuple counts, n, ids) of one setting at one checkpoint: the samples that box a tuple
    counted as `correct` are, at k = 1, the share that boxes a tuple (a mean over problems, as tuple_choice's)."""
    text = (folder / "samples" / f"{result['setting'].replace(':', '-')}-D{result['draws']}.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    right, n, ids = count_matrix([rows])
    boxed = count_matrix([[{"id": r["id"], "correct": [a is not None and a.startswith("(") for a in r["answers"]]}
                           for r in rows]])[0]
    return right[0], boxed[0], n, ids


def checkpoint_part(out: Path, report_dir: Path) -> str:
    """The pre-flight at GRPO's checkpoints (OUT/preflight-grpo): per step and setting, the means over the seeds'
    checkpoints and each noise setting's Δ against clean sampling at the same checkpoints, paired on seeds and problems
    (step 0, the base, is one model: paired on problems); "" before the part ran."""
    base = out / "preflight-grpo"
    folders = sorted(base.glob("*/preflight.json")) if base.is_dir() else []
    cells: dict = {}  # (step, setting) → [(right, boxed, n, ids) per checkpoint]; a finished setting only
    order: list = []  # the settings in the order the part ran them
    for path in folders:
        step = int(path.parent.name.split("step")[1])
        for r in json.loads(path.read_text())["results"]:
            cells.setdefault((step, r["setting"]), []).append(_checkpoint_counts(path.parent, r))
            order += [r["setting"]] * (r["setting"] not in order)
    if not cells:
        return ""
    lines = ["| step | setting | checkpoints | pass@1 | pass@256 | Δ pass@256 − clean | boxes a tuple | "
             "Δ boxes a tuple − clean |", "|---|---|---|---|---|---|---|---|"]
    fig, axes = _figure(2)
    curves: dict = {}
    for (step, setting), got in sorted(cells.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        clean = cells.get((step, "clean"), [])
        if len(clean) != len(got) or any(c[3] != g[3] for c, g in zip(clean, got)):
            raise ValueError(f"the pre-flight at step {step}: {setting} and clean sampling hold other checkpoints or "
                             "problems (a part stopped in the middle? run preflight-grpo again)")
        stack = lambda j, rows: [r[j] for r in rows]  # noqa: E731
        n, paired = got[0][2], len(got) > 1
        right = paired_difference(stack(0, got), stack(0, clean), n, [1, 256], paired_seeds=paired)
        boxed = paired_difference(stack(1, got), stack(1, clean), n, [1], paired_seeds=paired)
        d256 = "" if setting == "clean" else _cell(right, 1)
        db = "" if setting == "clean" else _cell(boxed, 0, 2)
        lines.append(f"| {step} | {setting} | {len(got)} | {100 * right['method'][0]:.2f} | {100 * right['method'][1]:.1f} | "
                     f"{d256} | {100 * boxed['method'][0]:.2f} % | {db} |")
        curves.setdefault(setting.split(":")[0], []).append((step, 100 * boxed["method"][0], 100 * right["method"][1]))
    for space, pts in curves.items():
        for ax, j in zip(axes, (1, 2)):
            ax.plot([p[0] for p in pts], [p[j] for p in pts], marker="o", label=space)
    for ax, what in zip(axes, ("samples that box a tuple (%)", "pass@256 (%)")):
        ax.set(xlabel="GRPO step (0: the base)", ylabel=what, xticks=[0, 20, 40, 60])
        ax.grid(alpha=0.3)
    axes[0].set_title("noise at GRPO's checkpoints: the choice", fontsize=9)
    axes[1].set_title("and what sampling reaches (steps questions)", fontsize=9)
    axes[0].legend(fontsize=7)
    for ext in ("png", "pdf"):
        fig.savefig(report_dir / f"preflight-grpo.{ext}", dpi=120)
    return "\n".join(lines)


def report(out: Path, doses: tuple, found: dict, testbed: dict | None = None) -> None:
    """OUT/report (module docstring); `testbed`: testbed v2's doses (its own calibration) when its pre-flight ran."""
    grid, report_dir = out / "grid", out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    c = json.loads((grid / "compare.json").read_text())
    rows = dose_rows(c, grid, doses, found)
    tokens = found[doses[0]]["tokens"]
    parts = ["## Every arm, steps questions\n", arms_table(c, grid), "\n## Dose-response\n", dose_table(rows)]
    for name, fig in (("dose_response", dose_figure(rows, tokens)), ("cost", cost_figure(rows, _mix(grid, "grpo", c["seeds"])))):
        for ext in ("png", "pdf"):
            fig.savefig(report_dir / f"{name}.{ext}", dpi=120)
    comps = [f"| {r['arm']} @ {r['kl']:g} | {1e4 * r['cell']['seed']:.1f} | {1e4 * r['cell']['problem']:.1f} | "
             f"{1e4 * r['cell']['residual']:.1f} | {100 * r['mde256']:.1f} |" for r in rows]
    parts += ["\n## Variance of one cell's D (points², pass@256, steps) and the minimum detectable effect\n",
              "| arm | seed | problem | residual | MDE (points) |\n|---|---|---|---|---|\n" + "\n".join(comps)]
    parts += ["\n## The frontier: each arm's last step against GRPO's path\n", frontier_table(grid, c)]
    parts += ["\n## Builds\n", builds_table(out)]
    parts += ["\n## Pre-flight\n", preflight_part(out, report_dir, found)]
    parts += ["\n## Pre-flight at GRPO's checkpoints\n", checkpoint_part(out, report_dir)]
    if testbed:
        parts += ["\n## Pre-flight on testbed v2\n", preflight_part(out, report_dir, testbed, "preflight-testbed", "problems")]
    (report_dir / "report.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {report_dir}/report.md and its figures")
