"""What every command shares: the console, one-line errors, the options many commands take.

Every command is wrapped in `handles_errors`: a RooflightError becomes one line on stderr and its
exit code (2 for usage errors), Ctrl-C exit code 130; `rooflight.cli.main` does the same for
click's own usage errors, so no traceback from inside rooflight reaches the user.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..errors import RooflightError
from ..hardware import HardwareDB, load_database


ARGS: list[str] = []  # the command line being run, without the program name (set by application.main)

# what a user may type after a flag as if it took a value (`--count-only true`)
BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def console() -> Console:
    """Rich decides the width on a terminal; piped output gets $COLUMNS or 160 so tables stay whole."""
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 160)
    return Console(highlight=False, soft_wrap=False, width=width)


def err_line(message: str) -> None:
    """One line on stderr, prefixed so the user knows who is speaking."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    print(f"rooflight: error: {first}", file=sys.stderr)


def handles_errors(fn):
    """Turn RooflightError into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RooflightError as err:
            tb = getattr(err, "user_traceback", "")
            if tb:
                print(tb, file=sys.stderr)
            err_line(str(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_line("interrupted: nothing was written, earlier reports are untouched")
            raise typer.Exit(130) from None

    return wrapper


def progress(verb: str, *, elapsed_only: bool = False):
    """A progress bar on stderr, shown only on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn(f"[bold]{verb}[/bold] {{task.description}}"), BarColumn()]
    if not elapsed_only:
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty())


HwDirOption = typer.Option(
    None, "--hw-dir", metavar="DIR",
    help="Directory of extra hardware-spec TOML files (may repeat; also $ROOFLIGHT_HW_DIR). "
         "A file whose name matches a built-in GPU replaces it.",
)


def database(hw_dir: Optional[List[Path]]) -> HardwareDB:
    return load_database(hw_dir or ())


ForceOption = typer.Option(False, "--force", metavar="", help="Overwrite files that rooflight did not write.")

# a model file's workload points: the same three options for profile, baseline and check
ParamOption = typer.Option(None, "--param", metavar="NAME=VALUE", help="Set a workload parameter.")
SweepOption = typer.Option(None, "--sweep", metavar="NAME=V1,V2", help="Sweep a parameter (repeatable: crossed).")
NoSweepOption = typer.Option(False, "--no-sweep", metavar="", help="Ignore the workloads' own default sweeps.")
