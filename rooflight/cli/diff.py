"""`rooflight diff A.json B.json`: what changed between two runs."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape as esc

from .. import api
from ..errors import UsageError
from ..files import check_files, html_target, write_files
from ..profile_data import ProfileFormatError, strict_json
from .common import ForceOption, HwDirOption, console, database, handles_errors

commands = typer.Typer()


class DiffFormat(str, Enum):
    text = "text"
    json = "json"


@commands.command("diff")
@handles_errors
def diff_cmd(
    a: Path = typer.Argument(..., metavar="A.json", help="The run before: a profile, or a baseline file."),
    b: Path = typer.Argument(..., metavar="B.json", help="The run after: a profile, or a baseline file."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", metavar="REPORT.html|DIR",
                                       help="Also write the comparison report (HTML: both runs on one roofline); a "
                                            "directory gets A-vs-B.html."),
    fmt: DiffFormat = typer.Option(DiffFormat.text, "--format", help="What to print: the table, or JSON."),
    limit: int = typer.Option(0, "--limit", help="Print at most this many rows (0: all of them)."),
    changed: bool = typer.Option(False, "--changed", metavar="", help="Print only the rows that changed."),
    hw: Optional[str] = typer.Option(None, "--hw", help="GPU whose roofs both are held against (default: each "
                                                        "its own: where it ran)."),
    no_calibration: bool = typer.Option(False, "--datasheet", metavar="", help="Datasheet roofs even if calibrated ones are "
                                                                   "cached."),
    force: bool = ForceOption,
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Compare two runs: per run, region, step and op group, time (with its spread), FLOPs, bytes, label."""
    for p in (a, b):
        if not p.is_file():
            raise UsageError(f"{p}: no such file (give two profiles saved by `rooflight profile --format json`, or a "
                             "baseline file)")
    if limit < 0:
        raise UsageError(f"--limit {limit}: give 0 (every row) or a positive number")
    if out is not None:
        out = html_target(out, f"{a.stem}-vs-{b.stem}.html", "comparison report")
        if out.resolve() in (a.resolve(), b.resolve()):
            raise UsageError(f"-o {out} would overwrite an input; give another name")
        check_files([out], force=force)
    try:
        d = api.diff(a, b, hw=hw, calibrated=not no_calibration, db=database(hw_dir), a_name="A", b_name="B")
    except ProfileFormatError as err:  # an unreadable input is a usage error here, as for `check`'s baseline
        raise UsageError(str(err)) from None
    if fmt is DiffFormat.json:
        print(json.dumps(strict_json({**d.to_dict(), "a_file": str(a), "b_file": str(b)}), indent=1, allow_nan=False))
    else:
        print(f"A: {a}\nB: {b}")
        print(d.text(limit or None, unchanged=not changed))
    if out is not None:
        written = write_files({out: d.to_html()}, force=force)
        con = console() if fmt is DiffFormat.text else None
        for p in written:
            if con is not None:
                con.print(f"wrote {esc(str(p))}")
