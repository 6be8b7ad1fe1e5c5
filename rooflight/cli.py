"""The `rooflight` command: a thin typer layer over the library.

Every command turns a RooflightError into one line on stderr and its exit code (2 for usage
errors); `main()` does the same for click's own usage errors, so no traceback reaches the user.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import RooflightError, UsageError
from .hardware import HardwareDB, load_database, ridge_point
from .math_class import MathClass
from .units import fmt_bandwidth, fmt_bytes, fmt_flops_rate, fmt_hz

app = typer.Typer(
    name="rooflight",
    help="Roofline performance analyzer and bottleneck diagnoser for LLM workloads on GPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
hw_app = typer.Typer(
    help="The hardware-spec database: list GPUs, show one with sources, detect this machine's.",
    no_args_is_help=True,
)
app.add_typer(hw_app, name="hw")


def _console() -> Console:
    """Rich decides the width on a terminal; piped output gets $COLUMNS or 160 so tables stay whole."""
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 160)
    return Console(highlight=False, soft_wrap=False, width=width)


def _click_exceptions():
    """click's exception module(s): typer >= 0.2x vendors click as typer._click."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


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
            err_line(str(err))
            raise typer.Exit(err.exit_code) from None

    return wrapper


HwDirOption = typer.Option(
    None, "--hw-dir", metavar="DIR",
    help="Directory of extra hardware-spec TOML files (may repeat; also $ROOFLIGHT_HW_DIR). "
         "A file whose name matches a built-in GPU replaces it.",
)


def _db(hw_dir: Optional[List[Path]]) -> HardwareDB:
    return load_database(hw_dir or ())


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        print(f"rooflight {__version__}")
        raise typer.Exit(0)


# --------------------------------------------------------------------------- hw


@hw_app.command("list")
@handles_errors
def hw_list(hw_dir: Optional[List[Path]] = HwDirOption) -> None:
    """Table of every GPU in the database: memory, bandwidth, dense bf16 peak, ridge point."""
    db = _db(hw_dir)
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
    _console().print(t)


def _bf16(s) -> str:
    from .hardware import resolve_class

    cls = resolve_class(s, MathClass.BF16_TENSOR)
    text = fmt_flops_rate(s.peak_flops_per_s[cls])
    return text if cls is MathClass.BF16_TENSOR else f"{text} ({cls})"


@hw_app.command("show")
@handles_errors
def hw_show(
    name: str = typer.Argument(..., help="GPU name, forgiving: h100, H100-SXM, 'NVIDIA H100 80GB HBM3', 4090 ..."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Every figure of one GPU with its source, and the derived ridge points."""
    from .render.tables import sources_table, spec_table

    spec = _db(hw_dir).get(name)
    con = _console()
    origin = f"{spec.path} ({spec.origin}"
    origin += f", replaces {spec.overrides})" if spec.overrides else ")"
    con.print(f"[bold]{spec.name}[/bold]  {spec.vendor} {spec.architecture}"
              f"{' ' + spec.die if spec.die else ''}{' ' + spec.form_factor if spec.form_factor else ''}")
    con.print(f"from: {origin}")
    con.print(spec_table(spec))
    con.print(sources_table(spec))
    _print_calibrations(con, spec)


def _print_calibrations(con: Console, spec) -> None:
    """Cached calibrations of this GPU model, beside its datasheet figures."""
    from .calibrate import cache_path, cached, compare
    from .ceilings import from_spec
    from .render.tables import calibration_table

    cals = [c for c in cached() if c.spec_key == spec.key]
    if not cals:
        con.print(f"No calibration of a {spec.name} on this machine: run `rooflight calibrate` on one "
                  "to measure its practical roofs.")
    for cal in cals:
        title = (f"calibrated on {cal.device_name}, torch {cal.torch_version}, {cal.created[:10]} "
                 f"({cache_path(cal.device_name)})")
        con.print(calibration_table(compare(cal, from_spec(spec)), title))


@hw_app.command("detect")
@handles_errors
def hw_detect(hw_dir: Optional[List[Path]] = HwDirOption) -> None:
    """This machine's GPUs (NVML and torch.cuda) mapped to the database; the CPU if there is none."""
    from .detect import detect

    det = detect(_db(hw_dir))
    con = _console()
    if not det.has_gpu:
        con.print("No GPU found: " + "; ".join(det.notes))
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
    con.print(f"CPU: {c.model} ({cores}{c.logical_cores} logical CPUs available, {c.machine})")


# --------------------------------------------------------------------------- report


@app.command("report")
@handles_errors
def report_cmd(
    profile_json: Path = typer.Argument(..., metavar="PROFILE.json", help="A profile saved by rooflight."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report file (default: PROFILE.html beside it)."),
    hw: Optional[str] = typer.Option(None, "--hw", help="GPU to hold it against (default: where it ran; "
                                                        "count-only: this machine's GPU, else H100 SXM)."),
    png: bool = typer.Option(False, "--png", help="Also write the roofline chart as PNG."),
    svg: bool = typer.Option(False, "--svg", help="Also write the roofline chart as SVG."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report file."),
    no_calibration: bool = typer.Option(False, "--datasheet", help="Use datasheet roofs even if calibrated ones "
                                                                   "are cached."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Render a saved profile again (no GPU needed): HTML report, and the chart as PNG/SVG."""
    from .analysis import analyze
    from .io import write_text_atomic
    from .profile import Profile
    from .render.charts import roofline_of, save_figure
    from .render.html import report_html

    prof = Profile.load(profile_json)
    a = analyze(prof, hw, calibrated=not no_calibration, db=_db(hw_dir))
    target = out or profile_json.with_suffix(".html")
    if target.resolve() == profile_json.resolve():
        raise UsageError(f"the report would overwrite the profile {profile_json}; give another -o")
    written = []
    _refuse_overwrite(target, force)
    written.append(write_text_atomic(target, report_html(a)))
    for fmt, wanted in (("png", png), ("svg", svg)):
        if wanted:
            path = target.with_suffix(f".{fmt}")
            _refuse_overwrite(path, force)
            written.append(save_figure(roofline_of(a), path))
    con = _console()
    from .classify import summary

    for region in a.diagnosis.regions:
        con.print(summary(a.diagnosis, region))
    for n in a.notes:
        con.print(f"[dim]note: {n}[/dim]")
    for p in written:
        con.print(f"wrote {p}")


def _refuse_overwrite(path: Path, force: bool) -> None:
    """Files rooflight wrote itself may be replaced; anything else needs --force."""
    if path.exists() and not force and not _written_by_rooflight(path):
        raise UsageError(f"{path} exists and was not written by rooflight; pass --force to overwrite it")


def _written_by_rooflight(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return b"rooflight" in head


# --------------------------------------------------------------------------- calibrate


@app.command("calibrate")
@handles_errors
def calibrate_cmd(
    device: str = typer.Option("auto", "--device", help="cuda, cpu, or auto (the GPU if there is one)."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes: a few seconds, less exact."),
    no_save: bool = typer.Option(False, "--no-save", help="Do not write the result to the cache."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Measure this machine's practical roofs: memory bandwidth, matmul FLOP/s per math class, launch
    overhead, PCIe bandwidth.  Cached per device; the classifier then uses them as the roof."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .calibrate import calibrate, compare, save, steps
    from .ceilings import from_spec
    from .detect import detect
    from .render.tables import calibration_table

    db = _db(hw_dir)
    kind = device if device != "auto" else ("cuda" if _cuda() else "cpu")
    spec = None
    if kind.startswith("cuda"):
        det = detect(db)
        if det.gpus and det.gpus[0].spec_key:
            spec = db.get(det.gpus[0].spec_key)
    con = _console()
    with Progress(TextColumn("[bold]calibrating[/bold] {task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=steps("cuda" if kind.startswith("cuda") else "cpu"))
        cal = calibrate(kind, quick=quick, spec_key=spec.key if spec else "",
                        progress=lambda msg: bar.update(task, advance=1, description=msg))
    title = (f"{cal.device_name}{' (' + spec.name + ')' if spec else ''}: calibrated in {cal.seconds:.1f} s, "
             f"torch {cal.torch_version}")
    con.print(calibration_table(compare(cal, from_spec(spec) if spec else None), title))
    if not no_save:
        con.print(f"saved: {save(cal)}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------- entry point


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry: click's usage errors become one line and exit code 2."""
    mods = _click_exceptions()
    usage = tuple(m.UsageError for m in mods)
    abort = tuple(getattr(m, "Abort") for m in mods if hasattr(m, "Abort")) + (typer.Abort, KeyboardInterrupt)
    other = tuple(m.ClickException for m in mods)
    try:
        rv = app(args=argv, prog_name="rooflight", standalone_mode=False)
    except usage as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # help was shown for a bare group
            sys.exit(0)
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
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
