"""The ceiling subset: problems chosen on the base model where a narrowing or a widening can show.

    ceiling   base pass@1 ≤ max_pass1 (0.1) and pass@n > 0 (n = 256): the base solves them, rarely
    never     pass@n = 0: the base never solves them (a slice of its own: can any arm reach one?)

On whole benchmarks most problems cannot show either effect (the base already solves them, or never does), and
answers that are small integers make pass@256 partly luck. `select` evaluates the base once on a pool of benchmarks
(`python cli.py subset`), leaves out problems a guess would solve (headroom.benchmark_guesses: the others' most common
answer, the policy's answers to other problems; above max_guess per sample) and gold answers the verifier cannot
read, and keeps a seeded sample of each slice in OUT/subset.jsonl (problem, answer, kind = ceiling or never), a local
dataset: `--set data.test_split=OUT/subset.jsonl` with the benchmark `heldout` evaluates it (compare included).
Regression to the mean: chosen for a low pass@1 under the selection seed, the same problems sampled again score
higher, so the experiment evaluates them with other seeds (compare: 0 … S − 1; `check_seeds`) and the base row is
measured afresh, never read from the selection's samples (narrowing cannot be faked by the selection's own luck).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from minipsn.experiments.headroom import GUESSABLE, benchmark_guesses
from minipsn.run.config import Config

SUBSET_FILE = "subset.jsonl"
SELECTION_SEED = 1000  # the base's selection evaluation; compare evaluates with seeds 0 … S − 1


@dataclass(frozen=True)
class Selection:
    """How the subset is chosen (the `subset` command's options)."""
    size: int = 200            # ceiling problems kept at most (a seeded sample when more qualify)
    min_size: int = 150        # fewer qualifying is an error (add benchmarks to the pool, or loosen max_pass1)
    max_pass1: float = 0.1     # a ceiling problem's base pass@1 is at most this (and its pass@n above 0)
    never: int = 50            # problems the base never solves, kept as the `never` slice (0 = none)
    max_guess: float = GUESSABLE  # a problem whose best guess is right more often per sample is left out (1 = off)

    def __post_init__(self):
        if not (1 <= self.min_size <= self.size and 0 <= self.max_pass1 < 1 and self.never >= 0 and self.max_guess > 0):
            raise ValueError(f"subset needs 1 <= --min-size <= --size, 0 <= --max-pass1 < 1, --never >= 0 and "
                             f"--max-guess > 0; got {self.min_size}, {self.size}, {self.max_pass1}, {self.never}, "
                             f"{self.max_guess}")


def _scored(out: Path, pool: list[str], cfg: Config) -> tuple[list[dict], dict]:
    """Every pool problem with its base samples, {source, record, c, n, guess} in pool order, and each benchmark's
    guess rates."""
    from minipsn.evaluation.evaluate import benchmark_records
    from minipsn.experiments.paired import read_rows

    found, guesses = [], {}
    for bench in pool:
        records = benchmark_records(bench, cfg)
        rows = {r["id"]: r for r in read_rows(out / "eval" / "samples" / f"{bench}.jsonl")}
        rows = [rows[r["id"]] for r in records]
        guesses[bench] = benchmark_guesses(records, rows)
        found += [{"source": bench, "record": rec, "c": sum(row["correct"]), "n": len(row["correct"]), "guess": g}
                  for rec, row, g in zip(records, rows, guesses[bench].pop("per_problem"))]
    return found, guesses


def select(cfg: Config, pool: list[str], out: str | Path, sel: Selection) -> dict:
    """Evaluate the base (cfg: its eval.n, run.seed = the selection seed) on `pool`, choose the subset (module
    docstring) and write OUT/subset.jsonl and OUT/subset.json; the evaluation (OUT/eval) resumes and is reused."""
    from minipsn.evaluation.evaluate import evaluate
    from minipsn.run.folders import check_writable

    out, t0 = check_writable(out), time.perf_counter()
    evaluate(cfg, pool, out / "eval")
    scored, guesses = _scored(out, pool, cfg)
    usable, ceiling, never, kept = pick(scored, sel, cfg.run.seed)
    lines = [{"problem": p["record"]["problem"], "answer": p["record"]["answer"], "kind": kind, "source": p["source"],
              "source_id": p["record"]["id"], "base_correct": p["c"], "base_n": p["n"], "guess": p["guess"]}
             for kind, picked in kept.items() for p in picked]
    (out / SUBSET_FILE).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    report = {"model": cfg.model.name, "pool": pool, "selection_seed": cfg.run.seed, "n": cfg.eval.n,
              "selection": asdict(sel), "pool_problems": len(scored), "usable": len(usable),
              "seconds": _first_seconds(out, cfg, pool) or time.perf_counter() - t0,
              "qualifying": {"ceiling": len(ceiling), "never": len(never)},
              "kept": {k: len(v) for k, v in kept.items()}, "guesses": guesses, "file": str(out / SUBSET_FILE)}
    (out / "subset.json").write_text(json.dumps(report, indent=2))
    return report


def pick(scored: list[dict], sel: Selection, seed: int) -> tuple[list, list, list, dict[str, list]]:
    """(usable, qualifying ceiling, qualifying never, {"ceiling": kept, "never": kept}) of the scored pool problems
    ({record, c, n, guess}): usable = guess <= max_guess and a gold answer the verifier reads; ceiling = 0 < c <=
    max_pass1·n; never = c = 0; each kept a seeded sample (a function of the selection seed) in pool order."""
    from minipsn.tasks.user_data import unreadable

    usable = [p for p in scored if p["guess"] <= sel.max_guess and not unreadable(p["record"]["answer"])]
    ceiling = [p for p in usable if 0 < p["c"] <= sel.max_pass1 * p["n"]]
    never = [p for p in usable if p["c"] == 0]
    if len(ceiling) < sel.min_size:
        n = scored[0]["n"] if scored else 0
        raise ValueError(f"only {len(ceiling)} of the pool's {len(scored)} problems have base pass@1 <= {sel.max_pass1:g} "
                         f"and pass@{n} > 0 (left out as guessable or unreadable: {len(scored) - len(usable)}), fewer than "
                         f"--min-size {sel.min_size}: add benchmarks to the pool, raise --max-pass1 or lower --min-size")
    rng = random.Random(seed)
    kept = {"ceiling": _sample(ceiling, sel.size, rng), "never": _sample(never, sel.never, rng)}
    if len(kept["never"]) < sel.never:
        print(f"note: the base never solves {len(never)} usable problems of the pool; the never slice holds them all "
              f"(asked for {sel.never})")
    return usable, ceiling, never, kept


def _first_seconds(out: Path, cfg: Config, pool: list[str]) -> float | None:
    """A rerun's time is the resumed evaluation's: keep the first selection's (the planner counts it as done)."""
    path = out / "subset.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    same = (stored["model"], stored["pool"], stored["n"], stored["selection_seed"]) == (cfg.model.name, pool, cfg.eval.n,
                                                                                        cfg.run.seed)
    return stored["seconds"] if same else None


def _sample(items: list[dict], k: int, rng: random.Random) -> list[dict]:
    """A seeded sample of k items (all of them when there are fewer), in their pool order."""
    picked = sorted(rng.sample(range(len(items)), min(k, len(items))))
    return [items[i] for i in picked]


def check_seeds(report: dict, seeds: range) -> None:
    """The grid must evaluate the subset with seeds other than the one it was chosen with (regression to the mean)."""
    if report["selection_seed"] in seeds:
        raise ValueError(f"the subset was chosen with seed {report['selection_seed']}, one of the grid's evaluation "
                         f"seeds ({seeds.start} … {seeds.stop - 1}): its luck would be measured as narrowing; choose it "
                         "again with another --seed")


def regression_line(subset_file: str | Path, base_report: dict) -> str:
    """The base on the ceiling slice under the selection seed (pass@n = 1 by construction) next to the grid's fresh
    evaluation of it: what reading the selection's own samples as the base row would have shown as narrowing."""
    rows = [json.loads(line) for line in Path(subset_file).read_text().splitlines()]
    chosen = [r["base_correct"] / r["base_n"] for r in rows if r["kind"] == "ceiling"]
    fresh = base_report["benchmarks"]["heldout"]["kinds"]["ceiling"]["pass@k"]
    n = max(fresh, key=int)
    return (f"the base on the ceiling slice: pass@1 {sum(chosen) / len(chosen):.3f} and pass@{n} 1.000 under the selection "
            f"seed; {fresh['1']:.3f} and {fresh[n]:.3f} sampled afresh (the grid's base row): the selection's luck, "
            "which the grid's own seeds leave out")


def table(report: dict):
    """The selection as a rich table: per benchmark its guess rates (flagged as headroom flags the synthetic kinds),
    then what qualified and what was kept."""
    from rich.table import Table

    t = Table(title=f"ceiling subset of {report['model']}: base at n = {report['n']}, seed {report['selection_seed']}")
    for col in ("", "mode guess / sample", "shuffled guess / sample", "flag"):
        t.add_column(col, justify="right")
    for bench, g in report["guesses"].items():
        t.add_row(bench, f"{g['mode']:.2g} ({g['mode_answer'][:12]})", f"{g['shuffled']:.2g}",
                  f"GUESSABLE (> {GUESSABLE:g}): large-k pass@k partly luck" if g["guessable"] else "")
    q, k = report["qualifying"], report["kept"]
    t.caption = (f"{report['pool_problems']} pool problems, {report['usable']} usable (guess <= "
                 f"{report['selection']['max_guess']:g}, gold readable); ceiling {q['ceiling']} qualify, {k['ceiling']} "
                 f"kept; never solved {q['never']}, {k['never']} kept → {report['file']}")
    return t
