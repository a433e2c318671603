"""Your own problems: a local file (JSON Lines, JSON, Parquet, CSV), a folder, a Hugging Face dataset id, or the
rows given to `train(cfg, dataset=...)` (a list of dicts or a `datasets.Dataset`), as the kit's records:

    {id, problem: row[problem_field], answer: the gold answer read from row[answer_field], columns: the row}

JSON Lines and CSV files are read here, line by line, so a bad row is named by file:line (and JSON Lines rows may
mix an answer's types, which `datasets`' reader refuses with no line); JSON, Parquet, folders and hub ids go
through `datasets.load_dataset` (a hub id after one quick request, so a dead network fails at once). A field not
named is guessed (PROBLEM_FIELDS, ANSWER_FIELDS). The gold answer is the column's text, a number as text (27.0 →
27), or a worked solution's last \\boxed{} (or GSM8K's `#### N`). A gold answer that is empty or that the verifier
cannot read (`unreadable`) is skipped and counted in one line, never graded; a malformed row (no problem, a wrong
type) is an error naming where it is, or with data.skip_bad_rows skipped and counted. `columns` reach TRL-style
reward functions as keyword arguments (rewards/funcs.py). Held-out problems come from data.test_split only; a run
without them turns its periodic evaluation off, saying so (`heldout_eval`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import numbers
import re
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from minipsn.run.config import Config, DataConfig
from minipsn.run.hub import check_reachable
from minipsn.tasks import data
from minipsn.tasks.data import DATASETS, BadRow, last_boxed

EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
PROBLEM_FIELDS = ("problem", "question", "prompt", "query", "input")
ANSWER_FIELDS = ("answer", "final_answer", "final", "ground_truth", "gold", "target")
SOLUTION_FIELDS = ("solution",)  # worked solutions, the guess of last resort: the answer is the last \boxed{}
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def source_kind(dataset: str) -> str:
    """bundled, file, folder or hub, in that order of precedence; anything else is an error that says what to give."""
    if dataset in DATASETS:
        return "bundled"
    path = Path(dataset).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix.lower() not in EXTENSIONS:
            raise ValueError(f"{dataset}: files of type {path.suffix or '(none)'} are not read; use .jsonl, .json, "
                             ".parquet or .csv")
        return "file"
    if path.suffix.lower() in EXTENSIONS or dataset.startswith((".", "/", "~")):
        raise ValueError(f"no such file {dataset} (looked in {Path.cwd()}); give the path of a JSON Lines, JSON, "
                         f"Parquet or CSV file, a folder, a hub dataset id (owner/name) or a bundled set "
                         f"({', '.join(DATASETS)})")
    if HUB_ID.fullmatch(dataset):
        return "hub"
    try:
        data.check_name_and_split(dataset, "train")  # not a bundled name: the error names the closest one
    except ValueError as e:
        raise ValueError(f"{e}, or give a local file (.jsonl, .json, .parquet, .csv), a folder or a Hugging Face "
                         "dataset id (owner/name)") from None
    raise AssertionError(dataset)


def load_user_problems(cfg: DataConfig, split: str, *, stats: dict | None = None) -> list[dict]:
    """Records of your own dataset: split `train` is data.split of a hub id or folder (a file is one split), `test`
    the held-out data.test_split (a split of the same hub id or folder, or a file)."""
    kind = source_kind(cfg.dataset)
    if split == "train":
        if kind == "file" and cfg.split:
            raise ValueError(f"data.split names a split of a hub dataset or folder; {cfg.dataset} is a file, one split")
        source, part = cfg.dataset, cfg.split or "train"
    elif split == "test":
        if not cfg.test_split:
            raise ValueError(f"{cfg.dataset} has no held-out problems: set data.test_split to a split of it or a file")
        is_path = Path(cfg.test_split).expanduser().exists() or Path(cfg.test_split).suffix.lower() in EXTENSIONS
        if kind == "file" and not is_path:
            raise ValueError(f"data.test_split={cfg.test_split!r}: {cfg.dataset} is a file, so its held-out problems "
                             "are another file; give its path")
        source, part = (cfg.test_split, "train") if is_path else (cfg.dataset, cfg.test_split)
        kind = source_kind(source)
    else:
        raise ValueError(f"split must be train or test, got {split!r}")
    label, columns, rows = read_rows(source, kind, cfg.config, part)
    return to_records(rows, columns, cfg, label, stats)


def read_rows(source: str, kind: str, config: str, split: str) -> tuple[str, list[str], Iterable]:
    """(label, column names, rows as (where, (index, where), row)) of a file, folder or hub dataset."""
    suffix = EXTENSIONS.get(Path(source).suffix.lower()) if kind == "file" else None
    if suffix == "jsonl":
        rows = [(where, (i, where), _json_row(raw)) for i, (where, _, raw) in enumerate(data._local_rows(Path(source)))]
        return source, _union(row for *_, row in rows), rows
    if suffix == "csv":
        return (source, *_csv_rows(Path(source)))
    table = _load_dataset(source, kind, suffix, config, split)
    label = source if kind == "file" else f"{source} ({split})"
    return label, list(table.column_names), ((f"{label} row {i + 1}", (i, f"{label} row {i + 1}"), row)
                                             for i, row in enumerate(table))


def given_records(rows, cfg: DataConfig, stats: dict | None = None, name: str = "dataset") -> list[dict]:
    """Records from the rows handed to `train(cfg, dataset=...)`: a list of dicts or a `datasets.Dataset`."""
    if isinstance(rows, dict) or type(rows).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise ValueError(f"{name}= takes one split (a list of dicts or a datasets.Dataset), e.g. {name}['train']")
    if hasattr(rows, "column_names"):
        columns = list(rows.column_names)
    elif isinstance(rows, (list, tuple)):
        columns = _union(rows)
    else:
        raise ValueError(f"{name}= takes a list of dicts or a datasets.Dataset, got {type(rows).__name__}")
    return to_records(((f"{name} row {i + 1}", (i, f"{name} row {i + 1}"), row) for i, row in enumerate(rows)),
                      columns, cfg, name, stats)


def to_records(rows: Iterable, columns: list[str], cfg: DataConfig, label: str, stats: dict | None) -> list[dict]:
    """The records of `rows` with usable gold answers; the others are counted and said in one line."""
    problem_key, answer_key = pick_fields(columns, cfg, label)
    from_solution = answer_key in SOLUTION_FIELDS
    stem = Path(label.split(" (")[0]).stem or "row"

    def to_record(row: object, at: tuple[int, str]) -> dict:
        if isinstance(row, BadRow):
            raise row
        if not isinstance(row, dict):
            raise BadRow(f"expected an object with fields, got {type(row).__name__}")
        gold, why = gold_answer(row.get(answer_key), answer_key, from_solution)
        return {"id": f"{stem}-{at[0]:05d}", "problem": data._text(row, problem_key), "answer": gold,
                "columns": dict(row), "unreadable": why and f"{at[1]}: {why}"}

    records, bad, first_bad = data._collect(rows, to_record, cfg.skip_bad_rows)
    if bad:
        print(f"skipped {bad} malformed rows of {label} (data.skip_bad_rows); first: {first_bad}")
    unread = [r["unreadable"] for r in records if r["unreadable"]]
    records = [{k: v for k, v in r.items() if k != "unreadable"} for r in records if not r["unreadable"]]
    if unread:
        print(f"skipped {len(unread)} of {len(records) + len(unread)} rows of {label} whose gold answer "
              f"({answer_key}) is empty or unreadable, so never graded; first: {unread[0]}")
    if not records:
        raise ValueError(f"{label} has no usable rows ({bad} malformed, {len(unread)} with an unreadable gold "
                         f"answer in {answer_key!r}); check data.problem_field and data.answer_field")
    if stats is not None:
        stats.update(source=label, loaded=len(records), skipped=bad + len(unread), unreadable=len(unread))
    return records


def pick_fields(columns: list[str], cfg: DataConfig, label: str) -> tuple[str, str]:
    """(problem column, answer column): the ones named, else the first guess present; a missing one is an error
    that lists the columns there are."""
    picked = []
    for key, given, guesses in (("problem_field", cfg.problem_field, PROBLEM_FIELDS),
                                ("answer_field", cfg.answer_field, ANSWER_FIELDS + SOLUTION_FIELDS)):
        if given and given not in columns:
            raise ValueError(f"data.{key}={given!r} is not a column of {label}; its columns: {', '.join(columns)}")
        found = given or next((c for c in guesses if c in columns), None)
        if found is None:
            raise ValueError(f"no {key.split('_')[0]} column in {label} (looked for {', '.join(guesses)}); its "
                             f"columns: {', '.join(columns) or 'none'}; name one with --set data.{key}=COLUMN")
        picked.append(found)
    return picked[0], picked[1]


def gold_answer(value: object, key: str, from_solution: bool) -> tuple[str | None, str | None]:
    """(gold answer, None), or (None, why it cannot be graded). A value of a wrong type is a malformed row (BadRow)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:  # OlympiadBench's final_answer: ["$69,84$"]
        value = value[0]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "no answer"
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        raise BadRow(f"field {key!r} must be text or a number, got {type(value).__name__} {value!r:.40}")
    if not isinstance(value, str):  # 27.0 → "27": integer answers often come back as floats
        return (str(int(value)) if float(value).is_integer() else repr(float(value))), None
    text = value.strip()
    if from_solution or "\\boxed" in text or "\\fbox" in text:
        text = last_boxed(text)
        if text is None:
            return None, "no \\boxed{} answer in it"
    elif "####" in text:  # GSM8K's worked solutions end in "#### N"
        text = text.rsplit("####", 1)[1]
    text = text.strip()
    why = unreadable(text)
    return (None, f"{why} ({text[:40]!r})" if text else why) if why else (text, None)


def unreadable(gold: str) -> str | None:
    """Why the verifier could never grade a prediction right against `gold` (None when it can): empty, unbalanced
    braces, or neither a form the cheap stages compare (a number, a choice letter, words, a time) nor one the
    strict parser reads. A few rows of MATH train and OlympiadBench fail it; no GSM8K or MATH-500 row does."""
    from minipsn.verify import _CHOICE, _as_fraction, _is_words, normalise
    from minipsn.verify.judge import balanced
    from minipsn.verify.normalise import clock, ratio
    from minipsn.verify.parse import parse_answer

    if not gold:
        return "empty"
    if not balanced(gold):
        return "unbalanced braces"
    norm = normalise(gold)
    if not norm:
        return "empty once normalised"
    if _as_fraction(ratio(norm)) is not None or _CHOICE.fullmatch(norm) or _is_words(norm) or clock(norm, gold):
        return None
    try:
        parse_answer(norm)
    except (ValueError, TypeError, ArithmeticError, RecursionError):  # LatexError, TooLarge and sympy's refusals
        return "the verifier cannot read it"
    return None


def heldout_eval(cfg: Config, dataset=None, test_dataset=None) -> Config:
    """`cfg`, with the periodic held-out evaluation (eval.every) off, said in one line, when there are no held-out
    problems: rows given with no test_dataset, or your own data with no data.test_split."""
    own = dataset is not None or cfg.data.dataset not in DATASETS
    if not cfg.eval.every or not own or test_dataset is not None or (dataset is None and cfg.data.test_split):
        return cfg
    how = "pass test_dataset= to train()" if dataset is not None else "set data.test_split to a split or a file"
    print(f"no held-out problems for this data: the periodic held-out evaluation (eval.every={cfg.eval.every}) is "
          f"off; {how} to keep it")
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, every=0))


def _union(rows: Iterable) -> list[str]:
    return list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))


def _json_row(raw: bytes) -> object:
    try:
        return data._parse_line(raw)
    except BadRow as e:  # reported where its row is collected (an error naming file:line, or skipped)
        return e


def _csv_rows(path: Path) -> tuple[list[str], list]:
    """Every cell as text (a CSV has no types: "007" stays "007"), each row named by the line it starts on."""
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, start = [], 2
    for i, row in enumerate(reader):
        where = f"{path}:{start}"
        extra = row.pop(None, None)  # cells past the header's columns
        rows.append((where, (i, where), BadRow(f"{len(extra)} cells more than the header's columns") if extra else row))
        start = reader.line_num + 1
    return list(reader.fieldnames or []), rows


@contextmanager
def _quiet(datasets):
    """No progress bars and no logged read errors from `datasets`: its failure becomes our one line."""
    import logging

    bars, level = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _load_dataset(source: str, kind: str, suffix: str | None, config: str, split: str):
    """One split of a JSON or Parquet file, a folder or a hub dataset, through `datasets`; a failure is one line."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"reading {source} needs `datasets` (pip install datasets); or give a JSON Lines or CSV "
                         "file") from None
    if kind == "hub":
        _check_hub(source)
    args = ((suffix,), {"data_files": source, "split": "train"}) if kind == "file" else \
        ((source,), {"name": config or None, "split": split})
    try:
        with _quiet(datasets):
            return datasets.load_dataset(*args[0], **args[1])
    except ConnectionError as e:  # the hub in offline mode, the dataset not cached
        raise ValueError(f"cannot load {source}: {e}; with HF_HUB_OFFLINE set only a cached copy loads: load it once "
                         "with the network, or give a local file") from None
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:  # missing split or config, a bad file
        cause = e.__cause__ or e
        detail = str(cause).strip().splitlines()[0].rstrip(".") if str(cause).strip() else type(cause).__name__
        hint = {"file": "check the file", "folder": "check data.split and the folder's files"}.get(
            kind, "check the id, data.config and data.split")
        raise ValueError(f"cannot load {source} ({split}): {type(cause).__name__}: {detail[:300]}; {hint}") from None


def _check_hub(repo: str) -> None:
    """One request, so a dead network or a wrong id fails at once (the hub's downloads retry for close to half a
    minute); offline (HF_HUB_OFFLINE) `datasets` looks in its cache and fails fast by itself."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    check_reachable(repo, "dataset", f"dataset {repo}", "a cached copy, or give a local file")
