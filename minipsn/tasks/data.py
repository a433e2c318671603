"""Problems and prompts: the bundled benchmarks' loaders and the prompt templates. `load_problems` (problems.py)
hands a bundled name here, the synthetic task to synthetic.py and any other name (a file, a folder, a hub id) to
user_data.py.

Every dataset yields records of one shape, `{"id": str, "problem": str, "answer": str}` (plus
`solution` where there is one, your own data's `columns`), so training, rewards and evaluation never
look at a source's own field names.

Benchmarks (gsm8k, math, math500, aime24, aime25, amc23, minerva, olympiadbench) load from local
JSON Lines files: from the data folder given (`data.data_dir`, else $MINIPSN_DATA_DIR), else from
the repository's `data/` folder when it holds the file (the evaluation sets ship there; the format is
data/README.md), else from the Hugging Face hub. `write_from_hub` (`python cli.py data`) writes a
hub set into that layout, so the training sets also load offline afterwards. Every row is checked: a
malformed one is an error naming `file:line`, or, with `data.skip_bad_rows`, is skipped and counted;
never a silently wrong record. Evaluation-only sets refuse the `train` split; `math` test is MATH-500.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from minipsn.run.config import DataConfig
from minipsn.tasks.synthetic import synthetic_split

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def format_prompt(tokenizer, problem: str, template: str) -> str:
    """The text the policy sees: chat (tokenizer's chat template) or plain (base models), or your own text with
    {problem}: the user's message in the chat template, or after "plain:" the whole prompt."""
    if template == "chat":
        message = f"{problem}\n{INSTRUCTION}"
    elif template == "plain":
        return f"Question: {problem}\n{INSTRUCTION}\nAnswer:"
    elif "{problem}" in template:  # replace, not str.format: a prompt may hold braces of its own (\boxed{})
        if template.startswith("plain:"):
            return template.removeprefix("plain:").replace("{problem}", problem)
        message = template.replace("{problem}", problem)
    else:
        raise ValueError(f"unknown template {template!r}; use chat or plain, or a prompt with {{problem}}")
    messages = [{"role": "user", "content": message}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---- benchmarks ------------------------------------------------------------------------------

DATA_DIR_ENV = "MINIPSN_DATA_DIR"
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "data"  # the evaluation sets that ship with the repository

# benchmark -> split -> file in the local data folder; a benchmark without `train` is evaluation only
LOCAL_FILES: dict[str, dict[str, str]] = {
    "gsm8k": {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"},
    "math": {"train": "math_train.jsonl", "test": "math500_test.jsonl"},  # MATH test = MATH-500
    "math500": {"test": "math500_test.jsonl"},
    "aime24": {"test": "aime24.jsonl"},
    "aime25": {"test": "aime25.jsonl"},
    "amc23": {"test": "amc23.jsonl"},
    "minerva": {"test": "minerva_math.jsonl"},
    "olympiadbench": {"test": "olympiadbench.jsonl"},
}

# benchmark -> split -> (hub dataset id, config, hub split); `_hub_row` maps each one's fields
HUB_SOURCES: dict[str, dict[str, tuple[str, str | None, str]]] = {
    "gsm8k": {"train": ("openai/gsm8k", "main", "train"), "test": ("openai/gsm8k", "main", "test")},
    "math": {"train": ("DigitalLearningGmbH/MATH-lighteval", "default", "train"),
             "test": ("HuggingFaceH4/MATH-500", None, "test")},
    "math500": {"test": ("HuggingFaceH4/MATH-500", None, "test")},
    "aime24": {"test": ("HuggingFaceH4/aime_2024", None, "train")},  # its only split is called train
    "aime25": {"test": ("math-ai/aime25", None, "test")},
    "amc23": {"test": ("math-ai/amc23", None, "test")},
    "minerva": {"test": ("math-ai/minervamath", None, "test")},
    "olympiadbench": {"test": ("math-ai/olympiadbench", None, "test")},
}

DATASETS = ("synthetic", *LOCAL_FILES)

# (problem, answer, solution) fields of the local files; GSM8K keeps its own names, where
# `answer` is the worked solution and `final` the final answer
_FIELDS = ("problem", "answer", "solution")
_LOCAL_FIELDS = {"gsm8k": ("question", "final", "answer")}


class BadRow(ValueError):
    """One malformed row; the loader says where it is (file:line) and fails or skips it."""


def check_name_and_split(name: str, split: str) -> None:
    """Unknown benchmark (with the closest name), unknown split, or `train` on an eval-only set."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint}; choose from {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if name != "synthetic" and split not in LOCAL_FILES[name]:
        trainable = ", ".join(n for n in DATASETS if n == "synthetic" or "train" in LOCAL_FILES[n])
        raise ValueError(f"{name} is evaluation only, do not train on it: use its test split, "
                         f"and train on one of {trainable}")


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The local data folder (`data_dir`, else $MINIPSN_DATA_DIR), or None for the hub."""
    origin = "data.data_dir" if data_dir else f"${DATA_DIR_ENV}"
    folder = data_dir or os.environ.get(DATA_DIR_ENV, "")
    if not folder:
        return None
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"data folder {path} (from {origin}) is not a directory; point {origin} at the "
                         f"folder of JSON Lines files, or unset it to load from the Hugging Face hub")
    return path


def _text(row: dict, key: str, required: bool = True) -> str | None:
    """`row[key]` as a non-empty string; a wrong type is always BadRow, an absent/empty one when required."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRow(f"field {key!r} must be a string, got {type(value).__name__} {value!r:.40}")
    if value is None or not value.strip():
        if required:
            raise BadRow(f"field {key!r} is {'missing' if value is None else 'empty'}")
        return None
    return value


def make_record(row: object, fields: tuple[str, str, str], default_id: str) -> dict:
    """`{id, problem, answer[, solution]}` from one source row that keeps them under `fields`
    (problem, answer, solution); `id` is optional (default `default_id`). Raises BadRow."""
    if not isinstance(row, dict):
        raise BadRow(f"expected a JSON object, got {type(row).__name__}")
    problem_key, answer_key, solution_key = fields
    record = {"id": _text(row, "id", required=False) or default_id,
              "problem": _text(row, problem_key), "answer": _text(row, answer_key).strip()}
    solution = _text(row, solution_key, required=False)
    if solution is not None:
        record["solution"] = solution
    return record


def _parse_line(raw: bytes) -> object:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRow(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadRow(f"not valid JSON ({e.msg} at column {e.colno})") from None


def _collect(rows: Iterable[tuple[str, int, object]], to_record: Callable[[object, int], dict],
             skip_bad_rows: bool) -> tuple[list[dict], int, str]:
    """Records from `(where, index, raw)` rows, ids unique. A BadRow is an error naming `where`,
    or is skipped and counted. Returns (records, n_skipped, first skipped problem)."""
    records, seen, skipped, first = [], {}, 0, ""
    for where, index, raw in rows:
        try:
            record = to_record(raw, index)
            if record["id"] in seen:
                raise BadRow(f"duplicate id {record['id']!r} (first at {seen[record['id']]})")
        except BadRow as e:
            if not skip_bad_rows:
                raise ValueError(f"{where}: {e}; fix the row, or set data.skip_bad_rows=true "
                                 f"to skip malformed rows") from None
            skipped, first = skipped + 1, first or f"{where}: {e}"
            continue
        seen[record["id"]] = where
        records.append(record)
    return records, skipped, first


def _local_rows(path: Path) -> Iterable[tuple[str, int, bytes]]:
    with path.open("rb") as f:  # bytes, so a bad encoding is reported at its line
        for lineno, raw in enumerate(f, 1):
            if raw.strip():  # blank lines hold no row
                yield f"{path}:{lineno}", lineno, raw


def local_folder(name: str, split: str, data_dir: str | None) -> Path | None:
    """Where `name` `split` loads from: the folder given (`data_dir`, else $MINIPSN_DATA_DIR), else the
    bundled data/ folder when it holds the file, else None (the hub)."""
    folder = resolve_data_dir(data_dir)
    if folder is None and (BUNDLED_DIR / LOCAL_FILES[name][split]).is_file():
        return BUNDLED_DIR
    return folder


def _load_local(name: str, split: str, folder: Path, skip_bad_rows: bool) -> tuple[list[dict], int, str]:
    path = folder / LOCAL_FILES[name][split]
    if not path.is_file():
        write = f" (python cli.py data {name} --out {folder} writes it from the hub)" if "train" in LOCAL_FILES[name] else ""
        raise ValueError(f"missing data file {path}: {name} {split} is read from {path.name} in the data "
                         f"folder{write}; add it (format: data/README.md), or unset data.data_dir and "
                         f"${DATA_DIR_ENV} to load from the bundled data/ folder or the Hugging Face hub")
    fields = _LOCAL_FIELDS.get(name, _FIELDS)
    to_record = lambda raw, lineno: make_record(_parse_line(raw), fields, f"{path.stem}-{lineno}")
    return _collect(_local_rows(path), to_record, skip_bad_rows)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (else `\\fbox{...}`, or `\\boxed x` up to `$`), as in the
    MATH reference code; None when there is none or its braces do not close."""
    start = text.rfind("\\boxed")
    start, width = (start, 6) if start >= 0 else (text.rfind("\\fbox"), 5)
    if start < 0:
        return None
    rest = text[start + width:]
    if rest.startswith(" "):
        return rest[1:].split("$")[0].strip()
    depth = 0
    for i, c in enumerate(rest):
        depth += 1 if c == "{" else -1 if c == "}" else 0
        if depth == 0:
            return rest[1:i] if i > 0 else None
    return None


def _integer_text(value: object) -> object:
    """27.0, 27, "027", "27.0" -> "27": AIME/AMC answers are integers, some hub copies store floats."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.0*)?\s*", value):
        return str(int(float(value)))
    return value  # anything else is checked (and reported) by make_record


# MATH train number_theory/7115 and 7117 end in an empty \boxed{}; both answers are "(A) 0"
_MATH_EMPTY_BOXES = (("For any integer $n>1$, the number of prime numbers greater than $n!+1$", "0"),
                     ("You are given a sequence of $58$ terms; each term has the form $P+n$", "0"))


def _first(value: object) -> object:
    return (value[0] if value else None) if isinstance(value, list) else value


def _hub_row(repo: str, row: dict) -> dict:
    """One hub row in the common field names (problem, answer, solution)."""
    get = row.get
    if repo == "openai/gsm8k":  # `answer` is the worked solution ending in "#### N"
        solution = get("answer")
        final = solution.rsplit("####", 1)[1].strip().replace(",", "") if "####" in str(solution) else None
        return {"problem": get("question"), "answer": final, "solution": solution}
    elif repo == "DigitalLearningGmbH/MATH-lighteval":  # no answer field: the last box, as in MATH
        problem, solution = get("problem"), get("solution")
        answer = last_boxed(solution) if isinstance(solution, str) else None
        if answer == "" and isinstance(problem, str):  # two known empty boxes; same fix as the local file
            answer = next((a for start, a in _MATH_EMPTY_BOXES if problem.startswith(start)), answer)
        return {"problem": problem, "answer": answer, "solution": solution}
    elif repo in ("HuggingFaceH4/MATH-500", "HuggingFaceH4/aime_2024", "math-ai/aime25"):
        answer = get("answer") if repo == "HuggingFaceH4/MATH-500" else _integer_text(get("answer"))
        return {"problem": get("problem"), "answer": answer, "solution": get("solution")}
    elif repo == "math-ai/amc23":
        return {"problem": get("question"), "answer": _integer_text(get("answer"))}
    elif repo == "math-ai/minervamath":
        return {"problem": get("question"), "answer": get("answer"), "solution": get("solution")}
    elif repo == "math-ai/olympiadbench":  # final_answer is a list like ["$69,84$"]
        final = _first(get("final_answer"))
        answer = final.strip().removeprefix("$").removesuffix("$").strip() if isinstance(final, str) else final
        return {"problem": get("question"), "answer": answer, "solution": _first(get("solution"))}
    else:
        raise ValueError(f"no field mapping for hub dataset {repo!r}; add one to _hub_row")


def _reach_hub(name: str, split: str, repo: str) -> None:
    """One quick request before `datasets` asks the hub: without a network its downloads retry for close to half a
    minute, a line each. Offline (HF_HUB_OFFLINE) `datasets` reads its cache and fails at once by itself."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(repo, timeout=10)
    except (HfHubHTTPError.__bases__[0], OSError) as e:  # the hub client's base error: no network, timeouts
        raise ValueError(f"{name} {split} is not in a local folder and the Hugging Face hub cannot be reached for "
                         f"{repo} ({type(e).__name__}); check the network, or set data.data_dir or ${DATA_DIR_ENV} to "
                         f"a folder of local JSON Lines files (`python cli.py data {name}` writes them, with the network)") from None


def _load_hub(name: str, split: str, skip_bad_rows: bool) -> tuple[list[dict], int, str, str]:
    repo, config, hub_split = HUB_SOURCES[name][split]
    try:
        import datasets  # lazily: only the hub path needs it, and some GPU machines lack it
    except ImportError:
        raise ValueError(f"loading {name} from the hub needs `datasets` (pip install datasets); or set "
                         f"data.data_dir or ${DATA_DIR_ENV} to a folder of local JSON Lines files") from None
    _reach_hub(name, split, repo)
    try:
        rows = datasets.load_dataset(repo, name=config, split=hub_split)
    except OSError as e:  # network, offline mode, missing dataset: all OSError subclasses
        raise ValueError(f"cannot load {repo} ({hub_split}) from the hub: {e}; check the network, or set "
                         f"data.data_dir or ${DATA_DIR_ENV} to a folder of local JSON Lines files") from None
    print(f"{name} {split}: loaded from the Hugging Face hub ({repo}); `python cli.py data {name}` keeps a local "
          f"copy in data/ (or set data.data_dir or ${DATA_DIR_ENV} to a folder of local files)")
    source = f"{repo} ({hub_split})"
    items = ((f"{source} row {i}", i, row) for i, row in enumerate(rows))
    to_record = lambda row, i: make_record(_hub_row(repo, row), _FIELDS, f"{name}-{split}-{i:05d}")
    return (*_collect(items, to_record, skip_bad_rows), source)


def load_benchmark(name: str, split: str = "test", data_dir: str | None = None,
                   skip_bad_rows: bool = False, *, stats: dict | None = None) -> list[dict]:
    """Records `{id, problem, answer[, solution]}` of benchmark `name`, in source order: from
    `data_dir` (else $MINIPSN_DATA_DIR, else the bundled data/ folder when it holds the file) as
    JSON Lines, else from the hub. With `skip_bad_rows`
    malformed rows are skipped, counted and reported in one line; `stats`, when given, receives
    {"source", "loaded", "skipped"}. Zero records is an error."""
    if name not in DATASETS and (Path(name).expanduser().exists() or re.fullmatch(r"[\w.-]+/[\w.-]+", name)):
        raise ValueError(f"{name} is not a bundled benchmark: eval reads those by name ({', '.join(DATASETS)}); "
                         "your own data's held-out problems (data.test_split) are evaluated during training (eval.every)")
    check_name_and_split(name, split)
    if name == "synthetic":
        records, skipped, first, source = synthetic_split(DataConfig(), split), 0, "", "synthetic"
    elif (folder := local_folder(name, split, data_dir)) is not None:
        records, skipped, first = _load_local(name, split, folder, skip_bad_rows)
        source = str(folder / LOCAL_FILES[name][split])
    else:
        records, skipped, first, source = _load_hub(name, split, skip_bad_rows)
    if skipped:
        print(f"skipped {skipped} malformed rows of {source} (data.skip_bad_rows); first: {first}")
    if not records:
        why = f"all {skipped} rows are malformed" if skipped else "it holds no rows"
        raise ValueError(f"{name} {split} is empty: {why} ({source}); fix or replace the file")
    if stats is not None:
        stats.update(source=source, loaded=len(records), skipped=skipped)
    return records


def write_from_hub(name: str, folder: str | Path, force: bool = False) -> list[tuple[Path, int | None]]:
    """Write every split of benchmark `name` from the hub into `folder` in the local layout (GSM8K with
    its own field names, data/README.md), each file atomically. A file that exists is kept unless
    `force`. Returns [(path, rows written, or None when kept)]."""
    check_name_and_split(name, "test")
    if name == "synthetic":
        raise ValueError("synthetic is generated, not downloaded; name a benchmark (gsm8k, math, ...)")
    folder, done = Path(folder), []
    problem_key, answer_key, solution_key = _LOCAL_FIELDS.get(name, _FIELDS)
    for split, file in LOCAL_FILES[name].items():
        path = folder / file
        if path.is_file() and not force:
            done.append((path, None))
            continue
        records, _, _, _ = _load_hub(name, split, skip_bad_rows=False)
        rows = [{"id": r["id"], problem_key: r["problem"], answer_key: r["answer"],
                 **({solution_key: r["solution"]} if "solution" in r else {})} for r in records]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{file}.tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, path)
        done.append((path, len(rows)))
    return done
