"""Problems from any source, by one call: `load_problems` hands a bundled benchmark to data.py, the synthetic task
to synthetic.py and any other name (a file, a folder, a hub id) to user_data.py; `problems` takes the rows handed to
train() when there are some; `heldout_records` is a dataset's held-out split as evaluation reads it.

It sits above the three sources so that none of them imports another to dispatch (data.py never imports
user_data.py, which reads its files with data.py's helpers).
"""
from __future__ import annotations

from minipsn.run.config import DataConfig
from minipsn.tasks.data import DATASETS, load_benchmark
from minipsn.tasks.synthetic import synthetic_split
from minipsn.tasks.user_data import given_records, load_user_problems


def load_problems(cfg: DataConfig, split: str, seed: int = 0, *, stats: dict | None = None) -> list[dict]:
    """Records `{id, problem, answer}` of the configured dataset and split: a bundled set, or your own data
    (user_data.py). `seed` only shapes the synthetic task; the others keep their source order (the trainer
    draws from them by seed)."""
    if cfg.dataset not in DATASETS:
        return load_user_problems(cfg, split, stats=stats)
    own = [k for k in ("problem_field", "answer_field", "config", "split", "test_split") if getattr(cfg, k)]
    if own:
        raise ValueError(f"data.{own[0]} applies to your own data (a file, folder or hub id), not to the bundled "
                         f"{cfg.dataset}; drop it")
    if cfg.dataset == "synthetic":
        records = synthetic_split(cfg, split, seed)
        if stats is not None:
            stats.update(source="synthetic", loaded=len(records), skipped=0)
        return records
    else:
        return load_benchmark(cfg.dataset, split, cfg.data_dir or None, cfg.skip_bad_rows, stats=stats)


def problems(cfg: DataConfig, split: str, given=None) -> list[dict]:
    """The records of `split`: from the rows handed to train() when there are some, else from data.dataset."""
    if given is not None:
        return given_records(given, cfg, name="dataset" if split == "train" else "test_dataset")
    return load_problems(cfg, split)


def heldout_records(data: DataConfig) -> list[dict]:
    """The held-out problems of data.dataset (your own data's data.test_split, e.g. a subset file), a `kind` column
    becoming each record's kind, so evaluation and compare report the ceiling and never slices apart."""
    records = load_problems(data, "test")
    return [{**r, "kind": str(r["columns"]["kind"])} if "kind" in r.get("columns", {}) else r for r in records]
