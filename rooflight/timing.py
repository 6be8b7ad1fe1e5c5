"""Timing a workload: every op's GPU time from the profiler's kernel activity, or CPU wall time.

On a GPU, two kinds of pass run after the warm-up:

1. one LABELLED pass: the capture records every op with its cost and wraps it in a profiler
   label `rooflight.op:N`, so each kernel can be joined to the op that launched it (through the
   launch's correlation id, see trace.py).  Its times are not used: the capture's Python work
   between ops would inflate them.
2. `repeats` PLAIN passes under torch.profiler with no capture at all, each inside a
   `rooflight.repeat:I` label.  Their kernels are matched to the labelled pass's by position
   and name (eager PyTorch launches the same kernels in the same order each time), which gives
   every op its kernel time per repeat; the outermost aten op open at each launch gives its CPU
   dispatch time; region labels give each region's wall time and the GPU's idle gaps.

Options: `flush_l2` writes a buffer twice the L2 size before each repeat (cold-cache numbers);
`cuda_graph` captures the workload in a CUDA graph once and times its replays.

On a CPU the same API times each op's wall time directly (a light dispatch mode around each op),
and every output says these are CPU results.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

import torch

from . import regions as _regions
from . import trace as _trace
from .capture import Capture
from .errors import NoGPUError, UsageError
from .steps import BETWEEN, SETUP, TEARDOWN, UNMARKED
from .units import fmt_seconds
from .profile_data import KernelRecord, OpTiming, Profile, RegionTiming, Timing, region_and_ancestors


def _stats(xs: list[float]) -> tuple[float, float, float]:
    if not xs:
        return math.nan, math.nan, math.nan
    return statistics.median(xs), min(xs), max(xs)


def profile(fn: Callable[..., Any], *args: Any, warmup: int = 3, repeats: int = 10, flush_l2: bool = False,
            cuda_graph: bool = False, device: str | None = None, workload: str = "",
            params: dict | None = None, steps: bool = False, select_steps: tuple[int, int | None] | None = None,
            single_pass: bool = False, **kwargs: Any) -> Profile:
    """Count and time `fn(*args, **kwargs)`: a Profile whose ops carry measured times.

    device: "cuda" or "cpu" says where to take times from; by default the device the workload's
    ops ran on (a workload on CPU tensors is timed on the CPU even where a GPU exists).
    steps: cut the run into setup, steps and teardown (rooflight.steps).  single_pass: run `fn`
    once: kernel times from the counted pass itself (host-side times then include the capture's
    cost, and say so); otherwise it runs warmup + 1 counted + repeats timed times on a GPU,
    warmup + 2 x repeats on a CPU, where a run with no warm-up first runs once more, untimed
    (FIRST_RUN_NOTE).
    """
    if repeats < 1 or warmup < 0:
        raise UsageError(f"repeats must be >= 1 and warmup >= 0 (got repeats={repeats}, warmup={warmup})")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPUError("timing on 'cuda' was asked for, but this machine has no CUDA GPU; "
                         "time on the CPU (--device cpu) or count only (--count-only)")
    if single_pass and (warmup or cuda_graph or flush_l2):
        raise UsageError("a single pass runs the workload once: no warm-up runs, no CUDA graph, no L2 flush")
    name = workload or getattr(fn, "__qualname__", type(fn).__name__)
    _WORKLOAD.set(name)
    seg = dict(steps=steps, select_steps=select_steps)
    for _ in range(warmup):
        fn(*args, **kwargs)
    _sync()
    on_gpu = torch.cuda.is_available() and device != "cpu"
    if on_gpu:
        counted, trace_labelled = _labelled_pass(fn, args, kwargs, seg)
        if not _any_on_gpu(counted) and device is None:
            on_gpu = False  # the workload runs on CPU tensors: time it there
            if single_pass:
                raise UsageError("a single pass on the CPU needs device='cpu' from the start (the workload ran "
                                 "on CPU tensors)")
    if not on_gpu:
        if cuda_graph:
            raise UsageError("cuda_graph needs a workload on a CUDA GPU")
        return _profile_cpu(fn, args, kwargs, warmup, 1 if single_pass else repeats, name, params, seg,
                            single_pass=single_pass)
    if single_pass:
        timing = _time_single_pass(counted, trace_labelled)
    else:
        timing = _time_gpu(fn, args, kwargs, counted, trace_labelled, warmup, repeats, flush_l2, cuda_graph)
    return replace(counted, workload=name, mode="timed", timing=timing, params=dict(params or {}))


def _any_on_gpu(prof: Profile) -> bool:
    """Whether any op ran on a CUDA device (Profile.device is the most common one: a small model
    initialised on the CPU and moved to the GPU runs more CPU ops than GPU ones)."""
    return any(o.device.startswith("cuda") for o in prof.ops)


FIRST_RUN_NOTE = ("the workload ran once first, untimed: a process's first calls pay one-time set-up (the math "
                  "libraries' kernels and thread pools), which would land on the first ops' times")
COMPILED_CPU_NOTE = ("the model is torch.compile'd: the capture ran its eager op graph (set_stance('force_eager')), "
                     "so on the CPU each op's time is the eager op's, not the compiled code's, which fuses ops; "
                     "step and whole-run wall times come from the compiled runs")
SINGLE_PASS_NOTE = ("single pass: the workload ran once, counted and timed together; kernel times are the GPU's "
                    "own, but host-side times (wall, GPU idle, CPU dispatch) include the capture's per-op cost")


def _time_single_pass(counted: Profile, labelled_raw: dict) -> Timing:
    """Kernel times from the counted pass's own trace (its kernels are labelled with their ops)."""
    labelled = _trace.parse(labelled_raw)
    ref = [d for d in labelled.device_events if d.repeat == 0]
    return aggregate_gpu(labelled, [d.name for d in ref], [d.op_index for d in ref], counted, repeats=1, warmup=0,
                         notes=[SINGLE_PASS_NOTE], device_name=torch.cuda.get_device_name(torch.cuda.current_device()))


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# `keep_traces()` collects the profiler's raw traces (Chrome trace JSON, which Perfetto and
# Holistic Trace Analysis open) instead of dropping them: (workload, pass, trace) in run order
_TRACES: contextvars.ContextVar[list | None] = contextvars.ContextVar("rooflight_traces", default=None)
_WORKLOAD: contextvars.ContextVar[str] = contextvars.ContextVar("rooflight_trace_workload", default="")
_POINT: contextvars.ContextVar[str] = contextvars.ContextVar("rooflight_trace_point", default="")


@contextlib.contextmanager
def trace_name(name: str) -> Iterator[None]:
    """Name the traces kept inside (a model file's point: `block__seq-64`), over the workload's name."""
    token = _POINT.set(name)
    try:
        yield
    finally:
        _POINT.reset(token)


@contextlib.contextmanager
def keep_traces() -> Iterator[list[tuple[str, str, dict]]]:
    """Inside it, every profiled pass's trace is kept in the yielded list (nothing is written)."""
    sink: list[tuple[str, str, dict]] = []
    token = _TRACES.set(sink)
    try:
        yield sink
    finally:
        _TRACES.reset(token)


def _run_profiler(body: Callable[[], None], *, cuda: bool, name: str = "timed") -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tprofile(activities=activities, record_shapes=False) as prof:
        body()
    fd, path = tempfile.mkstemp(suffix=".json", prefix="rooflight-trace-")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    finally:
        os.unlink(path)
    sink = _TRACES.get()
    if sink is not None:
        sink.append((_POINT.get() or _WORKLOAD.get(), name, raw))
    return raw


def _labelled_pass(fn, args, kwargs, seg: dict) -> tuple[Profile, dict]:
    cap = Capture(label_ops=True, **seg)

    def body():
        with cap, torch.profiler.record_function(f"{_trace.REPEAT_PREFIX}0"):
            fn(*args, **kwargs)
            _sync()

    raw = _run_profiler(body, cuda=True, name="labelled")
    return cap.profile(mode="count"), raw


def _time_gpu(fn, args, kwargs, counted: Profile, labelled_raw: dict, warmup: int, repeats: int,
              flush_l2: bool, cuda_graph: bool) -> Timing:
    notes: list[str] = []
    labelled = [d for d in _trace.parse(labelled_raw).device_events if d.repeat == 0]
    ref_names = [d.name for d in labelled]
    ref_ops = [d.op_index for d in labelled]
    if labelled and all(i < 0 for i in ref_ops):
        notes.append("no kernel could be joined to an op label: per-op times are missing")

    flush_buf = None
    if flush_l2:
        l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size or 64 * 2**20
        flush_buf = torch.empty(2 * l2 // 4, dtype=torch.int32, device="cuda")

    run = lambda: fn(*args, **kwargs)  # noqa: E731
    if cuda_graph:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(max(warmup, 2)):
                fn(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            fn(*args, **kwargs)
        run = graph.replay
        notes.append("run as a CUDA graph: kernels are matched to ops by their order in the eager run")

    def body():
        for i in range(repeats):
            if flush_buf is not None:
                with torch.profiler.record_function("rooflight.flush_l2"):
                    flush_buf.zero_()
                    torch.cuda.synchronize()
            with torch.profiler.record_function(f"{_trace.REPEAT_PREFIX}{i}"):
                run()
                torch.cuda.synchronize()

    timed = _trace.parse(_run_profiler(body, cuda=True))
    plain = []
    step_walls: dict[str, list[float]] = {}
    between: list[float] = []
    auto = [st for st in counted.steps if st.kind != "marked" and st.module] if not cuda_graph else []
    unrecorded = False
    for _ in range(repeats):
        with _StepCalls(auto, _cuda_mark) as calls:
            t0 = time.perf_counter()
            run()
            calls.end()
            torch.cuda.synchronize()
            plain.append(time.perf_counter() - t0)
        marks = _step_marks(auto, calls.starts, calls.ends, calls.last, calls.side) if not unrecorded else None
        if marks:
            try:
                # a step runs to the next one's start, the last to the end; a forward-only step is its call
                walls = [(st.name, a.elapsed_time(c if st.kind == "forward" else b) * 1e-3)
                         for st, (a, b, c) in zip(auto, marks)]
                # the loop's own code between forward-only steps: from one call's end to the next's start
                gap = sum(c.elapsed_time(b) * 1e-3 for st, (_, b, c) in zip(auto[:-1], marks) if st.kind == "forward")
            except (RuntimeError, ValueError):
                # an event never recorded: a model call compiled with its hooks inside (a static-cache
                # generate() compiles the forward), or captured into a CUDA graph
                unrecorded = True
                step_walls.clear()
                continue
            for name, w in walls:
                step_walls.setdefault(name, []).append(w)
            between.append(gap)
    result = aggregate_gpu(timed, ref_names, ref_ops, counted, repeats=repeats, warmup=warmup, flush_l2=flush_l2,
                           cuda_graph=cuda_graph, notes=notes,
                           device_name=torch.cuda.get_device_name(torch.cuda.current_device()))
    wall = statistics.median(plain)
    total = result.total
    profiled = total.wall_seconds if total else math.nan
    if profiled > 1.1 * wall:
        # the profiler's per-op cost stretches the host side; the whole run's wall time (and so its
        # GPU idle time) is taken from the plain runs, the regions' from the profiled ones
        regions = tuple(replace(r, wall_seconds=max(wall, r.busy_seconds)) if r.region == "" else r
                        for r in result.regions)
        result = replace(result, regions=regions, notes=result.notes + (
            f"under the profiler a run took {fmt_seconds(profiled)}, without it {fmt_seconds(wall)}: the whole "
            "run's idle time uses the plain figure; regions' wall and idle times and CPU dispatch times "
            "include the profiler's per-op cost",))
    if unrecorded:
        result = replace(result, notes=result.notes + (
            "steps' wall times come from the profiled runs: the CUDA events marking each model call in the runs "
            "without the profiler were not recorded (a compiled or graph-captured call)",))
    if step_walls and len(step_walls) == len(auto):
        # steps timed on the GPU's own timeline in the plain runs: a CUDA event at each model call,
        # no profiler stretching the host side; the last step runs to the end of the run, less the
        # teardown the profiled runs measured
        tear = result.region(TEARDOWN)
        walls = {n: statistics.median(v) for n, v in step_walls.items()}
        if any(st.kind == "forward" for st in auto[:-1]):
            walls[BETWEEN] = statistics.median(between)
        if tear is not None and auto and auto[-1].kind != "forward":
            walls[auto[-1].name] = max(walls[auto[-1].name] - tear.wall_seconds, 0.0)
        regions = tuple(replace(r, wall_seconds=max(walls[r.region], r.busy_seconds)) if r.region in walls else r
                        for r in result.regions)
        result = replace(result, regions=regions, notes=result.notes + (
            "steps' wall times come from CUDA events at each model call in the runs without the profiler "
            "(the GPU's own timeline); their busy times from the profiled runs' kernels",))
    return replace(result, plain_wall_seconds=wall)


class _StepCalls:
    """The outermost calls of a script's step module in a run without the capture, timed by light
    module hooks on a `clock` (time.perf_counter on the CPU; on a GPU a CUDA event recorded on the
    stream, so the marks sit on the GPU's own timeline): a mark at each call's start and at its
    end, and `end()` marks the end of the run; and the starts of another model's calls that begin
    a step (Step.begins_instance: a DPO reference's, before the policy's).  Instances are found
    again by their place in first-call order among the outermost-called modules (Step.instance).

    Global module hooks run at every module call (each submodule of every layer), which stretches
    the very host time these runs measure: they only find the instances; once each has been seen,
    only hooks on those instances mark their calls."""

    def __init__(self, steps, clock: Callable[[], Any]):
        self.module = steps[0].module if steps else ""
        self.instance = steps[0].instance if steps else 0
        self.wanted = {self.instance} | {st.begins_instance for st in steps if st.begins_instance >= 0}
        self.clock = clock
        self.starts: list = []  # the step module's calls
        self.ends: list = []
        self.side: dict[int, list] = {}  # place -> the starts of that instance's outermost calls
        self.last = None
        self.depth = 0
        self.places: dict[int, int] = {}  # id(module) -> its place in first-call order
        self.found: dict[int, int] = {}  # id(module) -> place, for the wanted instances seen
        self.hooks: list = []
        self.global_hooks: list = []

    def __enter__(self) -> "_StepCalls":
        if self.module:
            from torch.nn.modules import module as _m

            self.global_hooks = [_m.register_module_forward_pre_hook(self._pre),
                                 _m.register_module_forward_hook(self._post, always_call=True)]
        return self

    def _mark_start(self, place: int) -> None:
        mark = self.clock()
        if place == self.instance:
            self.starts.append(mark)
        else:
            self.side.setdefault(place, []).append(mark)

    def _pre(self, module, *_a) -> None:
        if id(module) in self.found:
            return  # its own hooks count it
        if self.depth == 0:
            place = self.places.setdefault(id(module), len(self.places))
            if place in self.wanted:
                self._mark_start(place)
                self.found[id(module)] = place
                # from now on its calls are marked by hooks of its own (the end hook runs for this call too)
                self.hooks += [module.register_forward_pre_hook(self._instance_pre),
                               module.register_forward_hook(self._instance_post, always_call=True)]
                self.depth = 1
                if len(self.found) == len(self.wanted):
                    for h in self.global_hooks:
                        h.remove()
                    self.global_hooks = []
                return
        self.depth += 1

    def _post(self, module, *_a) -> None:
        if id(module) not in self.found:
            self.depth -= 1

    def _instance_pre(self, module, *_a) -> None:
        if self.depth == 0:
            self._mark_start(self.found[id(module)])
        self.depth += 1

    def _instance_post(self, module, *_a) -> None:
        self.depth -= 1
        if self.depth == 0 and self.found[id(module)] == self.instance:
            self.ends.append(self.clock())

    def end(self) -> None:
        if self.module:
            self.last = self.clock()

    def __exit__(self, *exc) -> None:
        for h in self.hooks + self.global_hooks:
            h.remove()


def _step_marks(auto, starts: list, ends: list, last=None, side: dict | None = None
                ) -> list[tuple[Any, Any, Any]] | None:
    """Each step's (start, the next step's start (the last step: `last`), its last call's end)
    from the marks of its model calls (a training iteration of gradient accumulation holds
    several: Step.calls); a step begun by another model's call starts at that call's mark (`side`:
    place -> starts); None when the marks do not match the steps' calls."""
    firsts = [0]
    for st in auto:
        firsts.append(firsts[-1] + st.calls)
    if not auto or len(starts) != firsts[-1] or len(ends) != len(starts):
        return None
    side = side or {}
    begins = []
    for k, st in enumerate(auto):
        if st.begins_instance < 0:
            begins.append(starts[firsts[k]])
        elif 0 <= st.begins_call < len(side.get(st.begins_instance, ())):
            begins.append(side[st.begins_instance][st.begins_call])
        else:
            return None
    return [(begins[k], begins[k + 1] if k + 1 < len(auto) else last, ends[firsts[k + 1] - 1])
            for k in range(len(auto))]


def _cuda_mark():
    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    return ev


def tile_steps(steps, bounds: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each step's wall time as the span from its first activity to the next step's first (the
    last step: to its own last): steps tile the run, so the host's work between two model calls
    (a decode loop's sampling, an optimizer's bookkeeping) belongs to the step it follows.  A
    forward-only step is its model call alone (its own span): the loop's code between calls is
    not the model's (rooflight.steps).  A marked step is the script's own region: its time is its
    entries' (one region entered in every layer is one step), and what lies between marked steps
    is the region "unmarked" (left_by_steps)."""
    timed = [st for st in steps if st.name in bounds and st.kind != "marked"]
    out = {}
    for st, nxt in zip(timed, timed[1:] + [None]):
        start, end = bounds[st.name]
        out[st.name] = (bounds[nxt.name][0] if nxt is not None and st.kind != "forward" else end) - start
    return out


def region_entries(annotations, spans: list[tuple[float, float]], launches: list[float],
                   run: list[tuple[float, float]] = ()) -> list[tuple[float, float]]:
    """A region's extent in one run on the GPU's timeline, entry by entry.  An entry (a host range
    of its label) runs from its first kernel's start to its last kernel's end, widened by the GPU
    idle time next to them while the host was inside the entry (before its first kernel, no other
    kernel running since the host entered; after its last, none started before the host left):
    that idle is the region's.  The host runs ahead of the GPU, so an entry's host range alone
    would overlap the kernels of the code before it.  An entry that launched nothing is its host
    range; a kernel launched inside no entry is an extent of its own.  A region entered in each
    of 32 layers is 32 entries, not the forward from the first to the last: the work between them
    is not its idle time.  A region with no label of its own (setup, a step: its ops' region) is
    one extent, from its first kernel to its last.  run: every kernel span of the run."""
    if not annotations:
        return [(min(s for s, _ in spans), max(e for _, e in spans))]
    ranges = sorted((a.start_us, a.end_us) for a in annotations)
    los = [lo for lo, _ in ranges]
    mine: list[list[tuple[float, float]]] = [[] for _ in ranges]
    alone = []
    for span, at in zip(spans, launches):
        k = bisect.bisect_right(los, at) - 1  # the last entry opened by then (entries of one region do not nest)
        (mine[k] if k >= 0 and at <= ranges[k][1] else alone).append(span)
    ends = sorted(e for _, e in run)
    starts = sorted(s for s, _ in run)
    out = []
    for (lo, hi), ks in zip(ranges, mine):
        if not ks:
            out.append((lo, hi))
            continue
        first, last = min(s for s, _ in ks), max(e for _, e in ks)
        before = ends[bisect.bisect_right(ends, first) - 1] if bisect.bisect_right(ends, first) else -math.inf
        after = starts[bisect.bisect_left(starts, last)] if bisect.bisect_left(starts, last) < len(starts) else math.inf
        out.append((min(first, max(lo, before)), max(last, min(hi, after))))
    return out + alone


def left_by_steps(steps, bounds: dict[str, tuple[float, float]], walls: dict[str, float]) -> dict[str, float]:
    """The parts of a run that lie between its steps, as wall time: the loop's code between two
    forward-only steps (BETWEEN: from one call's end to the next's start) and, in a run cut by
    its own marks, what lies between the marked steps' entries (UNMARKED: the marked stretch less
    the steps' own walls).  Their ops are scattered between the steps: the span from their first
    to their last would hold the steps themselves.  bounds: each region's first start and last
    end; walls: each region's wall time, in the same unit."""
    timed = [st for st in steps if st.name in bounds]
    out = {}
    fwd = [max(0.0, bounds[nxt.name][0] - bounds[st.name][1]) for st, nxt in zip(timed, timed[1:])
           if st.kind == "forward"]
    if fwd:
        out[BETWEEN] = sum(fwd)
    marked = [st.name for st in timed if st.kind == "marked" and st.name in walls]
    if marked:
        stretch = max(bounds[n][1] for n in marked) - min(bounds[n][0] for n in marked)
        out[UNMARKED] = max(0.0, stretch - sum(walls[n] for n in marked))
    return out


def from_traces(counted: Profile, labelled: _trace.Trace, plain: _trace.Trace, *, repeats: int, warmup: int,
                device_name: str, flush_l2: bool = False, cuda_graph: bool = False, workload: str = "") -> Profile:
    """A timed profile from recorded traces (no GPU needed): `counted` is the labelled pass's
    profile, `labelled` its parsed trace (kernels carry their op labels), `plain` the parsed trace
    of the `repeats` plain passes.  What `profile` does on a GPU, from files."""
    ref = [d for d in labelled.device_events if d.repeat == 0]
    t = aggregate_gpu(plain, [d.name for d in ref], [d.op_index for d in ref], counted, repeats=repeats,
                      warmup=warmup, flush_l2=flush_l2, cuda_graph=cuda_graph, device_name=device_name)
    return replace(counted, mode="timed", timing=t, workload=workload or counted.workload)


def aggregate_gpu(timed: _trace.Trace, ref_names: list[str], ref_ops: list[int], counted: Profile, *,
                  repeats: int, warmup: int, device_name: str, flush_l2: bool = False, cuda_graph: bool = False,
                  notes: list[str] | None = None) -> Timing:
    """Per-op, per-kernel and per-region times from the plain passes' trace (pure: no GPU needed):
    `ref_names`/`ref_ops` are the labelled pass's kernel names and the op that launched each."""
    notes = list(notes or [])
    by_repeat: dict[int, list[_trace.DeviceEvent]] = {i: [] for i in range(repeats)}
    for d in timed.device_events:
        if d.repeat in by_repeat:
            by_repeat[d.repeat].append(d)
    if cuda_graph:  # one launch for the whole graph: order kernels by when they ran
        for evs in by_repeat.values():
            evs.sort(key=lambda d: d.start_us)
    repeat_ranges = {int(a.name[len(_trace.REPEAT_PREFIX):]): a for a in timed.annotations
                     if a.name.startswith(_trace.REPEAT_PREFIX)}

    op_seconds: dict[int, list[float]] = {}
    op_cpu: dict[int, list[float]] = {}
    op_kernels: dict[int, int] = {}
    kernel_seconds: dict[int, list[float]] = {}  # position in the reference sequence -> times
    kernel_meta: dict[int, _trace.DeviceEvent] = {}
    unmatched = substituted = 0
    region_rows: dict[str, dict[str, list[float]]] = {}
    comm_ops = {o.index for o in counted.ops if o.link == "peer"}  # collectives (host<->device copies are "pcie")
    region_of_op = {o.index: o.region for o in counted.ops}
    for i, evs in by_repeat.items():
        positions, owners = _trace.align_to_ops(ref_names, ref_ops, [d.name for d in evs])
        per_op: dict[int, float] = {}
        per_op_cpu: dict[int, dict[tuple, float]] = {}
        seen: dict[tuple, int] = {}
        for d, pos, op in zip(evs, positions, owners):
            if pos < 0 and op < 0:
                unmatched += 1
                continue
            if pos < 0:  # stands in for kernels of op `op` in the labelled run: keyed by op, name, order
                substituted += 1
                n = seen[(op, d.name)] = seen.get((op, d.name), -1) + 1
                key = (op, d.name, n)
            else:
                key = pos
            kernel_seconds.setdefault(key, []).append(d.seconds)
            kernel_meta.setdefault(key, d)
            if op < 0:
                continue
            per_op[op] = per_op.get(op, 0.0) + d.seconds
            if d.top_op is not None and not cuda_graph:
                key = (d.top_op.start_us, d.top_op.end_us)
                per_op_cpu.setdefault(op, {})[key] = d.top_op.seconds
        for op, s in per_op.items():
            op_seconds.setdefault(op, []).append(s)
            if op in per_op_cpu:
                op_cpu.setdefault(op, []).append(sum(per_op_cpu[op].values()))
        if i == 0:  # kernels per op as this run launched them
            op_kernels = {}
            for op in owners:
                if op >= 0:
                    op_kernels[op] = op_kernels.get(op, 0) + 1
        # regions: the whole run ("") and each region path (with its parents)
        groups: dict[str, list[tuple[float, float]]] = {"": []}
        launches: dict[str, list[float]] = {"": []}  # when each kernel of groups[path] was launched
        # the collectives' kernels and the compute kernels beside them, per region: exposed communication
        comm_spans: dict[str, list[tuple[float, float]]] = {}
        compute_spans: dict[str, list[tuple[float, float]]] = {}
        for d, op in zip(evs, owners):
            region = region_of_op.get(op, "") if op >= 0 else d.region
            paths = ["", *region_and_ancestors(region, counted.regions)]
            side = None if d.kind != "kernel" else comm_spans if (
                op in comm_ops if op >= 0 else "nccl" in d.name.lower()) else compute_spans
            for path in paths:
                groups.setdefault(path, []).append((d.start_us, d.end_us))
                launches.setdefault(path, []).append(d.launch_us if math.isfinite(d.launch_us) else d.start_us)
                if side is not None:
                    side.setdefault(path, []).append((d.start_us, d.end_us))
        rr = repeat_ranges.get(i)
        bounds: dict[str, tuple[float, float]] = {}
        for region, spans in groups.items():
            row = region_rows.setdefault(region, {"wall": [], "busy": [], "cpu": [], "comm": [], "exposed": []})
            busy = _trace.union_seconds(spans)
            comm = _trace.union(comm_spans.get(region, ()))
            comm_us = _trace.length(comm)
            row["comm"].append(comm_us * 1e-6)
            row["exposed"].append((comm_us - _trace.overlap(comm, _trace.union(compute_spans.get(region, ())))) * 1e-6)
            if region == "" and rr is not None:
                start = rr.start_us
                end = max([rr.end_us] + [e for _, e in spans])
                wall_us = end - start
                row["cpu"].append(rr.seconds)
            else:
                ann = [a for a in timed.annotations if a.name == _trace.REGION_PREFIX + region
                       and rr is not None and rr.start_us <= a.start_us <= rr.end_us]
                entries = region_entries(ann, spans, launches[region], groups[""])
                start, end = min(s for s, _ in entries), max(e for _, e in entries)
                wall_us = _trace.length(_trace.union(entries))
                if ann:
                    row["cpu"].append(sum(a.seconds for a in ann))
            bounds[region] = (start, end)
            row["wall"].append(wall_us * 1e-6)
            row["busy"].append(busy)
        for name, wall in tile_steps(counted.steps, bounds).items():
            region_rows[name]["wall"][-1] = wall * 1e-6
        this_run = {name: row["wall"][-1] * 1e6 for name, row in region_rows.items() if name in bounds}
        for name, wall in left_by_steps(counted.steps, bounds, this_run).items():
            if name in region_rows:
                region_rows[name]["wall"][-1] = wall * 1e-6
    if substituted:
        notes.append(f"{substituted} kernel launches over {repeats} repeats differ from the labelled run's (a "
                     "compiled kernel, or another algorithm, in place of the op's kernels there) and were joined to "
                     "the op whose kernels they replaced")
    if unmatched:
        notes.append(f"{unmatched} kernel launches over {repeats} repeats did not match the labelled run's "
                     "sequence and are left out of per-op times")

    ops = []
    for o in counted.ops:
        secs = op_seconds.get(o.index)
        if not secs:
            continue
        med, lo, hi = _stats(secs)
        cpu = statistics.median(op_cpu[o.index]) if op_cpu.get(o.index) else math.nan
        ops.append(OpTiming(o.index, med, lo, hi, cpu, op_kernels.get(o.index, 0)))
    kernels = []
    first_pos = {}  # where a substituted kernel sorts: at its op's first reference kernel
    for pos, op in enumerate(ref_ops):
        first_pos.setdefault(op, pos)
    order = lambda k: (k, 0, "", 0) if isinstance(k, int) else (first_pos.get(k[0], len(ref_ops)), 1, k[1], k[2])  # noqa: E731
    for key in sorted(kernel_seconds, key=order):
        d = kernel_meta[key]
        med, lo, hi = _stats(kernel_seconds[key])
        op = ref_ops[key] if isinstance(key, int) else key[0]
        kernels.append(KernelRecord(op, d.name, d.kind, d.grid, d.block, med, lo, hi))
    regions = []
    for region in [""] + list(counted.regions):
        row = region_rows.get(region)
        if not row or not row["wall"]:
            continue
        regions.append(RegionTiming(region, statistics.median(row["wall"]), statistics.median(row["busy"]),
                                    statistics.median(row["cpu"]) if row["cpu"] else math.nan,
                                    statistics.median(row["comm"]) if row["comm"] else 0.0,
                                    statistics.median(row["exposed"]) if row["exposed"] else 0.0))
    return Timing("cuda", device_name, repeats, warmup, flush_l2, cuda_graph, tuple(ops), tuple(kernels), tuple(regions),
                  tuple(notes))


# ---------------------------------------------------------------------------- CPU


def _plain_cpu_walls(fn, args, kwargs, repeats: int, steps=(), tails: dict[str, float] | None = None
                     ) -> dict[str, list[float]]:
    """Wall time of the whole run and of each region (summed over its entries), without capture.
    With a script's steps, each step's too: two light module hooks time the outermost calls, and a
    step runs from its call's start to the next step's (the last: its call, plus its tail's op time
    measured under the capture, `tails`); setup, teardown and the time between forward-only steps
    are what the steps leave of the run.  (Their spans in the captured runs would hold the
    capture's own bookkeeping between ops, shown as idle time: a setup could outlast the run.)"""
    walls: dict[str, list[float]] = {}
    auto = [st for st in steps if st.kind != "marked" and st.module]
    for _ in range(repeats):
        open_at: dict[str, float] = {}
        spent: dict[str, float] = {}
        first_in: dict[str, float] = {}
        last_out: dict[str, float] = {}

        def listener(path: str, enter: bool) -> None:
            now = time.perf_counter()
            if enter:
                open_at[path] = now
                first_in.setdefault(path, now)
            else:
                spent[path] = spent.get(path, 0.0) + now - open_at.pop(path, now)
                last_out[path] = now

        _regions.LISTENERS.append(listener)
        try:
            with _StepCalls(auto, time.perf_counter) as calls:
                t0 = time.perf_counter()
                fn(*args, **kwargs)
                spent[""] = time.perf_counter() - t0
        finally:
            _regions.LISTENERS.remove(listener)
        marks = _step_marks(auto, calls.starts, calls.ends, side=calls.side)
        if marks:
            # a step runs to the next one's start (a forward-only one: its calls); the last: its calls, plus its tail
            for st, (a, nxt, c) in zip(auto, marks):
                spent[st.name] = (nxt - a) if nxt is not None and st.kind != "forward" else (
                    c - a + (tails or {}).get(st.name, 0.0))
            # what the steps leave, as the plain run spent it: before the first call (setup), after the
            # last step (teardown), between a forward-only step's call and the next call
            last_end = marks[-1][0] + spent[auto[-1].name]
            spent[SETUP] = marks[0][0] - t0
            spent[TEARDOWN] = max(0.0, t0 + spent[""] - last_end)
            spent[BETWEEN] = sum(nxt - c for st, (_, nxt, c) in zip(auto[:-1], marks) if st.kind == "forward")
        marked = [st.name for st in steps if st.kind == "marked"]
        if marked and all(n in first_in and n in last_out for n in marked):  # steps that are the script's regions
            spent[SETUP] = min(first_in[n] for n in marked) - t0
            spent[TEARDOWN] = max(0.0, t0 + spent[""] - max(last_out[n] for n in marked))
            stretch = max(last_out[n] for n in marked) - min(first_in[n] for n in marked)
            spent[UNMARKED] = max(0.0, stretch - sum(spent.get(n, 0.0) for n in marked))
        for path, sec in spent.items():
            walls.setdefault(path, []).append(sec)
    return walls


def _profile_cpu(fn, args, kwargs, warmup: int, repeats: int, name: str, params: dict | None, seg: dict,
                 single_pass: bool = False) -> Profile:
    """Each repeat runs under a capture that times every op's wall time (its own bookkeeping
    stays outside the timed spans), so times and costs line up op for op."""
    counted: Profile | None = None
    per_op: dict[int, list[float]] = {}
    region_rows: dict[str, dict[str, list[float]]] = {}
    notes: list[str] = ["CPU results: wall time of each op on the host CPU, not GPU kernel time"]
    skipped = 0
    if not warmup and not single_pass:
        # the op times come from the captured runs: the first of them must not be the process's
        # first run (on a GPU the counting pass goes first; with no warm-up asked, one plain run does)
        fn(*args, **kwargs)
        notes.append(FIRST_RUN_NOTE)
    for _ in range(repeats):
        cap = Capture(time_ops=True, **seg)
        t0 = time.perf_counter()
        with cap:
            fn(*args, **kwargs)
        wall = time.perf_counter() - t0
        prof = cap.profile(workload=name, mode="count")
        if counted is None:
            counted = prof
            if _any_on_gpu(counted):
                raise UsageError("the workload ran on CUDA tensors, so its ops cannot be timed on the CPU: drop "
                                 "--device cpu (or run the workload on CPU tensors)")
        elif [o.op for o in prof.ops] != [o.op for o in counted.ops]:
            skipped += 1
            continue
        times = cap.recorder.times
        groups: dict[str, list[tuple[float, float]]] = {"": []}
        for o in prof.ops:
            if o.index not in times:
                continue
            s, e = times[o.index]
            per_op.setdefault(o.index, []).append(e - s)
            groups[""].append((s, e))
            for path in region_and_ancestors(o.region, prof.regions):
                groups.setdefault(path, []).append((s, e))
        bounds = {}
        for region, spans in groups.items():
            row = region_rows.setdefault(region, {"wall": [], "busy": []})
            bounds[region] = (min(s for s, _ in spans), max(e for _, e in spans)) if spans else (t0, t0)
            row["wall"].append(wall if region == "" else bounds[region][1] - bounds[region][0])
            row["busy"].append(sum(e - s for s, e in spans))
        for name, step_wall in tile_steps(prof.steps, bounds).items():
            region_rows[name]["wall"][-1] = step_wall
    if skipped:
        notes.append(f"the op sequence changed in {skipped} of {repeats} repeats; those are left out")
    if cap.recorder.compiled:
        notes.append(COMPILED_CPU_NOTE)
    # wall times from plain runs (no capture): the capture's own work must not look like idle time
    tails = {}
    if counted.steps:  # the last step's ops after its model call returned (its backward, optimizer ...)
        last = counted.steps[-1]
        tails[last.name] = sum(statistics.median(per_op[o.index]) for o in counted.ops
                               if last.call_last_op < o.index <= last.last_op and o.index in per_op)
    plain = {} if single_pass else _plain_cpu_walls(fn, args, kwargs, repeats, counted.steps, tails)
    if single_pass:
        notes.append(SINGLE_PASS_NOTE.replace("kernel times are the GPU's own", "op times are timed one by one"))
    for region, walls in plain.items():
        if region in region_rows:
            region_rows[region]["wall"] = walls
    ops = []
    for idx, secs in sorted(per_op.items()):
        med, lo, hi = _stats(secs)
        ops.append(OpTiming(idx, med, lo, hi, med, 1))
    regions = []
    for r in [""] + list(counted.regions):
        row = region_rows.get(r)
        if not row or not row["wall"]:
            continue
        wall, busy = statistics.median(row["wall"]), statistics.median(row["busy"])
        if busy > wall and r == "":
            notes.append(f"ops timed one by one add up to {busy / wall:.0%} of the plain run's wall time "
                         "(per-op timing costs a little each); busy time is capped at the wall time")
        regions.append(RegionTiming(r, wall, min(busy, wall), wall))
    whole = plain.get("", [])
    timing = Timing("cpu", counted.device_name, repeats, warmup, False, False, tuple(ops), (), tuple(regions),
                    tuple(notes), statistics.median(whole) if whole else math.nan)
    return replace(counted, mode="timed", timing=timing, params=dict(params or {}))
