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
from rich.markup import escape as esc
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
            tb = getattr(err, "user_traceback", "")
            if tb:
                print(tb, file=sys.stderr)
            err_line(str(err))
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_line("interrupted: nothing was written, earlier reports are untouched")
            raise typer.Exit(130) from None

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
    con.print(f"[bold]{esc(spec.name)}[/bold]  " + esc(f"{spec.vendor} {spec.architecture}"
              f"{' ' + spec.die if spec.die else ''}{' ' + spec.form_factor if spec.form_factor else ''}"))
    con.print(f"from: {esc(origin)}")
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
        con.print(f"No calibration of a {esc(spec.name)} on this machine: run `rooflight calibrate` on one "
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


# --------------------------------------------------------------------------- profile


OutOption = typer.Option(Path("rooflight-out"), "-o", "--out", help="Directory for the reports (created).")


@app.command("profile")
@handles_errors
def profile_cmd(
    file: Path = typer.Argument(..., metavar="FILE.py", help="A model file declaring @rooflight.workload, or any "
                                                               "script (run as __main__)."),
    script_args: Optional[List[str]] = typer.Argument(None, metavar="[-- SCRIPT ARGS]",
                                                      help="Arguments for a script, after --."),
    hw: Optional[str] = typer.Option(None, "--hw", help="GPU to compare against (default: the one detected; "
                                                        "count-only on a CPU machine: H100 SXM)."),
    out: Path = OutOption,
    fmt: str = typer.Option("html,json,png", "--format", help="Comma-separated: html, json, png, svg, csv."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cpu or meta (meta: count-only). "
                                                                "Default: cuda if present, else cpu."),
    count_only: bool = typer.Option(False, "--count-only", help="Count FLOPs and bytes only; no timing, no GPU."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up runs (default 3; scripts 0)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed runs (default 10; scripts 1)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16, fp32 ... for workloads taking a dtype."),
    param: Optional[List[str]] = typer.Option(None, "--param", metavar="NAME=VALUE", help="Set a workload parameter."),
    sweep: Optional[List[str]] = typer.Option(None, "--sweep", metavar="NAME=V1,V2", help="Sweep a parameter "
                                                                                         "(repeatable: crossed)."),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="Ignore the workloads' own default sweeps."),
    workload: Optional[List[str]] = typer.Option(None, "--workload", "-w", help="Only these workloads."),
    flush_l2: bool = typer.Option(False, "--flush-l2", help="Flush L2 before each timed run (cold cache)."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="Time the workload replayed as a CUDA graph."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the workloads' correctness checks."),
    force: bool = typer.Option(False, "--force", help="Overwrite files in --out that rooflight did not write."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Profile a model file's workloads (with sweeps), or run any script under rooflight.

    \b
    rooflight profile kernels/llama.py                         # declared workloads, default sweeps
    rooflight profile kernels/gemm.py --sweep m=1,64,4096      # choose the points
    rooflight profile kernels/llama.py --param config=llama-2-7b --device meta --count-only
    rooflight profile train.py -- --steps 10                   # a plain script, its arguments after --
    """
    from .outputs import OutputDir, parse_formats
    from .runner import Options, default_device, profile_script, profile_workloads
    from .workloads import declares_workloads, load_model_file, parse_assignments, parse_dtype

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    formats = parse_formats(fmt)
    db = _db(hw_dir)
    if hw:
        db.get(hw)  # an unknown GPU name is an error before anything runs
    dev = device or default_device()
    is_model = declares_workloads(file)
    opts = Options(device=dev, count_only=count_only or dev == "meta",
                   warmup=warmup if warmup is not None else (3 if is_model else 0),
                   repeats=repeats if repeats is not None else (10 if is_model else 1),
                   dtype=parse_dtype(dtype), flush_l2=flush_l2, cuda_graph=cuda_graph, check=not no_check)
    out_dir = OutputDir(out, force=force)
    con = _console()
    if is_model:
        if script_args:
            raise UsageError("arguments after -- are for scripts; a model file takes --param NAME=VALUE and --sweep")
        workloads = load_model_file(file)
        if workload:
            known = {w.name for w in workloads}
            unknown = [w for w in workload if w not in known]
            if unknown:
                raise UsageError(f"{file.name} has no workload {', '.join(unknown)} (workloads: {', '.join(sorted(known))})")
            workloads = [w for w in workloads if w.name in workload]
        params, sweeps = parse_assignments(param or [], many=False), parse_assignments(sweep or [], many=True)
        with _progress("profiling") as bar:
            task = bar.add_task("", total=None)
            results = profile_workloads(
                file, workloads, opts, params=params, sweeps=sweeps, default_sweep=not no_sweep,
                progress=lambda name, i, n: bar.update(task, total=n, completed=i, description=name))
    else:
        for flag, value in (("--param", param), ("--sweep", sweep), ("--workload", workload), ("--dtype", dtype)):
            if value:
                raise UsageError(f"{flag} applies to model files with @rooflight.workload; {file.name} is a script")
        with _progress("running") as bar:
            bar.add_task(file.name, total=None)
            results = [profile_script(file, script_args or [], opts)]
    _write_results(con, results, out_dir, formats, hw, db, file)
    failed = [r for r in results if r.check_passed is False]
    if failed:
        raise RooflightError("correctness check failed for " + ", ".join(
            f"{r.workload}{' [' + r.label + ']' if r.label else ''}" for r in failed)
            + ": the profiled kernels compute the wrong result (see above)")


def _progress(verb: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"[bold]{verb}[/bold] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                    disable=not sys.stderr.isatty())


def _write_results(con: Console, results, out_dir, formats, hw, db, source: Path) -> None:
    """Analyse every result, print the terminal summary, then write all files at once."""
    from .analysis import analyze
    from .classify import summary
    from .outputs import slug
    from .render.charts import figure_bytes, roofline_of, sweep_of
    from .render.html import report_html

    analyses = []
    for r in results:
        a = analyze(r.profile, hw, db=db)
        analyses.append(a)
        name = slug(f"{r.workload}__{r.label}" if r.label else r.workload)
        head = f"[bold]{esc(r.workload)}[/bold]{esc(' [' + r.label + ']') if r.label else ''}"
        con.print(f"\n{head} on {esc(a.spec.name if a.spec else a.ceilings.name)}")
        for region in a.diagnosis.regions:
            con.print("  " + esc(summary(a.diagnosis, region)))
        con.print(_top_table(a))
        if a.advice:
            con.print(f"  advice: [bold]{esc(a.advice[0].recommendation)}[/bold] — {esc(a.advice[0].effect)}")
        if r.check is not None:
            ok = r.check[0] <= r.check[1]
            con.print(f"  correctness: {'[green]pass[/green]' if ok else '[red]FAIL[/red]'} (relative error "
                      f"{r.check[0]:.2e}, tolerance {r.check[1]:.0e})")
        for n in (*r.notes, *a.notes):
            con.print(f"  [dim]note: {esc(n)}[/dim]")
        extra = []
        if r.check is not None:
            extra.append(("Correctness", f"<p>relative error {r.check[0]:.3e} against a float64 reference "
                                         f"(tolerance {r.check[1]:.0e}): {'pass' if r.check[0] <= r.check[1] else 'FAIL'}</p>"))
        if "json" in formats:
            out_dir.add(f"{name}.json", r.profile.to_json())
        if "html" in formats:
            out_dir.add(f"{name}.html", report_html(a, extra_sections=extra))
        for f in ("png", "svg"):
            if f in formats:
                out_dir.add(f"{name}.{f}", figure_bytes(roofline_of(a), f))
        if "csv" in formats:
            out_dir.add(f"{name}.csv", _ops_csv(a))
    by_workload: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        by_workload.setdefault(r.workload, []).append(i)
    for w, idx in by_workload.items():
        if len(idx) > 1:
            fig_fmts = [f for f in ("png", "svg") if f in formats] or (["png"] if "html" in formats else [])
            for f in fig_fmts:
                fig = sweep_of([analyses[i] for i in idx], [results[i].label or "defaults" for i in idx],
                               title=f"{w}: sweep across the roofline")
                out_dir.add(f"{slug(w)}__sweep.{f}", figure_bytes(fig, f))
    if "html" in formats and len(results) > 1:
        out_dir.add("index.html", _index_html(results, analyses, source))
    for p in out_dir.commit():
        con.print(f"wrote {esc(str(p))}")


def _top_table(a, n: int = 5) -> Table:
    from .units import fmt_bytes, fmt_flops, fmt_flops_rate, fmt_seconds

    t = Table(show_edge=False, pad_edge=False, box=None)
    for col in ("op group", "time" if a.timed else "roofline time", "FLOPs", "bytes", "FLOP/B", "attained", "label"):
        t.add_column(col, no_wrap=True)
    for g in a.groups[:n]:
        att = fmt_flops_rate(g.flops_per_s) if a.timed and g.flops_per_s == g.flops_per_s else "–"
        t.add_row(esc(g.name[:60]), fmt_seconds(g.seconds), fmt_flops(g.flops), fmt_bytes(g.bytes),
                  f"{g.intensity:.3g}", att, g.label)
    return t


def _ops_csv(a) -> str:
    df = a.profile.df.copy()
    df["label"] = [str(a.diagnosis.verdicts[i].label) for i in df.index]
    df["attained"] = [a.diagnosis.verdicts[i].attained for i in df.index]
    df["evidence"] = [a.diagnosis.verdicts[i].evidence for i in df.index]
    return df.to_csv()


def _index_html(results, analyses, source: Path) -> str:
    import html as _html

    from .classify import summary
    from .outputs import slug
    from .render.charts import figure_bytes, sweep_of
    from .render.html import _CSS, _img

    rows = []
    for r, a in zip(results, analyses):
        name = slug(f"{r.workload}__{r.label}" if r.label else r.workload)
        check = "" if r.check is None else ("pass" if r.check[0] <= r.check[1] else "FAIL")
        rows.append(f"<tr><td><a href='{_html.escape(name)}.html'>{_html.escape(r.workload)}</a></td>"
                    f"<td>{_html.escape(r.label or 'defaults')}</td><td>{_html.escape(summary(a.diagnosis))}</td>"
                    f"<td>{_html.escape(check)}</td></tr>")
    charts = []
    seen: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        seen.setdefault(r.workload, []).append(i)
    for w, idx in seen.items():
        if len(idx) > 1:
            fig = sweep_of([analyses[i] for i in idx], [results[i].label or "defaults" for i in idx],
                           title=f"{w}: sweep across the roofline")
            charts.append(f"<h2>{_html.escape(w)}</h2>{_img(fig, w + ' sweep')}")
    _ = figure_bytes
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>rooflight: {_html.escape(source.name)}"
            f"</title><style>{_CSS}</style></head><body><h1>rooflight: {_html.escape(source.name)}</h1>"
            "<table><thead><tr><th>workload</th><th>point</th><th>summary</th><th>check</th></tr></thead><tbody>"
            f"{''.join(rows)}</tbody></table><div class=charts>{''.join(charts)}</div></body></html>")


# --------------------------------------------------------------------------- baseline / check


@app.command("baseline")
@handles_errors
def baseline_cmd(
    file: Path = typer.Argument(..., metavar="MODEL.py", help="A model file declaring @rooflight.workload."),
    out: Path = typer.Option(Path("rooflight-baseline.json"), "-o", "--out", help="Baseline file to write."),
    device: str = typer.Option("cpu", "--device", help="Where to count: cpu (default) or meta."),
    param: Optional[List[str]] = typer.Option(None, "--param", metavar="NAME=VALUE"),
    sweep: Optional[List[str]] = typer.Option(None, "--sweep", metavar="NAME=V1,V2"),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="Ignore the workloads' own default sweeps."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file that is not a rooflight baseline."),
) -> None:
    """Count a model file's workloads and save their intensity, FLOPs and bytes per region and op group."""
    import json as _json

    from .check import count_model
    from .io import write_text_atomic
    from .workloads import parse_assignments

    _require_model_file(file)
    if out.exists() and not force and not _written_by_rooflight(out):
        raise UsageError(f"{out} exists and is not a rooflight baseline; pass --force to overwrite it")
    data = count_model(file, device=device, params=parse_assignments(param or [], many=False),
                       sweeps=parse_assignments(sweep or [], many=True), default_sweep=not no_sweep)
    write_text_atomic(out, _json.dumps(data, indent=1))
    con = _console()
    for key, p in data["points"].items():
        t = p["total"]
        con.print(esc(f"{key}: {t['flops']:.4g} FLOPs, {t['bytes']:.4g} bytes, intensity {t['intensity']:.4g} FLOP/B"))
    con.print(f"wrote {esc(str(out))}")


@app.command("check")
@handles_errors
def check_cmd(
    file: Path = typer.Argument(..., metavar="MODEL.py", help="The model file the baseline was made from."),
    baseline: Path = typer.Option(Path("rooflight-baseline.json"), "--baseline", "-b", help="Baseline to compare with."),
    max_intensity_drop: str = typer.Option("5%", "--max-intensity-drop", help="Allowed fall of intensity."),
    max_flops_growth: str = typer.Option("5%", "--max-flops-growth", help="Allowed growth of FLOPs."),
    max_bytes_growth: str = typer.Option("5%", "--max-bytes-growth", help="Allowed growth of bytes."),
    device: Optional[str] = typer.Option(None, "--device", help="Where to count (default: the baseline's)."),
    param: Optional[List[str]] = typer.Option(None, "--param", metavar="NAME=VALUE"),
    sweep: Optional[List[str]] = typer.Option(None, "--sweep", metavar="NAME=V1,V2"),
    no_sweep: bool = typer.Option(False, "--no-sweep"),
) -> None:
    """Count again and fail (exit 1) when intensity fell, or FLOPs or bytes grew, beyond the tolerances."""
    from .check import Tolerances, check_model, parse_fraction
    from .workloads import parse_assignments

    _require_model_file(file)
    tol = Tolerances(parse_fraction(max_intensity_drop, "--max-intensity-drop"),
                     parse_fraction(max_flops_growth, "--max-flops-growth"),
                     parse_fraction(max_bytes_growth, "--max-bytes-growth"))
    result = check_model(file, baseline, tol, device=device, params=parse_assignments(param or [], many=False),
                         sweeps=parse_assignments(sweep or [], many=True), default_sweep=not no_sweep)
    print(result.text())
    if not result.ok:
        raise typer.Exit(1)


def _require_model_file(file: Path) -> None:
    from .workloads import declares_workloads

    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    if not declares_workloads(file):
        raise UsageError(f"{file} declares no @rooflight.workload; baseline and check need workloads to count")


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
    project_to: Optional[str] = typer.Option(None, "--project", metavar="GPUS",
                                             help="Add a projection onto other GPUs: comma-separated names, or "
                                                  "'all' for every GPU in the database."),
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
    extra = []
    if project_to:
        from .project import project
        from .render.projection import projection_html

        extra.append(("Projected onto other GPUs", projection_html(project(prof, project_to, db=_db(hw_dir)))))
    written = []
    _refuse_overwrite(target, force)
    written.append(write_text_atomic(target, report_html(a, extra_sections=extra)))
    for fmt, wanted in (("png", png), ("svg", svg)):
        if wanted:
            path = target.with_suffix(f".{fmt}")
            _refuse_overwrite(path, force)
            written.append(save_figure(roofline_of(a), path))
    con = _console()
    from .classify import summary

    for region in a.diagnosis.regions:
        con.print(esc(summary(a.diagnosis, region)))
    for n in a.notes:
        con.print(f"[dim]note: {esc(n)}[/dim]")
    for p in written:
        con.print(f"wrote {esc(str(p))}")


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
                  console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("", total=steps("cuda" if kind.startswith("cuda") else "cpu"))
        cal = calibrate(kind, quick=quick, spec_key=spec.key if spec else "",
                        progress=lambda msg: bar.update(task, advance=1, description=msg))
    title = (f"{cal.device_name}{' (' + spec.name + ')' if spec else ''}: calibrated in {cal.seconds:.1f} s, "
             f"torch {cal.torch_version}")
    con.print(calibration_table(compare(cal, from_spec(spec) if spec else None), title))
    if not no_save:
        con.print(f"saved: {esc(str(save(cal)))}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


from .cli_extra import register as _register_extra  # noqa: E402  (it needs the app and helpers above)

_register_extra(app)

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
