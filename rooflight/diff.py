"""Two runs side by side: what changed between profile A and profile B.

`diff(a, b)` takes two Analyses (each profile held against its roofs) and lines up, row by row,
the headline (the whole run, or a script's steady state), every region and step, and every op
group: time with each side's spread over the repeats, FLOPs, bytes, intensity, label and the
fraction of the roof attained.  A time is called changed only when the two runs' spreads do not
overlap (B's slowest repeat beats A's fastest, or the other way round): noise is not a change.
Groups are matched by name (layer template, op, math class, dtype); groups left on one side are
then matched by module path (a fused kernel that replaced four ops in the same module is one row,
and the row says so); what still has no partner is listed as only in A or only in B.

`diff_counts(old, new)` compares two count summaries, e.g. a `rooflight baseline` point with a profile (counts only:
a baseline keeps no times).  Pure functions of their inputs; rendering is rooflight.render.diff.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .analysis import Analysis
from .errors import UsageError
from .groups import OpGroup
from .profile_data import Profile
from .roofline import intensity
from .units import fmt_bytes, fmt_flops, fmt_seconds

# the scopes of a row, in the order a table lists them before sorting by change
SCOPES = ("run", "region", "step", "group", "module")


@dataclass(frozen=True)
class Side:
    """One run's figures for one row."""

    flops: float
    bytes: float
    seconds: float = math.nan  # measured (median); NaN when not timed
    seconds_lo: float = math.nan  # the row's time at every op's fastest repeat
    seconds_hi: float = math.nan  # ... and at its slowest
    label: str = ""
    attained: float = math.nan  # the largest roofline floor over the time: 1.0 = at the roof
    ops: int = 0

    @property
    def intensity(self) -> float:
        return intensity(self.flops, self.bytes)

    @property
    def timed(self) -> bool:
        return self.seconds == self.seconds


@dataclass(frozen=True)
class Row:
    scope: str  # "run", "region", "step", "group" or "module"
    name: str
    a: Side | None  # None: only in B
    b: Side | None  # None: only in A
    note: str = ""

    @property
    def change(self) -> str:
        """'faster', 'slower', 'no change' (inside the spread), 'only in A', 'only in B'; where a
        side is not timed, 'counts changed' or 'same counts'."""
        if self.a is None:
            return "only in B"
        if self.b is None:
            return "only in A"
        if not (self.a.timed and self.b.timed):
            same = all(abs(getattr(self.b, k) - getattr(self.a, k)) <= 1e-9 * max(abs(getattr(self.a, k)), 1.0)
                       for k in ("flops", "bytes"))
            return "same counts" if same else "counts changed"
        if self.b.seconds_hi < self.a.seconds_lo:
            return "faster"
        if self.b.seconds_lo > self.a.seconds_hi:
            return "slower"
        return "no change"

    @property
    def changed(self) -> bool:
        return self.change in ("faster", "slower", "only in A", "only in B", "counts changed")

    @property
    def speedup(self) -> float:
        """A's time over B's (2.0: B takes half the time); NaN unless both are timed."""
        if self.a is None or self.b is None or not (self.a.timed and self.b.timed) or self.b.seconds <= 0:
            return math.nan
        return self.a.seconds / self.b.seconds

    @property
    def delta_seconds(self) -> float:
        """B's time minus A's (a side absent counts as 0 s; NaN if a present side is untimed)."""
        ta = 0.0 if self.a is None else self.a.seconds
        tb = 0.0 if self.b is None else self.b.seconds
        return tb - ta

    @property
    def time_moved(self) -> float:
        """|B's time - A's|, 0 where a side is untimed."""
        d = self.delta_seconds
        return abs(d) if d == d else 0.0

    @property
    def bytes_moved(self) -> float:
        """|B's bytes - A's| (an absent side counts as 0)."""
        return abs((self.b.bytes if self.b else 0.0) - (self.a.bytes if self.a else 0.0))

    @property
    def flops_moved(self) -> float:
        return abs((self.b.flops if self.b else 0.0) - (self.a.flops if self.a else 0.0))

    def ratio(self, field_name: str) -> float:
        """B's value over A's for 'flops', 'bytes' or 'intensity' (NaN where undefined)."""
        if self.a is None or self.b is None:
            return math.nan
        va, vb = getattr(self.a, field_name), getattr(self.b, field_name)
        if not (va > 0) or math.isinf(va) or math.isinf(vb):
            return math.nan
        return vb / va


@dataclass(frozen=True)
class Diff:
    """What changed from A to B.  rows: the headline first, then by the time that changed."""

    a_name: str
    b_name: str
    rows: tuple[Row, ...]
    verdict: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    a_roofs: str = ""  # the roofs each side was held against
    b_roofs: str = ""
    a_about: str = ""  # what each run was: workload, parameters, where and when it ran
    b_about: str = ""

    @property
    def timed(self) -> bool:
        run = self.run
        return run is not None and run.change not in ("counts changed", "same counts")

    @property
    def run(self) -> Row | None:
        return next((r for r in self.rows if r.scope == "run"), None)

    def changed(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.changed)

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per row (what the DataFrame and the JSON hold)."""
        out = []
        for r in self.rows:
            d: dict[str, Any] = {"scope": r.scope, "name": r.name, "change": r.change, "speedup": r.speedup,
                                 "delta_seconds": r.delta_seconds}
            for tag, s in (("a", r.a), ("b", r.b)):
                for k in ("seconds", "seconds_lo", "seconds_hi", "flops", "bytes", "intensity", "label", "attained",
                          "ops"):
                    d[f"{tag}_{k}"] = getattr(s, k) if s is not None else (math.nan if k != "label" else "")
            d["note"] = r.note
            out.append(d)
        return out

    def frame(self):
        """The rows as a pandas DataFrame (one row per run / region / step / group)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.records())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinities as null)."""
        return {"schema": "rooflight.diff", "version": 1, "a": self.a_name, "b": self.b_name,
                "a_roofs": self.a_roofs, "b_roofs": self.b_roofs, "verdict": self.verdict, "notes": list(self.notes),
                "rows": [{k: _json_value(v) for k, v in rec.items()} for rec in self.records()]}


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ---------------------------------------------------------------------------- one side's rows


def _spread(profile: Profile, indices: Iterable[int], seconds: float) -> tuple[float, float]:
    """(lo, hi): `seconds` moved by every op's distance from its median to its fastest and
    slowest repeat (0 where an op has one repeat)."""
    t = profile.timing
    if t is None or seconds != seconds:
        return math.nan, math.nan
    down = up = 0.0
    for i in indices:
        ot = t.op(i)
        if ot is None:
            continue
        down += max(ot.seconds - ot.seconds_min, 0.0)
        up += max(ot.seconds_max - ot.seconds, 0.0)
    return seconds - down, seconds + up


def _attained(an: Analysis, indices: Sequence[int], seconds: float) -> float:
    if not an.timed or not (seconds > 0):
        return math.nan
    floors = sum(an.diagnosis.verdicts[i].max_floor_s for i in indices if i in an.diagnosis.verdicts)
    return floors / seconds


def _side(an: Analysis, indices: Sequence[int], seconds: float, label: str) -> Side:
    p = an.profile
    by_index = p.__dict__.get("_diff_index")
    if by_index is None:  # a cache on the frozen profile (every row asks)
        by_index = {o.index: o for o in p.ops}
        object.__setattr__(p, "_diff_index", by_index)
    ops = [by_index[i] for i in indices if i in by_index]
    seconds = seconds if an.timed else math.nan
    lo, hi = _spread(p, indices, seconds)
    return Side(sum(o.total_flops for o in ops), sum(o.bytes for o in ops), seconds, lo, hi, label,
                _attained(an, indices, seconds), len(ops))


def _group_key(g: OpGroup) -> str:
    return re.sub(r" ×\d+$", "", g.name)


def _prefix(g: OpGroup) -> str:
    """The step-kind / region prefix of a group's name ("decode: "), "" when none."""
    core = f"{g.module + ' ' if g.module else ''}{g.op}"
    key = _group_key(g)
    return key[: len(key) - len(core)] if key.endswith(core) else ""


def _region_rows(an: Analysis) -> dict[tuple[str, str], Side]:
    """(scope, name) -> Side for the headline ("run"), each region and each step."""
    d = an.diagnosis
    steps = {s.name for s in an.profile.steps}
    out: dict[tuple[str, str], Side] = {}
    for name, rb in d.regions.items():
        seconds = rb.wall_seconds if rb.wall_seconds == rb.wall_seconds and rb.wall_seconds > 0 else rb.total_seconds
        side = _side(an, rb.ops, seconds, str(rb.headline))
        if name == d.headline_region:
            out[("run", name or "whole run")] = side
        elif not name:  # a script's whole run, beside its steady-state headline
            out[("region", "whole run")] = side
        else:
            out[("step" if name in steps else "region", name)] = side
    return out


def _group_rows(an: Analysis) -> dict[str, tuple[OpGroup, Side]]:
    return {_group_key(g): (g, _side(an, g.indices, g.seconds, g.label)) for g in an.groups}


def _merge(an: Analysis, groups: Sequence[OpGroup]) -> Side:
    indices = [i for g in groups for i in g.indices]
    seconds = sum(g.seconds for g in groups)
    label_time: dict[str, float] = {}
    for g in groups:
        label_time[g.label] = label_time.get(g.label, 0.0) + (g.seconds if g.seconds == g.seconds else 0.0)
    label = max(label_time, key=label_time.get) if label_time else ""
    return _side(an, indices, seconds, label)


# ---------------------------------------------------------------------------- the diff


def diff(a: Analysis, b: Analysis, *, a_name: str = "A", b_name: str = "B") -> Diff:
    """Line up two analysed profiles (see the module doc)."""
    rows: list[Row] = []
    ra, rb = _region_rows(a), _region_rows(b)
    run_a = next((k for k in ra if k[0] == "run"), None)
    run_b = next((k for k in rb if k[0] == "run"), None)
    run_name = run_b[1] if run_b and run_a and run_a[1] == run_b[1] else " / ".join(
        dict.fromkeys(k[1] for k in (run_a, run_b) if k))
    rows.append(Row("run", run_name, ra.get(run_a) if run_a else None, rb.get(run_b) if run_b else None,
                    "" if run_a == run_b else "the headlines cover different parts of the runs"))
    for key in list(dict.fromkeys([k for k in ra if k[0] != "run"] + [k for k in rb if k[0] != "run"])):
        rows.append(Row(key[0], key[1], ra.get(key), rb.get(key)))

    ga, gb = _group_rows(a), _group_rows(b)
    for key in ga.keys() & gb.keys():
        rows.append(Row("group", key, ga[key][1], gb[key][1]))
    left_a = [ga[k][0] for k in ga if k not in gb]
    left_b = [gb[k][0] for k in gb if k not in ga]
    by_module_a: dict[tuple[str, str], list[OpGroup]] = {}
    by_module_b: dict[tuple[str, str], list[OpGroup]] = {}
    for g in left_a:
        by_module_a.setdefault((_prefix(g), g.module), []).append(g)
    for g in left_b:
        by_module_b.setdefault((_prefix(g), g.module), []).append(g)
    for mod in by_module_a.keys() & by_module_b.keys():
        ops_a = ", ".join(_group_key(g)[len(mod[0]):].removeprefix(mod[1]).strip() for g in by_module_a[mod])
        ops_b = ", ".join(_group_key(g)[len(mod[0]):].removeprefix(mod[1]).strip() for g in by_module_b[mod])
        name = f"{mod[0]}{mod[1] or '(top level)'}: {ops_a} → {ops_b}"
        rows.append(Row("module", name, _merge(a, by_module_a[mod]), _merge(b, by_module_b[mod]),
                        f"matched by module path: A's {ops_a} against B's {ops_b}"))
    for mod, groups in by_module_a.items():
        if mod not in by_module_b:
            rows.extend(Row("group", _group_key(g), ga[_group_key(g)][1], None) for g in groups)
    for mod, groups in by_module_b.items():
        if mod not in by_module_a:
            rows.extend(Row("group", _group_key(g), None, gb[_group_key(g)][1]) for g in groups)

    head, rest = rows[0], rows[1:]
    rest.sort(key=lambda r: (not r.changed, -r.time_moved, -r.bytes_moved, SCOPES.index(r.scope),
                             r.name))
    rows = [head, *rest]
    ta, tb = a.profile.timing, b.profile.timing
    few = min(ta.repeats, tb.repeats) if ta is not None and tb is not None else 0
    return Diff(a_name, b_name, tuple(rows), _verdict(head, rest, a_name, b_name, repeats=few),
                tuple(_notes(a, b, a_name, b_name)),
                _roofs_name(a), _roofs_name(b), about(a.profile), about(b.profile))


def about(p: Profile) -> str:
    """One line on a run: workload [parameters], where it ran (or was counted), torch, date."""
    params = ", ".join(f"{k}={v}" for k, v in p.params.items())
    t = p.timing
    where = (f"timed on {t.device_name} ({t.repeats} repeats)" if t is not None
             else f"counted on {p.device_name or p.device}")
    return (f"{p.workload or 'workload'}{' [' + params + ']' if params else ''}, {where}, torch {p.torch_version}"
            + (f", {p.created[:10]}" if p.created else ""))


def _roofs_name(an: Analysis) -> str:
    name = an.spec.name if an.spec is not None else an.ceilings.name
    return name if f"({an.ceilings.source})" in name else f"{name} ({an.ceilings.source})"


def _where(an: Analysis) -> str:
    t = an.profile.timing
    if t is None:
        return f"counted only ({an.profile.device_name or an.profile.device})"
    return f"timed on {t.device_name}"


FEW_REPEATS = 3  # fewer repeats on a side: its spread says little about noise


def _notes(a: Analysis, b: Analysis, a_name: str, b_name: str) -> list[str]:
    notes = []
    ta, tb = a.profile.timing, b.profile.timing
    if ta is None or tb is None:
        which = " and ".join(n for n, t in ((a_name, ta), (b_name, tb)) if t is None)
        notes.append(f"{which} {'is' if ' and ' not in which else 'are'} count-only: FLOPs, bytes and intensity are "
                     "compared, times are not")
    elif ta.device_name != tb.device_name:
        notes.append(f"{a_name} was timed on {ta.device_name} and held against {_roofs_name(a)}; {b_name} on "
                     f"{tb.device_name} against {_roofs_name(b)}: a change in time is the hardware's as well as the code's")
    elif _roofs_name(a) != _roofs_name(b):
        notes.append(f"{a_name} is held against {_roofs_name(a)}, {b_name} against {_roofs_name(b)}")
    if ta is not None and tb is not None and (ta.repeats < FEW_REPEATS or tb.repeats < FEW_REPEATS):
        notes.append(f"fewer than {FEW_REPEATS} repeats on a side: its spread says little, so a change in time, or "
                     "'no change', is weak evidence")
    if a.profile.workload != b.profile.workload:
        notes.append(f"different workloads: {a.profile.workload or '?'} ({a_name}) and {b.profile.workload or '?'} "
                     f"({b_name}); their op groups are matched by name, then by module path")
    return notes


def _verdict(run: Row, rest: Sequence[Row], a_name: str, b_name: str, *, repeats: int = 0) -> str:
    """The headline sentence; repeats: the fewer repeats of the two sides (0: unknown), below
    FEW_REPEATS a change in time is said to be a change of one sample or of a few."""
    scope = "" if run.name == "whole run" else f" in the {run.name}"
    if run.a is None or run.b is None:
        return "the runs have no headline in common"
    if run.change in ("counts changed", "same counts"):
        return (f"counts only{scope}: FLOPs {fmt_flops(run.a.flops)} → {fmt_flops(run.b.flops)}, bytes "
                f"{fmt_bytes(run.a.bytes)} → {fmt_bytes(run.b.bytes)}, intensity {run.a.intensity:.3g} → "
                f"{run.b.intensity:.3g} FLOP/B" + _why(rest, timed=False, lead="; the biggest change: "))
    if run.change == "no change":
        return (f"no change in time beyond the runs' spread{scope}: {a_name} {_t(run.a)}, {b_name} {_t(run.b)}"
                + _why(rest, timed=False, lead="; counts: "))
    sp = run.speedup
    how = f"{sp:.2g}× faster" if sp >= 1 else f"{1 / sp:.2g}× slower"
    weak = ""
    if 0 < repeats < FEW_REPEATS:
        weak = (f" ({'one repeat' if repeats == 1 else f'{repeats} repeats'} on a side: too few to tell a change from "
                "noise; time both with --repeats 5 or more)")
    return (f"{b_name} is {how} than {a_name}{scope} ({fmt_seconds(run.a.seconds)} → {fmt_seconds(run.b.seconds)})"
            + weak + _why(rest, timed=True))


def _t(s: Side) -> str:
    return f"{fmt_seconds(s.seconds)} ({fmt_seconds(s.seconds_lo)}–{fmt_seconds(s.seconds_hi)})"


def _why(rest: Sequence[Row], *, timed: bool, lead: str = ": ") -> str:
    """The biggest change among the groups: by time when timed, else by bytes."""
    cands = [r for r in rest if r.scope in ("group", "module")]
    if timed:
        cands = [r for r in cands if r.changed and r.delta_seconds == r.delta_seconds]
        if not cands:
            return ""
        top = max(cands, key=lambda r: r.time_moved)
        label = (top.a or top.b).label
        if top.a is None or top.b is None:
            side = "new in B" if top.a is None else "gone from B"
            return f"{lead}the biggest change is the {label} {top.name} ({side}, {fmt_seconds(top.time_moved)})"
        text = (f"{lead}the {label} {top.name} went from {fmt_seconds(top.a.seconds)} to "
                f"{fmt_seconds(top.b.seconds)}")
    else:
        cands = [r for r in cands if r.bytes_moved > 0 or (r.a is None) != (r.b is None)]
        if not cands:
            return ""
        top = max(cands, key=lambda r: r.bytes_moved)
        if top.a is None or top.b is None:
            return f"{lead}{top.name} is {'new in B' if top.a is None else 'gone from B'}"
        text = f"{lead}{top.name} moves {fmt_bytes(top.a.bytes)} → {fmt_bytes(top.b.bytes)}"
        return text + _flops_change(top)
    return text + _bytes_change(top) + _flops_change(top)


def _fold(r: float) -> str:
    return f"{1 / r:.2g}×" if r < 1 else f"{r:.2g}×"


def _bytes_change(r: Row) -> str:
    x = r.ratio("bytes")
    if x == x and (x < 0.8 or x > 1.25):
        return f"; its bytes {'fell' if x < 1 else 'grew'} {_fold(x)}"
    return ""


def _flops_change(r: Row) -> str:
    x = r.ratio("flops")
    if x == x and (x < 0.8 or x > 1.25):
        return f"; its FLOPs {'fell' if x < 1 else 'grew'} {_fold(x)}"
    return ""


# ---------------------------------------------------------------------------- against a baseline


def diff_counts(old: Mapping[str, Any], new: Mapping[str, Any], *, a_name: str = "A", b_name: str = "B",
                baseline: Sequence[str] = ()) -> Diff:
    """Two count summaries (a `rooflight baseline` point, or a profile through rooflight.check.
    summarize) side by side: counts only, per whole run, region and op group ("module op").
    baseline: the names of the sides that are baseline files (said in the notes)."""
    rows: list[Row] = []

    def side(entry: Mapping[str, float] | None) -> Side | None:
        return None if entry is None else Side(float(entry["flops"]), float(entry["bytes"]))

    rows.append(Row("run", "whole run", side(old["total"]), side(new["total"])))
    for scope, key in (("region", "regions"), ("group", "groups")):
        olds, news = old.get(key, {}), new.get(key, {})
        for name in list(olds) + [n for n in news if n not in olds]:
            rows.append(Row(scope, name, side(olds.get(name)), side(news.get(name))))
    head, rest = rows[0], rows[1:]
    rest.sort(key=lambda r: (not (r.a is None or r.b is None or r.bytes_moved or r.flops_moved),
                             -r.bytes_moved, SCOPES.index(r.scope), r.name))
    notes = [f"{n} is a rooflight baseline: counts only (FLOPs, bytes, intensity)" for n in baseline]
    return Diff(a_name, b_name, (head, *rest), _verdict(head, rest, a_name, b_name), tuple(notes))


def pick_point(baseline: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The baseline's point `key`, or its only point; a one-line error naming the points otherwise."""
    points = baseline["points"]
    if key in points:
        return points[key]
    if len(points) == 1:
        return next(iter(points.values()))
    raise UsageError(f"the baseline has no point {key!r} (it has {', '.join(sorted(points))}): compare a profile of "
                     "one of those points")


__all__ = ["Diff", "Row", "SCOPES", "Side", "about", "diff", "diff_counts", "pick_point"]
