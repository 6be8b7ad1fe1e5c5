"""The `rooflight` command's typer app: every command group registered, and `main()`, which
turns click's own usage errors into one line and exit code 2, so no traceback reaches the user."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

import typer

from .._version import __version__
from ..errors import RooflightError
from . import calibrate, check, diff, hw, llm, project, run
from . import common
from .common import err_line

app = typer.Typer(
    name="rooflight",
    help="Roofline performance analyzer and bottleneck diagnoser for LLM workloads on GPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(hw.app, name="hw")
for _group in (run, diff, check, calibrate, project, llm):
    app.registered_commands.extend(_group.commands.registered_commands)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", metavar="", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        print(f"rooflight {__version__}")
        raise typer.Exit(0)


def _click_exceptions():
    """click's exception module(s): typer >= 0.2x vendors click as typer._click."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry: click's usage errors become one line and exit code 2."""
    mods = _click_exceptions()
    usage = tuple(m.UsageError for m in mods)
    abort = tuple(getattr(m, "Abort") for m in mods if hasattr(m, "Abort")) + (typer.Abort, KeyboardInterrupt)
    other = tuple(m.ClickException for m in mods)
    cmd = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    common.ARGS[:] = args  # what `profile --nproc` hands each rank again
    try:
        rv = cmd.main(args=args, prog_name="rooflight", standalone_mode=False)
    except usage as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # help was shown for a bare group
            sys.exit(0)
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        flag = _flag_given_a_value(ctx, args)
        if flag:
            hint = f": {flag} is a flag, give it alone (no true/false after it)" + hint
        err_line(err.format_message() + hint)
        sys.exit(2)
    except abort:
        err_line("interrupted")
        sys.exit(130)
    except other as err:
        err_line(err.format_message())
        sys.exit(err.exit_code)
    except RooflightError as err:
        err_line(str(err))
        sys.exit(err.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


def _flag_given_a_value(ctx, args: List[str]) -> str:
    """The flag a user followed with true/false (`--count-only true`), if that is what went wrong."""
    if ctx is None:
        return ""
    flags = {n for p in ctx.command.params if getattr(p, "is_flag", False) for n in p.opts}
    for a, b in zip(args, args[1:]):
        if a in flags and b.lower() in common.BOOL_WORDS:
            return a
    return ""


__all__ = ["app", "main"]
