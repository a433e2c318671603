"""What made a result: the code, the model's build, the device and dtype, the data; and whether two results agree.

Every config.json (a training run), eval.json and samples file (an evaluation) records `provenance`:

    code     the package version, the git commit and a dirty flag where there is a checkout, and `source`, a
             digest of the package's own .py files and cli.py (what is compared: it moves with any code
             change and with nothing else, so a README edit does not, and an uncommitted edit does)
    model    a digest of the base model's files (weights, config, tokenizer) for a local model (`tiny`, `ceiling`,
             …) or folder; the hub snapshot's commit for a cached hub model
    device, dtype, torch    what `model.device` and `model.dtype` resolved to here (auto is not a value), and
             torch's version (kernels change numbers)
    records  a digest of the problems (id, problem, answer) trained on or evaluated, per dataset

`differences` compares a stored result with what would be made now: every key that changes a number, a key
absent from the stored one counting as a difference (never as today's default), while values that resolve to
the same thing compare equal (COSMETIC). compare, eval, headroom and calibrate refuse a stored result that
differs, in one line naming what.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from minipsn.run.overrides import flatten
from minipsn.run.presets import RENAMED
from minipsn.tasks.models import pick_device, pick_dtype, resolve_name

PACKAGE = Path(__file__).resolve().parents[1]  # minipsn/: every .py under it, in every folder
REPO = PACKAGE.parent
ABSENT = "absent"  # what a key missing from a stored result reads as in a difference
# config values that resolve to the same thing: rollout.rng auto has been prompt since rng=prompt was the default
COSMETIC = {"rollout.rng": {"auto": "prompt"}}
COMPARED = ("source", "model", "device", "dtype", "torch")  # provenance keys that change a number


@functools.cache
def code_version() -> dict:
    """{"version", "commit", "dirty", "source"}: commit and dirty are None outside a git checkout."""
    files = sorted(PACKAGE.rglob("*.py")) + ([REPO / "cli.py"] if (REPO / "cli.py").is_file() else [])
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    try:
        version = metadata.version("minipsn")
    except metadata.PackageNotFoundError:
        version = None
    commit = dirty = None
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", "minipsn", "cli.py"))
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": version, "commit": commit, "dirty": dirty, "source": digest.hexdigest()[:16]}


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise subprocess.SubprocessError(out.stderr)
    return out.stdout.strip()


@functools.cache
def model_digest(name: str) -> str | None:
    """A digest of the base model `name` resolves to (module docstring); None for a hub model not cached here."""
    path = Path(resolve_name(name))  # a local model (tiny, ceiling, …) is its folder here
    if path.is_dir():
        return _files_digest(path)
    cached = try_to_load_from_cache(str(path), "config.json")
    return f"hub:{Path(cached).parent.name}" if isinstance(cached, str) else None


def _files_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model", ".txt"):
            digest.update(str(f.relative_to(folder)).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def records_digest(records: list[dict]) -> str:
    """A digest of the problems: their ids, texts and gold answers, in order."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r["id"], r["problem"], r["answer"]]).encode() + b"\n")
    return digest.hexdigest()[:16]


def row_digest(record: dict) -> str:
    """One problem's digest, kept with its samples line: a row is reused only for the same problem."""
    return hashlib.sha256(json.dumps([record["problem"], record["answer"]]).encode()).hexdigest()[:12]


def provenance(cfg, records: dict[str, list[dict]] | None = None) -> dict:
    """The provenance of a result made now with `cfg` (module docstring); `records` {dataset: problems}."""
    device = pick_device(cfg.model)
    return {"code": code_version(), "model": model_digest(cfg.model.name), "device": device.type,
            "dtype": str(pick_dtype(cfg.model, device)).removeprefix("torch."), "torch": torch.__version__,
            **({"records": {name: records_digest(recs) for name, recs in records.items()}} if records is not None else {})}


def compared(prov: dict) -> dict:
    """The part of a provenance that changes a number (COMPARED), flat: what a samples file's meta keeps."""
    flat = _flat(prov)
    return {k: flat.get(k, ABSENT) for k in COMPARED}


def _flat(stored: dict) -> dict:
    out = {**{k: v for k, v in stored.items() if k != "code"}, **{f"code.{k}": v for k, v in stored.get("code", {}).items()}}
    return {("source" if k == "code.source" else k): v for k, v in out.items()}


def provenance_differences(stored: dict | None, now: dict) -> dict[str, tuple]:
    """{key: (stored, now)} for the provenance keys that change a number: COMPARED, and the problems of each dataset
    both evaluated (a dataset only one has is a difference of benchmarks, said by the caller)."""
    old, new = _flat(stored or {}), _flat(now)
    out = {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in COMPARED if old.get(k, ABSENT) != new.get(k, ABSENT)}
    if "records" in new:
        if "records" not in old:
            return {**out, "records": (ABSENT, ",".join(new["records"]))}
        out.update({f"records.{name}": (old["records"][name], digest) for name, digest in new["records"].items()
                    if name in old["records"] and old["records"][name] != digest})
    return out


def refuse_stale(path, diff: dict[str, tuple], stored_provenance: dict | None, now_provenance: dict,
                 other_code: bool = False, verb: str = "made") -> None:
    """An error naming what differs between a stored result in `path` and now: `diff` ({key: (stored, now)}, its
    settings) and the provenance keys that change a number. A result of other code (provenance `source`) passes with
    `other_code`, with the settings that code did not have (keys it lacks): it measured as that code did."""
    made = provenance_differences(stored_provenance, now_provenance)
    if other_code and "source" in made:
        diff = {k: v for k, v in diff.items() if v[0] != ABSENT}
    diff = {**diff, **{k: v for k, v in made.items() if not (other_code and k == "source")}}
    if diff:
        said = ", ".join(f"{k} ({a} → {b})" for k, (a, b) in list(diff.items())[:6])
        raise ValueError(f"{path} was {verb} with other settings: {said}; delete it to measure again, or choose "
                         "another output folder")


def settings_differences(stored: dict, now: dict, keep=lambda key: True) -> dict[str, tuple]:
    """{key: (stored, now)} over the flat config keys `keep` accepts: `stored` as a result wrote it (renamed keys
    mapped to their new names), `now` a `Config.to_dict()`; an absent key differs; COSMETIC values compare equal."""
    def flat(d: dict) -> dict:
        out = {}
        for key, value in flatten(json.loads(json.dumps(d))).items():  # tuples and lists compare alike
            section, _, name = key.partition(".")
            key = RENAMED.get(key) or (f"{RENAMED[section]}.{name}" if section in RENAMED else key)
            out[key] = COSMETIC.get(key, {}).get(value, value) if isinstance(value, str) else value
        return out

    old, new = flat(stored), flat(now)
    return {k: (old.get(k, ABSENT), v) for k, v in new.items() if keep(k) and old.get(k, ABSENT) != v}
