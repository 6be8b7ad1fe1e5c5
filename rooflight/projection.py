"""Projection: predict a profile (timed or count-only) on any GPU in the hardware database.

Each op is held against the TARGET's datasheet roofs (the same floors the classifier uses):

    floor = max(sum_c flops_c / peak_c(target), bytes / bandwidth(target), comm_bytes / link(target))

A math class the target lacks runs as the chip would run it (Ceilings.resolve follows
math_class.FALLBACK: fp8 on an A100 runs as fp16 tensor math, TF32 on a chip without it as fp32),
and the projection says so per op (`OpProjection.fallback`) and in one note per target.

## The time model

An op's predicted time on the target is a fixed part plus its floor divided by an efficiency:

    seconds = kernels * fixed_per_kernel + floor(target) / efficiency

- fixed_per_kernel (KERNEL_FIXED_S, MATMUL_KERNEL_FIXED_S): what a kernel costs however little it
  moves: launch ramp-up, one partial wave, the tail.  On an H100 the kernels of a tiny Llama
  decode step (tests/fixtures/trace_timed.json.gz: 216 kernels whose floors are nanoseconds) took
  1.48 us on average for elementwise, copy and reduction kernels and 2.59 us for GEMMs and
  attention; the same part is assumed on every target (it is latency, not bandwidth).  An op that
  moves and computes nothing (a view) launches no kernel and costs nothing.  Pass
  kernel_fixed_s=0 to leave the fixed part out (then seconds = floor / efficiency).
- efficiency, when the op was MEASURED on a source GPU: the fraction of the source's roof its
  variable part attained, `efficiency = source floor / (measured seconds - nominal fixed part)`
  with the nominal fixed part min(measured, kernels * fixed_per_kernel), clamped to
  EFFICIENCY_RANGE [0.02, 1].  The op's fixed part is then what the roof at that efficiency does
  not explain, `measured - source floor / efficiency`: so the op projected onto its own source
  takes its measured time again (unless it ran faster than its datasheet floor, e.g. from L2),
  and an op far below the roof (efficiency under 0.02: latency, a poor grid) carries that latency
  to every target unchanged.  With kernel_fixed_s=0 and the efficiency in range this is exactly
  `efficiency = source floor / measured seconds`, `predicted = target floor / efficiency`.
  Both sides use datasheet roofs, so the efficiency is a fraction of the source's datasheet
  applied to the target's.  An op with a measured time but no floor (no cost formula) keeps its
  measured time; an op with a floor but no timing row gets the default efficiency.
- efficiency, when the profile is COUNT-ONLY (or timed on a CPU, or on a GPU missing from the
  database): DEFAULT_EFFICIENCY by the floor that dominates on the target:
      memory-bound         0.85   an H100 copy reached 0.90 of the datasheet on 1 GiB (calibrated,
                                  benchmarks/results/calibrate-h100_sxm.json), GEMV and broadcast
                                  elementwise kernels a little less
      compute-bound        0.75   bf16 8192^3 torch.mm reached 0.80, fp8 _scaled_mm 0.72 on the
                                  same H100; LLM-shaped GEMMs reach a little less
      communication-bound  0.70   NCCL bus bandwidth on NVLink/PCIe, an uncalibrated assumption
  These are fractions of the datasheet measured on one H100 and assumed on every target.

## Sums

Per region, the predicted seconds of the region's ops (sub-regions included); for the whole run
the sum over every op: GPU time.  GPU idle time of a timed source (the GPU waiting for the
host) is left OUT of every total: it belongs to the host, not the GPU, and a host-bound run stays
host-bound on a faster GPU (its idle time grows by what the GPU saves).  It is reported beside
the totals as `Projection.source_idle_s`, so a reader can add it back for the same host.

Everything here is a function of a profile, the target specs, the source's roofs and constants:
it reads no database, prints and writes nothing (rooflight.api.project looks the GPUs up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from .classify import EXPLAINED_FRACTION, Label
from .errors import UsageError
from .hardware import HardwareDB, HardwareSpec, _norm
from .math_class import MathClass
from .profile_data import Profile
from .roofline import Ceilings, floors, from_spec

# ---------------------------------------------------------------------------- constants

# per kernel, on an H100 (tiny Llama decode trace): elementwise / copy / reduce, and GEMM / attention
KERNEL_FIXED_S = 1.5e-6
MATMUL_KERNEL_FIXED_S = 2.6e-6

DEFAULT_EFFICIENCY: Mapping[str, float] = MappingProxyType({
    "memory": 0.85,
    "compute": 0.75,
    "communication": 0.70,
})

EFFICIENCY_RANGE = (0.02, 1.0)

MODEL_MEASURED = "measured efficiency from {source}"
MODEL_DEFAULT = "default efficiencies (memory 0.85, compute 0.75, communication 0.70 of the datasheet)"


# ---------------------------------------------------------------------------- one op


@dataclass(frozen=True)
class OpPrediction:
    """The predicted time of one op (or one analytic kernel) on one target."""

    seconds: float
    floor_s: float  # max of the three floors on the target
    compute_s: float
    memory_s: float
    comm_s: float
    dominant: str  # "compute", "memory", "communication" or "none"
    label: str  # predicted label on the target (Label value)
    roof_class: str  # math class whose roof the compute floor used on the target (after fallback)
    fallback: str = ""  # "fp8_tensor -> fp16_tensor" when the target lacks a class the op uses
    efficiency: float = math.nan
    efficiency_source: str = ""  # "measured", "latency", "above-roof", "default", "carried", "none"
    fixed_s: float = 0.0


def is_matmul(op: Any) -> bool:
    """Work on a matrix (tensor-core) class: GEMMs and fused attention pay the larger fixed cost."""
    for c in op.flops:
        try:
            if MathClass(c).is_tensor:
                return True
        except ValueError:
            continue
    return False


def fixed_seconds(op: Any, kernels: int, kernel_fixed_s: float | None = None) -> float:
    """The fixed part of an op's time: its kernels times the per-kernel cost (see the module doc)."""
    if kernels <= 0:
        return 0.0
    if kernel_fixed_s is not None:
        return kernels * kernel_fixed_s
    return kernels * (MATMUL_KERNEL_FIXED_S if is_matmul(op) else KERNEL_FIXED_S)


def default_kernels(op: Any) -> int:
    """Kernels an op launches when nobody measured it: one if it moves or computes anything."""
    moves = (op.bytes_read + op.bytes_written) > 0 or op.comm_bytes > 0 or any(v for v in op.flops.values())
    return 1 if moves else 0


def fallbacks(op: Any, ceilings: Ceilings) -> list[tuple[str, str]]:
    """(class, class it runs as) for each class of the op's FLOPs that these ceilings lack."""
    out = []
    for c, v in op.flops.items():
        if not v:
            continue
        name = str(getattr(c, "value", c))
        try:
            r = ceilings.resolve(name).value
        except (KeyError, ValueError):
            r = MathClass.FP32.value
        if r != name:
            out.append((name, r))
    return out


def predict_seconds(op: Any, ceilings: Ceilings, *, kernels: int | None = None, efficiency: float | None = None,
            kernel_fixed_s: float | None = None,
            default_efficiency: Mapping[str, float] = DEFAULT_EFFICIENCY) -> OpPrediction:
    """Predicted seconds of one op on these ceilings from its counts alone: the fixed part plus
    the floor over the default efficiency of its dominant floor (or `efficiency` when given)."""
    f = floors(op, ceilings)
    k = default_kernels(op) if kernels is None else kernels
    fixed = fixed_seconds(op, k, kernel_fixed_s)
    dom = f.dominant
    source = "none"
    eff = math.nan
    variable = 0.0
    if dom != "none":
        eff = efficiency if efficiency is not None else default_efficiency[dom]
        source = "measured" if efficiency is not None else "default"
        variable = f.max_s / eff
    seconds = fixed + variable
    return OpPrediction(seconds, f.max_s, f.compute_s, f.memory_s, f.comm_s, dom, _label(f.max_s, seconds, dom),
                        f.roof_class, _fallback_text(op, ceilings), eff, source, fixed)


def _label(floor_s: float, seconds: float, dominant: str) -> str:
    """Overhead-bound when no floor explains the predicted time (the fixed part dominates, by the
    classifier's EXPLAINED_FRACTION); else the label of the dominant floor."""
    if dominant == "none" or floor_s < EXPLAINED_FRACTION * seconds:
        return Label.OVERHEAD.value
    return {"compute": Label.COMPUTE, "memory": Label.MEMORY, "communication": Label.COMMUNICATION}[dominant].value


def _fallback_text(op: Any, ceilings: Ceilings) -> str:
    return ", ".join(f"{a} -> {b}" for a, b in fallbacks(op, ceilings))


def measured_efficiency(op: Any, measured_s: float, source: Ceilings, kernels: int,
                        kernel_fixed_s: float | None = None) -> tuple[float, float, str]:
    """(efficiency, fixed seconds, how) of an op measured on its source ceilings.

    The variable part (measured less the nominal fixed part) over the source floor gives the
    efficiency, clamped to EFFICIENCY_RANGE; the fixed part is then whatever the roof at that
    efficiency does not explain, so that the op projected onto its own source takes its measured
    time again (unless it ran faster than its floor).  how: "measured"; "latency" (below the range:
    the op's time is mostly latency, carried over unchanged); "above-roof" (faster than the
    datasheet floor, e.g. served from L2: efficiency 1).
    """
    floor_src = floors(op, source).max_s
    nominal = min(measured_s, fixed_seconds(op, kernels, kernel_fixed_s))
    variable = measured_s - nominal
    lo, hi = EFFICIENCY_RANGE
    raw = floor_src / variable if variable > 0 else math.inf
    eff = min(max(raw, lo), hi)
    fixed = max(measured_s - floor_src / eff, 0.0)
    how = "measured" if lo <= raw <= hi else ("latency" if raw < lo else "above-roof")
    if how == "above-roof" and measured_s >= floor_src:
        how = "measured"  # within its fixed part: the floor fits inside the measured time
    return eff, fixed, how


# ---------------------------------------------------------------------------- the projection


@dataclass(frozen=True)
class OpProjection:
    index: int
    seconds: float
    floor_s: float
    label: str
    dominant: str
    roof_class: str
    fallback: str
    efficiency: float
    efficiency_source: str  # "measured", "latency", "above-roof", "default", "carried", "none"
    measured_s: float = math.nan  # on the source, when timed


@dataclass(frozen=True)
class TargetProjection:
    """One GPU's prediction: per op, per region and for the whole run."""

    key: str  # database key, e.g. "a100_80gb_sxm"
    name: str  # "A100 80GB SXM"
    ceilings: Ceilings
    ops: tuple[OpProjection, ...]
    regions: Mapping[str, float]  # region path -> predicted seconds ("" = the whole run)
    seconds_by_label: Mapping[str, float]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", MappingProxyType(dict(self.regions)))
        object.__setattr__(self, "seconds_by_label", MappingProxyType(dict(self.seconds_by_label)))

    @property
    def total_s(self) -> float:
        return self.regions.get("", 0.0)

    @property
    def dominant_label(self) -> str:
        if not self.seconds_by_label:
            return ""
        return max(self.seconds_by_label, key=self.seconds_by_label.get)

    @property
    def dominant_share(self) -> float:
        total = sum(self.seconds_by_label.values())
        return self.seconds_by_label.get(self.dominant_label, 0.0) / total if total > 0 else math.nan

    def op(self, index: int) -> OpProjection:
        cache = self.__dict__.get("_by_index")
        if cache is None:
            cache = {o.index: o for o in self.ops}
            object.__setattr__(self, "_by_index", cache)
        return cache[index]


@dataclass(frozen=True)
class Projection:
    workload: str
    model: str  # which efficiency model: "measured efficiency from ..." or "default efficiencies ..."
    source: str  # the GPU the profile was timed on, or "counts only"
    timed: bool  # measured efficiencies were used
    source_total_s: float  # measured GPU time of the ops on the source (NaN for count-only)
    source_regions: Mapping[str, float]  # measured GPU op time per region on the source
    source_idle_s: float  # GPU idle of the whole run on the source (not in any total)
    regions: tuple[str, ...]  # region paths, "" first
    targets: tuple[TargetProjection, ...]
    kernel_fixed: str = ""  # the fixed-cost model in words
    notes: tuple[str, ...] = ()
    profile: Profile | None = field(default=None, compare=False, repr=False)
    specs: tuple[HardwareSpec, ...] = field(default=(), compare=False, repr=False)  # the targets'

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_regions", MappingProxyType(dict(self.source_regions)))

    def target(self, name: str) -> TargetProjection:
        """A target by database key, name, or a forgiving name ("a10", "h200")."""
        for t in self.targets:
            if name in (t.key, t.name):
                return t
        try:  # the database's forgiving names among the targets: "h100" is the H100 SXM
            key = HardwareDB(self.specs).get(name).key
            hit = next((t for t in self.targets if t.key == key), None)
            if hit is not None:
                return hit
        except UsageError:
            pass
        q = _norm(name)
        hits = [t for t in self.targets if q and (q in _norm(t.key) or q in _norm(t.name))]
        if len(hits) == 1:
            return hits[0]
        known = ", ".join(t.name for t in self.targets)
        raise UsageError(f"no target '{name}' in this projection (targets: {known})")

    def table(self, *, regions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per target: total, chosen regions, speedup over the source, dominant label."""
        regions = list(self.regions[1:] if regions is None else regions)
        rows = []
        for t in self.targets:
            row: dict[str, Any] = {"gpu": t.name, "key": t.key, "total_s": t.total_s}
            for r in regions:
                row[r] = t.regions.get(r, 0.0)
            row["speedup"] = (self.source_total_s / t.total_s) if self.timed and t.total_s > 0 else math.nan
            row["label"] = t.dominant_label
            row["label_share"] = t.dominant_share
            row["notes"] = "; ".join(t.notes)
            rows.append(row)
        return rows

    @property
    def df(self):
        import pandas as pd

        return pd.DataFrame(self.table()).set_index("gpu")

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload, "model": self.model, "source": self.source, "timed": self.timed,
            "source_total_s": self.source_total_s, "source_regions": dict(self.source_regions),
            "source_idle_s": self.source_idle_s, "kernel_fixed": self.kernel_fixed, "notes": list(self.notes),
            "targets": [{"key": t.key, "name": t.name, "total_s": t.total_s, "regions": dict(t.regions),
                         "seconds_by_label": dict(t.seconds_by_label), "notes": list(t.notes)}
                        for t in self.targets],
        }


def project(profile: Profile, specs: Sequence[HardwareSpec], source_ceilings: Ceilings | None = None, *,
            source_note: str = "", kernel_fixed_s: float | None = None, use_measured: bool = True,
            default_efficiency: Mapping[str, float] = DEFAULT_EFFICIENCY) -> Projection:
    """Predict `profile` on each target GPU in `specs` (see the module doc for the model).

    source_ceilings: the datasheet roofs of the GPU the profile's times were measured on (None:
    none known, so default efficiencies; `source_note` says why; rooflight.api.project finds
    them in the database).  use_measured=False ignores the times (default efficiencies).
    kernel_fixed_s: seconds per kernel for every op (default: KERNEL_FIXED_S /
    MATMUL_KERNEL_FIXED_S; 0 leaves the fixed part out).
    """
    notes: list[str] = [source_note] if source_note and use_measured else []
    timing = profile.timing
    src = source_ceilings if use_measured else None
    measured = use_measured and timing is not None and src is not None and (
        timing.device_kind == src.device_kind)
    if use_measured and timing is not None and src is not None and timing.device_kind != src.device_kind:
        notes.append(f"{timing.device_kind.upper()} timings cannot be held against {src.device_kind.upper()} "
                     "ceilings: default efficiencies are used")
    source_name = timing.device_name if timing is not None else "counts only"
    model = MODEL_MEASURED.format(source=source_name) if measured else MODEL_DEFAULT
    fixed_text = ("no fixed per-kernel cost" if kernel_fixed_s == 0 else
                  f"{kernel_fixed_s * 1e6:g} us per kernel" if kernel_fixed_s is not None else
                  f"{KERNEL_FIXED_S * 1e6:g} us per kernel ({MATMUL_KERNEL_FIXED_S * 1e6:g} us for GEMM/attention)")

    # per op on the source: (efficiency, fixed, how) -- independent of the target
    per_op: dict[int, tuple[float | None, float | None, str, float, int]] = {}
    counts = {"latency": 0, "above-roof": 0, "carried": 0, "untimed": 0}
    for o in profile.ops:
        t = timing.op(o.index) if (measured and timing is not None) else None
        if t is None or math.isnan(t.seconds):
            k = default_kernels(o)
            if measured and k > 0:
                counts["untimed"] += 1
            per_op[o.index] = (None, None, "default", math.nan, k)
            continue
        k = t.kernels if t.kernels > 0 else default_kernels(o)
        if floors(o, src).max_s <= 0:
            per_op[o.index] = (None, None, "carried", t.seconds, k)
            if t.seconds > 0:
                counts["carried"] += 1
            continue
        eff, fixed, how = measured_efficiency(o, t.seconds, src, k, kernel_fixed_s)
        if how != "measured":
            counts[how] += 1
        per_op[o.index] = (eff, fixed, how, t.seconds, k)
    lo, hi = EFFICIENCY_RANGE
    if counts["latency"]:
        notes.append(f"{counts['latency']} ops ran below {lo:g} of the {src.name} roof: their time is mostly "
                     f"latency, which is carried over unchanged (only their floor at efficiency {lo:g} scales)")
    if counts["above-roof"]:
        notes.append(f"{counts['above-roof']} ops ran faster than their {src.name} datasheet floor (e.g. from L2): "
                     f"efficiency {hi:g}")
    if counts["carried"]:
        notes.append(f"{counts['carried']} timed ops have no floor (no cost formula): their measured time "
                     "is carried over unchanged")
    if counts["untimed"]:
        notes.append(f"{counts['untimed']} ops with costs have no timing row: default efficiencies")
    uncounted = profile.uncounted()
    if uncounted and not measured:
        notes.append("ops with no cost formula are predicted as free: "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(uncounted.items())))

    paths = profile.region_paths()
    members = {p: [o.index for o in profile.select(region=p)] for p in paths}
    source_regions: dict[str, float] = {}
    source_total = math.nan
    idle = math.nan
    if measured and timing is not None:
        for p in paths:
            source_regions[p] = sum(per_op[i][3] for i in members[p] if not math.isnan(per_op[i][3]))
        source_total = source_regions[""]
        tot = timing.total
        idle = tot.idle_seconds if tot is not None else math.nan

    out = []
    for spec in specs:
        out.append(_project_one(profile, spec, per_op, paths, members, kernel_fixed_s, default_efficiency))
    return Projection(profile.workload, model, source_name, measured, source_total, source_regions, idle,
                      tuple(paths), tuple(out), fixed_text, tuple(notes), profile, tuple(specs))


def _project_one(profile: Profile, spec: HardwareSpec, per_op, paths, members, kernel_fixed_s,
                 default_efficiency) -> TargetProjection:
    ceil = from_spec(spec)
    ops: list[OpProjection] = []
    by_index: dict[int, float] = {}
    by_label: dict[str, float] = {}
    fallback_flops: dict[tuple[str, str], float] = {}
    for o in profile.ops:
        eff, fixed, how, measured_s, k = per_op[o.index]
        if how == "carried":
            f = floors(o, ceil)
            pred = OpPrediction(measured_s, f.max_s, f.compute_s, f.memory_s, f.comm_s, f.dominant,
                                Label.MEMORY.value if measured_s > 0 else Label.OVERHEAD.value, f.roof_class,
                                _fallback_text(o, ceil), math.nan, "carried", 0.0)
        elif eff is not None:
            f = floors(o, ceil)
            seconds = fixed + (f.max_s / eff if f.max_s > 0 else 0.0)
            pred = OpPrediction(seconds, f.max_s, f.compute_s, f.memory_s, f.comm_s, f.dominant,
                                _label(f.max_s, seconds, f.dominant), f.roof_class, _fallback_text(o, ceil), eff,
                                how, fixed)
        else:
            pred = predict_seconds(o, ceil, kernels=k, kernel_fixed_s=kernel_fixed_s, default_efficiency=default_efficiency)
        for a, b in fallbacks(o, ceil):
            fallback_flops[(a, b)] = fallback_flops.get((a, b), 0.0) + sum(
                v for c, v in o.flops.items() if str(getattr(c, "value", c)) == a)
        by_index[o.index] = pred.seconds
        if pred.seconds > 0:
            by_label[pred.label] = by_label.get(pred.label, 0.0) + pred.seconds
        ops.append(OpProjection(o.index, pred.seconds, pred.floor_s, pred.label, pred.dominant, pred.roof_class,
                                pred.fallback, pred.efficiency, pred.efficiency_source, measured_s))
    regions = {p: sum(by_index[i] for i in members[p]) for p in paths}
    notes = []
    for (a, b), flops in fallback_flops.items():
        notes.append(f"{_short(a)} ops are held against the {_short(b)} roof on the {spec.name}: its ceilings have "
                     f"no {_short(a)} figure ({flops:.3g} FLOPs)")
    return TargetProjection(spec.key, spec.name, ceil, tuple(ops), regions, by_label, tuple(notes))


def _short(cls: str) -> str:
    """"fp16 tensor" for "fp16_tensor" (notes read as prose)."""
    return cls.replace("_", " ")


__all__ = ["DEFAULT_EFFICIENCY", "EFFICIENCY_RANGE", "KERNEL_FIXED_S", "MATMUL_KERNEL_FIXED_S", "OpPrediction",
           "OpProjection", "Projection", "TargetProjection", "default_kernels", "fallbacks", "fixed_seconds",
           "is_matmul", "measured_efficiency", "predict_seconds", "project"]
