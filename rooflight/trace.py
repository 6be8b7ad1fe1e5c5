"""Reading a Kineto trace (torch.profiler's chrome-trace JSON) and joining GPU work to host ranges.

A device event (kernel, memcpy, memset) carries a `correlation` id shared with the runtime call
that launched it (cudaLaunchKernel, cudaMemcpyAsync, cudaGraphLaunch ...).  That call happened on
a host thread at a known time, inside whatever ranges were open there: aten ops (`cpu_op`) and
profiler labels (`user_annotation`: rooflight's `rooflight.op:N`, `rooflight.region:PATH`,
`rooflight.repeat:I`).  Joining is therefore: device event -> launch (by correlation) -> the
stack of ranges open on the launching thread at that moment (found by one sweep per thread).
Regions and repeats are process-wide (rooflight.regions: the autograd engine runs a backward's
ops on its own thread, in the caller's region): a launch on a thread with no repeat label open
takes the repeat and region labels open on any thread at that moment (one more sweep).

Pure functions of the trace dict: the test-suite runs them on a trace recorded on an H100.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

DEVICE_CATEGORIES = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
OP_PREFIX = "rooflight.op:"
REGION_PREFIX = "rooflight.region:"
REPEAT_PREFIX = "rooflight.repeat:"


@dataclass(frozen=True)
class HostRange:
    name: str
    cat: str  # "cpu_op" or "user_annotation"
    tid: Any
    start_us: float
    end_us: float

    @property
    def seconds(self) -> float:
        return (self.end_us - self.start_us) * 1e-6


@dataclass(frozen=True)
class DeviceEvent:
    """A kernel/memcpy/memset joined to the host ranges open when it was launched."""

    name: str
    kind: str  # "kernel", "memcpy", "memset"
    start_us: float
    end_us: float
    stream: Any
    correlation: int
    grid: tuple[int, ...]
    block: tuple[int, ...]
    launch_us: float  # when the host launched it (nan if the launch was not in the trace)
    op_index: int  # from the innermost `rooflight.op:N` label, else -1
    region: str  # from the innermost `rooflight.region:PATH` label, else ""
    repeat: int  # from `rooflight.repeat:I`, else -1
    top_op: HostRange | None  # the outermost aten op open on the launching thread

    @property
    def seconds(self) -> float:
        return (self.end_us - self.start_us) * 1e-6


@dataclass(frozen=True)
class Trace:
    device_events: tuple[DeviceEvent, ...]  # in launch order (then GPU start order)
    annotations: tuple[HostRange, ...]  # user_annotation ranges on the host
    cpu_ops: tuple[HostRange, ...]


def read_trace(path: str | Path) -> dict:
    """A chrome-trace JSON file (optionally .gz) as a dict."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _num(x: Any, default: float = float("nan")) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def parse(trace: Mapping[str, Any]) -> Trace:
    events = trace.get("traceEvents", trace if isinstance(trace, list) else [])
    ranges: dict[Any, list[HostRange]] = {}
    launches: dict[int, tuple[Any, float]] = {}
    raw_device: list[Mapping[str, Any]] = []
    for ev in events:
        if ev.get("ph") != "X":
            continue
        cat = ev.get("cat", "")
        args = ev.get("args") or {}
        start, dur = _num(ev.get("ts")), _num(ev.get("dur"), 0.0)
        if cat in ("cpu_op", "user_annotation"):
            ranges.setdefault(ev.get("tid"), []).append(HostRange(ev.get("name", ""), cat, ev.get("tid"), start, start + dur))
        elif cat in LAUNCH_CATEGORIES and "correlation" in args:
            launches[int(args["correlation"])] = (ev.get("tid"), start)
        elif cat in DEVICE_CATEGORIES:
            raw_device.append(ev)

    # one sweep per host thread: which ranges are open at each launch
    points_by_tid: dict[Any, list[tuple[float, int]]] = {}
    for corr, (tid, ts) in launches.items():
        points_by_tid.setdefault(tid, []).append((ts, corr))
    by_launch: dict[int, list[HostRange]] = {}
    for tid, points in points_by_tid.items():
        by_launch.update(_open_at(ranges.get(tid, []), points))
    # and one over every thread's process-wide labels, for the launches with no repeat open on their own thread
    shared = [r for rs in ranges.values() for r in rs
              if r.cat == "user_annotation" and r.name.startswith((REGION_PREFIX, REPEAT_PREFIX))]
    orphans = [p for points in points_by_tid.values() for p in points
               if not any(r.name.startswith(REPEAT_PREFIX) for r in by_launch[p[1]])]
    anywhere = _open_at(shared, orphans) if shared and orphans else {}

    device: list[DeviceEvent] = []
    for ev in raw_device:
        args = ev.get("args") or {}
        corr = int(args.get("correlation", -1))
        op_index, region, repeat, top_op = -1, None, -1, None
        for r in by_launch.get(corr, []):  # outermost first: the innermost label wins
            if r.cat == "user_annotation":
                if r.name.startswith(OP_PREFIX):
                    op_index = int(r.name[len(OP_PREFIX):])
                elif r.name.startswith(REGION_PREFIX):
                    region = r.name[len(REGION_PREFIX):]
                elif r.name.startswith(REPEAT_PREFIX):
                    repeat = int(r.name[len(REPEAT_PREFIX):])
            elif r.cat == "cpu_op" and top_op is None:
                top_op = r
        if repeat < 0:  # launched outside the run's own thread (autograd's): the labels open anywhere
            own_region = region is not None
            for r in anywhere.get(corr, []):  # outermost first: the innermost region wins
                if r.name.startswith(REPEAT_PREFIX):
                    repeat = int(r.name[len(REPEAT_PREFIX):])
                elif r.name.startswith(REGION_PREFIX) and not own_region:
                    region = r.name[len(REGION_PREFIX):]
        region = region or ""
        start = _num(ev.get("ts"))
        launch = launches.get(corr)
        device.append(DeviceEvent(
            name=ev.get("name", ""), kind=DEVICE_CATEGORIES[ev.get("cat")], start_us=start,
            end_us=start + _num(ev.get("dur"), 0.0), stream=args.get("stream", ev.get("tid")), correlation=corr,
            grid=tuple(int(x) for x in args.get("grid", ()) or ()), block=tuple(int(x) for x in args.get("block", ()) or ()),
            launch_us=launch[1] if launch else float("nan"), op_index=op_index, region=region, repeat=repeat,
            top_op=top_op,
        ))
    device.sort(key=lambda d: (d.launch_us if d.launch_us == d.launch_us else d.start_us, d.correlation, d.start_us))
    annotations = tuple(r for rs in ranges.values() for r in rs if r.cat == "user_annotation")
    cpu_ops = tuple(r for rs in ranges.values() for r in rs if r.cat == "cpu_op")
    return Trace(tuple(device), annotations, cpu_ops)


def _open_at(spans: Iterable[HostRange], points: Iterable[tuple[float, int]]) -> dict[int, list[HostRange]]:
    """For each launch (time, correlation), the ranges of `spans` open at that time, outermost
    first (one sweep; the spans nest, as one thread's do)."""
    spans = sorted(spans, key=lambda r: (r.start_us, -r.end_us))
    out: dict[int, list[HostRange]] = {}
    stack: list[HostRange] = []
    i = 0
    for ts, corr in sorted(points):
        while i < len(spans) and spans[i].start_us <= ts:
            while stack and stack[-1].end_us < spans[i].start_us:
                stack.pop()
            stack.append(spans[i])
            i += 1
        while stack and stack[-1].end_us < ts:
            stack.pop()
        # ranges on one thread nest, but an outer range can close before an inner one in a
        # trace with clock jitter: keep only those that really contain the launch
        out[corr] = [r for r in stack if r.start_us <= ts <= r.end_us]
    return out


def union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of [start, end) intervals, as sorted disjoint intervals."""
    out: list[tuple[float, float]] = []
    for a, b in sorted((a, b) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length of disjoint intervals (a union's)."""
    return sum(b - a for a, b in intervals)


def overlap(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> float:
    """Total length of the overlap of two unions (each sorted and disjoint, as `union` gives)."""
    i = j = 0
    total = 0.0
    while i < len(x) and j < len(y):
        lo, hi = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if hi > lo:
            total += hi - lo
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals, in seconds (inputs in µs)."""
    return length(union(intervals)) * 1e-6


def align_to_ops(reference: list[str], reference_ops: list[int], observed: list[str]) -> tuple[list[int], list[int]]:
    """(positions, ops) of each observed kernel: its position in the reference sequence (-1 where
    the sequences disagree, as `align`) and the op that launched it.  Where the sequences disagree,
    a run of observed kernels that stands in place of reference kernels all launched by one op (a
    compiled kernel where the labelled run had that op's eager kernels; a different algorithm the
    library picked this time) is joined to that op; so is a run inserted between two kernels of one
    op.  Reference kernels that no op launched (-1) are passed over.  Anything else keeps op -1."""
    if reference == observed:
        return list(range(len(observed))), [reference_ops[i] for i in range(len(observed))]
    import difflib

    pos = [-1] * len(observed)
    ops = [-1] * len(observed)
    matcher = difflib.SequenceMatcher(a=reference, b=observed, autojunk=False)
    for tag, a1, a2, b1, b2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(b2 - b1):
                pos[b1 + k], ops[b1 + k] = a1 + k, reference_ops[a1 + k]
            continue
        if tag == "delete":
            continue
        if tag == "replace":  # kernels no op launched (rooflight's own copies in the labelled run) own nothing
            owners = {o for o in reference_ops[a1:a2] if o >= 0}
        else:  # insert: between the nearest labelled reference kernels before and after it
            before = next((o for o in reversed(reference_ops[:a1]) if o >= 0), -1)
            after = next((o for o in reference_ops[a1:] if o >= 0), -1)
            owners = {before, after}
        if len(owners) == 1 and next(iter(owners)) >= 0:
            for k in range(b1, b2):
                ops[k] = next(iter(owners))
    return pos, ops
