"""The shipped local models are the bits their builds recorded; a build seed makes another model, deterministically;
`python cli.py build` says whether a rebuild is the shipped build."""
import hashlib
import json

import pytest

from minipsn.run.config import DataConfig
from minipsn.run.presets import NOT_SHIPPED
from minipsn.tasks import local_models as L


def test_every_shipped_model_is_the_build_it_records():
    folders = sorted(p for p in L.SHIPPED.iterdir() if p.is_dir())
    shipped = {L.folder_name(name) for name in L.LOCAL_MODELS if name not in NOT_SHIPPED}
    assert {f.name for f in folders} >= shipped  # every design ships its seed 0, but those built on first use
    for folder in folders:
        done = json.loads((folder / "done").read_text())
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(done["files"])
        assert set(done["files"]) == {p.name for p in folder.iterdir() if p.name != "done"}, folder
        for name, digest in done["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{folder.name}/{name}"
        assert done["seed"] == 0 and L.folder_name(done["name"]) == folder.name


QUICK = {"version": "v0", "data": DataConfig(n_train=100), "steps": 3}  # a recipe that builds in seconds


def test_a_build_seed_builds_another_model_deterministically(tmp_path):
    digests = {}
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        L.build_tiny(tmp_path / folder, DataConfig(n_train=100), steps=3, seed=seed, threads=1)
        digests[folder] = L.file_digests(tmp_path / folder)
    assert digests["a"] == digests["b"]  # the same seed on one machine: the same bits
    assert digests["a"]["model.safetensors"] != digests["c"]["model.safetensors"]  # another seed: another model
    assert digests["a"]["tokenizer.json"] == digests["c"]["tokenizer.json"]  # the same task, the same tokenizer
    assert json.loads((tmp_path / "c" / "done").read_text())["seed"] == 1


def test_rebuild_says_whether_the_bits_are_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.setitem(L.LOCAL_MODELS, "tiny", QUICK)
    monkeypatch.setattr(L, "SHIPPED", tmp_path / "shipped")
    assert L.rebuild("tiny", tmp_path / "first", threads=1)["same"] is None  # nothing of this name ships
    (tmp_path / "shipped").mkdir()
    shipped = (tmp_path / "first").rename(tmp_path / "shipped" / L.folder_name("tiny"))
    again = L.rebuild("tiny", tmp_path / "again", threads=1)
    assert again["same"] is True and again["differ"] == []
    done = json.loads((shipped / "done").read_text())
    done["files"]["model.safetensors"] = "0" * 64  # as if the shipped weights had been built on another CPU
    (shipped / "done").write_text(json.dumps(done))
    other = L.rebuild("tiny", tmp_path / "other", threads=1)
    assert other["same"] is False and other["differ"] == ["model.safetensors"]
    with pytest.raises(ValueError, match="unknown local model 'tinny'"):
        L.rebuild("tinny", tmp_path / "x")
    with pytest.raises(ValueError, match="exists"):
        L.rebuild("tiny", tmp_path / "other")
