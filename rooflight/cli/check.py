"""`rooflight baseline` and `rooflight check`: the CI guard on arithmetic intensity."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape as esc

from .. import api
from ..check import (
    BaselineError,
    Tolerances,
    check_model,
    check_profile,
    count_model,
    parse_fraction,
)
from ..errors import UsageError
from ..files import check_files, write_files
from ..profile_data import strict_json
from ..roofline import intensity
from ..workloads import declares_workloads, parse_assignments
from .common import (
    ForceOption,
    NoSweepOption,
    ParamOption,
    SweepOption,
    console,
    err_line,
    handles_errors,
)

commands = typer.Typer()


@commands.command("baseline")
@handles_errors
def baseline_cmd(
    file: Path = typer.Argument(..., metavar="MODEL.py", help="A model file declaring @rooflight.workload."),
    out: Path = typer.Option(Path("rooflight-baseline.json"), "-o", "--out", help="Baseline file to write."),
    device: str = typer.Option("cpu", "--device", help="Where to count: cpu (default) or meta."),
    param: Optional[List[str]] = ParamOption,
    sweep: Optional[List[str]] = SweepOption,
    no_sweep: bool = NoSweepOption,
    force: bool = ForceOption,
) -> None:
    """Count a model file's workloads and save their intensity, FLOPs and bytes per region and op group."""
    _require_model_file(file)
    check_files([out], force=force)  # refuse now, before counting, to replace a file rooflight did not write
    data = count_model(file, device=device, params=parse_assignments(param or [], many=False),
                       sweeps=parse_assignments(sweep or [], many=True), default_sweep=not no_sweep)
    write_files({out: json.dumps(strict_json(data), indent=1, allow_nan=False)}, force=force)
    con = console()
    for key, p in data["points"].items():
        t = p["total"]
        con.print(esc(f"{key}: {t['flops']:.4g} FLOPs, {t['bytes']:.4g} bytes, intensity "
                      f"{intensity(t['flops'], t['bytes']):.4g} FLOP/B"))
    con.print(f"wrote {esc(str(out))}")


class CheckFormat(str, Enum):
    text = "text"
    json = "json"
    junit = "junit"
    github = "github"


@commands.command("check")
@handles_errors
def check_cmd(
    file: Path = typer.Argument(..., metavar="MODEL.py|PROFILE.json",
                                help="The model file the baseline was made from (counted again), or a profile "
                                     "saved by `rooflight profile` (compared as it is, no re-count)."),
    baseline: Path = typer.Option(Path("rooflight-baseline.json"), "--baseline", "-b", help="Baseline to compare with."),
    max_intensity_drop: str = typer.Option("5%", "--max-intensity-drop", help="Allowed fall of intensity."),
    max_flops_growth: str = typer.Option("5%", "--max-flops-growth", help="Allowed growth of FLOPs."),
    max_bytes_growth: str = typer.Option("5%", "--max-bytes-growth", help="Allowed growth of bytes."),
    device: Optional[str] = typer.Option(None, "--device", help="Where to count (default: the baseline's)."),
    fmt: CheckFormat = typer.Option(CheckFormat.text, "--format",
                                    help="text (a table of every moved entry), json (every compared entry with its "
                                         "values and the tolerances), junit (XML for CI test reports), github "
                                         "(workflow-command annotations)."),
    limit: int = typer.Option(0, "--limit", help="text: print at most this many rows (0: all)."),
    param: Optional[List[str]] = ParamOption,
    sweep: Optional[List[str]] = SweepOption,
    no_sweep: bool = NoSweepOption,
) -> None:
    """Compare counts with a baseline. Exit 0: no regression; 1: intensity fell, or FLOPs or bytes grew, beyond the
    tolerances; 2: a usage error, or a missing, unreadable or mismatched baseline."""
    tol = Tolerances(parse_fraction(max_intensity_drop, "--max-intensity-drop", at_most_one=True),
                     parse_fraction(max_flops_growth, "--max-flops-growth"),
                     parse_fraction(max_bytes_growth, "--max-bytes-growth"))
    if limit < 0:
        raise UsageError(f"--limit {limit}: give 0 (every row) or a positive number")
    if file.suffix == ".json":
        if not file.is_file():
            raise UsageError(f"{file}: no such file")
        if param or sweep or device:
            raise UsageError("--param, --sweep and --device choose what to count: a saved profile is compared as it "
                             "is (drop them, or give the model file)")
        result = check_profile(api.load(file), baseline, tol)
    else:
        _require_model_file(file)
        result = check_model(file, baseline, tol, device=device, params=parse_assignments(param or [], many=False),
                             sweeps=parse_assignments(sweep or [], many=True), default_sweep=not no_sweep)
    if fmt is CheckFormat.json:
        print(json.dumps(strict_json(result.to_dict()), indent=1, allow_nan=False))
    elif fmt is CheckFormat.junit:
        print(result.junit(), end="")
    elif fmt is CheckFormat.github:
        print(result.github(str(file)))
    else:
        print(result.text(limit or None))
    if result.failures:
        raise typer.Exit(1)
    if result.missing_points:
        err_line(BaselineError(f"{baseline} has points not counted now ({', '.join(result.missing_points)}): a "
                               "baseline of other parameters; re-create it, or pass the same --param/--sweep"))
        raise typer.Exit(2)


def _require_model_file(file: Path) -> None:
    if file.is_dir():
        raise UsageError(f"{file} is a folder: give the model file (a .py declaring @rooflight.workload) in it")
    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    if not declares_workloads(file):
        raise UsageError(f"{file} declares no @rooflight.workload; baseline and check need workloads to count")
