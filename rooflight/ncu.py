"""Hardware counters from Nsight Compute: the extra pass behind `rooflight profile --counters`.

After the timed passes, the workload (or script) runs once more in a child process under `ncu`,
with a small metric set chosen from what this GPU's counters offer (`ncu --query-metrics`):
tensor-pipe FLOPs by source precision, CUDA-core FLOPs (add, mul, fma by precision), DRAM read
and write bytes, L2 bytes and ncu's own kernel duration.  Only that one repeat is profiled, and in
it one op of each distinct call: the child runs the warm-ups first, then the measured run under a
capture that opens ncu's range (cudaProfilerStart/Stop, `ncu --profile-from-start off`) around the
first op of each (op, argument metadata) and records which later ops repeated it; their kernels
are the same sequence the timing's labelled run saw (rooflight.counters joins them to the ops by
that order, and gives each repeat its first's counters).  `distinct=False` (`--every-kernel`)
brackets the whole measured run instead.  Clocks are left alone
(`--clock-control none`); caches are flushed before each replay (ncu's default), which the
comparison of bytes takes into account.  The child marks its clock as its warm-ups and its
measured run begin and end, so the profile says where the pass's time went (Counters.pass_seconds).

A model file's workload point starts its child before the profile builds the workload
(EarlyPass): the child's interpreter, imports and build run beside the profile's build, then it
waits until the profile's timed passes are over (the profile's first call of the workload waits
for the child's build to end), so the workload's set-up is paid about once in wall time.  A
script's set-up is inside each of its runs, so its child runs after the profile (run_counter_pass).

Child side: `python -m rooflight.ncu SPEC.json` (the spec names the file, the workload point or
the script's arguments, the device and the warm-ups; an early child's, its ready and go files).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import counters as _counters
from .errors import RooflightError
from .files import OutputError, cache_dir, write_text_atomic

# base names (before .sum) matched against the chip's metric list; the class is read from the name
_TENSOR = re.compile(r"^sm__ops_path_tensor_(?:op_(?:hgmma|hmma|igmma|imma|dmma)_)?src_[a-z0-9]+.*sparsity_off$")
_CORE = [f"smsp__sass_thread_inst_executed_op_{p}{o}_pred_on" for p in ("f", "h", "d") for o in ("add", "mul", "fma")]
_BYTES = ["dram__bytes_read", "dram__bytes_write", "lts__t_bytes", "gpu__time_duration"]


_SEARCH = ("usr/local/cuda*/bin/ncu", "opt/nvidia/nsight-compute*/ncu")  # where the toolkit puts it, off PATH


class CountersUnavailable(RooflightError):
    """No Nsight Compute here, or it cannot read this GPU's counters."""


class CountersForbidden(CountersUnavailable):
    """ncu runs but may not read this GPU's counters (ERR_NVGPUCTRPERM): no second child would."""


@dataclass(frozen=True)
class NcuRun:
    csv: str  # `ncu --import ... --csv --page raw --print-units base`
    version: str  # "NVIDIA (R) Nsight Compute Command Line Profiler ... Version 2025.3.1.0"
    metrics: tuple[str, ...]
    seconds: float  # wall time of the counter pass (child run under ncu, then the import)
    same_as: dict[int, int] | None = None  # measured one of each: op -> the op measured for it
    ops: int | None = None  # ops the child's run recorded (one of each)
    # where `seconds` went, in order: the child's start (ncu, the interpreter, the build; after a
    # go, the go's latency), its warm-ups, its measured run (the kernels replayed), ncu's report, its import
    phases: tuple[tuple[str, float], ...] = ()


def find_ncu() -> str:
    path = os.environ.get("ROOFLIGHT_NCU") or shutil.which("ncu")
    if os.environ.get("ROOFLIGHT_NCU") and not Path(path).exists():
        raise CountersUnavailable(f"ROOFLIGHT_NCU={path}: no such file; point it at Nsight Compute's ncu, or unset it; "
                                  "the profile without counters was written")
    if not path:
        for pattern in _SEARCH:
            for cand in sorted(Path("/").glob(pattern)):
                path = str(cand)
    if not path or not Path(path).exists():
        raise CountersUnavailable("--counters needs Nsight Compute (ncu), which is not on PATH: install it (it ships "
                                  "with the CUDA toolkit) or set ROOFLIGHT_NCU=/path/to/ncu; the profile without "
                                  "counters was written")
    return path


def version(ncu: str) -> str:
    out = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=60)
    lines = [ln.strip() for ln in (out.stdout or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "ncu"


# which counters can see work of a tensor dtype: (tensor-pipe source precisions, CUDA-core prefixes)
_DTYPE_PIPES = {"bfloat16": (("bf16",), ("h",)), "float16": (("fp16",), ("h",)), "float32": (("tf32",), ()),
                "float64": (("fp64",), ("d",)), "int8": (("int8",), ()), "uint8": (("int8", "int4"), ()),
                "float8_e4m3fn": (("fp8",), ("h",)), "float8_e5m2": (("fp8",), ("h",))}


def choose_metrics(query_text: str, dtypes: frozenset[str] | None = None) -> tuple[str, ...]:
    """The metric set, from `ncu --query-metrics` output: the tensor-pipe op counters by source
    precision (dense), CUDA-core add/mul/fma by precision, DRAM/L2 bytes, kernel duration.

    Given the dtypes the profile's ops touch, only the counters that work in those dtypes can
    move are asked for (a bf16 model's fp64 and int8 pipes stay idle): each counter costs replay
    passes, and the instrumented CUDA-core ones the most.  fp32 CUDA-core counters are always in
    (reductions, norms and dequantizing kernels accumulate in fp32 whatever the tensors' dtype)."""
    names = set()
    for line in query_text.splitlines():
        tok = line.strip().split(" ", 1)[0] if line.strip() else ""
        if "__" in tok:
            names.add(tok)
    tensor = sorted(n for n in names if _TENSOR.match(n))
    core = list(_CORE)
    if dtypes is not None:
        precisions = {p for d in dtypes for p in _DTYPE_PIPES.get(d, ((), ()))[0]}
        prefixes = {"f"} | {c for d in dtypes for c in _DTYPE_PIPES.get(d, ((), ()))[1]}
        tensor = [n for n in tensor if re.search(r"src_([a-z0-9]+)", n).group(1) in precisions]
        core = [n for n in core if n[len("smsp__sass_thread_inst_executed_op_")] in prefixes]
    chosen = [f"{n}.sum" for n in tensor] + [f"{n}.sum" for n in core + _BYTES if n in names]
    if not any(m.startswith("dram__bytes_read") for m in chosen):
        raise CountersUnavailable("ncu on this GPU offers no dram__bytes_read counter (an unsupported GPU, or ncu "
                                  "older than the chip): the profile without counters was written")
    return tuple(chosen)


def profile_dtypes(profile) -> frozenset[str]:
    """The dtypes of every tensor the profile's ops read or write (what choose_metrics narrows by)."""
    return frozenset(t.dtype for o in profile.ops for t in (*o.inputs, *o.outputs))


def callable_spec(fn, args: tuple, kwargs: dict, warmup: int, folder: str) -> dict:
    """The child's spec for a function defined at the top level of a .py file: it imports the
    file and calls the function on the same arguments (saved with torch.save into `folder`)."""
    import inspect

    import torch

    try:
        source = inspect.getsourcefile(fn)
    except TypeError:
        source = None
    qual = getattr(fn, "__qualname__", "")
    if not source or not source.endswith(".py") or "<locals>" in qual or "<lambda>" in qual:
        raise CountersUnavailable("counters=True re-runs the function under ncu in a child process, so it must be "
                                  "defined at the top level of a .py file (not a notebook cell, a lambda or a nested "
                                  "function): move it to a file, or use `rooflight profile script.py --counters`")
    path = Path(folder) / "args.pt"
    torch.save((tuple(args), dict(kwargs)), path)
    return {"kind": "callable", "path": source, "qualname": qual, "args": str(path), "warmup": warmup}


def _check_permission(text: str) -> None:
    if "ERR_NVGPUCTRPERM" in text or "permission to access NVIDIA GPU Performance Counters" in text:
        raise CountersForbidden("ncu cannot read this GPU's performance counters (ERR_NVGPUCTRPERM): run as a user "
                                  "allowed to profile (see NVIDIA's ERR_NVGPUCTRPERM page); the profile without "
                                  "counters was written")


@lru_cache(maxsize=None)
def _setup(ncu: str) -> tuple[str, str]:
    """(version, `--query-metrics` text) of an ncu binary on this GPU, asked once per process (a
    model file's points each run a counter pass) and kept in rooflight's cache between processes:
    the query takes ~2 s, on the way to the child's start.  The cache is keyed by the binary (its
    real path, size and modification time) and the GPU (device 0's name, compute capability and
    UUID), so another ncu or another GPU asks again; with no GPU to name nothing is kept.  A
    failure is not cached."""
    cached = _setup_cache(ncu)
    if cached is not None:
        try:
            got = json.loads(cached.read_text(encoding="utf-8"))
            if isinstance(got, dict) and "dram__bytes_read" in str(got.get("query")) and got.get("version"):
                return str(got["version"]), str(got["query"])
        except (OSError, ValueError):
            pass  # absent or unreadable: asked again, and rewritten
    try:
        q = subprocess.run([ncu, "--devices", "0", "--query-metrics"], capture_output=True, text=True, timeout=120)
        _check_permission(q.stdout + q.stderr)
        got = version(ncu), q.stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CountersUnavailable(f"{ncu} --query-metrics failed ({getattr(err, 'strerror', None) or err}): point "
                                  "ROOFLIGHT_NCU at Nsight Compute's ncu; the profile without counters was "
                                  "written") from None
    if cached is not None and "dram__bytes_read" in got[1]:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cached, json.dumps({"ncu": ncu, "version": got[0], "query": got[1]}))
        except (OSError, OutputError):
            pass  # an unwritable cache costs the next run its query, never this one's counters
    return got


def _gpu_identity() -> str | None:
    """Device 0 as ncu's `--devices 0` sees it (CUDA_VISIBLE_DEVICES applied): name, compute
    capability, UUID; None where there is no CUDA GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}|{props.major}.{props.minor}|{getattr(props, 'uuid', '')}"
    except Exception:  # noqa: BLE001 - no GPU to name is no cache, never an error
        return None


def _setup_cache(ncu: str) -> Path | None:
    """Where the query of this ncu binary on this GPU is kept (None: not kept, no GPU to name)."""
    gpu = _gpu_identity()
    if gpu is None:
        return None
    try:
        real = Path(ncu).resolve()
        st = real.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}|{gpu}".encode()).hexdigest()[:20]
    return cache_dir() / "ncu" / f"query-{key}.json"


def _command(ncu: str, metrics: Sequence[str], report: Path, spec_path: Path) -> tuple[list[str], dict]:
    """ncu's command line over the child, and the child's environment (rooflight importable)."""
    cmd = [ncu, "--metrics", ",".join(metrics), "--clock-control", "none", "--profile-from-start", "off",
           "--target-processes", "all", "-f", "-o", str(report), sys.executable, "-m", "rooflight.ncu", str(spec_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent)]
                                                       + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    return cmd, env


def _read_report(ncu: str, returncode: int, text: str, report: Path, marks: Path | None, ver: str,
                 metrics: Sequence[str], wall0: float, times: Path) -> NcuRun:
    """The finished child's report as CSV, with the ops it measured (one of each, `marks`) and
    where the pass's time went (`times`: the child's clock marks; wall0: the pass's start, on the
    wall clock the child's marks are on)."""
    ended = time.time()
    _check_permission(text)
    if returncode != 0 or not report.exists():
        tail = " | ".join(ln for ln in text.splitlines()[-4:] if ln.strip())
        raise CountersUnavailable(f"the counter pass under ncu failed (exit {returncode}): {tail[:400]}; the "
                                  "profile without counters was written")
    imp = subprocess.run([ncu, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base",
                          "--print-kernel-base", "demangled"], capture_output=True, text=True, timeout=600)
    if imp.returncode != 0:
        raise CountersUnavailable(f"ncu --import failed (exit {imp.returncode}): {imp.stderr.strip()[:300]}")
    same_as, ops = None, None
    if marks is not None:
        try:
            got = json.loads(marks.read_text(encoding="utf-8"))
            same_as, ops = {int(k): int(v) for k, v in got["same_as"].items()}, int(got["ops"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CountersUnavailable(f"the counter pass did not say which ops it measured ({err}); the profile "
                                      "without counters was written") from None
    imported = time.time()
    return NcuRun(imp.stdout, ver, tuple(metrics), imported - wall0, same_as, ops, _phases(times, wall0, ended, imported))


_PHASES = ("start", "warm-ups", "measured run", "report", "import")


def _phases(times: Path, wall0: float, ended: float, imported: float) -> tuple[tuple[str, float], ...]:
    """The pass's phases from the child's marks (wall clock, this machine's): () if it wrote none."""
    try:
        got = json.loads(times.read_text(encoding="utf-8"))
        marks = [wall0, float(got["warmups"]), float(got["run"]), float(got["done"]), ended, imported]
    except (OSError, ValueError, KeyError, TypeError):
        return ()
    return tuple((name, max(0.0, b - a)) for name, a, b in zip(_PHASES, marks, marks[1:]))


def run_counter_pass(spec: Mapping[str, Any], *, timeout: float | None = None,
                     dtypes: frozenset[str] | None = None, distinct: bool = True) -> NcuRun:
    """Run the child under ncu and read its report back as CSV (the metric set narrowed to the
    counters `dtypes` can move, when given).  distinct: profile only the first op of each distinct
    call (op and argument metadata), the others' counters being the same (a 32-layer model's
    layers: 32 times fewer kernels replayed); False: every kernel of the run."""
    ncu = find_ncu()
    ver, query = _setup(ncu)
    metrics = choose_metrics(query, dtypes)
    wall0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rooflight-ncu-") as tmp:
        spec_path, marks, rep = Path(tmp) / "spec.json", Path(tmp) / "distinct.json", Path(tmp) / "counters"
        times = Path(tmp) / "times.json"
        spec_path.write_text(json.dumps({**spec, "times": str(times), **({"distinct": str(marks)} if distinct else {})}),
                             encoding="utf-8")
        cmd, env = _command(ncu, metrics, rep, spec_path)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return _read_report(ncu, r.returncode, r.stdout + r.stderr, rep.with_suffix(".ncu-rep"),
                            marks if distinct else None, ver, metrics, wall0, times)


class EarlyPass:
    """The counter pass's child, started under ncu before the profile builds its workload, so that
    the child's set-up (the interpreter, the imports, the workload's build: a model's weights
    initialised on the CPU and moved to the GPU) runs while the profile's own does.  The child
    then waits; `wait_ready` holds the profile's warm-ups and timed passes until it waits (a child
    at work beside them would perturb their times, and an autotuner's choices), and `finish`
    starts its measured run once the profile is done.  ncu is given every counter this GPU offers:
    the ops' dtypes, which narrow the set in run_counter_pass, are not known yet.

    Its files live in a temporary folder until finish or close; a child whose rooflight process
    went away stops waiting by itself."""

    def __init__(self, spec: Mapping[str, Any], *, distinct: bool = True):
        self.ncu = find_ncu()
        self.version, query = _setup(self.ncu)
        self.metrics = choose_metrics(query)
        self.distinct = distinct
        self._tmp = tempfile.TemporaryDirectory(prefix="rooflight-ncu-", ignore_cleanup_errors=True)
        d = Path(self._tmp.name)
        self._ready, self._go, self._marks, self._rep = d / "ready", d / "go", d / "distinct.json", d / "counters"
        self._log, self._times = d / "ncu.log", d / "times.json"
        spec_path = d / "spec.json"
        spec_path.write_text(json.dumps({**spec, "ready": str(self._ready), "go": str(self._go), "times": str(self._times),
                                         "parent": os.getpid(), **({"distinct": str(self._marks)} if distinct else {})}),
                             encoding="utf-8")
        cmd, env = _command(self.ncu, self.metrics, self._rep, spec_path)
        self.waited = 0.0  # seconds the profile was held waiting for the child's set-up
        try:
            with open(self._log, "w", encoding="utf-8") as log:
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True)
        except OSError as err:
            self._tmp.cleanup()
            raise CountersUnavailable(f"{self.ncu} could not be started ({err.strerror or err}): point "
                                      "ROOFLIGHT_NCU at Nsight Compute's ncu; the profile without counters was "
                                      "written") from None

    def wait_ready(self) -> bool:
        """Block until the child has set up and waits (True), or has exited (False: finish says why)."""
        t0 = time.perf_counter()
        try:
            while not self._ready.exists():
                if self._proc.poll() is not None:
                    return False
                time.sleep(0.02)
            return True
        finally:
            self.waited += time.perf_counter() - t0

    def finish(self) -> NcuRun:
        """The child's measured run, now: its report read back (times from the go)."""
        wall0 = time.time()
        try:
            _write_atomic(self._go, "run")
            code = self._proc.wait()
            return _read_report(self.ncu, code, self._log.read_text(encoding="utf-8", errors="replace"),
                                self._rep.with_suffix(".ncu-rep"), self._marks if self.distinct else None,
                                self.version, self.metrics, wall0, self._times)
        finally:
            self.close()

    def _stop(self) -> None:
        if self._proc.poll() is None:
            _write_atomic(self._go, "stop")
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._proc.wait()

    def close(self) -> None:
        """Stop the child if it still runs, and remove its files."""
        self._stop()
        self._tmp.cleanup()


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_suffix(".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)


def read_counters(profile, spec: Mapping[str, Any], *, one_of_each: bool = True, early: EarlyPass | None = None):
    """`profile` (a timed GPU profile) with the counters of one more run of `spec` beside its
    counts: the pass, its CSV read, its kernels joined to the ops (rooflight.counters).
    one_of_each: measure each distinct call once (run_counter_pass's `distinct`).  early: the
    child started before the profile (EarlyPass), measured now; should it have failed for any
    reason but the counters' permission, one more child is run after the profile as without it."""
    dtypes = profile_dtypes(profile)
    run, took, early_run = None, [], None
    if early is not None:
        try:
            run = early_run = early.finish()
            took = [f"the counter pass (one more run under ncu, set up while the profile set up its own; the profile "
                    f"waited {early.waited:.1f} s for it) took {run.seconds:.1f} s after the profile"]
        except CountersForbidden:
            raise
        except CountersUnavailable as err:
            took = [f"the counter pass started beside the profile failed ({str(err).split('; the profile')[0]}), so "
                    "one more was run after it"]
    if run is None:
        run = run_counter_pass(spec, dtypes=dtypes, distinct=one_of_each)
        took += [f"the counter pass (one more run under ncu) took {run.seconds:.1f} s"]
    if run.same_as is not None and run.ops != len(profile.ops):
        # its op indexes are not the profile's (the script does not repeat itself exactly): measure all
        first = run
        run = run_counter_pass(spec, dtypes=dtypes, distinct=False)
        took = [f"the counter pass took {first.seconds + run.seconds:.1f} s: its run measuring one of each call "
                f"recorded {first.ops} ops where the profile has {len(profile.ops)}, so a second run measured "
                "every kernel"]
    if run is early_run:
        took.append(f"{len(run.metrics)} counters, every one this GPU offers (the pass started before the ops' "
                    "dtypes were known)")
    else:
        took.append(f"{len(run.metrics)} counters, those the ops' dtypes can move ({', '.join(sorted(dtypes))})")
    kernels = _counters.parse_csv(run.csv)
    if run.phases:
        took.append(where_the_time_went(run.phases, len(kernels)))
    joined = _counters.join(profile, kernels, metrics=run.metrics,
                            tool=f"Nsight Compute {run.version.replace('Version ', '')}", notes=took,
                            same_as=run.same_as)
    return _counters.attach(profile, replace(joined, pass_seconds=dict(run.phases)))


def where_the_time_went(phases: Sequence[tuple[str, float]], kernels: int) -> str:
    """The last counter pass's time by phase, in words (its measured run: the kernels replayed)."""
    got = dict(phases)
    parts = [f"the child's start and build {got['start']:.1f} s" if got.get("start", 0.0) >= 0.05 else "",
             f"{got['warm-ups']:.1f} s of warm-ups",
             f"the measured run {got['measured run']:.1f} s ({kernels} kernel{'s' if kernels != 1 else ''} replayed"
             + (f", {got['measured run'] / kernels:.2f} s each)" if kernels else ")"),
             f"ncu writing its report {got['report']:.1f} s", f"reading it back {got['import']:.1f} s"]
    return "where the counter pass's time went: " + ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------------- the child


def _child(spec: Mapping[str, Any]) -> None:
    import runpy

    import torch
    import torch.cuda.profiler as cuda_profiler

    from . import workloads as _w

    gpu = torch.cuda.is_available()  # (a test runs the child on a CPU machine: no range to open there)
    cudart = torch.cuda.cudart() if gpu else None
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def profiled(on: bool) -> None:  # ncu's range (--profile-from-start off)
        if cudart is not None:
            (cudart.cudaProfilerStart if on else cudart.cudaProfilerStop)()

    # the script's own start()/stop() must not open ranges during the warm-ups: only ours count
    cuda_profiler.start = cuda_profiler.stop = lambda: None
    path = Path(spec["path"])
    if spec["kind"] == "script":
        def run() -> None:
            sys.argv = [str(path), *spec.get("argv", [])]
            sys.path.insert(0, str(path.resolve().parent))
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as err:
                if err.code not in (None, 0):
                    raise
    elif spec["kind"] == "callable":  # rooflight.profile(fn, ..., counters=True): fn from its file
        import importlib.util

        mod_spec = importlib.util.spec_from_file_location("_rooflight_counted", path)
        mod = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(path.resolve().parent))
        mod_spec.loader.exec_module(mod)
        fn = mod
        for part in spec["qualname"].split("."):
            fn = getattr(fn, part)
        args, kwargs = torch.load(spec["args"], weights_only=False)

        def run() -> None:
            fn(*args, **kwargs)
    else:
        wl = next(w for w in _w.load_model_file(path) if w.name == spec["workload"])
        dtype = _w.parse_dtype(spec["dtype"]) if spec.get("dtype") else None
        built = _w.build(wl, dict(spec.get("params", {})), device=spec.get("device", "cuda"), dtype=dtype)

        def run() -> None:
            built.fn(*built.args, **built.kwargs)
    if spec.get("ready") and not _wait_for_go(spec):
        return
    marks = {"warmups": time.time()}
    for _ in range(int(spec.get("warmup", 0))):
        run()
    sync()
    marks["run"] = time.time()
    _measured_run(spec, run, profiled, sync)
    if spec.get("times"):  # the parent's account of where the pass's time went (NcuRun.phases)
        Path(spec["times"]).write_text(json.dumps({**marks, "done": time.time()}), encoding="utf-8")


def _measured_run(spec: Mapping[str, Any], run, profiled, sync) -> None:
    if spec.get("distinct"):
        # one of each: ncu profiles only between start and stop, opened around the first op of each
        # distinct call (rooflight.capture marks them); the same capture gives the op indexes
        from .capture import Capture

        with Capture(distinct=profiled) as cap:
            run()
        sync()
        rec = cap.recorder
        Path(spec["distinct"]).write_text(json.dumps({"ops": len(rec.payloads), "same_as": rec.same_as}),
                                          encoding="utf-8")
        return
    profiled(True)
    run()
    sync()
    profiled(False)


def _wait_for_go(spec: Mapping[str, Any]) -> bool:
    """Started early (EarlyPass): say the set-up is done, then wait until the profile says to run
    (True) or to stop, or its process is gone (False)."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # the build's copies and kernels end before the profile's warm-ups begin
    _write_atomic(Path(spec["ready"]), "ready")
    go, parent = Path(spec["go"]), int(spec["parent"])
    while not go.exists():
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        time.sleep(0.02)
    return go.read_text(encoding="utf-8").strip() == "run"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    _child(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CountersForbidden", "CountersUnavailable", "EarlyPass", "NcuRun", "callable_spec", "choose_metrics", "find_ncu", "profile_dtypes",
           "read_counters",
           "run_counter_pass", "version"]
