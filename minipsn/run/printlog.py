"""What a run prints, kept and labelled: RUN/log.txt, and a compare worker's lines prefixed with its job.

`PrintLog` tees the process's stdout into RUN/log.txt while a run is made, so the folder keeps its notes,
status lines and closing line as they were printed (a resume appends, under a line naming its command).
Lines printed before the run folder exists wait in memory: a run that fails before it has a folder
leaves no log. The rich progress bar never reaches the file: rich's console writes to the stream beneath
the tee (`rich_proxied_file`, what rich itself unwraps), so the trainer logs its status lines explicitly,
and while the bar is live (`paused` around it, `capture` inside) plain prints still reach both.

`labelled(job)` prefixes every line a block prints with `[job] `: two compare workers share one terminal,
and their training status lines interleave. It reports no terminal, so no live bar is drawn there either.
"""
from __future__ import annotations

import io
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "log.txt"


def command_line() -> str:
    """The command that is running, as a user would type it again (`python cli.py train --model tiny`)."""
    return shlex.join(["python", *sys.argv])


class _Tee(io.TextIOBase):
    """sys.stdout while a run is logged: every write reaches the stream and the log."""

    def __init__(self, stream, log: PrintLog):
        self.stream, self.log = stream, log

    @property
    def rich_proxied_file(self):  # rich's console writes beneath the tee: its bar frames stay off the log
        return getattr(self.stream, "rich_proxied_file", self.stream)

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class PrintLog:
    """RUN/log.txt. Off (every method a no-op) on the ranks that print nothing under torchrun."""

    def __init__(self):
        self.on = os.environ.get("RANK", "0") == "0"
        self.pending: list[str] = []
        self.file = None

    def attach(self, run_dir: Path) -> None:
        """From now on append to RUN/log.txt, first what was printed so far, under a line naming the command."""
        if not self.on:
            return
        self.file = open(Path(run_dir) / LOG_FILE, "a", encoding="utf-8")
        self.file.write(f"── {time.strftime('%Y-%m-%d %H:%M:%S')} · {command_line()}\n" + "".join(self.pending))
        self.file.flush()
        self.pending = []

    def write(self, text: str) -> None:
        if not self.on:
            return
        if self.file is None:
            self.pending.append(text)
        else:
            self.file.write(text)
            self.file.flush()  # a kill loses nothing printed before it

    def line(self, text: str) -> None:
        """A line the run shows through rich (a status line), which the tee does not see."""
        self.write(text + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    @contextmanager
    def capture(self):
        """sys.stdout teed into the log for the block (nothing new when it already is)."""
        if not self.on or (isinstance(sys.stdout, _Tee) and sys.stdout.log is self):
            yield
            return
        stream = sys.stdout
        sys.stdout = tee = _Tee(stream, self)
        try:
            yield
        finally:
            if sys.stdout is tee:  # another hand may have replaced it since (then it is theirs to restore)
                sys.stdout = stream

    @contextmanager
    def paused(self):
        """The plain stream for the block: a rich live display started inside wraps it, not the tee (its frames
        would reach the log through the tee); `capture` inside the display logs plain prints again."""
        tee = sys.stdout
        if not (isinstance(tee, _Tee) and tee.log is self):
            yield
            return
        sys.stdout = tee.stream
        try:
            yield
        finally:
            sys.stdout = tee


class _Labelled(io.TextIOBase):
    """A stream that starts each line with a label."""

    def __init__(self, stream, label: str):
        self.stream, self.label, self.at_start = stream, label, True

    def write(self, text: str) -> int:
        out = []
        for part in text.splitlines(keepends=True):
            if self.at_start and part.strip():
                out.append(self.label)
            out.append(part)
            self.at_start = part.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False  # one live bar per worker would overwrite the other workers' lines


@contextmanager
def labelled(job: str):
    """Every line printed in the block starts with `[job] `."""
    stream = sys.stdout
    sys.stdout = _Labelled(stream, f"[{job}] ")
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = stream
