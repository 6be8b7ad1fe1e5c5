"""Calibration: measure this machine's achievable ceilings, as the Empirical Roofline Toolkit does.

On a GPU: device-memory bandwidth (a large copy and a triad, counting bytes read plus written),
matmul throughput per math class (bf16, fp16, tf32, fp32, fp8 and int8 where the chip has them),
kernel launch overhead (wall time per tiny op, eager and inside a CUDA graph) and host<->device
copy bandwidth (pinned and pageable, both ways).  On a CPU: memory bandwidth and matmul
throughput, so the CPU has a roofline too.

Every figure is the median over timed iterations after a warm-up, on random data (zeros can run
faster than real data), and is kept with how it was measured.  Results are cached per device
under the user's cache directory; the classifier uses them as the practical roof.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from .detect import describe_cpu
from .errors import NoGPUError, RooflightError
from .files import cache_dir, write_text_atomic
from .math_class import MathClass
from .profile_data import now_iso, strict_json
from .roofline import Ceilings
from .units import is_amount

SCHEMA = "rooflight.calibration"
SCHEMA_VERSION = 1

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Measurement:
    value: float  # base unit: bytes/s, FLOP/s (ops/s for integer classes), seconds
    unit: str  # "bytes_per_s", "flops_per_s", "seconds"
    how: str  # what was run, e.g. "8192x8192x8192 bf16 torch.mm, median of 20"


@dataclass(frozen=True)
class Calibration:
    device_kind: str  # "cuda" or "cpu"
    device_name: str  # "NVIDIA H100 80GB HBM3" or the CPU model
    spec_key: str  # the database spec it maps to ("" for a CPU or an unknown GPU)
    torch_version: str
    created: str
    seconds: float  # how long the calibration took
    figures: Mapping[str, Measurement] = field(default_factory=dict)
    # keys: "memory_copy", "memory_triad", "flops.<math class>", "launch_eager", "launch_graph",
    #       "h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"; with --nproc (rooflight.interconnect):
    #       "link.all_reduce_busbw", "link.all_gather_busbw", "link.p2p_copy" (the plateaus) and the
    #       curve, "curve.<collective>.<bytes>" (bus bandwidth at each message size)

    def get(self, key: str) -> float | None:
        m = self.figures.get(key)
        return m.value if m is not None else None

    @property
    def memory_bytes_per_s(self) -> float:
        return max(v for v in (self.get("memory_copy"), self.get("memory_triad")) if v)

    def to_ceilings(self) -> Ceilings:
        flops = {MathClass(k.split(".", 1)[1]): m.value for k, m in self.figures.items() if k.startswith("flops.")}
        links = {}
        pinned = [v for v in (self.get("h2d_pinned"), self.get("d2h_pinned")) if v]
        if pinned:
            links["pcie"] = max(pinned)
        if self.get("link.all_reduce_busbw"):  # collectives' bytes per rank over the link, as busbw counts them
            links["peer"] = self.get("link.all_reduce_busbw")
        measured = {"memory"} | {k.split(".", 1)[1] for k in self.figures if k.startswith("flops.")} | set(links)
        if self.device_kind == "cpu":  # no tensor cores: every class runs at the measured rates
            fp32 = flops.get(MathClass.FP32)
            for cls in MathClass:
                flops.setdefault(cls, fp32)
        return Ceilings(
            name=f"{self.device_name} (calibrated)", memory_bytes_per_s=self.memory_bytes_per_s, flops_per_s=flops,
            link_bytes_per_s=links, launch_overhead_s=self.get("launch_eager"),
            graph_launch_overhead_s=self.get("launch_graph"), source="calibrated", measured=frozenset(measured),
            device_kind=self.device_kind,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["figures"] = {k: asdict(m) for k, m in self.figures.items()}
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Calibration":
        if d.get("schema") != SCHEMA or d.get("version") != SCHEMA_VERSION:
            raise RooflightError("calibration file is not a rooflight calibration of this version; "
                                 "run `rooflight calibrate` again")
        d = {k: v for k, v in d.items() if k not in ("schema", "version")}
        d["figures"] = {k: Measurement(**m) for k, m in d["figures"].items()}
        for k, m in d["figures"].items():
            v = m.value
            if not is_amount(v, positive=True):
                raise ValueError(f"figures[{k!r}].value = {v!r}: must be a finite number above zero")
        return cls(**d)


def compare_to_datasheet(cal: Calibration, datasheet: Ceilings | None) -> list[dict]:
    """One row per measured figure with the datasheet figure it is held against and the ratio."""
    rows = []
    for key, m in cal.figures.items():
        ref = None
        if datasheet is not None:
            if key in ("memory_copy", "memory_triad"):
                ref = datasheet.memory_bytes_per_s
            elif key.startswith("flops."):
                cls = MathClass(key.split(".", 1)[1])
                ref = datasheet.flops_per_s.get(cls)
            elif key.startswith(("h2d", "d2h")):
                ref = datasheet.link("pcie")
            elif key.startswith(("link.", "curve.")):
                ref = datasheet.link_bytes_per_s.get("peer")  # NVLink each way (no PCIe stand-in here)
        rows.append({"figure": key, "value": m.value, "unit": m.unit, "datasheet": ref,
                     "ratio": m.value / ref if ref else None, "how": m.how})
    return rows


# ---------------------------------------------------------------------------- cache


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def cache_path(device_name: str) -> Path:
    return cache_dir() / "calibration" / f"{_slug(device_name)}.json"


def save(cal: Calibration) -> Path:
    return write_text_atomic(cache_path(cal.device_name), json.dumps(strict_json(cal.to_dict()), indent=1, allow_nan=False))


def load_cached(device_name: str) -> Calibration | None:
    """The cached calibration of a device, or None if there is none (or it cannot be read)."""
    p = cache_path(device_name)
    if not p.is_file():
        return None
    try:
        return Calibration.from_dict(json.loads(p.read_text()))
    except (OSError, KeyError, TypeError, RooflightError, json.JSONDecodeError):
        return None  # unreadable or of another version: as if none were cached (a new one replaces it)
    except ValueError as err:  # readable, with a number no roof can have: never used, and said
        raise RooflightError(f"{p}: {err}; delete the file or run `rooflight calibrate` again") from None


def cached() -> list[Calibration]:
    d = cache_dir() / "calibration"
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(Calibration.from_dict(json.loads(p.read_text())))
        except (OSError, ValueError, KeyError, TypeError, RooflightError):
            continue
    return out


# ---------------------------------------------------------------------------- GPU measurements


def _time_cuda(fn: Callable[[], None], iters: int, warmup: int = 3) -> float:
    """Median seconds per call, timed with CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3


def _gpu_memory(progress: Progress, quick: bool) -> dict[str, Measurement]:
    n = (1 << 28) if not quick else (1 << 26)  # fp32 elements: 1 GiB (quick: 256 MiB) per buffer
    a = torch.rand(n, device="cuda")
    b = torch.rand(n, device="cuda")
    c = torch.rand(n, device="cuda")
    progress("memory bandwidth: copy")
    t = _time_cuda(lambda: b.copy_(a), iters=20 if not quick else 10)
    copy = Measurement(2 * 4 * n / t, "bytes_per_s", f"copy of {4 * n / 2**30:.2f} GiB fp32 (read + write), median of 20")
    progress("memory bandwidth: triad")
    t = _time_cuda(lambda: torch.add(b, c, alpha=1.5, out=a), iters=20 if not quick else 10)
    triad = Measurement(3 * 4 * n / t, "bytes_per_s", f"triad a = b + 1.5c over {4 * n / 2**30:.2f} GiB fp32 "
                                                      "buffers (2 reads + 1 write), median of 20")
    del a, b, c
    return {"memory_copy": copy, "memory_triad": triad}


def _gpu_matmul(progress: Progress, quick: bool) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    n = 8192 if not quick else 4096
    cap = torch.cuda.get_device_capability()
    plans = [("bf16_tensor", torch.bfloat16, "highest"), ("fp16_tensor", torch.float16, "highest"),
             ("tf32_tensor", torch.float32, "high"), ("fp32", torch.float32, "highest")]
    previous = torch.get_float32_matmul_precision()
    try:
        for cls, dtype, precision in plans:
            if cls == "tf32_tensor" and cap < (8, 0):
                continue
            progress(f"matmul {cls}")
            torch.set_float32_matmul_precision(precision)
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            iters = 20 if dtype != torch.float32 or precision == "high" else 5
            t = _time_cuda(lambda: torch.mm(a, b), iters=iters)
            out[f"flops.{cls}"] = Measurement(2 * n**3 / t, "flops_per_s",
                                              f"{n}x{n}x{n} {str(dtype)[6:]} torch.mm (precision {precision}), "
                                              f"median of {iters}")
            del a, b
    finally:
        torch.set_float32_matmul_precision(previous)
    if cap >= (8, 9) and hasattr(torch, "float8_e4m3fn"):
        progress("matmul fp8_tensor")
        try:
            a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
            b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
            one = torch.tensor(1.0, device="cuda")
            t = _time_cuda(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), iters=20)
            out["flops.fp8_tensor"] = Measurement(2 * n**3 / t, "flops_per_s",
                                                  f"{n}x{n}x{n} e4m3 torch._scaled_mm -> bf16, median of 20")
        except (RuntimeError, TypeError) as err:
            progress(f"fp8 matmul skipped: {err}")
    if cap >= (7, 5):
        progress("matmul int8_tensor")
        try:
            a = torch.randint(-8, 8, (n, n), device="cuda", dtype=torch.int8)
            b = torch.randint(-8, 8, (n, n), device="cuda", dtype=torch.int8)
            t = _time_cuda(lambda: torch._int_mm(a, b), iters=20)
            out["flops.int8_tensor"] = Measurement(2 * n**3 / t, "flops_per_s",
                                                   f"{n}x{n}x{n} int8 torch._int_mm -> int32, median of 20")
        except (RuntimeError, TypeError) as err:
            progress(f"int8 matmul skipped: {err}")
    return out


def _gpu_launch(progress: Progress, quick: bool) -> dict[str, Measurement]:
    progress("launch overhead")
    x = torch.zeros(1, device="cuda")
    n = 2000 if not quick else 500
    for _ in range(100):
        x.add_(1)
    torch.cuda.synchronize()
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            x.add_(1)
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) / n)
    eager = Measurement(statistics.median(walls), "seconds", f"wall time per x.add_(1) on 1 element, {n} in a loop, "
                                                            "median of 5 loops")
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        x.add_(1)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(graph):
        for _ in range(n):
            x.add_(1)
    graph.replay()
    torch.cuda.synchronize()
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) / n)
    in_graph = Measurement(statistics.median(walls), "seconds", f"the same {n} ops captured in one CUDA graph, "
                                                                "wall time per op of a replay, median of 5")
    return {"launch_eager": eager, "launch_graph": in_graph}


def _gpu_pcie(progress: Progress, quick: bool) -> dict[str, Measurement]:
    n = (1 << 26) if not quick else (1 << 24)  # fp32 elements: 256 MiB (quick: 64 MiB)
    dev = torch.empty(n, device="cuda")
    out = {}
    for pinned in (True, False):
        host = torch.rand(n, pin_memory=pinned)
        kind = "pinned" if pinned else "pageable"
        progress(f"host to device ({kind})")
        t = _time_cuda(lambda: dev.copy_(host, non_blocking=pinned), iters=10)
        out[f"h2d_{kind}"] = Measurement(4 * n / t, "bytes_per_s", f"{4 * n / 2**20:.0f} MiB {kind} host -> device, "
                                                                   "median of 10")
        progress(f"device to host ({kind})")
        t = _time_cuda(lambda: host.copy_(dev, non_blocking=pinned), iters=10)
        out[f"d2h_{kind}"] = Measurement(4 * n / t, "bytes_per_s", f"{4 * n / 2**20:.0f} MiB device -> {kind} host, "
                                                                   "median of 10")
    return out


# ---------------------------------------------------------------------------- CPU measurements


def _time_host(fn: Callable[[], None], iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_all(progress: Progress, quick: bool) -> dict[str, Measurement]:
    out = {}
    n = (1 << 26) if not quick else (1 << 23)  # fp32 elements: 256 MiB (quick: 32 MiB), far beyond the caches
    a, b, c = torch.rand(n), torch.rand(n), torch.rand(n)
    progress("memory bandwidth: copy")
    t = _time_host(lambda: b.copy_(a), iters=10)
    out["memory_copy"] = Measurement(2 * 4 * n / t, "bytes_per_s", f"copy of {4 * n / 2**20:.0f} MiB fp32 "
                                                                   f"({torch.get_num_threads()} threads), median of 10")
    progress("memory bandwidth: triad")
    t = _time_host(lambda: torch.add(b, c, alpha=1.5, out=a), iters=10)
    out["memory_triad"] = Measurement(3 * 4 * n / t, "bytes_per_s", f"triad over {4 * n / 2**20:.0f} MiB fp32 "
                                                                    "buffers, median of 10")
    del a, b, c
    m = 2048 if not quick else 1024
    for cls, dtype in (("fp32", torch.float32), ("bf16_tensor", torch.bfloat16)):
        progress(f"matmul {cls}")
        x, y = torch.randn(m, m, dtype=dtype), torch.randn(m, m, dtype=dtype)
        t = _time_host(lambda: torch.mm(x, y), iters=5)
        out[f"flops.{cls}"] = Measurement(2 * m**3 / t, "flops_per_s", f"{m}x{m}x{m} {str(dtype)[6:]} torch.mm on "
                                                                       f"{torch.get_num_threads()} threads, median of 5")
    progress("dispatch overhead")
    x = torch.zeros(1)
    k = 2000
    t = _time_host(lambda: [x.add_(1) for _ in range(k)], iters=5) / k
    out["launch_eager"] = Measurement(t, "seconds", f"wall time per x.add_(1) on 1 element, {k} in a loop, median of 5")
    return out


# ---------------------------------------------------------------------------- entry point


def steps(device_kind: str, nproc: int | None = None) -> int:
    """How many progress messages a calibration sends (for a progress bar)."""
    return (14 if device_kind == "cuda" else 5) + (1 if nproc else 0)


def _interconnect(progress: Progress, n: int, device: str, quick: bool) -> dict[str, Measurement]:
    from . import interconnect as _ic

    backend = "NCCL" if device.startswith("cuda") else "gloo"
    progress(f"interconnect: all-reduce and all-gather over {n} ranks ({backend})")
    points = _ic.measure(n, device, quick=quick)
    out = {}
    for p in points:
        if p.kind != "p2p_copy":
            out[f"curve.{p.kind}.{p.size}"] = Measurement(
                p.busbw, "bytes_per_s", f"{p.kind} of {p.size} B over {n} ranks ({backend}): {p.seconds * 1e6:.1f} us "
                                        f"a call, algorithm bandwidth {p.algbw / 1e9:.3g} GB/s")
    for kind in (*_ic.KINDS, "p2p_copy"):
        top = _ic.plateau(points, kind)
        if top is None:
            continue
        key = "link.p2p_copy" if kind == "p2p_copy" else f"link.{kind}_busbw"
        how = (f"GPU 0 -> GPU 1 copy of {top.size} B, best of the {_ic.PLATEAU_SIZES} largest sizes" if kind == "p2p_copy"
               else f"{kind} over {n} ranks ({backend}): best bus bandwidth of the {_ic.PLATEAU_SIZES} largest sizes "
                    f"(at {top.size} B; nccl-tests' busbw)")
        out[key] = Measurement(top.busbw, "bytes_per_s", how)
    return out


def calibrate(device: str = "auto", *, progress: Progress | None = None, quick: bool = False,
              spec_key: str = "", nproc: int | None = None) -> Calibration:
    """Measure the ceilings of this machine's GPU (device="cuda"), or its CPU (device="cpu"); with
    nproc, also the interconnect between that many ranks (rooflight.interconnect)."""
    progress = progress or (lambda _msg: None)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NoGPUError("no CUDA GPU on this machine: calibrate the CPU with `rooflight calibrate --device cpu`")
        name = torch.cuda.get_device_name()
        figures = {}
        figures.update(_gpu_memory(progress, quick))
        figures.update(_gpu_matmul(progress, quick))
        figures.update(_gpu_launch(progress, quick))
        figures.update(_gpu_pcie(progress, quick))
        kind = "cuda"
    else:
        name = describe_cpu().model
        figures = _cpu_all(progress, quick)
        kind = "cpu"
    if nproc:
        figures.update(_interconnect(progress, nproc, kind, quick))
    return Calibration(kind, name, spec_key, torch.__version__, now_iso(), round(time.perf_counter() - t0, 2),
                       figures)
