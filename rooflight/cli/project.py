"""`rooflight project`: predict a saved profile's time on other GPUs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape as esc
from rich.table import Table

from .. import api
from ..errors import UsageError
from ..files import OutputDir
from ..profile_data import strict_json
from ..render.charts import figure_bytes
from ..render.outputs import slug
from ..render.projection import outer_regions, projection_roofline
from ..units import fmt_seconds
from .common import ForceOption, HwDirOption, console, database, handles_errors

commands = typer.Typer()


def _share(x: float) -> str:
    return "" if x is None or math.isnan(x) else f" {x:.0%}"


@commands.command("project")
@handles_errors
def project_cmd(
    profile_json: Path = typer.Argument(..., metavar="PROFILE.json", help="A profile saved by rooflight "
                                                                         "(timed or count-only)."),
    hw: str = typer.Option("all", "--hw", help="Target GPUs, comma-separated (a10,4090,7900xtx), or 'all' "
                                               "for every GPU in the database."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Also write a roofline chart per target "
                                                                 "(PNG) and projection.json into DIR."),
    measured: bool = typer.Option(True, "--measured/--default-efficiency", metavar="",
                                  help="Carry each op's measured efficiency over (timed profiles), or use "
                                       "the default efficiencies."),
    kernel_fixed_us: Optional[float] = typer.Option(None, "--kernel-fixed-us", metavar="US",
                                                    help="Fixed cost per kernel in µs (default 1.5, 2.6 for "
                                                         "GEMM/attention; 0: none)."),
    force: bool = ForceOption,
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Predict a profile's time on other GPUs: per region and in total, on each target.

    \b
    rooflight project run.json --hw a10,4090,7900xtx
    rooflight project run.json --hw all -o projections/
    """
    if kernel_fixed_us is not None and kernel_fixed_us < 0:
        raise UsageError(f"--kernel-fixed-us must be 0 or more (got {kernel_fixed_us})")
    db = database(hw_dir)
    prof = api.load(profile_json)
    proj = api.project(prof, hw, db=db, use_measured=measured,
                   kernel_fixed_s=None if kernel_fixed_us is None else kernel_fixed_us * 1e-6)
    regions = outer_regions(proj, limit=6)
    con = console()
    n = len(proj.targets)
    # (each target a single GPU: "on 2 GPUs" read as one run spread over two)
    t = Table(title=f"{prof.workload or profile_json.name}: predicted time on each of {n} GPUs" if n > 1
              else f"{prof.workload or profile_json.name}: predicted time on one GPU")
    t.add_column("GPU", no_wrap=True)
    t.add_column("predicted", justify="right", no_wrap=True)
    for r in regions:
        t.add_column(esc(r), justify="right", no_wrap=True)
    if proj.timed:
        t.add_column(f"vs {esc(proj.source)}", justify="right", no_wrap=True)
    t.add_column("dominant", no_wrap=True)
    for tp in proj.targets:
        row = [esc(tp.name), fmt_seconds(tp.total_s)] + [fmt_seconds(tp.regions.get(r, 0.0)) for r in regions]
        if proj.timed:
            row.append(f"{proj.source_total_s / tp.total_s:.2f}x" if tp.total_s > 0 else "–")
        row.append(f"{tp.dominant_label}{_share(tp.dominant_share)}")
        t.add_row(*row)
    if proj.timed:
        idle = "" if math.isnan(proj.source_idle_s) else (
            f"; GPU idle there {fmt_seconds(proj.source_idle_s)}, left out of every prediction")
        con.print(esc(f"source: measured on {proj.source}, {fmt_seconds(proj.source_total_s)} of GPU time{idle}"))
    else:
        con.print(esc(f"source: {proj.source} ({prof.device_name or prof.device})"))
    con.print(esc(f"model: {proj.model}; {proj.kernel_fixed}"))
    con.print(t)
    for n in proj.notes:
        con.print(f"[dim]note: {esc(n)}[/dim]")
    for n in _merged_target_notes(proj.targets):
        con.print(f"[dim]note: {esc(n)}[/dim]")
    if out is not None:
        od = OutputDir(out, force=force)
        for tp in proj.targets:
            od.add(f"projection_{slug(tp.key)}.png", figure_bytes(projection_roofline(proj, tp), "png"))
        od.add("projection.json", json.dumps(strict_json({"writer": "rooflight", **proj.to_dict()}), indent=1,
                                             allow_nan=False))
        for p in od.commit():
            con.print(f"wrote {esc(str(p))}")


def _merged_target_notes(targets) -> list[str]:
    """Each target's notes, the ones that differ only by the GPU's name said once for all of
    them ("int32 ops are held against the fp32 roof on the A10, L4: ..."), in first-seen order."""
    merged: dict[str, list[str]] = {}
    for tp in targets:
        for n in tp.notes:
            merged.setdefault(n.replace(tp.name, "\0"), []).append(tp.name)
    return [key.replace("\0", ", ".join(names)) for key, names in merged.items()]

