"""`rooflight calibrate`: measure this machine's practical roofs and cache them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.markup import escape as esc

from ..calibrate import calibrate, compare_to_datasheet, save, steps
from ..detect import detect
from ..errors import UsageError
from ..interconnect import check_ranks
from ..render.tables import calibration_table, curve_table
from ..roofline import from_spec
from .common import HwDirOption, console, database, handles_errors, progress

commands = typer.Typer()


@commands.command("calibrate")
@handles_errors
def calibrate_cmd(
    device: str = typer.Option("auto", "--device", help="cuda, cpu, or auto (the GPU if there is one)."),
    quick: bool = typer.Option(False, "--quick", metavar="", help="Smaller sizes: a few seconds, less exact."),
    no_save: bool = typer.Option(False, "--no-save", metavar="", help="Do not write the result to the cache."),
    nproc: Optional[int] = typer.Option(None, "--nproc", metavar="N",
                                        help="Also measure the interconnect between N ranks of this machine: "
                                             "all-reduce and all-gather bus bandwidth over message sizes (the "
                                             "curve; its plateau is the link's roof), GPU-to-GPU copies (NCCL "
                                             "between GPUs, one a rank; gloo between CPU processes)."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Measure this machine's practical roofs: memory bandwidth, matmul FLOP/s per math class, launch
    overhead, PCIe bandwidth, and with --nproc the interconnect (collectives' bus bandwidth, the
    link roof of communication-bound ops).  Cached per device; the classifier then uses them."""
    db = database(hw_dir)
    if device not in ("auto", "cuda", "cpu") and not device.startswith("cuda:"):
        raise UsageError(f"--device {device!r}: give cuda, cpu or auto")
    kind = device if device != "auto" else ("cuda" if _cuda() else "cpu")
    if nproc is not None:
        check_ranks(nproc, kind)  # before the minutes of the GPU's own calibration
    spec = None
    if kind.startswith("cuda"):
        det = detect(db)
        if det.gpus and det.gpus[0].spec_key:
            spec = db.get(det.gpus[0].spec_key)
    con = console()
    with progress("calibrating", elapsed_only=True) as bar:
        task = bar.add_task("", total=steps("cuda" if kind.startswith("cuda") else "cpu", nproc))
        cal = calibrate(kind, quick=quick, spec_key=spec.key if spec else "", nproc=nproc,
                        progress=lambda msg: bar.update(task, advance=1, description=msg))
    title = (f"{cal.device_name}{' (' + spec.name + ')' if spec else ''}: calibrated in {cal.seconds:.1f} s, "
             f"torch {cal.torch_version}")
    rows = compare_to_datasheet(cal, from_spec(spec) if spec else None)
    con.print(calibration_table([r for r in rows if not r["figure"].startswith("curve.")], title))
    if any(r["figure"].startswith("curve.") for r in rows):
        con.print(curve_table(rows))
    if not no_save:
        con.print(f"saved: {esc(str(save(cal)))}")


def _cuda() -> bool:
    return torch.cuda.is_available()
