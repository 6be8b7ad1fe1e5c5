"""Classification: what bounds each op, each region and the whole run, with the evidence.

One op is held against three floors, each the time it could not beat on these ceilings:

    compute floor        sum over math classes of flops_c / peak_c
    memory floor         (bytes_read + bytes_written) / memory bandwidth
    communication floor  comm_bytes / link bandwidth (each way)

and the attained fraction `max(floors) / measured seconds` says how close it came to the roof
that dominates (Triton Proton's `util`).  The label follows from the floors and the time, by
these rules, in order:

1. communication-bound: the op sends bytes over a link (NCCL collective, host<->device copy)
   and the communication floor is the largest floor;
2. overhead-bound: no floor explains the time (the largest floor is below EXPLAINED_FRACTION of
   it) AND launch/dispatch does: the kernel is short (at most SHORT_KERNEL_LAUNCH_MULTIPLE x the
   measured launch overhead, or SHORT_KERNEL_S when none was measured), or the CPU took at
   least as long to dispatch the op as the GPU took to run it (in a CUDA-graph replay no op is
   dispatched, and "short" is held against the graph's cost per kernel instead);
3. otherwise memory- or compute-bound by the larger floor, with a band for the attained
   fraction: memory-bound at 30% of bandwidth is a different problem from memory-bound at 90%.

On a CPU run (ceilings.device_kind == "cpu") the same rules hold the op's wall time against the
CPU's roofs, except the dispatch test: there the op's time already is its dispatch.

Regions and the whole run are classified by their ops' time-weighted breakdown; GPU idle time
inside a region counts as overhead-bound time (nothing ran: the GPU waited for the host).
Without timing (a count-only profile), `predict` gives the label the roofline expects from the
floors alone, and the breakdown weighs ops by their largest floor instead of their time.

Everything here is a pure function of costs, times and ceilings: no I/O, no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Mapping, Sequence

from .errors import UsageError
from .profile_data import Profile
from .roofline import Ceilings, Cost, Floors, floors, intensity, peak_or_fp32
from .units import fmt_bandwidth, fmt_bytes, fmt_flops, fmt_flops_rate, fmt_seconds

# ---------------------------------------------------------------------------- thresholds

# A floor "explains" the time when it is at least this fraction of it.  Below it, the kernel
# spends 5x or more the time its bytes and FLOPs need: that is launch latency, a tail wave or
# dispatch, not bandwidth or math.  (Nsight Compute calls "both throughputs below 60%" a latency
# issue; 20% is stricter on purpose, so that a slow but real memory-bound kernel is reported as
# memory-bound far below the roof rather than as overhead.)
EXPLAINED_FRACTION = 0.2

# A kernel whose GPU time is at most this multiple of the measured launch overhead is "short":
# its time is of the order of what it costs to launch it (on an H100, 11.9 µs per eager tiny op,
# so kernels up to ~24 µs).
SHORT_KERNEL_LAUNCH_MULTIPLE = 2.0

# When no launch overhead was measured: a kernel of at most 10 µs is short.  Eager PyTorch pays
# 5-20 µs of host time per op on current GPUs and CPUs (11.9 µs on an H100 host), so a kernel
# this short finishes before the host can issue the next one.
SHORT_KERNEL_S = 10e-6

# Per kernel inside a CUDA graph replay, when the machine's was not calibrated (an H100 with
# torch 2.11 measured 1.0 µs per tiny op of a 2000-op graph).
GRAPH_LAUNCH_S = 1e-6

# Bands of the attained fraction of the dominant roof.
NEAR_ROOF = 0.7  # at or above: near the roof; only fewer bytes/FLOPs or a faster roof help
FAR_BELOW_ROOF = 0.3  # below: the kernel itself is the problem (layout, grid, a poor kernel)

# The sweep test: a fit of time ~ work^a with a below this means the time does not grow with
# the work.  With a fixed cost t0 plus a proportional part c·w, the local exponent is
# c·w / (t0 + c·w): a < 0.3 means over 70% of the time at the sweep's points is the fixed cost.
SCALING_OVERHEAD_EXPONENT = 0.3


class Label(str, Enum):
    COMPUTE = "compute-bound"
    MEMORY = "memory-bound"
    COMMUNICATION = "communication-bound"
    OVERHEAD = "overhead-bound"

    def __str__(self) -> str:  # "memory-bound", not "Label.MEMORY"
        return self.value


# ---------------------------------------------------------------------------- one op


@dataclass(frozen=True)
class Verdict:
    label: Label
    seconds: float  # measured GPU time (CPU runs: wall time); NaN for a prediction
    compute_floor_s: float
    memory_floor_s: float
    comm_floor_s: float
    attained: float  # max(floors) / seconds; NaN for a prediction or an op with no time
    dominant: str  # "compute", "memory", "communication" or "none"
    roof_class: str  # math class whose roof dominated the compute floor ("" for none)
    evidence: str  # one sentence with the numbers
    band: str = ""  # "near the roof", "below the roof", "far below the roof" ("" when not applicable)
    cpu_seconds: float = math.nan  # CPU dispatch time, when measured
    predicted: bool = False  # True: from counts alone (no timing)

    @property
    def max_floor_s(self) -> float:
        return max(self.compute_floor_s, self.memory_floor_s, self.comm_floor_s)

    @property
    def weight_s(self) -> float:
        """Seconds this verdict stands for in a breakdown: measured time, else the largest floor."""
        return self.max_floor_s if self.predicted else self.seconds


def band(attained: float) -> str:
    """The band of an attained fraction: "near the roof" (>= 0.7), "below the roof" (0.3-0.7),
    "far below the roof" (< 0.3); "" when unknown."""
    if math.isnan(attained):
        return ""
    if attained >= NEAR_ROOF:
        return "near the roof"
    if attained >= FAR_BELOW_ROOF:
        return "below the roof"
    return "far below the roof"


def is_short_kernel(seconds: float, ceilings: Ceilings) -> bool:
    """A kernel about as long as launching it (see SHORT_KERNEL_LAUNCH_MULTIPLE, SHORT_KERNEL_S)."""
    if ceilings.launch_overhead_s:
        return seconds <= SHORT_KERNEL_LAUNCH_MULTIPLE * ceilings.launch_overhead_s
    return seconds <= SHORT_KERNEL_S


def classify(op: Cost, seconds: float, ceilings: Ceilings, *, cpu_seconds: float = math.nan,
             kernels: int | None = None) -> Verdict:
    """Label one op from its cost, its measured time and the ceilings (rules in the module doc).

    `seconds` is the GPU kernel time (on a CPU run, the wall time), `cpu_seconds` the host's
    dispatch time when measured, `kernels` how many kernels the op launched (0: none, e.g. a view).
    """
    f = floors(op, ceilings)
    cpu = ceilings.device_kind == "cpu"
    common = dict(seconds=seconds, compute_floor_s=f.compute_s, memory_floor_s=f.memory_s, comm_floor_s=f.comm_s,
                  dominant=f.dominant, roof_class=f.roof_class, cpu_seconds=cpu_seconds)
    if seconds <= 0 or math.isnan(seconds):
        # nothing ran on the device (a view, a metadata op): whatever it costs is dispatch
        why = "no kernel ran" if kernels == 0 or seconds <= 0 else "no time measured"
        dispatch = f"; CPU dispatch {fmt_seconds(cpu_seconds)}" if not math.isnan(cpu_seconds) else ""
        return Verdict(Label.OVERHEAD, attained=math.nan,
                       evidence=_where(cpu) + f"overhead-bound: {why}, only dispatch{dispatch}", **common)
    attained = f.max_s / seconds
    common["attained"] = attained

    if f.dominant == "communication":
        b = band(attained)
        return Verdict(Label.COMMUNICATION, band=b, evidence=_where(cpu) + _comm_evidence(op, f, seconds, b), **common)

    # on a CPU run an op's time is its wall time, dispatch included: only the short-op test applies
    dispatch_bound = not cpu and not math.isnan(cpu_seconds) and cpu_seconds >= seconds
    short = is_short_kernel(seconds, ceilings)
    if attained < EXPLAINED_FRACTION and (short or dispatch_bound):
        return Verdict(Label.OVERHEAD, evidence=_where(cpu) + _overhead_evidence(
            f, seconds, attained, cpu_seconds, short, dispatch_bound, ceilings, cpu), **common)

    if f.dominant == "none" and getattr(op, "counted", True):
        # counted, and it moves and computes nothing (a view, a no-op): all its time is overhead
        return Verdict(Label.OVERHEAD, evidence=_where(cpu) + (
            f"overhead-bound: {fmt_seconds(seconds)} {'op' if cpu else 'kernel'} that moves no bytes and does no "
            "FLOPs: all of it is dispatch and launch"), **common)
    if f.dominant == "none":
        # a long kernel with no counted cost (an op with no formula): most such aten ops move
        # data, so it is reported as memory-bound, and the evidence says it was not counted
        return Verdict(Label.MEMORY, evidence=_where(cpu) + (
            f"memory-bound (assumed): {fmt_seconds(seconds)} {'op' if cpu else 'kernel'} of an op with no cost "
            "formula, so no floor to hold it against"), **{**common, "attained": math.nan})

    label = Label.COMPUTE if f.dominant == "compute" else Label.MEMORY
    b = band(attained)
    text = _compute_evidence(op, f, seconds, b, ceilings) if label is Label.COMPUTE \
        else _memory_evidence(op, f, seconds, b, ceilings)
    return Verdict(label, band=b, evidence=_where(cpu) + text, **common)


def predict(op: Cost, ceilings: Ceilings) -> Verdict:
    """The label the roofline expects from the floors alone (no timing): the larger floor, with
    communication first when the op sends bytes over a link.  Attained is NaN."""
    f = floors(op, ceilings)
    cpu = ceilings.device_kind == "cpu"
    common = dict(seconds=math.nan, compute_floor_s=f.compute_s, memory_floor_s=f.memory_s, comm_floor_s=f.comm_s,
                  attained=math.nan, dominant=f.dominant, roof_class=f.roof_class, predicted=True)
    label = {"communication": Label.COMMUNICATION, "compute": Label.COMPUTE, "memory": Label.MEMORY,
             "none": Label.OVERHEAD}[f.dominant]
    if label is Label.OVERHEAD:
        text = "overhead-bound (predicted): no FLOPs or bytes, only dispatch"
    else:
        name = {Label.COMPUTE: "compute", Label.MEMORY: "memory", Label.COMMUNICATION: "communication"}[label]
        others = ", ".join(f"{n} floor {fmt_seconds(s)}" for n, s in
                           (("compute", f.compute_s), ("memory", f.memory_s), ("communication", f.comm_s))
                           if n != name and (s > 0 or n != "communication"))
        text = (f"{label} (predicted, no timing): {name} floor {fmt_seconds(f.max_s)}"
                + (f" on the {f.roof_class} roof" if label is Label.COMPUTE else "")
                + f"; {others}; intensity {intensity(sum(op.flops.values()), op.bytes_read + op.bytes_written):.3g} FLOP/B")
    return Verdict(label, evidence=_where(cpu) + text, **common)


def _where(cpu: bool) -> str:
    return "CPU: " if cpu else ""


def _memory_evidence(op: Cost, f: Floors, seconds: float, b: str, ceilings: Ceilings) -> str:
    nbytes = op.bytes_read + op.bytes_written
    return (f"memory-bound at {f.memory_s / seconds:.0%} of {fmt_bandwidth(ceilings.memory_bytes_per_s)} ({b}): "
            f"{fmt_bytes(nbytes)} in {fmt_seconds(seconds)} = {fmt_bandwidth(nbytes / seconds)}; "
            f"compute floor {fmt_seconds(f.compute_s)}")


def _compute_evidence(op: Cost, f: Floors, seconds: float, b: str, ceilings: Ceilings) -> str:
    flops = sum(op.flops.values())
    peak = peak_or_fp32(ceilings, f.roof_class)
    names = (str(getattr(c, "value", c)) for c, v in op.flops.items() if v)
    others = [name for name in names if name != f.roof_class]
    plus = f"; + {', '.join(others)} work" if others else ""
    rate = f"{fmt_flops(flops)} in {fmt_seconds(seconds)} = {fmt_flops_rate(flops / seconds)}"
    return (f"compute-bound at {f.compute_s / seconds:.0%} of the {fmt_flops_rate(peak)} {f.roof_class} roof "
            f"({b}{plus}): {rate}; memory floor {fmt_seconds(f.memory_s)}")


def _comm_evidence(op: Cost, f: Floors, seconds: float, b: str) -> str:
    what = "host<->device copy over PCIe" if op.link == "pcie" else f"transfer over the {op.link} link"
    tail = "; latency, not bandwidth, dominates" if b == "far below the roof" else ""
    return (f"communication-bound at {f.comm_s / seconds:.0%} of {fmt_bandwidth(f.link_bytes_per_s)} each way "
            f"({b}): {what}, {fmt_bytes(op.comm_bytes)} in {fmt_seconds(seconds)} = "
            f"{fmt_bandwidth(op.comm_bytes / seconds)}; memory floor {fmt_seconds(f.memory_s)}{tail}")


def _overhead_evidence(f: Floors, seconds: float, attained: float, cpu_seconds: float, short: bool,
                       dispatch_bound: bool, ceilings: Ceilings, cpu: bool) -> str:
    what = "op" if cpu else "kernel"
    why = []
    if short:
        if ceilings.launch_overhead_s:
            why.append(f"{what} within {SHORT_KERNEL_LAUNCH_MULTIPLE:g}x the "
                       f"{fmt_seconds(ceilings.launch_overhead_s)} launch overhead")
        else:
            why.append(f"{what} under {fmt_seconds(SHORT_KERNEL_S)}")
    if dispatch_bound:
        why.append(f"CPU dispatch {fmt_seconds(cpu_seconds)} >= {'op' if cpu else 'GPU'} time")
    return (f"overhead-bound: {fmt_seconds(seconds)} {what}, floors explain {attained:.1%}; "
            + "; ".join(why))


# ---------------------------------------------------------------------------- regions and the run


@dataclass(frozen=True)
class RegionBreakdown:
    """Seconds per label in one region ("" = the whole run), ops and GPU idle time together."""

    region: str
    seconds_by_label: Mapping[Label, float]  # GPU idle time is inside OVERHEAD
    idle_seconds: float  # GPU idle inside the region (counted as overhead-bound)
    wall_seconds: float  # the region's measured wall time (NaN when not measured or predicted)
    ops: tuple[int, ...]  # indexes of its ops

    def __post_init__(self) -> None:
        full = {label: float(self.seconds_by_label.get(label, 0.0)) for label in Label}
        object.__setattr__(self, "seconds_by_label", MappingProxyType(full))

    @property
    def total_seconds(self) -> float:
        """Op time (or predicted floor time) plus GPU idle time."""
        return sum(self.seconds_by_label.values())

    def fraction(self, label: Label) -> float:
        total = self.total_seconds
        return self.seconds_by_label[label] / total if total > 0 else 0.0

    @property
    def fractions(self) -> dict[Label, float]:
        return {label: self.fraction(label) for label in Label}

    @property
    def headline(self) -> Label:
        """The label holding the largest share of the time (ties: the order of Label)."""
        return max(Label, key=lambda label: self.seconds_by_label[label])


@dataclass(frozen=True)
class Diagnosis:
    verdicts: Mapping[int, Verdict]  # by op index
    regions: Mapping[str, RegionBreakdown]  # "" is the whole run
    ceilings_name: str = ""
    device_kind: str = "cuda"  # "cpu": CPU wall times against CPU ceilings
    timed: bool = True  # False: labels predicted from counts, weighted by floors
    headline_region: str = ""  # the region the headline describes: "" (the whole run) or a script's steady state

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdicts", MappingProxyType(dict(self.verdicts)))
        object.__setattr__(self, "regions", MappingProxyType(dict(self.regions)))

    def region(self, name: str = "") -> RegionBreakdown:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(repr(r) for r in self.regions if r) or "none"
            raise UsageError(f"no region {name!r} in this diagnosis (regions: {known})") from None

    @property
    def headline(self) -> Label:
        return self.region(self.headline_region).headline


def breakdown(profile: Profile, ceilings: Ceilings) -> Diagnosis:
    """Classify every op, then every region and the whole run by time-weighted shares.

    Timed profiles: each op by `classify` with its measured time; a region's GPU idle time
    (RegionTiming.idle_seconds) is added as overhead-bound time.  Ops of a timed profile with no
    timing row are predicted and weigh nothing.  Count-only profiles: each op by `predict`,
    weighted by its largest floor (the time the roofline expects).
    """
    timing = profile.timing
    if timing is not None and timing.device_kind != ceilings.device_kind:
        raise UsageError(f"{timing.device_kind.upper()} timings cannot be held against {ceilings.device_kind.upper()} "
                         f"ceilings ({ceilings.name}); use the ceilings of the device that ran the profile")
    # A CUDA-graph replay launches its kernels with no host dispatch per op: the eager dispatch
    # time measured for the op is not paid, and a kernel is short against the graph's own cost
    # per kernel (calibrated; GRAPH_LAUNCH_S where none was measured).
    graph = timing is not None and timing.cuda_graph
    op_ceilings = replace(ceilings, launch_overhead_s=ceilings.graph_launch_overhead_s or GRAPH_LAUNCH_S) \
        if graph else ceilings
    verdicts: dict[int, Verdict] = {}
    for op in profile.ops:
        t = timing.op(op.index) if timing is not None else None
        if t is None:
            v = predict(op, ceilings)
            if timing is not None:  # timed run, op not timed: it stands for no time
                v = _weightless(v)
        else:
            v = classify(op, t.seconds, op_ceilings, cpu_seconds=math.nan if graph else t.cpu_seconds,
                         kernels=t.kernels)
        verdicts[op.index] = v

    regions: dict[str, RegionBreakdown] = {}
    for path in profile.region_paths():
        ops = profile.select(region=path)
        seconds: dict[Label, float] = {label: 0.0 for label in Label}
        for op in ops:
            v = verdicts[op.index]
            w = v.weight_s
            if w > 0 and not math.isnan(w):
                seconds[v.label] += w
        rt = timing.region(path) if timing is not None else None
        idle = rt.idle_seconds if rt is not None else 0.0
        seconds[Label.OVERHEAD] += idle
        regions[path] = RegionBreakdown(path, seconds, idle, rt.wall_seconds if rt is not None else math.nan,
                                        tuple(o.index for o in ops))
    return Diagnosis(verdicts, regions, ceilings_name=ceilings.name, device_kind=ceilings.device_kind,
                     timed=timing is not None)


def _weightless(v: Verdict) -> Verdict:
    return replace(v, predicted=False, seconds=0.0, evidence=v.evidence + " (op not timed: counts no time)")


def summary(diagnosis: Diagnosis, region: str | None = None) -> str:
    """One sentence: "decode: 78% of time memory-bound, 15% overhead-bound (GPU idle 9%), 7% compute-bound; 1.23 ms".
    region None: the headline's (the whole run, or a script's steady state)."""
    region = diagnosis.headline_region if region is None else region
    r = diagnosis.region(region)
    name = r.region or "whole run"  # a region stands under its own name (advice's "" can be a steady state)
    total = r.total_seconds
    if not r.ops:  # nothing ran that could be placed on a roofline: not "100% overhead-bound"
        held = f" ({fmt_seconds(total)} of wall time with no op in it)" if total > 0 else ""
        return f"{name}: no PyTorch op was recorded{held}: nothing to classify"
    if total <= 0:
        return f"{name}: no time to classify"
    shares = sorted(((r.fraction(label), label) for label in Label), key=lambda x: -x[0])
    parts = []
    for share, label in shares:
        if share < 0.005:
            continue
        text = f"{share:.0%} {label}"
        if label is Label.OVERHEAD and r.idle_seconds > 0:
            idle = "idle between ops" if diagnosis.device_kind == "cpu" else "GPU idle"
            text += f" ({idle} {r.idle_seconds / total:.0%})"
        parts.append(text)
    if parts:
        parts[0] = parts[0].replace("% ", "% of time " if diagnosis.timed else "% of roofline time ", 1)
    where = "CPU timing: " if diagnosis.device_kind == "cpu" and diagnosis.timed else ""
    how = "" if diagnosis.timed else f" (predicted from counts on {diagnosis.ceilings_name}, no timing)"
    return f"{where}{name}: {', '.join(parts)}; {fmt_seconds(total)}{how}"


# ---------------------------------------------------------------------------- the sweep test


def scaling_test(work: Sequence[float], seconds: Sequence[float]) -> tuple[float, bool]:
    """Fit seconds ~ work^a by least squares in log-log over a sweep; (a, a < SCALING_OVERHEAD_EXPONENT).

    The seeds' test for overhead: double the work; if the time does not grow in proportion, the
    run is overhead-bound.  a ~ 1: time follows the work (hardware-bound); a ~ 0: fixed cost.
    """
    if len(work) != len(seconds):
        raise UsageError(f"scaling_test needs one time per work point (got {len(work)} work, {len(seconds)} times)")
    if any(w <= 0 for w in work) or any(s <= 0 for s in seconds):
        raise UsageError("scaling_test needs positive work and times (it fits in log-log)")
    pts = [(math.log(w), math.log(s)) for w, s in zip(work, seconds)]
    if len({x for x, _ in pts}) < 2:
        raise UsageError("scaling_test needs at least two different amounts of work")
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    a = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return a, a < SCALING_OVERHEAD_EXPONENT


__all__ = ["Label", "Verdict", "Floors", "RegionBreakdown", "Diagnosis", "floors", "band", "classify", "predict",
           "breakdown", "summary", "scaling_test", "is_short_kernel", "EXPLAINED_FRACTION",
           "SHORT_KERNEL_LAUNCH_MULTIPLE", "SHORT_KERNEL_S", "NEAR_ROOF", "FAR_BELOW_ROOF",
           "SCALING_OVERHEAD_EXPONENT"]
