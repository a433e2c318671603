"""Datasets by name: the real local benchmark files, the hub field mappings (on a stub `datasets`),
malformed rows, the data-folder lookup, and the prompt templates. Offline, a few seconds."""
import dataclasses
import json
import re
import sys
import types
from pathlib import Path

import pytest

from minipsn.run.config import DataConfig
from minipsn.tasks import data, synthetic
from minipsn.tasks.problems import load_problems

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # the training sets, where a checkout has them
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no local data folder at {DATA_DIR}")
BUNDLED = {(name, split) for name, splits in data.LOCAL_FILES.items() for split, file in splits.items()
           if (data.BUNDLED_DIR / file).is_file()}

EXPECTED_ROWS = {
    ("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math", "train"): 7500, ("math500", "test"): 500,
    ("aime24", "test"): 30, ("aime25", "test"): 30, ("amc23", "test"): 40, ("minerva", "test"): 272,
    ("olympiadbench", "test"): 675,
}


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good_rows(n: int = 3) -> list[dict]:
    return [{"id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(n)]


# ---- the real local files -------------------------------------------------------------------

def test_the_evaluation_sets_ship_with_the_repository():
    """Every benchmark's test split is in data/ (a fresh clone evaluates offline), with its README."""
    assert {(n, "test") for n in data.LOCAL_FILES} <= BUNDLED
    assert (data.BUNDLED_DIR / "README.md").is_file()


@pytest.mark.parametrize("name,split", list(EXPECTED_ROWS))
def test_local_benchmark_row_counts_and_shape(name, split):
    """The bundled sets load with no data folder named; the training sets from ../shared/data."""
    if (name, split) not in BUNDLED and not DATA_DIR.is_dir():
        pytest.skip(f"{name} {split} is not bundled and there is no {DATA_DIR}")
    stats = {}
    records = data.load_benchmark(name, split, data_dir=None if (name, split) in BUNDLED else str(DATA_DIR), stats=stats)
    assert stats["source"].startswith(str(data.BUNDLED_DIR if (name, split) in BUNDLED else DATA_DIR))
    assert len(records) == EXPECTED_ROWS[(name, split)] == stats["loaded"] and stats["skipped"] == 0
    for r in records:
        for key in ("id", "problem", "answer"):
            assert isinstance(r[key], str) and r[key].strip(), (r.get("id"), key)
        assert set(r) <= {"id", "problem", "answer", "solution"}
    assert len({r["id"] for r in records}) == len(records)


@needs_data
def test_gsm8k_maps_question_and_final():
    first = data.load_benchmark("gsm8k", "train", data_dir=str(DATA_DIR))[0]
    assert first["id"] == "gsm8k-train-00000"
    assert first["problem"].startswith("Natalia sold clips") and first["answer"] == "72"
    assert first["solution"].endswith("#### 72")


def test_lookup_order_data_dir_then_env_then_bundled_then_hub(tmp_path, monkeypatch):
    def no_hub(path, name=None, split=None):
        raise AssertionError(f"the hub was asked for {path}")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=no_hub))
    stats = {}
    assert len(data.load_benchmark("aime24", stats=stats)) == 30  # offline, no folder named: the bundled copy
    assert stats["source"] == str(data.BUNDLED_DIR / "aime24.jsonl")
    env, given = tmp_path / "env", tmp_path / "given"
    for folder, n in ((env, 2), (given, 3)):
        folder.mkdir()
        write_jsonl(folder / "aime24.jsonl", good_rows(n))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(env))
    assert len(data.load_benchmark("aime24")) == 2  # $MINIPSN_DATA_DIR before the bundled copy
    assert len(data.load_benchmark("aime24", data_dir=str(given))) == 3  # data.data_dir before both
    monkeypatch.delenv(data.DATA_DIR_ENV)
    calls = fake_hub(monkeypatch, [{"question": "q", "answer": "1 + 1 = 2\n#### 2"}])
    assert data.load_benchmark("gsm8k", "train")[0]["answer"] == "2"  # a training set not in data/: the hub
    assert calls == [("openai/gsm8k", "main", "train")]


def test_data_command_writes_hub_sets_in_the_local_layout(tmp_path, monkeypatch):
    """`python cli.py data gsm8k math`: each split from the hub (stubbed), in the layout the local loader
    reads, so the records are the hub's; an existing file is kept unless --force."""
    from typer.testing import CliRunner

    import cli

    rows = {"openai/gsm8k": [{"question": "q", "answer": "3 + 4 = 7\n#### 1,007"}],
            "DigitalLearningGmbH/MATH-lighteval": [{"problem": "p", "solution": "so \\boxed{\\frac12}"}],
            "HuggingFaceH4/MATH-500": [{"problem": "p5", "solution": "s", "answer": "5"}]}
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda path, name, split: rows[path]))
    monkeypatch.setattr(data, "BUNDLED_DIR", tmp_path / "no-bundled")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli.app, ["data", "gsm8k", "math", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["gsm8k_test.jsonl", "gsm8k_train.jsonl", "math500_test.jsonl",
                                                     "math_train.jsonl"]
    assert json.loads((out / "gsm8k_train.jsonl").read_text()) == {
        "id": "gsm8k-train-00000", "question": "q", "final": "1007", "answer": "3 + 4 = 7\n#### 1,007"}
    for name in ("gsm8k", "math"):
        for split in ("train", "test"):
            assert data.load_benchmark(name, split, str(out)) == data.load_benchmark(name, split)  # local == hub
    (out / "math_train.jsonl").write_text("kept\n")
    res = CliRunner().invoke(cli.app, ["data", "math", "--out", str(out)])
    assert "math_train.jsonl: exists, kept" in res.output and (out / "math_train.jsonl").read_text() == "kept\n"
    res = CliRunner().invoke(cli.app, ["data", "math", "--out", str(out), "--force"])
    assert res.exit_code == 0 and "math_train.jsonl: 1 rows" in res.output
    res = CliRunner().invoke(cli.app, ["data", "synthetic", "--out", str(out)])
    assert res.exit_code == 2 and "synthetic is generated" in res.output


@needs_data
def test_math_test_is_math500_and_load_problems_dispatches():
    cfg = DataConfig(dataset="math", data_dir=str(DATA_DIR))
    assert load_problems(cfg, "test") == data.load_benchmark("math500", "test", str(DATA_DIR))
    assert len(load_problems(cfg, "train")) == 7500
    aime = load_problems(DataConfig(dataset="aime24", data_dir=str(DATA_DIR)), "test")
    assert aime[0]["id"] == "aime24-I-01" and aime[0]["answer"] == "204"


@needs_data
def test_env_data_dir_fallback(monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(DATA_DIR))
    assert len(data.load_benchmark("aime25")) == 30
    assert len(load_problems(DataConfig(dataset="amc23"), "test")) == 40
    # data.data_dir wins over the environment variable
    with pytest.raises(ValueError, match=r"no_such_folder.*data\.data_dir"):
        data.load_benchmark("aime25", data_dir="/no_such_folder")


@needs_data
def test_hub_math_answers_reproduce_the_local_file(monkeypatch):
    """The hub copy of MATH train has no answer field: its last-box rule must give the local answers."""
    local = data.load_benchmark("math", "train", str(DATA_DIR))
    fake_hub(monkeypatch, [{"problem": r["problem"], "solution": r["solution"], "level": "Level 1",
                            "type": "Algebra"} for r in local])
    hub = data.load_benchmark("math", "train")
    assert [r["answer"] for r in hub] == [r["answer"] for r in local]


# ---- synthetic and names --------------------------------------------------------------------

def test_the_held_out_pool_is_fixed_and_no_training_split_draws_from_it():
    """The test split is a prefix of a pool drawn first; no training split of any size, warm start or RL mix,
    holds a pool problem; an n_test beyond the pool fails in one line. (Before, the test chains were a prefix
    that grew with n_test and the ceiling's warm start excluded only the first 200: at n_test = 1000, 63 of the
    held-out chains had been trained on.)"""
    from minipsn.tasks.local_models import LOCAL_MODELS

    chain = lambda r: r["problem"].rsplit(". ", 1)[0]  # noqa: E731  (the mixed task's kinds share a chain)
    for spec in LOCAL_MODELS.values():
        build = spec["data"]
        pool = synthetic.synthetic_split(dataclasses.replace(build, n_test=synthetic.pool_size(build)), "test")
        held = {chain(r) for r in pool}
        assert len(held) == len(pool) == synthetic.pool_size(build)
        for n_train, n_test, share in ((build.n_train, 10, build.steps_share), (500, 100, 0.3), (4000, 200, 0.7)):
            cfg = dataclasses.replace(build, n_train=min(n_train, build.n_train), n_test=n_test, steps_share=share,
                                      neg_share=share)
            assert not held & {chain(r) for r in synthetic.synthetic_split(cfg, "train")}
            assert synthetic.synthetic_split(cfg, "test") == pool[:n_test]  # the same problems, whatever the sizes
    with pytest.raises(ValueError, match="data.n_test=1000 is beyond this task's held-out pool of 500 problems"):
        synthetic.synthetic_split(DataConfig(n_ops=3, answer="mixed", n_train=4000, n_test=1000), "test")


def test_synthetic_by_name():
    cfg = DataConfig(n_train=20, n_test=5)
    assert load_problems(cfg, "train") == synthetic.synthetic_split(cfg, "train")
    assert len(data.load_benchmark("synthetic", "test")) == DataConfig().n_test


def test_synthetic_ops_knob_and_worked_solution():
    import random

    for ops in ("+", "-*", "+-*"):
        for rec in synthetic.synthetic_split(DataConfig(ops=ops, n_ops=3, n_train=50, n_test=5), "train"):
            steps = rec["solution"].split("\n")[:-1]
            assert len(steps) == 3 and {line.split()[1] for line in steps} <= set(ops)
            value = int(steps[0].split()[0])
            for line in steps:  # each line is `value op x = new`, chained, and the box holds the last value
                a, op, x, _, new = line.split()
                assert int(a) == value and int(new) == {"+": value + int(x), "-": value - int(x), "*": value * int(x)}[op]
                value = int(new)
            assert rec["answer"] == str(value) and rec["solution"].endswith(f"\\boxed{{{value}}}.")
    assert synthetic.synthetic_problem(random.Random(0), 2, 9, "*")["problem"].count("multiply by") == 2
    with pytest.raises(ValueError, match=r"data.ops must be made of \+ - \*, got '/'"):
        DataConfig(ops="/")
    with pytest.raises(ValueError, match="synthetic task too small for n_train=900 besides the held-out pool of 90"):
        synthetic.synthetic_split(DataConfig(ops="+", n_ops=1, max_operand=30, n_train=900, n_test=5), "train")
    with pytest.raises(ValueError, match="data.n_test=200 is beyond this task's held-out pool of 0 problems"):
        synthetic.synthetic_split(DataConfig(ops="+", n_ops=1, max_operand=3), "train")


def test_warm_start_demonstrations_mix_worked_and_early_answers():
    import random

    from minipsn.tasks.sft import demonstration

    rec = synthetic.synthetic_split(DataConfig(n_ops=3, n_train=1, n_test=1), "train")[0]
    steps = rec["solution"].split("\n")[:-1]
    rng = random.Random(0)
    demos = [demonstration(rec, rng, habit=0.5) for _ in range(400)]
    early = [d for d in demos if d != rec["solution"]]
    assert 150 < len(early) < 250  # about half stop early
    for d in early:  # a strict prefix of the steps, then the last kept number boxed
        kept = d.split("\n")[:-1]
        assert 1 <= len(kept) < len(steps) and kept == steps[: len(kept)]
        assert d.endswith(f"\\boxed{{{kept[-1].split('= ')[-1]}}}.")
    assert {demonstration(rec, rng, habit=0.0) for _ in range(20)} == {rec["solution"]}
    one_step = synthetic.synthetic_split(DataConfig(n_ops=1, n_train=1, n_test=1), "train")[0]
    assert demonstration(one_step, rng, habit=1.0) == one_step["solution"]  # nothing to cut


def test_unknown_dataset_lists_names_and_closest_match():
    with pytest.raises(ValueError, match=r"unknown dataset 'gsm8'.*did you mean gsm8k\?.*olympiadbench"):
        load_problems(DataConfig(dataset="gsm8"), "train")
    with pytest.raises(ValueError, match=r"did you mean aime24"):
        data.load_benchmark("aime2024")


@pytest.mark.parametrize("name", ["math500", "aime24", "aime25", "amc23", "minerva", "olympiadbench"])
def test_train_on_eval_only_set_is_an_error(name, tmp_path):
    with pytest.raises(ValueError, match="evaluation only, do not train on it"):
        load_problems(DataConfig(dataset=name, data_dir=str(tmp_path)), "train")


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="split must be train or test"):
        data.load_benchmark("gsm8k", "validation")


# ---- malformed local files --------------------------------------------------------------------

def test_bad_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "aime24.jsonl", [*good_rows(2), '{"id": "x", "problem": ', *good_rows(1)])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: not valid JSON.*skip_bad_rows"):
        data.load_benchmark("aime24", data_dir=str(tmp_path))


@pytest.mark.parametrize("row,problem", [
    ({"id": "a", "problem": "1+1?"}, r"field 'answer' is missing"),
    ({"id": "a", "problem": "1+1?", "answer": "  "}, r"field 'answer' is empty"),
    ({"id": "a", "problem": "", "answer": "2"}, r"field 'problem' is empty"),
    ({"id": "a", "problem": "1+1?", "answer": 2}, r"field 'answer' must be a string, got int"),
    ({"id": 7, "problem": "1+1?", "answer": "2"}, r"field 'id' must be a string"),
    ([1, 2], r"expected a JSON object, got list"),
    ({"id": "p0", "problem": "again", "answer": "1"}, r"duplicate id 'p0' \(first at .*:1\)"),
])
def test_malformed_row_is_an_error_naming_line_and_field(tmp_path, row, problem):
    path = write_jsonl(tmp_path / "amc23.jsonl", [*good_rows(1), row])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: {problem}"):
        data.load_benchmark("amc23", data_dir=str(tmp_path))


def test_gsm8k_requires_question_and_final(tmp_path):
    rows = [{"id": "g0", "question": "q?", "answer": "1+1=2\n#### 2", "final": "2"},
            {"id": "g1", "question": "q?", "answer": "#### 3"}]
    path = write_jsonl(tmp_path / "gsm8k_test.jsonl", rows)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: field 'final' is missing"):
        data.load_benchmark("gsm8k", data_dir=str(tmp_path))


def test_skip_bad_rows_skips_counts_and_reports(tmp_path, capsys):
    bad = ["not json", {"id": "b", "problem": "x"}, {"id": "c", "problem": "x", "answer": None}]
    write_jsonl(tmp_path / "minerva_math.jsonl", [*good_rows(2), *bad, *good_rows(4)[2:], ""])
    stats = {}
    records = load_problems(DataConfig(dataset="minerva", data_dir=str(tmp_path), skip_bad_rows=True),
                            "test", stats=stats)
    assert [r["id"] for r in records] == ["p0", "p1", "p2", "p3"]
    assert stats["skipped"] == 3 and stats["loaded"] == 4
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "skipped 3 malformed rows" in out and "minerva_math.jsonl:3" in out


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "aime25.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"aime25 test is empty: it holds no rows"):
        data.load_benchmark("aime25", data_dir=str(tmp_path))
    write_jsonl(tmp_path / "aime25.jsonl", ["{", "[]"])
    with pytest.raises(ValueError, match=r"all 2 rows are malformed"):
        data.load_benchmark("aime25", data_dir=str(tmp_path), skip_bad_rows=True)


def test_missing_file_names_the_expected_path(tmp_path):
    expected = tmp_path / "olympiadbench.jsonl"
    with pytest.raises(ValueError, match=rf"missing data file {re.escape(str(expected))}: .*olympiadbench\.jsonl"):
        data.load_benchmark("olympiadbench", data_dir=str(tmp_path))


def test_optional_fields_and_default_ids(tmp_path):
    write_jsonl(tmp_path / "aime24.jsonl", [{"problem": "p", "answer": " 5 ", "solution": ""},
                                            {"problem": "q", "answer": "6", "solution": "s", "extra": 1}])
    records = data.load_benchmark("aime24", data_dir=str(tmp_path))
    assert records == [{"id": "aime24-1", "problem": "p", "answer": "5"},
                       {"id": "aime24-2", "problem": "q", "answer": "6", "solution": "s"}]


# ---- the hub path, on a stub `datasets` module ---------------------------------------------------

def fake_hub(monkeypatch, rows: list[dict]) -> list[tuple]:
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return rows
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(data, "BUNDLED_DIR", Path("/no/bundled/data"))  # the bundled copies would come first
    return calls


HUB_CASES = {
    ("gsm8k", "train"): ({"question": "q", "answer": "3 + 4 = 7\n#### 1,007"},
                         {"id": "gsm8k-train-00000", "problem": "q", "answer": "1007", "solution": "3 + 4 = 7\n#### 1,007"}),
    ("math", "test"): ({"problem": "p", "solution": "s", "answer": "\\frac{1}{2}", "unique_id": "test/a/1.json"},
                       {"id": "math-test-00000", "problem": "p", "answer": "\\frac{1}{2}", "solution": "s"}),
    ("aime24", "test"): ({"id": 60, "problem": "p", "solution": "s", "answer": "025", "url": "u"},
                         {"id": "aime24-test-00000", "problem": "p", "answer": "25", "solution": "s"}),
    ("aime25", "test"): ({"id": "0", "problem": "p", "answer": "70"},
                         {"id": "aime25-test-00000", "problem": "p", "answer": "70"}),
    ("amc23", "test"): ({"id": 0, "question": "p", "answer": 27.0, "url": "u"},
                        {"id": "amc23-test-00000", "problem": "p", "answer": "27"}),
    ("minerva", "test"): ({"question": "p", "answer": "8.7e8"},
                          {"id": "minerva-test-00000", "problem": "p", "answer": "8.7e8"}),
    ("olympiadbench", "test"): ({"id": 1606, "question": "p", "final_answer": ["$69,84$"], "solution": ["s1", "s2"]},
                                {"id": "olympiadbench-test-00000", "problem": "p", "answer": "69,84", "solution": "s1"}),
}


@pytest.mark.parametrize("name,split", list(HUB_CASES))
def test_hub_rows_map_to_the_common_shape(monkeypatch, capsys, name, split):
    row, expected = HUB_CASES[(name, split)]
    calls = fake_hub(monkeypatch, [row])
    assert data.load_benchmark(name, split) == [expected]
    assert calls == [data.HUB_SOURCES[name][split]]
    assert "from the Hugging Face hub" in capsys.readouterr().out


def test_hub_math_train_boxes_and_known_empty_boxes(monkeypatch):
    rows = [{"problem": "p", "solution": "so $\\boxed{\\frac{a}{b^{2}}}$, not \\fbox{3}", "type": "Algebra"},
            {"problem": "For any integer $n>1$, the number of prime numbers greater than $n!+1$ and ...",
             "solution": "there are $\\boxed{}$ primes"}]
    fake_hub(monkeypatch, rows)
    assert [r["answer"] for r in data.load_benchmark("math", "train")] == ["\\frac{a}{b^{2}}", "0"]
    fake_hub(monkeypatch, [{"problem": "p", "solution": "no box here"}])
    with pytest.raises(ValueError, match=r"MATH-lighteval \(train\) row 0: field 'answer' is missing"):
        data.load_benchmark("math", "train")


def test_hub_without_datasets_package_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    monkeypatch.setattr(data, "BUNDLED_DIR", Path("/no/bundled/data"))
    with pytest.raises(ValueError, match=r"needs `datasets`.*MINIPSN_DATA_DIR"):
        data.load_benchmark("gsm8k", "test")


def test_hub_network_error_is_reported_with_the_offline_fix(monkeypatch):
    def load_dataset(path, name=None, split=None):
        raise ConnectionError("no network")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(data, "BUNDLED_DIR", Path("/no/bundled/data"))
    with pytest.raises(ValueError, match=r"cannot load HuggingFaceH4/MATH-500.*no network.*data_dir"):
        data.load_benchmark("math500")


def test_last_boxed():
    assert data.last_boxed("a \\boxed{1} b \\boxed{x^{2}+1}") == "x^{2}+1"
    assert data.last_boxed("so $\\boxed 5$.") == "5"
    assert data.last_boxed("\\fbox{7}") == "7"
    assert data.last_boxed("\\boxed{unclosed") is None and data.last_boxed("none") is None


# ---- prompt templates ----------------------------------------------------------------------------

def chat_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                                   chat_template=template)


def test_format_prompt_templates():
    problem = "Start at 3, add 4. What number do you get?"
    chat = data.format_prompt(chat_tokenizer(), problem, "chat")
    assert chat.startswith("<|user|>") and problem in chat and data.INSTRUCTION in chat
    assert "\\boxed{}" in chat and chat.endswith("<|assistant|>")
    plain = data.format_prompt(None, problem, "plain")
    assert plain.startswith(f"Question: {problem}") and "\\boxed{}" in plain and plain.endswith("Answer:")
    with pytest.raises(ValueError, match="unknown template 'instruct'; use chat or plain"):
        data.format_prompt(None, problem, "instruct")
