"""Analysis: a profile held against its roofs, with its diagnosis, advice and op groups.

`analyze(profile, roofs)` is where the pieces meet: it classifies every op, region and the whole
run (rooflight.classify), advises (rooflight.advice) and groups ops so that a 32-layer model is
30 points on a chart rather than 3000 (rooflight.groups).  It is a pure function of the profile
and the roofs it is given: choosing them (the hardware database, this machine's GPU, the
calibration cache) is the facade's job (rooflight.api.roofs).  The result is plain data that the
renderers (tables, charts, HTML) and the CLI read; nothing here measures, prints or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .advice import advise
from .classify import Diagnosis, Verdict, breakdown
from .groups import OpGroup, group_ops
from .hardware import HardwareSpec
from .profile_data import Profile
from .roofline import Ceilings, Roofs


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


def analyze(profile: Profile, roofs: Roofs | Ceilings, *, advice_top: int = 5) -> Analysis:
    """Classify, group and advise a profile against `roofs` (a Roofs, or bare Ceilings)."""
    if isinstance(roofs, Ceilings):
        roofs = Roofs(roofs)
    ceilings, spec = roofs.ceilings, roofs.spec
    notes = list(roofs.notes)
    diagnosis = breakdown(profile, ceilings)
    groups = group_ops(profile, diagnosis)
    tips = tuple(advise(profile, diagnosis, ceilings, top=advice_top))
    if profile.timing is not None:
        notes.extend(profile.timing.notes)
        cache = cache_note(profile, diagnosis, ceilings, spec)
        if cache:
            notes.append(cache)
    uncounted = profile.uncounted()
    if uncounted:
        notes.append("ops with no cost formula (counted as uncounted, not zero): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(uncounted.items())))
    return Analysis(profile, ceilings, roofs.datasheet, spec, diagnosis, groups, tips, tuple(notes))


__all__ = ["Analysis", "CACHE_RESIDENT_FRACTION", "analyze", "cache_note"]
