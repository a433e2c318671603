"""Crash-safe checkpoints: a run killed at any moment resumes from its last complete step.

Layout of a run folder:
    config.json                  resolved config (also inside every checkpoint)
    metrics.jsonl                one JSON object per step
    checkpoints/step-000050/     adapter/ (peft format) + state.pt (RunState: step, optimizer, σ controller, RNGs, …)
    checkpoints/latest           name of the newest complete checkpoint
    adapter/                     the final adapter (PeftModel.from_pretrained loads it)
    summary.json, log.txt        what the run did and what it printed (trackers.py, printlog.py)

Each checkpoint is written under a temporary name and renamed when complete; `latest` is
replaced atomically after that. A kill between the two leaves the previous checkpoint named. An adapter
folder holds adapter_config.json and the weights, not peft's model-card template (README.md, empty
but for the base model's path on this machine).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minipsn.run.config import GRPOConfig, RolloutConfig


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunState:
    """What a run carries from one step to the next besides the adapter: saved in every checkpoint's state.pt,
    restored by a resume. The learning rate is a function of the step, the data order and noise seeds of
    (seed, step): they need no state."""
    optimizer: torch.optim.Optimizer
    controller: Any              # the σ controller (sigma_control.py)
    rollout: RolloutConfig       # the rollout settings in force: batch_size halved after out-of-memory (oom.py)
    grpo: GRPOConfig             # the learner's: micro_batch_tokens halved after out-of-memory
    step: int = 0                # finished steps
    skipped: int = 0             # updates skipped for a non-finite loss or gradient (guard/skipped_steps)
    processes: int = 1           # K, the processes the run has (under torchrun)

    def state_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "sigma_control": self.controller.state_dict(),
                "rng": rng_state(), "trainer": {"skipped_steps": self.skipped, "rollout_batch_size": self.rollout.batch_size,
                                                "micro_batch_tokens": self.grpo.micro_batch_tokens,
                                                "processes": self.processes}}

    def load_state_dict(self, state: dict) -> list[str]:
        """Restore from a state.pt; returns the notes a resume prints. Older checkpoints load: "scheduler" for the
        σ controller; without "trainer", the configured batch sizes, none skipped, one process."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.controller.load_state_dict(state.get("sigma_control", state.get("scheduler")))
        set_rng_state(state["rng"])
        self.step = state["step"]
        trainer = state.get("trainer", {})
        self.skipped = trainer.get("skipped_steps", 0)
        notes = []
        for key, section, name, saved in (
                ("rollout.batch_size", "rollout", "batch_size", trainer.get("rollout_batch_size")),
                ("grpo.micro_batch_tokens", "grpo", "micro_batch_tokens", trainer.get("micro_batch_tokens"))):
            if saved is not None and saved != getattr(getattr(self, section), name):
                setattr(self, section, dataclasses.replace(getattr(self, section), **{name: saved}))
                notes.append(f"note: {key} stays at {saved} (halved after out of memory earlier in this run)")
        if trainer.get("processes", 1) != self.processes:
            notes.append(f"note: this run was checkpointed on {trainer.get('processes', 1)} process(es) and continues "
                         f"on {self.processes}: the data order and noise seeds are the same (functions of seed and "
                         "step), the samples may differ from the uninterrupted run's")
        return notes


def save(run_dir: Path, model, state: RunState, config: dict, keep: int = 1) -> Path:
    """Write checkpoint `state.step` (the number of finished steps): the adapter and the run state, and point
    `latest` at it."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp / "adapter")
    torch.save({**state.state_dict(), "config": config}, tmp / "state.pt")
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write(root / "latest", name)
    old = sorted(p for p in root.glob("step-*") if p.name != name)
    for p in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def restore(ckpt: Path, model, state: RunState, loaded: dict | None = None) -> list[str]:
    """Load checkpoint `ckpt` into the live adapter and `state` (`loaded`: its state.pt, when the caller has read
    it already); returns the notes a resume prints."""
    load_adapter_weights(model, ckpt)
    return state.load_state_dict(load_state(ckpt) if loaded is None else loaded)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.pt").is_file() else None


def load_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)


def load_adapter_weights(model, ckpt: Path) -> None:
    """Copy a saved adapter's weights into the live peft model (same config)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"checkpoint {ckpt} does not match this model: unexpected {result.unexpected_keys[:3]}")


def save_adapter(model, folder: Path) -> None:
    """The peft adapter's config and weights in `folder`, without peft's model-card template."""
    model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)


def save_final_adapter(run_dir: Path, model) -> Path:
    tmp = run_dir / f".adapter.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp)
    final = run_dir / "adapter"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def read_metrics(path: Path, note: bool = False) -> list[dict]:
    """metrics.jsonl → one dict per line. The one reader of that file (train, plot, evaluate, resume):
    a last line cut by a kill is dropped (with a one-line note when `note`); a bad line elsewhere is an
    error naming it."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines):
                raise ValueError(f"{path}:{i} is not valid JSON; fix or delete that line") from None
            if note:
                print(f"note: the last line of {path} was cut (a kill while writing it); dropped")
    return rows


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines of steps up to `step` (later ones are recomputed on resume)."""
    if path.is_file():
        keep = [row for row in read_metrics(path, note=True) if row["step"] <= step]
        _atomic_write(path, "".join(json.dumps(row) + "\n" for row in keep))
