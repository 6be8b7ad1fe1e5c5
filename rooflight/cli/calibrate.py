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
from ..render.tables import calibration_table
from ..roofline import from_spec
from .common import HwDirOption, console, database, handles_errors, progress

commands = typer.Typer()


@commands.command("calibrate")
@handles_errors
def calibrate_cmd(
    device: str = typer.Option("auto", "--device", help="cuda, cpu, or auto (the GPU if there is one)."),
    quick: bool = typer.Option(False, "--quick", metavar="", help="Smaller sizes: a few seconds, less exact."),
    no_save: bool = typer.Option(False, "--no-save", metavar="", help="Do not write the result to the cache."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Measure this machine's practical roofs: memory bandwidth, matmul FLOP/s per math class, launch
    overhead, PCIe bandwidth.  Cached per device; the classifier then uses them as the roof."""
    db = database(hw_dir)
    if device not in ("auto", "cuda", "cpu") and not device.startswith("cuda:"):
        raise UsageError(f"--device {device!r}: give cuda, cpu or auto")
    kind = device if device != "auto" else ("cuda" if _cuda() else "cpu")
    spec = None
    if kind.startswith("cuda"):
        det = detect(db)
        if det.gpus and det.gpus[0].spec_key:
            spec = db.get(det.gpus[0].spec_key)
    con = console()
    with progress("calibrating", elapsed_only=True) as bar:
        task = bar.add_task("", total=steps("cuda" if kind.startswith("cuda") else "cpu"))
        cal = calibrate(kind, quick=quick, spec_key=spec.key if spec else "",
                        progress=lambda msg: bar.update(task, advance=1, description=msg))
    title = (f"{cal.device_name}{' (' + spec.name + ')' if spec else ''}: calibrated in {cal.seconds:.1f} s, "
             f"torch {cal.torch_version}")
    con.print(calibration_table(compare_to_datasheet(cal, from_spec(spec) if spec else None), title))
    if not no_save:
        con.print(f"saved: {esc(str(save(cal)))}")


def _cuda() -> bool:
    return torch.cuda.is_available()
