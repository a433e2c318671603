"""Where strict and Math-Verify disagree on a run's samples: `python cli.py verify-audit RUN`.

Re-checks every answer a run kept with both verifiers and returns the ones they judge differently,
so a user can see what each accepts before choosing `reward.verifier`. The run keeps answers in
RUN/samples.jsonl (training: whole completions, read with the run's own reward.extract, last_number and
unboxed_answer, a run from before reward.extract with the kit's extraction it was scored with; a truncated
one is wrong to every verifier and is skipped) and in RUN/eval/samples/*.jsonl (evaluation: the extracted
answers, cut at 200 characters, and the gold; rows written before the gold was stored are counted as
skipped). Each answer is checked as the reward checks it. The command prints the disagreements as a table,
when there are any, then one line with the counts (`summary`).
"""

import json
from pathlib import Path

from minipsn.verify import extract_answers, is_equivalent

VERIFIERS = ("strict", "math-verify")


def audit(run: str | Path, timeout: float = 3.0) -> dict:
    """{"checked", "skipped", "disagree": [{source, answer, gold, strict, math-verify}]} of a run folder."""
    run = Path(run)
    train, evals = run / "samples.jsonl", sorted((run / "eval" / "samples").glob("*.jsonl"))
    if not train.is_file() and not evals:
        raise ValueError(f"{run} holds no samples to audit (no samples.jsonl, no eval/samples/*.jsonl); "
                         "give a run folder (run.log_samples > 0, or after `eval --adapter RUN`)")
    config = run / "config.json"
    reward = json.loads(config.read_text()).get("reward", {}) if config.is_file() else {}
    report = {"checked": 0, "skipped": 0, "disagree": []}
    if train.is_file():
        for i, row in enumerate(_rows(train), start=1):
            if row.get("truncated"):
                continue
            answer = extract_answers([row["completion"]], reward.get("extract", "kit"), reward.get("last_number", True),
                                     reward.get("unboxed_answer", True), timeout)[0]
            _check(report, f"samples.jsonl:{i} (step {row['step']}, row {row['row']})", answer, row["gold"], timeout)
    for path in evals:
        for i, row in enumerate(_rows(path)[1:], start=2):  # line 1 is the sampling settings
            if "gold" not in row:
                report["skipped"] += 1
                continue
            for k, (answer, cut) in enumerate(zip(row["answers"], row["truncated"])):
                if answer is not None and not cut:
                    _check(report, f"eval/samples/{path.name}:{i} ({row['id']}, sample {k})", answer, row["gold"],
                           timeout)
    return report


def _check(report: dict, source: str, answer: str | None, gold: str, timeout: float) -> None:
    if answer is None:
        return
    report["checked"] += 1
    verdicts = {v: is_equivalent(answer, gold, timeout, v) for v in VERIFIERS}
    if len(set(verdicts.values())) > 1:
        report["disagree"].append({"source": source, "answer": answer, "gold": gold, **verdicts})


def _rows(path: Path) -> list[dict]:
    """The JSON lines of a samples file; a last line cut by a kill is dropped, as every reader does."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines):
                raise ValueError(f"{path}:{i} is not valid JSON") from None
    return rows


def summary(report: dict) -> str:
    """The audit in one line: how many answers the two verifiers judge differently, of how many checked."""
    skipped = (f"; {report['skipped']} evaluation rows have no stored gold (written before it was kept), skipped"
               if report["skipped"] else "")
    return (f"{len(report['disagree'])} of {report['checked']} answers judged differently by strict and math-verify"
            f"{skipped}")


def table(report: dict):
    """The disagreements, one row each (what each verifier says); None when there are none (`summary` says so)."""
    from rich.table import Table

    if not report["disagree"]:
        return None
    t = Table(title="where strict and math-verify disagree")
    for col in ("source", "answer", "gold", "strict", "math-verify"):
        t.add_column(col)
    for d in report["disagree"]:
        t.add_row(d["source"], d["answer"][:80], d["gold"][:80], *("yes" if d[v] else "no" for v in VERIFIERS))
    return t
