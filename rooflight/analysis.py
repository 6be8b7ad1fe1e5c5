"""Analysis: a profile held against a GPU's roofs, with its diagnosis, advice and op groups.

`analyze(profile, hw)` is where the pieces meet: it chooses the ceilings (the device the
profile was timed on, calibrated where a calibration is cached; for a count-only profile the
GPU named, else this machine's GPU, else an H100 SXM), classifies, advises, and groups ops so
that a 32-layer model is 30 points on a chart rather than 3000.  The result is plain data that
the renderers (tables, charts, HTML) and the CLI read; nothing here prints or writes files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

from . import calibrate as _cal
from .ceilings import Ceilings, from_spec, merge
from .classify import Diagnosis, Label, Verdict, breakdown
from .errors import UnknownHardwareError
from .hardware import HardwareDB, HardwareSpec, load_database
from .profile import OpRecord, Profile, region_and_ancestors

DEFAULT_HW = "h100"


@dataclass(frozen=True)
class OpGroup:
    """Ops that are the same work at the same place of each layer: `layers.*.attention.wq mm`."""

    name: str
    module: str  # module path with layer indexes as '*'
    op: str  # short op name
    indices: tuple[int, ...]
    flops: float
    bytes: float
    comm_bytes: float
    seconds: float  # measured (sum), or the largest floor (sum) for a count-only profile
    label: str  # the label holding most of the group's time
    math_class: str
    dtype: str
    shapes: str  # of the first member

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else (math.inf if self.flops else 0.0)

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class Analysis:
    profile: Profile
    ceilings: Ceilings  # the roofs the diagnosis used (calibrated where measured)
    datasheet: Ceilings | None  # the datasheet roofs of `spec`, drawn beside calibrated ones
    spec: HardwareSpec | None
    diagnosis: Diagnosis
    groups: tuple[OpGroup, ...]  # heaviest first
    advice: tuple = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def timed(self) -> bool:
        return self.profile.timing is not None

    @property
    def device_kind(self) -> str:
        return self.diagnosis.device_kind

    def verdict(self, index: int) -> Verdict:
        return self.diagnosis.verdicts[index]


_LAYER = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def module_template(path: str) -> str:
    """`layers.3.attention.wq` -> `layers.*.attention.wq`."""
    return _LAYER.sub("*", path)


def group_ops(profile: Profile, diagnosis: Diagnosis) -> tuple[OpGroup, ...]:
    """Merge ops that repeat across layers; views and other free ops are left out."""
    buckets: dict[tuple, list[OpRecord]] = {}
    for o in profile.ops:
        if not o.counted or (o.total_flops == 0 and o.bytes == 0 and o.comm_bytes == 0):
            continue
        outer = region_and_ancestors(o.region, profile.regions)
        key = (module_template(o.module), o.short_op, o.math_class, o.dtype, outer[0] if outer else "")
        buckets.setdefault(key, []).append(o)
    groups = []
    tops = {k[4] for k in buckets}
    for (module, op, cls, dtype, region), ops in buckets.items():
        seconds: dict[str, float] = {}
        for o in ops:
            v = diagnosis.verdicts[o.index]
            w = v.weight_s if not math.isnan(v.weight_s) else 0.0
            seconds[str(v.label)] = seconds.get(str(v.label), 0.0) + w
        total = sum(seconds.values())
        label = max(seconds, key=seconds.get) if total > 0 else str(diagnosis.verdicts[ops[0].index].label)
        where = f"{region}: " if region and len(tops) > 1 else ""
        name = f"{where}{module + ' ' if module else ''}{op}" + (f" ×{len(ops)}" if len(ops) > 1 else "")
        groups.append(OpGroup(name, module, op, tuple(o.index for o in ops), sum(o.total_flops for o in ops),
                              sum(o.bytes for o in ops), sum(o.comm_bytes for o in ops), total, label, cls, dtype,
                              ops[0].shapes))
    groups.sort(key=lambda g: (-g.seconds, -g.bytes))
    return tuple(groups)


# ---------------------------------------------------------------------------- which roofs


def resolve_ceilings(profile: Profile, hw: str | HardwareSpec | None = None, *, calibrated: bool = True,
                     db: HardwareDB | None = None) -> tuple[Ceilings, Ceilings | None, HardwareSpec | None, list[str]]:
    """(ceilings to classify against, datasheet ceilings, spec, notes) for a profile."""
    notes: list[str] = []
    timing = profile.timing
    if timing is not None and timing.device_kind == "cpu":
        cal = _cal.load(timing.device_name)
        if cal is None:
            cal = _cal.calibrate("cpu", quick=True)
            path = _cal.save(cal)
            notes.append(f"no cached CPU calibration for {timing.device_name}: measured a quick one now and cached "
                         f"it in {path} (run `rooflight calibrate --device cpu` for a full one)")
        return cal.to_ceilings(), None, None, notes

    db = db or load_database()
    spec: HardwareSpec | None = hw if isinstance(hw, HardwareSpec) else None
    if spec is None and hw:
        spec = db.get(hw)
    ran_on = timing.device_name if timing is not None else ""
    if spec is None and ran_on:
        try:
            spec = db.get(ran_on)
        except UnknownHardwareError:
            notes.append(f"{ran_on} is not in the hardware database: pass --hw, or add a spec file")
            raise
    if spec is None:
        from .detect import detect

        det = detect(db)
        if det.gpus and det.gpus[0].spec_key:
            spec = db.get(det.gpus[0].spec_key)
        else:
            spec = db.get(DEFAULT_HW)
            notes.append(f"no GPU here: compared against the {spec.name} datasheet (choose another with --hw)")
    if timing is not None and ran_on:
        try:
            ran_spec = db.get(ran_on)
        except UnknownHardwareError:
            ran_spec = None
        if ran_spec is not None and ran_spec.key != spec.key:
            notes.append(f"times were measured on {ran_on} but are held against the {spec.name}'s roofs; "
                         f"`rooflight project` predicts times on another GPU")
    sheet = from_spec(spec)
    if not calibrated:
        return sheet, sheet, spec, notes
    cal = _cal.load(ran_on) if ran_on else None
    if cal is None:
        cal = next((c for c in _cal.cached() if c.spec_key == spec.key and c.device_kind == "cuda"), None)
    if cal is not None and (cal.spec_key in ("", spec.key)):
        notes.append(f"calibrated roofs of {cal.device_name} ({cal.created[:10]}) beside the datasheet")
        return merge(cal.to_ceilings(), sheet), sheet, spec, notes
    return sheet, sheet, spec, notes


# An op that moved its counted bytes faster than this multiple of the memory roof cannot have
# moved them through device memory: its data came from L2 (a warm cache between repeats).
CACHE_RESIDENT_FRACTION = 1.05


def cache_note(profile: Profile, diagnosis: Diagnosis, ceilings: Ceilings, spec: HardwareSpec | None) -> str:
    """A note when memory-dominated ops beat the device-memory roof: warm-L2 times, not DRAM."""
    timing = profile.timing
    if timing is None or timing.flush_l2 or timing.device_kind != "cuda":
        return ""
    fast = [v for v in diagnosis.verdicts.values() if v.dominant == "memory" and v.seconds > 0
            and v.memory_floor_s / v.seconds > CACHE_RESIDENT_FRACTION]
    if not fast:
        return ""
    top = max(v.memory_floor_s / v.seconds for v in fast)
    l2 = f" (the {spec.l2_bytes / 2**20:.0f} MB L2 of the {spec.name})" if spec is not None and spec.l2_bytes else ""
    return (f"{len(fast)} memory-bound op{'s' if len(fast) > 1 else ''} beat the device-memory roof (up to "
            f"{top:.0%} of it): the data was served from cache{l2} between repeats, so these are warm-cache times; "
            "profile with --flush-l2 for device-memory numbers")


def analyze(profile: Profile, hw: str | HardwareSpec | None = None, *, calibrated: bool = True,
            db: HardwareDB | None = None, advice_top: int = 5) -> Analysis:
    """Classify and advise a profile against a GPU's roofs (see resolve_ceilings)."""
    ceilings, sheet, spec, notes = resolve_ceilings(profile, hw, calibrated=calibrated, db=db)
    diagnosis = breakdown(profile, ceilings)
    groups = group_ops(profile, diagnosis)
    try:
        from .advice import advise

        tips = tuple(advise(profile, diagnosis, ceilings, top=advice_top))
    except ImportError:  # pragma: no cover
        tips = ()
    if profile.timing is not None:
        notes.extend(profile.timing.notes)
        cache = cache_note(profile, diagnosis, ceilings, spec)
        if cache:
            notes.append(cache)
    uncounted = profile.uncounted()
    if uncounted:
        notes.append("ops with no cost formula (counted as uncounted, not zero): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(uncounted.items())))
    return Analysis(profile, ceilings, sheet, spec, diagnosis, groups, tips, tuple(notes))


def label_seconds(analysis: Analysis, region: str = "") -> dict[str, float]:
    """Seconds per label of a region (GPU idle time counted as overhead-bound)."""
    r = analysis.diagnosis.region(region)
    return {str(k): v for k, v in r.seconds_by_label.items() if v > 0}


def top_groups(analysis: Analysis, n: int = 10) -> Sequence[OpGroup]:
    return analysis.groups[:n]


__all__ = ["Analysis", "OpGroup", "analyze", "group_ops", "label_seconds", "module_template",
           "resolve_ceilings", "top_groups", "Label"]
