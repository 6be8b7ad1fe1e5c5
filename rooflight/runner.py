"""Running a user's model file or script under rooflight: the library behind `rooflight profile`.

Two kinds of file:

1. a model file that declares workloads (`@rooflight.workload`): each workload is built at each
   parameter point and its callable is counted and (unless count-only) timed;
2. any other script, unchanged: it runs as `__main__` with the arguments given after `--`
   (as `python -m cProfile script.py` does), and everything it executes is profiled.  Its
   `rooflight.region(...)` marks and its NVTX ranges become regions.  Timing runs it more than
   once (one labelled pass, then `repeats` plain passes; see timing.py).

Errors in the user's code come back as ModelFileError carrying the user's traceback (the frames
of their files, not rooflight's); `sys.exit(0)` in a script ends it normally, any other status is
an error.
"""

from __future__ import annotations

import contextlib
import runpy
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from . import counters as _counters
from . import ncu as _ncu
from . import regions as _regions
from .capture import count
from .cuda_on_cpu import cuda_on_cpu
from .errors import NoGPUError, RooflightError, UsageError
from .profile_data import Profile
from .timing import profile as time_profile
from .timing import trace_name as _trace_name
from .workloads import ModelFileError, Run, Workload, build, check_run, points, user_traceback


@dataclass(frozen=True)
class Options:
    device: str = "cpu"  # "cuda", "cpu" or "meta"
    count_only: bool = False
    warmup: int = 3
    repeats: int = 10
    dtype: torch.dtype | None = None
    flush_l2: bool = False
    cuda_graph: bool = False
    check: bool = True  # run the workload's correctness check when it has a reference
    select_steps: tuple[int, int | None] | None = None  # scripts: the steps the headline describes ("2:")
    single_pass: bool = False  # scripts: run the body once, counted and timed together


@dataclass(frozen=True)
class Result:
    workload: str
    label: str  # the parameter point, e.g. "batch=8" ("" for the defaults)
    params: Mapping[str, Any]
    profile: Profile
    check: tuple[float, float] | None = None  # (relative error, tolerance)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def check_passed(self) -> bool | None:
        return None if self.check is None else self.check[0] <= self.check[1]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def validate(options: Options) -> None:
    if options.device not in ("cuda", "cpu", "meta") and not options.device.startswith("cuda:"):
        raise UsageError(f"--device {options.device!r}: use cuda, cpu or meta")
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPUError("--device cuda, but this machine has no CUDA GPU: use --device cpu, or "
                         "--count-only --device meta to count without running")
    if options.device == "meta" and not options.count_only:
        raise UsageError("--device meta runs nothing, so nothing can be timed: add --count-only")
    if options.repeats < 1 or options.warmup < 0:
        raise UsageError("--repeats must be at least 1 and --warmup at least 0")


def _needs_cuda(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}"
    return any(s in text for s in ("Torch not compiled with CUDA", "Found no NVIDIA driver", "no CUDA GPUs are available",
                                   "CUDA driver initialization failed", "No CUDA GPUs are available",
                                   "Cannot access accelerator device when none is available",
                                   "Tried to instantiate dummy base class", "Cannot get CUDA generator"))


def _user_line(err: BaseException, files: Sequence[str]) -> str:
    """"file.py:12" of the last frame of `err` in one of `files`, or ""."""
    files = {str(Path(f).resolve()) for f in files}
    frames = [fr for fr in traceback.extract_tb(err.__traceback__) if str(Path(fr.filename).resolve()) in files]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


@contextlib.contextmanager
def user_code(files: Sequence[str], what: str, *, script: bool = False, stand_in: bool = False) -> Iterator[None]:
    """Turn an exception raised by the user's code into one message with the user's traceback.
    A CUDA call on a machine with none says what to do instead: a model file takes --device; a
    script is counted with its CUDA tensors on the CPU (`stand_in`: it was, and this call is one
    the CPU cannot stand in for)."""
    try:
        yield
    except (RooflightError, KeyboardInterrupt):
        raise
    except Exception as err:
        if _needs_cuda(err):
            if stand_in:
                at = _user_line(err, files)
                raise NoGPUError(f"{what} asks CUDA for what a CPU cannot stand in for{' at ' + at if at else ''} "
                                 f"({type(err).__name__}: {err}): count it on a machine with a GPU, or run that line "
                                 "only when torch.cuda.is_available()") from None
            if script:
                raise NoGPUError(f"{what} needs a CUDA GPU and this machine has none: count it here with --count-only "
                                 "(its CUDA tensors then go to the CPU), or run it on a machine with a GPU") from None
            raise NoGPUError(f"{what} needs a CUDA GPU and this machine has none: run it with --device cpu, "
                             "or count it with --count-only --device meta") from None
        raise ModelFileError(f"{what} raised {type(err).__name__}: {err}", user_traceback(err, files)) from None


def _profile_run(run: Run, options: Options, workload: str, params: Mapping[str, Any]) -> Profile:
    if options.count_only:
        prof = count(run.fn, *run.args, workload=workload, **run.kwargs)
    else:
        timing = {"warmup": options.warmup, "repeats": options.repeats, "flush_l2": options.flush_l2,
                  "cuda_graph": options.cuda_graph, **run.options}  # the workload's own needs win
        prof = time_profile(run.fn, *run.args, device="cuda" if options.device.startswith("cuda") else "cpu",
                            workload=workload, **timing, **run.kwargs)
    return replace(prof, params=dict(params))


SEED = 0  # every workload point starts from the same random state (a `seed` parameter overrides it)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


class PointFailed(RooflightError):
    """A workload point failed after earlier points had finished: they travel with the error, so
    the caller can keep them (the CLI writes them, then reports the failure)."""

    def __init__(self, message: str, finished: tuple, exit_code: int = 1):
        super().__init__(message)
        self.finished = finished
        self.exit_code = exit_code


@dataclass
class CounterRequest:
    """`--counters`: how the counter pass measures (one of each distinct call, or every kernel),
    and the first error it met, which the caller reports once the profiles are written (later
    points are then profiled without counters)."""

    one_of_each: bool = True
    error: RooflightError | None = None


def check_counters(options: Options) -> None:
    if options.count_only or not options.device.startswith("cuda"):
        raise UsageError("--counters reads a GPU's hardware counters: it needs a timed run on a CUDA GPU "
                         "(drop --count-only / --device cpu)")


def _start_counters(counters: CounterRequest | None, spec: dict) -> _ncu.EarlyPass | None:
    if counters is None or counters.error is not None:
        return None
    try:
        return _ncu.EarlyPass(spec, distinct=counters.one_of_each)
    except _ncu.CountersUnavailable as err:
        counters.error = err
        return None


def _add_counters(counters: CounterRequest, prof: Profile, spec: dict, early: _ncu.EarlyPass | None) -> Profile:
    try:
        return _ncu.read_counters(prof, spec, one_of_each=counters.one_of_each, early=early)
    except (_ncu.CountersUnavailable, _counters.CounterFormatError) as err:
        counters.error = err
        return prof


def profile_workloads(path: Path, workloads: Sequence[Workload], options: Options, *,
                      params: Mapping[str, Any] | None = None, sweeps: Mapping[str, Sequence[Any]] | None = None,
                      default_sweep: bool = True, counters: CounterRequest | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> list[Result]:
    """Build and profile every workload at every parameter point (in order).  counters: each
    point also gets the hardware counters of one more run under Nsight Compute, whose child is
    started as the point begins, so its build runs beside the profile's (rooflight.ncu.EarlyPass);
    the profile's first call of the workload waits until the child's build is done."""
    validate(options)
    if counters is not None:
        check_counters(options)
    plan = [(w, p, label) for w in workloads
            for p, label in points(w, params or {}, sweeps or {}, default_sweep=default_sweep)]
    results = []
    files = [str(path)]
    for i, (w, p, label) in enumerate(plan):
        name = f"{w.name}{' [' + label + ']' if label else ''}"
        if progress:
            progress(name, i, len(plan))
        spec = counter_spec(path, w.name, p, options) if counters is not None else {}
        early = _start_counters(counters, spec)
        try:
            with user_code(files, f"workload {name} in {path.name}"):
                seed_everything(p.get("seed", SEED) if isinstance(p.get("seed"), int) else SEED)
                run = build(w, p, device=options.device, dtype=options.dtype)
                if early is not None:
                    early.wait_ready()  # before the workload's first call: its check, its warm-ups, its timing
                checked = check_run(run) if options.check and options.device != "meta" else None
                with _trace_name(f"{w.name}__{label}" if label else w.name):
                    prof = _profile_run(run, options, w.name, p)
        except BaseException as err:
            if early is not None:
                early.close()
            if not isinstance(err, RooflightError) or not results:
                raise
            raise PointFailed(f"{name}: {err} ({len(results)} earlier point{'s' if len(results) > 1 else ''} "
                              "finished and kept)", tuple(results), getattr(err, "exit_code", 1)) from err
        if early is not None:  # (None also once an earlier point's pass failed: counters.error says why)
            prof = _add_counters(counters, prof, spec, early)
        notes = ()
        if checked is not None and checked[0] > checked[1]:
            notes = (f"correctness check FAILED: relative error {checked[0]:.3g} > tolerance {checked[1]:.3g}",)
        results.append(Result(w.name, label, dict(p), prof, checked, notes))
    if progress:
        progress("done", len(plan), len(plan))
    return results


# ---------------------------------------------------------------------------- several ranks


@dataclass(frozen=True)
class RankRun:
    rank: int
    returncode: int
    stderr_tail: str
    folder: Path  # where the rank wrote its files


def launch_ranks(argv: Sequence[str], n: int, out: Path, *, backend: str, timeout: float | None = None
                 ) -> list[RankRun]:
    """Run `rooflight <argv>` once per rank, as torchrun would: RANK, WORLD_SIZE, LOCAL_RANK and a
    rendezvous on this host in each child's environment (`backend`: gloo or nccl, for workloads
    that initialise their group from it), each writing into out/rank<k>.  All ranks start
    together (a collective needs every rank); each one's exit code and last lines come back.
    Once a rank fails the others are stopped (they would wait for it in a collective forever),
    and so are all of them at `timeout`; a stopped rank's code is negative (the signal)."""
    import os
    import subprocess
    import tempfile

    port = _free_port()
    procs = []
    for rank in range(n):
        folder = out / f"rank{rank}"
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "ROOFLIGHT_TP_BACKEND": backend}
        cmd = [sys.executable, "-m", "rooflight", *argv, "-o", str(folder)]
        # output to files, not pipes: a rank blocked on a full pipe would stall the others
        log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        procs.append((rank, folder, log, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                                          text=True)))
    t0 = time.monotonic()
    while any(p.poll() is None for *_, p in procs):
        failed = any(p.poll() not in (None, 0) for *_, p in procs)
        if failed or (timeout is not None and time.monotonic() - t0 > timeout):
            for *_, p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.05)
    runs = []
    for rank, folder, log, p in procs:
        p.wait()
        log.seek(0)
        err = log.read()
        log.close()
        runs.append(RankRun(rank, p.returncode, " | ".join(ln for ln in err.splitlines()[-3:] if ln.strip()),
                            folder))
    return runs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- scripts


class ScriptExit(RooflightError):
    """A script called sys.exit with a failure status."""


def _run_script(path: Path, argv: Sequence[str]) -> Callable[[], None]:
    def run() -> None:
        old_argv, old_path = sys.argv, list(sys.path)
        sys.argv = [str(path), *argv]
        sys.path.insert(0, str(path.resolve().parent))
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as err:
            code = err.code
            if code not in (None, 0):
                raise ScriptExit(f"{path.name} exited with status {code!r}: nothing was profiled to completion; "
                                 "fix the script or its arguments (after --)") from None
        finally:
            sys.argv, sys.path[:] = old_argv, old_path

    run.__qualname__ = path.stem
    return run


def profile_script(path: Path, argv: Sequence[str], options: Options) -> Result:
    """Run a script as __main__ under rooflight (its NVTX ranges become regions), cut into setup,
    steps and teardown (rooflight.steps).  Its body runs once to count (count-only), else
    warmup + 1 counted + repeats timed times on a GPU (on the CPU 2 x repeats after warmup runs, or
    after one untimed run when warmup is 0), or once with single_pass."""
    validate(options)
    if options.device == "meta":
        raise UsageError("a script chooses its own devices: --device meta applies to model files only; count a script "
                         "with --count-only (on a machine without a GPU its CUDA tensors then go to the CPU)")
    run = _run_script(path, argv)
    seg = dict(steps=True, select_steps=options.select_steps)
    # counting needs no GPU: on a machine without one a script's CUDA tensors go to the CPU
    stand_in = options.count_only and not torch.cuda.is_available()
    with user_code([str(path)], path.name, script=True, stand_in=stand_in), _regions.nvtx_as_regions():
        if stand_in:
            seen = []

            def standing_in() -> None:
                # inside the capture: the stand-in's mode sees each call before the capture's does
                with cuda_on_cpu() as redirected:
                    seen.append(redirected)
                    run()

            standing_in.__qualname__ = run.__qualname__
            prof = count(standing_in, workload=path.stem, **seg)
            if seen and seen[0].used:
                prof = replace(prof, notes=(*prof.notes, seen[0].note()))
        elif options.count_only:
            prof = count(run, workload=path.stem, **seg)
        else:
            # the script puts its tensors where it wants; --device cpu says to time on the CPU (a
            # single pass then runs the script once, not a GPU labelling pass first)
            prof = time_profile(run, warmup=options.warmup, repeats=options.repeats, flush_l2=options.flush_l2,
                                cuda_graph=options.cuda_graph, workload=path.stem, single_pass=options.single_pass,
                                device="cpu" if options.device == "cpu" else None, **seg)
    return Result(path.stem, "", {}, replace(prof, params={"argv": " ".join(argv)} if argv else {}))


# ---------------------------------------------------------------------------- hardware counters


def counter_spec(path: Path, workload: str | None, params: Mapping[str, Any], options: Options,
                 argv: Sequence[str] = ()) -> dict:
    """What the counter pass's child runs (rooflight.ncu): a workload point (workload named), or
    the script (workload None) with its arguments."""
    if workload is not None:
        return {"kind": "workload", "path": str(path.resolve()), "workload": workload,
                "params": dict(params), "device": options.device, "warmup": options.warmup,
                "dtype": str(options.dtype).replace("torch.", "") if options.dtype else None}
    return {"kind": "script", "path": str(path.resolve()), "argv": list(argv), "warmup": options.warmup}


def script_with_counters(path: Path, result: Result, options: Options, argv: Sequence[str],
                         counters: CounterRequest) -> Result:
    """A script's result with the counters of one more run of the script under Nsight Compute.
    The run follows the profile (a script's set-up is inside each of its runs, so there is no
    build to overlap) and asks only for the counters the profile's dtypes can move; an error is
    left in `counters` and the result comes back unchanged."""
    check_counters(options)
    spec = counter_spec(path, None, {}, options, argv)
    return replace(result, profile=_add_counters(counters, result.profile, spec, None))


__all__ = ["ModelFileError", "Options", "PointFailed", "RankRun", "launch_ranks", "SEED", "seed_everything", "Result", "ScriptExit", "counter_spec", "default_device", "profile_script",
           "profile_workloads", "script_with_counters", "validate", "CounterRequest", "check_counters"]
