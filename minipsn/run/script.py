"""What the example scripts share: positional arguments read against their defaults, and bad input as one line.

    steps, out = script.args("[STEPS] [RUN_DIR]", (8, Path("runs/quickstart")))
    script.run(main)

`args` reads sys.argv[1:] as the types of the defaults (an argument not given, or given empty, keeps its
default); `run` calls main and turns the errors a user can fix (a bad setting, an unknown or uncached model,
a data error: ValueError, FileNotFoundError) into one `error:` line, and Ctrl-C into the line that says what
the run folder holds, as `cli.py` does, instead of a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path


def args(usage: str, defaults: tuple, argv: list[str] | None = None) -> tuple:
    """argv (default sys.argv[1:]) as the types of `defaults`, named by `usage` ("[STEPS] [RUN_DIR]"); too many
    arguments, or one that does not parse (a word for a number), exits with one `error:` line that shows the usage."""
    argv = sys.argv[1:] if argv is None else argv
    names = [name.strip("[]") for name in usage.split()]
    how = f"usage: python examples/{Path(sys.argv[0]).name} {usage}"
    if len(argv) > len(defaults):
        raise SystemExit(f"error: at most {len(defaults)} arguments, got {len(argv)} ({how})")
    out = []
    for name, arg, default in zip(names, list(argv) + [""] * (len(defaults) - len(argv)), defaults):
        try:
            out.append(default if arg == "" else type(default)(arg))
        except ValueError:
            kind = "a whole number" if isinstance(default, int) else f"a {type(default).__name__}"
            raise SystemExit(f"error: {name} must be {kind}, got {arg!r} ({how})") from None
    return tuple(out)


def run(main) -> None:
    """main(); a ValueError or FileNotFoundError exits with one `error:` line, Ctrl-C with its one line (code 130)."""
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt as e:  # a run's own says what its folder holds (folders.py)
        print(str(e) or "interrupted", file=sys.stderr)
        raise SystemExit(130) from None
