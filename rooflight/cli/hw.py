"""`rooflight hw list|show|detect`: the hardware-spec database and this machine's GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

from ..calibrate import cache_path, cached, compare_to_datasheet
from ..detect import detect
from ..math_class import MathClass
from ..render.tables import calibration_table, sources_table, spec_table
from ..roofline import from_spec, resolve_class, ridge_point
from ..units import fmt_bandwidth, fmt_bytes, fmt_flops_rate, fmt_hz
from .common import HwDirOption, console, database, handles_errors

app = typer.Typer(
    help="The hardware-spec database: list GPUs, show one with sources, detect this machine's.",
    no_args_is_help=True,
)


@app.command("list")
@handles_errors
def hw_list(hw_dir: Optional[List[Path]] = HwDirOption) -> None:
    """Table of every GPU in the database: memory, bandwidth, dense bf16 peak, ridge point."""
    db = database(hw_dir)
    t = Table(title=f"{len(db)} GPUs in the hardware-spec database (dense peaks)")
    for col, kw in [("GPU", {}), ("key", {"style": "dim"}), ("arch", {}), ("memory", {"justify": "right"}),
                    ("bandwidth", {"justify": "right"}), ("bf16 tensor", {"justify": "right"}),
                    ("fp8", {"justify": "right"}), ("ridge bf16", {"justify": "right"}), ("source", {})]:
        t.add_column(col, no_wrap=True, **kw)
    for s in sorted(db, key=lambda s: (s.vendor, s.name)):
        fp8 = fmt_flops_rate(s.peak_flops_per_s[MathClass.FP8_TENSOR]) if s.has(MathClass.FP8_TENSOR) else "–"
        t.add_row(
            s.name, s.key, s.architecture, f"{fmt_bytes(s.memory_bytes)} {s.memory_type}",
            fmt_bandwidth(s.memory_bytes_per_s), _bf16(s), fp8,
            f"{ridge_point(s, MathClass.BF16_TENSOR):.0f} FLOP/B",
            "user" if s.origin == "user" else "built-in",
        )
    console().print(t)


def _bf16(s) -> str:
    cls = resolve_class(s, MathClass.BF16_TENSOR)
    text = fmt_flops_rate(s.peak_flops_per_s[cls])
    return text if cls is MathClass.BF16_TENSOR else f"{text} ({cls})"


@app.command("show")
@handles_errors
def hw_show(
    name: str = typer.Argument(..., help="GPU name, forgiving: h100, H100-SXM, 'NVIDIA H100 80GB HBM3', 4090 ..."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Every figure of one GPU with its source, and the derived ridge points."""
    spec = database(hw_dir).get(name)
    con = console()
    origin = f"{spec.path} ({spec.origin}"
    origin += f", replaces {spec.overrides})" if spec.overrides else ")"
    con.print(f"[bold]{esc(spec.name)}[/bold]  " + esc(f"{spec.vendor} {spec.architecture}"
              f"{' ' + spec.die if spec.die else ''}{' ' + spec.form_factor if spec.form_factor else ''}"))
    con.print(f"from: {esc(origin)}")
    con.print(spec_table(spec))
    con.print(sources_table(spec))
    _print_calibrations(con, spec)


def _print_calibrations(con: Console, spec) -> None:
    """Cached calibrations of this GPU model, beside its datasheet figures."""
    cals = [c for c in cached() if c.spec_key == spec.key]
    if not cals:
        con.print(f"No calibration of a {esc(spec.name)} on this machine: run `rooflight calibrate` on one "
                  "to measure its practical roofs.")
    for cal in cals:
        title = (f"calibrated on {cal.device_name}, torch {cal.torch_version}, {cal.created[:10]} "
                 f"({cache_path(cal.device_name)})")
        con.print(calibration_table(compare_to_datasheet(cal, from_spec(spec)), title))


@app.command("detect")
@handles_errors
def hw_detect(hw_dir: Optional[List[Path]] = HwDirOption) -> None:
    """This machine's GPUs (NVML and torch.cuda) mapped to the database; the CPU if there is none."""
    det = detect(database(hw_dir))
    con = console()
    if not det.has_gpu:
        con.print("No GPU found: " + esc("; ".join(det.notes)))
    for g in det.gpus:
        t = Table(title=f"GPU {g.index}: {g.name}", show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        rows = [
            ("database spec", f"{g.spec_name} ({g.spec_key})" if g.spec_key else f"none: {g.match_note}"),
            ("memory", fmt_bytes(g.memory_bytes) if g.memory_bytes else "–"),
            ("SMs", str(g.multiprocessors or "–")),
            ("compute capability", g.compute_capability or "–"),
            ("max SM clock", fmt_hz(g.max_sm_clock_hz) if g.max_sm_clock_hz else "–"),
            ("max memory clock", fmt_hz(g.max_memory_clock_hz) if g.max_memory_clock_hz else "–"),
            ("memory bus", f"{g.memory_bus_width_bits} bit" if g.memory_bus_width_bits else "–"),
            ("bandwidth from clocks", fmt_bandwidth(g.bandwidth_from_clocks) if g.bandwidth_from_clocks else "–"),
            ("L2", fmt_bytes(g.l2_bytes) if g.l2_bytes else "–"),
            ("PCIe link (max)", f"gen {g.pcie_generation} x{g.pcie_lanes}" if g.pcie_generation else "–"),
            ("driver", g.driver_version or "–"),
        ]
        for k, v in rows:
            t.add_row(k, v)
        con.print(t)
    c = det.cpu
    cores = f"{c.physical_cores} cores, " if c.physical_cores else ""
    con.print(esc(f"CPU: {c.model} ({cores}{c.logical_cores} logical CPUs available, {c.machine})"))
