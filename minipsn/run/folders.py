"""Output folders: checked before any work is done, and written by one process at a time.

`check_writable(path)` says in one line why an `--out` cannot be written (it is a file, it lies under
a file, its nearest existing folder is not writable) without creating anything, so a command fails
before it loads a model, samples or runs a σ grid, not after.

`hold(folder)` takes an exclusive OS lock (fcntl.flock) on FOLDER/.lock: a second process that would
write the same run folder (`train` twice, `train --resume` during a run, two `compare` on one grid)
fails at once, naming the holder's pid, instead of interleaving metrics.jsonl with it. The kernel
drops the lock when its holder dies, however it dies (SIGKILL included), so a stale lock never needs
cleaning up; the file itself stays and means nothing on its own. Within one process the lock is
re-entrant (a trainer and its resume, or one worker's jobs, share it); `release` undoes one `hold`.

A run stopped by Ctrl-C raises `RunInterrupted` (a KeyboardInterrupt, so the CLI exits 130) with a
message that says what the folder holds: the last checkpoint, or no checkpoint yet.

`run_folder`: the default `run.out`, runs/latest, names no folder of its own: each new run gets a fresh one,
runs/<model>-<method>-<date>-<time>, and runs/latest becomes a link to it (`--resume runs/latest` continues
the newest run, `plot runs/latest` draws it). A given `--out` is used as it is.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import time
from pathlib import Path

from minipsn.run import checkpoint
from minipsn.run.config import Config, RunConfig
from minipsn.run.presets import METHODS, TUNABLE

LOCK_FILE = ".lock"
_held: dict[Path, list] = {}  # resolved folder → [open lock file, how many holds]
LATEST = Path(RunConfig.out)  # the default run.out: a link to the newest run made without --out


def run_folder(cfg: Config, resume: bool) -> tuple[Config, Path | None]:
    """(the config with the run's folder in run.out, the link to point at it once the folder is held or None).
    run.out = runs/latest: a new run goes to a fresh folder beside it; a resume of runs/latest continues the
    run it links to, under that run's own name. Any other run.out is kept."""
    out = Path(cfg.run.out)
    if out != LATEST:
        return cfg, None
    if resume:
        return (_with_out(cfg, out.parent / os.readlink(out)) if out.is_symlink() else cfg), None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', Path(cfg.model.name).name)}-{method_of(cfg)}-{stamp}"
    folder, n = out.parent / name, 2
    while folder.exists():  # two runs started in the same second
        folder, n = out.parent / f"{name}-{n}", n + 1
    print(f"run folder: {folder} ({out} will link to it; --out chooses another)")
    return _with_out(cfg, folder), out


def _with_out(cfg: Config, folder: Path) -> Config:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(folder)))


def link_latest(link: Path, folder: Path) -> None:
    """Point `link` (runs/latest) at `folder`, replacing the link it was at once; a real folder there, from
    before runs/latest was a link, is left as it is, with one line saying so."""
    if link.exists() and not link.is_symlink():
        print(f"note: {link} is a run folder of its own (from an earlier version), left as it is; this run is {folder}")
        return
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(folder.name, tmp)  # relative: the runs/ folder can move
    os.replace(tmp, link)


def method_of(cfg: Config) -> str:
    """The method whose defining settings `cfg` has, for a folder's name: of those it fits, the one that moves the
    most settings off their defaults (grpo's σ = 0 over psn's default TIS); "custom" when none fits. A method's
    tunable key fits only when moved off the default (a temperature run samples hotter than T = 1)."""
    from minipsn.run.overrides import flatten

    now, default = flatten(cfg.to_dict()), flatten(Config().to_dict())
    fits = [(sum(now[k] != default[k] for k in keys), len(keys), name) for name, keys in METHODS.items()
            if all(now[k] != default[k] if k in TUNABLE.get(name, ()) else now[k] == v for k, v in keys.items())]
    return max(fits)[2] if fits else "custom"


def check_writable(path: str | Path, option: str = "--out") -> Path:
    """`path` as a Path if a folder can be written there (it exists as one, or can be created);
    otherwise a ValueError naming `option`. Nothing is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {p} is a file, not a folder; choose another {option}")
    probe = p.absolute()
    while not probe.exists():  # the nearest existing ancestor decides whether the folder can be made
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{option} {p} lies under {probe}, which is a file; choose another {option}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {p} cannot be written ({probe} is not writable); choose another {option}")
    return p


def hold(folder: str | Path) -> None:
    """Create `folder` if needed and lock it for this process; ValueError if another process holds it."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / LOCK_FILE, "a+")
    except OSError as e:
        raise ValueError(f"cannot write to {folder}: {e.strerror}; choose another --out") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise ValueError(f"{folder} is in use by another minipsn process (pid {pid}); wait for it to end, "
                         "or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[key] = [f, 1]


def release(folder: str | Path) -> None:
    """Undo one `hold`; the last one closes the file, which drops the lock (a folder not held: no-op)."""
    key = Path(folder).resolve()
    if key not in _held:
        return
    _held[key][1] -= 1
    if _held[key][1] == 0:
        _held.pop(key)[0].close()


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C ended a run; the message says what was saved and how to continue (the CLI exits 130)."""


def interrupted(e: KeyboardInterrupt, run_dir: Path) -> RunInterrupted:
    """A Ctrl-C as a RunInterrupted that says what `run_dir` holds: its last checkpoint, or none yet
    (one that already says so, the trainer's own stop after a step, is kept as it is)."""
    if isinstance(e, RunInterrupted):
        return e
    ckpt = checkpoint.latest(run_dir)
    if ckpt is not None:
        return RunInterrupted(f"interrupted; the last checkpoint of {run_dir} ({ckpt.name}) is intact: "
                f"continue with python cli.py train --resume {run_dir}")
    if (run_dir / "config.json").is_file():
        return RunInterrupted(f"interrupted; {run_dir} has no checkpoint yet: python cli.py train --resume {run_dir} "
                "starts it again from step 0")
    return RunInterrupted(f"interrupted before {run_dir} held a run; nothing was saved")
