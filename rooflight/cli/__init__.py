"""The `rooflight` command: a thin typer layer over the library (rooflight.api).

One module per command group, each parsing its arguments, calling the library and printing:
hw.py (`hw list|show|detect`), run.py (`profile`, `report`), diff.py, check.py (`baseline`,
`check`), calibrate.py, project.py, llm.py; what they share (console, one-line errors, common
options) is in common.py; application.py registers them and runs the command.  `rooflight --version`
answers before any of them (and torch) is imported.
"""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        from .._version import __version__

        print(f"rooflight {__version__}")
        sys.exit(0)
    from .application import main as run

    run(args)


def __getattr__(name: str):
    if name == "app":  # the typer app, for tests and for embedding (imports every command)
        from .application import app

        return app
    raise AttributeError(f"module 'rooflight.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
