"""Your own data (user_data.py): files, folders, hub ids and rows given to train(), their columns, gold answers
that cannot be graded, held-out problems, custom prompts, and each error's one line. Offline; the runs at the end
train a few steps of `tiny` on each kind of source and check that the file's problems reached the trainer."""
import json
import time

import pytest

from minipsn.run.config import DataConfig
from minipsn.run.overrides import build_config
from minipsn.tasks import data, user_data
from minipsn.tasks.problems import load_problems

PROBLEMS = ["Start at 3, add 4. What number do you get?", "Start at 9, subtract 2. What number do you get?",
            "Start at 5, add 5. What number do you get?"]
GOLDS = ["7", "7", "10"]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def own(path, **fields) -> DataConfig:
    return DataConfig(dataset=str(path), **fields)


# ---- columns, guesses and gold answers --------------------------------------------------------

def test_jsonl_with_other_column_names_keeps_every_column(tmp_path):
    rows = [{"question": p, "final": g, "topic": "add"} for p, g in zip(PROBLEMS, GOLDS)]
    path = write_jsonl(tmp_path / "mine.jsonl", [rows[0], "", *rows[1:]])  # a blank line holds no row
    stats = {}
    records = load_problems(own(path), "train", stats=stats)
    assert [(r["id"], r["problem"], r["answer"]) for r in records] == [
        ("mine-00000", PROBLEMS[0], "7"), ("mine-00001", PROBLEMS[1], "7"), ("mine-00002", PROBLEMS[2], "10")]
    assert records[2]["columns"] == rows[2]  # what TRL-style reward functions receive
    assert stats == {"source": str(path), "loaded": 3, "skipped": 0, "unreadable": 0}
    named = load_problems(own(path, problem_field="topic", answer_field="final"), "train")
    assert named[0]["problem"] == "add"


@pytest.mark.parametrize("row, gold", [
    ({"problem": "p", "solution": "so $x = \\boxed{\\frac{1}{2}}$. Done."}, "\\frac{1}{2}"),  # a solution: its box
    ({"question": "p", "answer": "3 + 4 = 7\n#### 7"}, "7"),  # GSM8K's worked answer
    ({"prompt": "p", "final_answer": 27.0}, "27"),  # an integer stored as a float
    ({"query": "p", "ground_truth": 0.5}, "0.5"),
    ({"input": "p", "target": ["$69,84$"]}, "$69,84$"),  # OlympiadBench's one-item list
    ({"problem": "p", "answer": "\\boxed{12}", "solution": "s"}, "12"),  # answer before solution
])
def test_field_guesses_and_gold_forms(tmp_path, row, gold):
    assert load_problems(own(write_jsonl(tmp_path / "d.jsonl", [row])), "train")[0]["answer"] == gold


def test_gold_answers_that_cannot_be_graded_are_skipped_and_counted(tmp_path, capsys):
    rows = [{"problem": "a", "answer": "7"}, {"problem": "b", "answer": ""}, {"problem": "c", "answer": None},
            {"problem": "d", "answer": "\\frac{1}{"}, {"problem": "e", "answer": "x^{\\prime}+r x=0"},
            {"problem": "f", "answer": "(2, 3)"}, {"problem": "g", "solution": "no box"}]
    stats = {}
    records = load_problems(own(write_jsonl(tmp_path / "g.jsonl", rows)), "train", stats=stats)
    assert [r["problem"] for r in records] == ["a", "f"]
    assert stats["loaded"] == 2 and stats["unreadable"] == 5 == stats["skipped"]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "skipped 5 of 7 rows" in out and "g.jsonl:2: empty" in out
    solution_only = write_jsonl(tmp_path / "s.jsonl", [{"problem": "a", "solution": "no box here"}])
    with pytest.raises(ValueError, match=r"no usable rows \(0 malformed, 1 with an unreadable gold answer"):
        load_problems(own(solution_only), "train")


def test_unreadable_is_the_verifiers_view():
    for gold in ("7", "-\\frac{3}{4}", "(C)", "Evelyn", "8:34 p.m.", "\\{1, 2\\}", "x^2 + 1", "[0, 1)"):
        assert user_data.unreadable(gold) is None, gold
    assert user_data.unreadable("") == "empty" and user_data.unreadable("{1") == "unbalanced braces"
    assert user_data.unreadable("m l \\ddot{\\theta}(t)-m g=f(t)") == "the verifier cannot read it"


# ---- formats and sources ----------------------------------------------------------------------

def test_csv_is_text_and_names_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('question,answer\n"two\nlines",007\nb,8\n')
    records = load_problems(own(path), "train")
    assert [(r["problem"], r["answer"]) for r in records] == [("two\nlines", "007"), ("b", "8")]  # "007" stays
    path.write_text('question,answer\n"two\nlines",7\nb,8,9\n')
    with pytest.raises(ValueError, match=rf"{path}:4: 1 cells more than the header's columns"):
        load_problems(own(path), "train")


def test_parquet_json_and_a_folder_through_datasets(tmp_path):
    import pandas as pd

    pd.DataFrame({"problem": ["p", "q"], "answer": [4.0, None]}).to_parquet(tmp_path / "d.parquet")
    records = load_problems(own(tmp_path / "d.parquet"), "train")
    assert [(r["problem"], r["answer"]) for r in records] == [("p", "4")]
    (tmp_path / "d.json").write_text(json.dumps([{"question": "p", "answer": 1}, {"question": "q", "answer": "x+1"}]))
    assert [r["answer"] for r in load_problems(own(tmp_path / "d.json"), "train")] == ["1", "x+1"]
    folder = tmp_path / "set"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"q": "p", "a": "1"}])
    write_jsonl(folder / "test.jsonl", [{"q": "t", "a": "2"}])
    cfg = own(folder, problem_field="q", answer_field="a", test_split="test")
    assert [r["problem"] for r in load_problems(cfg, "train")] == ["p"]
    assert [r["problem"] for r in load_problems(cfg, "test")] == ["t"]
    with pytest.raises(ValueError, match=r"cannot load .*set \(validation\): ValueError: Unknown split"):
        load_problems(own(folder, problem_field="q", answer_field="a", split="validation"), "train")


def test_held_out_problems_from_a_file(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_jsonl(train, [{"problem": "p", "answer": "1"}])
    write_jsonl(test, [{"problem": "t", "answer": "2"}])
    assert load_problems(own(train, test_split=str(test)), "test")[0]["problem"] == "t"
    with pytest.raises(ValueError, match="has no held-out problems: set data.test_split"):
        load_problems(own(train), "test")
    with pytest.raises(ValueError, match="is a file, so its held-out problems are another file"):
        load_problems(own(train, test_split="test"), "test")


def test_a_hub_id_offline_fails_in_one_line_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"cannot load someone/no-such-set: .*HF_HUB_OFFLINE") as e:
        load_problems(DataConfig(dataset="someone/no-such-set"), "train")
    assert time.monotonic() - start < 10 and "\n" not in str(e.value)


def test_a_hub_id_with_the_network_down_asks_once(monkeypatch):
    """Online with no network: one request (no half-minute of download retries), then one line."""
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    def dataset_info(self, repo, timeout=None):
        calls.append((repo, timeout))
        raise OSError("Name or service not known")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    with pytest.raises(ValueError, match=r"hub cannot be reached for dataset someone/set .*HF_HUB_OFFLINE=1"):
        load_problems(DataConfig(dataset="someone/set", config="main"), "train")
    assert calls == [("someone/set", 10)]


@pytest.mark.parametrize("dataset, fields, message", [
    ("my.jsonl", {}, r"no such file my.jsonl \(looked in .*\); give the path of a JSON Lines"),
    ("gsm8kk", {}, r"unknown dataset 'gsm8kk' \(did you mean gsm8k\?\).*a Hugging Face dataset id"),
    ("gsm8k", {"answer_field": "final"}, r"data.answer_field applies to your own data.*not to the bundled gsm8k"),
])
def test_dataset_names_that_fail_say_what_to_give(dataset, fields, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_problems(DataConfig(dataset=dataset, **fields), "train")


def test_errors_name_the_columns_the_file_or_the_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "p", "sol": "1"}])
    with pytest.raises(ValueError, match=r"no problem column in .*d.jsonl \(looked for problem, question.*its "
                                         r"columns: q, sol; name one with --set data.problem_field=COLUMN"):
        load_problems(own(path), "train")
    with pytest.raises(ValueError, match=r"data.answer_field='answer' is not a column of .*; its columns: q, sol"):
        load_problems(own(path, problem_field="q", answer_field="answer"), "train")
    with pytest.raises(ValueError, match=r"data.split names a split of a hub dataset or folder; .* is a file"):
        load_problems(own(path, problem_field="q", answer_field="sol", split="test"), "train")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match=r"files of type .txt are not read; use .jsonl, .json, .parquet or .csv"):
        load_problems(own(tmp_path / "d.txt"), "train")
    bad = write_jsonl(tmp_path / "b.jsonl", [{"q": "p", "a": "1"}, '{"q": ', {"q": "", "a": "2"}, {"q": "r", "a": {}}])
    cfg = own(bad, problem_field="q", answer_field="a")
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid JSON.*skip_bad_rows"):
        load_problems(cfg, "train")
    stats = {}
    assert len(load_problems(own(bad, problem_field="q", answer_field="a", skip_bad_rows=True), "train",
                             stats=stats)) == 1 and stats["skipped"] == 3


# ---- rows given to train(), held-out evaluation, prompts -----------------------------------------

def test_rows_given_as_a_list_or_a_dataset_map_like_a_file():
    from datasets import Dataset

    rows = [{"question": p, "final": g} for p, g in zip(PROBLEMS, GOLDS)]
    from_list = user_data.given_records(rows, DataConfig())
    assert [(r["id"], r["problem"], r["answer"]) for r in from_list][0] == ("dataset-00000", PROBLEMS[0], "7")
    assert user_data.given_records(Dataset.from_list(rows), DataConfig()) == from_list
    with pytest.raises(ValueError, match=r"takes one split .* e.g. dataset\['train'\]"):
        user_data.given_records({"train": rows}, DataConfig())
    with pytest.raises(ValueError, match="takes a list of dicts or a datasets.Dataset, got str"):
        user_data.given_records("rows.jsonl", DataConfig())


def test_without_held_out_problems_the_periodic_evaluation_is_off(tmp_path, capsys):
    cfg = build_config(model="tiny", sets={"data.dataset": str(tmp_path / "d.jsonl")})
    assert cfg.eval.every == 20 and user_data.heldout_eval(cfg).eval.every == 0
    assert "evaluation (eval.every=20) is off; set data.test_split" in capsys.readouterr().out
    kept = build_config(model="tiny", sets={"data.dataset": "d.jsonl", "data.test_split": "t.jsonl"})
    assert user_data.heldout_eval(kept) is kept and user_data.heldout_eval(build_config(model="tiny")).eval.every == 20
    assert user_data.heldout_eval(build_config(model="tiny"), dataset=[]).eval.every == 0  # rows, no test_dataset
    assert user_data.heldout_eval(build_config(model="tiny"), dataset=[], test_dataset=[]).eval.every == 20


def test_a_custom_prompt_template():
    from tests.test_data import chat_tokenizer

    chat = data.format_prompt(chat_tokenizer(), "2+2?", "Solve: {problem} Box it: \\boxed{}.")
    assert chat == "<|user|>Solve: 2+2? Box it: \\boxed{}.<|end|><|assistant|>"
    assert data.format_prompt(None, "2+2?", "plain:Q: {problem}\nA:") == "Q: 2+2?\nA:"
    with pytest.raises(ValueError, match=r"data.template='Solve it' is not chat, plain, or a prompt with \{problem\}"):
        DataConfig(template="Solve it")


# ---- a few steps of tiny on each source --------------------------------------------------------

def tiny(tmp_path, name, **sets):
    base = {"run.out": str(tmp_path / name), "run.steps": "2", "grpo.prompts_per_step": "2", "grpo.group_size": "4",
            "rollout.max_new_tokens": "24", "run.log_samples": "8"}
    return build_config(model="tiny", sets={**base, **sets})


def samples(run):
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def trained_on(run) -> set[tuple[str, str]]:
    """(problem, gold) of every sampled row: the problem is found in its prompt."""
    return {(next(p for p in PROBLEMS if p in s["prompt"]), s["gold"]) for s in samples(run)}


@pytest.mark.parametrize("kind", ["parquet", "csv", "dataset", "records"])
def test_training_reaches_the_trainer_from_each_source(kind, tmp_path, tiny_model, capsys):
    import pandas as pd
    from datasets import Dataset

    from minipsn.training.train import train

    rows = [{"question": p, "final": g} for p, g in zip(PROBLEMS, GOLDS)] + [{"question": "Skip me", "final": ""}]
    if kind in ("parquet", "csv"):
        path = tmp_path / f"d.{kind}"
        if kind == "parquet":
            pd.DataFrame(rows).to_parquet(path)
        else:
            pd.DataFrame(rows).to_csv(path, index=False)
        run = train(tiny(tmp_path, kind, **{"data.dataset": str(path)}))
    else:
        given = Dataset.from_list(rows) if kind == "dataset" else rows
        run = train(tiny(tmp_path, kind), dataset=given)
    assert trained_on(run) <= set(zip(PROBLEMS, GOLDS)) and len(trained_on(run)) >= 2
    assert "skipped 1 of 4 rows" in capsys.readouterr().out
    from minipsn.evaluation.provenance import records_digest

    trained = load_problems(own(path), "train") if kind in ("parquet", "csv") else \
        user_data.given_records(given, DataConfig())
    digest = json.loads((run / "config.json").read_text())["provenance"]["records"]["train"]
    assert digest == records_digest(trained)  # what a resume compares


def test_held_out_rows_given_to_train_are_evaluated(tmp_path, tiny_model):
    """data.dataset names a file with no held-out split, so only test_dataset= can feed the periodic evaluation."""
    from minipsn.training.train import train

    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": p, "answer": g} for p, g in zip(PROBLEMS, GOLDS)])
    cfg = tiny(tmp_path, "run", **{"data.dataset": str(path), "eval.every": "2", "eval.n": "2", "eval.problems": "2"})
    run = train(cfg, test_dataset=[{"question": p, "answer": g} for p, g in zip(PROBLEMS, GOLDS)])
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in evals if "eval/pass@1" in m] == [0, 2]
    with pytest.raises(ValueError, match=r"d.jsonl is not a bundled benchmark: eval reads those by name"):
        data.load_benchmark(str(path))  # `eval --benchmarks d.jsonl`: one line, not "unknown dataset"


def test_cli_trains_on_a_jsonl_with_other_columns(tmp_path, tiny_model):
    from tests.test_train import cli

    rows = [{"q": p, "gold": g, "n": i} for i, (p, g) in enumerate(zip(PROBLEMS, GOLDS))]
    path = write_jsonl(tmp_path / "mine.jsonl", rows + [{"q": "Start at 1, add 1. What number?", "gold": "\\frac{1}{"}])
    run = tmp_path / "run"
    proc = cli("train", "--model", "tiny", "--dataset", str(path), "--steps", "2", "--out", str(run),
               "--set", "data.problem_field=q", "--set", "data.answer_field=gold", "--set", "grpo.prompts_per_step=2",
               "--set", "grpo.group_size=4", "--set", "rollout.max_new_tokens=24", "--set", "run.log_samples=8")
    assert "skipped 1 of 4 rows of" in proc.stdout and "eval.every=20) is off" in proc.stdout
    assert trained_on(run) <= set(zip(PROBLEMS, GOLDS)) and len(trained_on(run)) >= 2
    assert not any(k.startswith("eval/") for line in (run / "metrics.jsonl").read_text().splitlines()
                   for k in json.loads(line))
    missing = cli("train", "--model", "tiny", "--dataset", "nothere.jsonl", "--out", str(tmp_path / "r2"), check=False)
    assert missing.returncode == 2 and "no such file nothere.jsonl" in missing.stderr
