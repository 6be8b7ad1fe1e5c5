"""`rooflight profile` (a model file's workloads, or any script) and `rooflight report` (a saved
profile rendered again, no GPU needed)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape as esc

from .. import api
from ..analysis import training_text
from ..errors import RooflightError, UsageError
from .. import timing as _timing
from ..files import OutputDir, check_files, html_target, parse_formats, write_files
from ..render.charts import figure_bytes, roofline_of
from ..render.counters import counters_table
from ..render.html import report_html
from ..render.outputs import ops_csv, slug
from ..render.projection import projection_html
from ..render.steps import headline_text, phase_summary, steps_table, summary_lines
from ..render.tables import groups_table
from ..runner import (CounterRequest, Options, PointFailed, check_counters, default_device, profile_script,
                      profile_workloads, script_with_counters)
from ..steps import parse_select
from ..workloads import declares_workloads, load_model_file, parse_assignments, parse_dtype
from ..profile_data import strict_json
from .common import (BOOL_WORDS, ForceOption, HwDirOption, NoSweepOption, ParamOption, SweepOption, console, database,
                     handles_errors, progress)

commands = typer.Typer()


OutOption = typer.Option(Path("rooflight-out"), "-o", "--out", help="Directory for the reports (created).")


def check_script(file: Path) -> None:
    """The file `rooflight profile` runs must be a Python file; a folder, a saved profile or a
    notebook gets a one-line error that says what to give instead."""
    if file.is_dir():
        raise UsageError(f"{file} is a folder: give the Python file to profile (a model file or a script in it)")
    if not file.is_file():
        raise UsageError(f"{file}: no such file")
    if file.suffix.lower() == ".json":
        raise UsageError(f"{file} is a JSON file, not a script: a profile saved by rooflight is rendered again with "
                         f"`rooflight report {file}` and compared with `rooflight diff A.json B.json`")
    if file.suffix.lower() == ".ipynb":
        raise UsageError(f"{file} is a notebook: call rooflight.profile(fn) in one of its cells, or export it as a "
                         f"script (jupyter nbconvert --to script {file.name}) and profile that")


@commands.command("profile")
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
    count_only: bool = typer.Option(False, "--count-only", metavar="", help="Count FLOPs and bytes only; no timing, no GPU."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up runs (default 3; scripts 0)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed runs (default 10; scripts 1)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16, fp32 ... for workloads taking a dtype."),
    param: Optional[List[str]] = ParamOption,
    sweep: Optional[List[str]] = SweepOption,
    no_sweep: bool = NoSweepOption,
    workload: Optional[List[str]] = typer.Option(None, "--workload", "-w", help="Only these workloads."),
    flush_l2: bool = typer.Option(False, "--flush-l2", metavar="", help="Flush L2 before each timed run (cold cache)."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", metavar="", help="Time the workload replayed as a CUDA graph."),
    no_check: bool = typer.Option(False, "--no-check", metavar="", help="Skip the workloads' correctness checks."),
    steps: Optional[str] = typer.Option(None, "--steps", metavar="N|A:B|A:",
                                        help="Scripts: the steps the headline describes, 1-based and inclusive "
                                             "(default: all but the first of each kind, the warm-up)."),
    single_pass: bool = typer.Option(False, "--single-pass", metavar="", help="Scripts: run the body once, counted and timed "
                                                                  "together (for scripts with side effects)."),
    counters: bool = typer.Option(False, "--counters", metavar="", help="Also read the GPU's hardware counters (Nsight Compute, "
                                                            "one more run): executed FLOPs, DRAM and L2 bytes beside "
                                                            "the counted ones.  Each distinct call (op and "
                                                            "argument shapes) is measured once, its repeats (a "
                                                            "model's layers) shown with its counters."),
    every_kernel: bool = typer.Option(False, "--every-kernel", metavar="",
                                      help="With --counters: replay every kernel of the run, repeats included."),
    nproc: Optional[int] = typer.Option(None, "--nproc", metavar="N",
                                        help="Run N ranks on this machine, as torchrun does (RANK, WORLD_SIZE, a "
                                             "rendezvous; gloo on the CPU, nccl on GPUs): one profile per rank in "
                                             "OUT/rank<k>, and the collectives of every rank side by side."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="Print one line per workload point (and "
                                                                        "what was written)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Print every op group and every piece "
                                                                          "of advice."),
    trace: Optional[Path] = typer.Option(None, "--trace", metavar="DIR",
                                         help="Keep the profiler's traces (Chrome trace JSON: open them in Perfetto "
                                              "or Holistic Trace Analysis) in DIR, one per timed pass (GPU runs)."),
    force: bool = ForceOption,
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Profile a model file's workloads (with sweeps), or run any script under rooflight.

    \b
    rooflight profile kernels/llama.py                         # declared workloads, default sweeps
    rooflight profile kernels/gemm.py --sweep m=1,64,4096      # choose the points
    rooflight profile kernels/llama.py --param config=llama-2-7b --device meta --count-only
    rooflight profile train.py -- --steps 10                   # a plain script, its arguments after --
    rooflight profile generate.py --steps 3:                   # the headline: steps 3 onward

    A script's body runs once to count it (--count-only); timed on a GPU, 1 + 2 x --repeats times
    (a counted pass, then --repeats under the profiler and --repeats without it: 3 by default), on
    the CPU 1 + 2 x --repeats (an untimed first run, then as on a GPU: 3 by default), or 2 x --repeats
    plus --warmup runs when a warm-up is asked for; --single-pass runs it once
    (kernel times from that pass, host times inflated by the capture, and said so).  Its run is cut into setup, steps (each call of
    the model, with what follows it: loss, backward, optimizer) and teardown; the headline
    describes the steps, not the setup.
    """
    check_script(file)
    formats = parse_formats(fmt)
    if every_kernel and not counters:
        raise UsageError("--every-kernel says how the counter pass measures: add --counters")
    OutputDir(out, force=force).preflight()  # a destination that cannot take the results fails now, not after the run
    if nproc is not None:
        return _profile_ranks(file, nproc, out, device, count_only, force)
    db = database(hw_dir)
    if hw:
        db.get(hw)  # an unknown GPU name is an error before anything runs
    dev = device or default_device()
    is_model = declares_workloads(file)
    opts = Options(device=dev, count_only=count_only or dev == "meta",
                   warmup=warmup if warmup is not None else (3 if is_model else 0),
                   repeats=repeats if repeats is not None else (10 if is_model else 1),
                   dtype=parse_dtype(dtype), flush_l2=flush_l2, cuda_graph=cuda_graph, check=not no_check,
                   select_steps=parse_select(steps) if steps else None, single_pass=single_pass)
    con = console()
    wanted = CounterRequest(one_of_each=not every_kernel) if counters else None
    if wanted is not None:
        check_counters(opts)
    if trace is not None:
        if opts.count_only or not dev.startswith("cuda"):
            raise UsageError("--trace keeps the GPU profiler's traces: it needs a timed run on a CUDA GPU (CPU runs are "
                             "timed by the wall clock, not the profiler; drop --count-only / --device cpu)")
        if trace.exists() and not trace.is_dir():
            raise UsageError(f"--trace {trace}: a file is in the way; give a directory")
    point_failure = None
    with (_timing.keep_traces() if trace is not None else contextlib.nullcontext([])) as kept:
        if is_model:
            if script_args:
                hint = (f" ('{script_args[0]}' after a flag? flags such as --count-only take no value)"
                        if script_args[0].lower() in BOOL_WORDS else "")
                raise UsageError("arguments after -- are for scripts; a model file takes --param NAME=VALUE and --sweep"
                                 + hint)
            if steps or single_pass:
                raise UsageError("--steps and --single-pass apply to scripts; each workload point of a model file is "
                                 "one step already")
            workloads = load_model_file(file)
            if workload:
                known = {w.name for w in workloads}
                unknown = [w for w in workload if w not in known]
                if unknown:
                    raise UsageError(f"{file.name} has no workload {', '.join(unknown)} (workloads: {', '.join(sorted(known))})")
                workloads = [w for w in workloads if w.name in workload]
            params, sweeps = parse_assignments(param or [], many=False), parse_assignments(sweep or [], many=True)
            with progress("profiling") as bar:
                task = bar.add_task("", total=None)
                try:
                    results = profile_workloads(
                        file, workloads, opts, params=params, sweeps=sweeps, default_sweep=not no_sweep,
                        counters=wanted,
                        progress=lambda name, i, n: bar.update(task, total=n, completed=i, description=name))
                except PointFailed as err:  # the finished points are written below, then the failure is raised
                    results, point_failure = list(err.finished), err
        else:
            for flag, value in (("--param", param), ("--sweep", sweep), ("--workload", workload), ("--dtype", dtype)):
                if value:
                    raise UsageError(f"{flag} applies to model files with @rooflight.workload; {file.name} is a script")
            if single_pass and (warmup or repeats not in (None, 1)):
                raise UsageError("--single-pass runs the script once: drop --warmup and --repeats")
            ranked = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not opts.count_only and not single_pass
            if ranked:
                # a rank's script creates its process group: run again in the same process, its next
                # rendezvous can meet the last one's (gloo hung, or failed, in about one launch of three)
                if warmup or repeats not in (None, 1):
                    raise UsageError("a script on one of several ranks runs once (its process group is created once "
                                     "per process): drop --warmup and --repeats")
                opts = replace(opts, single_pass=True)
            with progress("running") as bar:
                bar.add_task(file.name, total=None)
                results = [profile_script(file, script_args or [], opts)]
            if ranked:
                prof = results[0].profile
                results = [replace(results[0], profile=replace(prof, notes=(*prof.notes, RANKED_SCRIPT_NOTE)))]
    if wanted is not None and not is_model:
        with progress("reading hardware counters (ncu)") as bar:
            bar.add_task(file.name, total=None)
            results = [script_with_counters(file, results[0], opts, script_args or [], wanted)]
    counter_error = wanted.error if wanted is not None else None
    run = api.render_run(results, formats=formats, hw=hw, db=db, source=file.name, measure=True)
    if quiet and verbose:
        raise UsageError("--quiet and --verbose: give one of them")
    for r, a in zip(run.results, run.analyses):
        print_summary(con, r, a, -1 if quiet else 1 if verbose else 0)
    for p in run.write(out, force=force):
        con.print(f"wrote {esc(str(p))}")
    if trace is not None:
        for p in _write_traces(trace, kept, force):
            con.print(f"wrote {esc(str(p))}")
    if point_failure is not None:
        raise point_failure  # after the finished points were written
    if counter_error is not None:
        raise counter_error  # after the profile without counters was written
    failed = [r for r in results if r.check_passed is False]
    if failed:
        raise RooflightError("correctness check failed for " + ", ".join(
            f"{r.workload}{' [' + r.label + ']' if r.label else ''}" for r in failed)
            + ": the profiled kernels compute the wrong result (see above)")


def print_summary(con, r, a, verbosity: int = 0) -> None:
    """One workload point in the terminal: its summaries, heaviest groups, first advice, check, notes.
    verbosity -1 (-q): the headline line only; 1 (-v): every op group and every piece of advice."""
    head = f"[bold]{esc(r.workload)}[/bold]{esc(' [' + r.label + ']') if r.label else ''}"
    if verbosity < 0:
        lines = summary_lines(a)
        con.print(f"{head}: {esc(lines[0]) if lines else ''}")
        return
    con.print(f"\n{head} on {esc(a.spec.name if a.spec else a.ceilings.name)}")
    scope = headline_text(a)
    if scope:
        con.print(f"  [dim]{esc(scope)}[/dim]")
    for line in summary_lines(a):
        con.print("  " + esc(line))
    if a.training is not None:
        con.print("  " + esc(training_text(a.training)))
    if a.profile.steps:
        for line in phase_summary(a):
            con.print("  " + esc(line))
        con.print(steps_table(a))
    if a.groups:
        con.print(groups_table(a, n=len(a.groups) if verbosity > 0 else 5))
    if a.profile.counters is not None:
        con.print(counters_table(a))
    for tip in a.advice[:None if verbosity > 0 else 1]:
        con.print(f"  advice: [bold]{esc(tip.recommendation)}[/bold] — {esc(tip.effect)}")
    if r.check is not None:
        ok = r.check[0] <= r.check[1]
        con.print(f"  correctness: {'[green]pass[/green]' if ok else '[red]FAIL[/red]'} (relative error "
                  f"{r.check[0]:.2e}, tolerance {r.check[1]:.0e})")
    for n in (*r.notes, *a.notes):
        con.print(f"  [dim]note: {esc(n)}[/dim]")


def _without(args: list[str], options: tuple[str, ...]) -> list[str]:
    """`args` less each of `options` and its value (`--nproc 2`, `--nproc=2`, `-o out`)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in options:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in options if o.startswith("--")):
            continue
        out.append(a)
    return out


def _profile_ranks(file: Path, nproc: int, out: Path, device: Optional[str], count_only: bool, force: bool) -> None:
    """`profile --nproc N`: N ranks of the same command, each into OUT/rank<k>; then every rank's
    collectives side by side (and OUT/ranks.json)."""
    from .common import ARGS
    from ..comm import collective_rows, exposed_in, exposure_text
    from ..profile_data import Profile
    from ..runner import launch_ranks

    if nproc < 2:
        raise UsageError(f"--nproc {nproc}: give 2 or more ranks (one rank is a plain profile)")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise UsageError("--nproc launches the ranks itself; under torchrun, drop --nproc (each rank profiles "
                         "itself)")
    dev = device or default_device()
    gpus = torch_cuda_count() if dev.startswith("cuda") and not count_only else 0
    if dev.startswith("cuda") and not count_only and gpus < nproc:
        raise UsageError(f"--nproc {nproc} on CUDA needs {nproc} GPUs and this machine has {gpus}: use --device cpu "
                         "(gloo) or fewer ranks")
    args = [a for a in ARGS if a != "profile"] if ARGS and ARGS[0] == "profile" else list(ARGS)
    child = ["profile", *_without(args, ("--nproc", "-o", "--out"))]
    con = console()
    backend = "nccl" if gpus else "gloo"
    with progress(f"running {nproc} ranks ({backend})") as bar:
        bar.add_task(file.name, total=None)
        runs = launch_ranks(child, nproc, out, backend=backend)
    failed = [r for r in runs if r.returncode != 0]
    summary = {"writer": "rooflight", "ranks": nproc, "backend": backend, "per_rank": []}
    for r in runs:
        for p in sorted(r.folder.glob("[!.]*.json")):
            try:
                prof = Profile.load(p)
            except RooflightError:
                continue
            rows = collective_rows(prof)
            exp = exposed_in(prof)
            summary["per_rank"].append({"rank": r.rank, "profile": str(p), "workload": prof.workload,
                                        "params": dict(prof.params), "collectives": rows,
                                        "comm_seconds": exp.comm_seconds if exp else None,
                                        "comm_exposed_seconds": exp.exposed_seconds if exp else None})
            for c in rows:
                bw = f", bus bandwidth {c['busbw'] / 1e9:.3g} GB/s" if c["busbw"] else ""
                con.print(esc(f"rank {r.rank} {prof.workload} {dict(prof.params) or ''}: {c['count']} x "
                              f"{c['collective']} over {c['ranks']} ranks, {c['link_bytes']:.4g} B over its link"
                              + (f" in {c['seconds'] * 1e3:.3g} ms" if c["timed"] else "") + bw))
            if exp is not None:
                con.print(esc(f"rank {r.rank} {prof.workload}: {exposure_text(exp)}"))
    od = OutputDir(out, force=force)
    od.add("ranks.json", json.dumps(strict_json(summary), indent=1, allow_nan=False))
    for p in od.commit():
        con.print(f"wrote {esc(str(p))} (and rank0 ... rank{nproc - 1}/)")
    if failed:
        # the rank that failed, not one stopped after it (a negative code: the signal that stopped it)
        first = next((r for r in failed if r.returncode > 0), failed[0])
        stopped = [r.rank for r in failed if r.returncode < 0 and r is not first]
        also = (f" (rank{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} stopped then)"
                if stopped else "")
        raise RooflightError(f"rank {first.rank} of {nproc} exited {first.returncode}{also}: "
                             f"{first.stderr_tail[:300]}")


RANKED_SCRIPT_NOTE = ("one of several ranks: the script ran once, counted and timed together (its process group is "
                      "created once per process; run again, its next rendezvous can meet the last one's)")


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _write_traces(folder: Path, kept, force: bool) -> list[Path]:
    """The kept traces as DIR/<workload>.<pass>.trace.json (under the one overwrite policy)."""
    od = OutputDir(folder, force=force)
    seen: dict[str, int] = {}
    for workload, kind, raw in kept:
        base = f"{slug(workload or 'run')}.{kind}"
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        od.add(f"{name}.trace.json", json.dumps(strict_json(raw), allow_nan=False))
    return od.commit()


@commands.command("report")
@handles_errors
def report_cmd(
    profile_json: Path = typer.Argument(..., metavar="PROFILE.json", help="A profile saved by rooflight."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", metavar="FILE.html|DIR",
                                       help="Report file, or a directory to put PROFILE.html in (default: beside "
                                            "the profile)."),
    hw: Optional[str] = typer.Option(None, "--hw", help="GPU to hold it against (default: where it ran; "
                                                        "count-only: this machine's GPU, else H100 SXM)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Comma-separated, as for profile: html, png, svg, csv "
                                                             "(default: html)."),
    png: bool = typer.Option(False, "--png", metavar="", help="Also write the roofline chart as PNG (= --format html,png)."),
    svg: bool = typer.Option(False, "--svg", metavar="", help="Also write the roofline chart as SVG (= --format html,svg)."),
    force: bool = ForceOption,
    no_calibration: bool = typer.Option(False, "--datasheet", metavar="", help="Use datasheet roofs even if calibrated ones "
                                                                   "are cached."),
    project_to: Optional[str] = typer.Option(None, "--project", metavar="GPUS",
                                             help="Add a projection onto other GPUs: comma-separated names, or "
                                                  "'all' for every GPU in the database."),
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """Render a saved profile again (no GPU needed): HTML report, and the chart as PNG/SVG."""
    db = database(hw_dir)
    prof = api.load(profile_json)
    a = api.analyze(prof, hw, calibrated=not no_calibration, db=db)
    formats = parse_formats(fmt) if fmt else ["html"]
    if "json" in formats:
        raise UsageError("--format json: the profile is the JSON already; report writes html, png, svg, csv")
    png, svg = png or "png" in formats, svg or "svg" in formats
    csv = "csv" in formats
    default = profile_json.with_suffix(".html")
    target = html_target(out, default.name) if out is not None else default  # -o DIR, as profile takes it
    if target.resolve() == profile_json.resolve():
        raise UsageError(f"the report would overwrite the profile {profile_json}; give another -o")
    check_files([target] + [target.with_suffix(f".{f}") for f, wanted in (("png", png), ("svg", svg), ("csv", csv))
                            if wanted], force=force)
    extra = []
    if project_to:
        extra.append(("Projected onto other GPUs", projection_html(api.project(prof, project_to, db=db))))
    files = {target: report_html(a, extra_sections=extra)}
    if csv:
        files[target.with_suffix(".csv")] = ops_csv(a)
    charts = [fmt for fmt, wanted in (("png", png), ("svg", svg)) if wanted]
    if charts:
        fig = roofline_of(a)
        for fmt in charts:
            files[target.with_suffix(f".{fmt}")] = figure_bytes(fig, fmt)
    written = write_files(files, force=force)
    con = console()
    for line in summary_lines(a):
        con.print(esc(line))
    for n in a.notes:
        con.print(f"[dim]note: {esc(n)}[/dim]")
    for p in written:
        con.print(f"wrote {esc(str(p))}")
