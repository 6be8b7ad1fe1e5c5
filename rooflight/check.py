"""The CI guard on arithmetic intensity: `rooflight baseline` and `rooflight check`.

A baseline records, for every workload point of a model file, the counted FLOPs, bytes and
intensity of the whole run, of each region and of each op group (the same op at the same place
of every layer).  A check counts again and fails when, beyond the tolerances, intensity fell or
FLOPs or bytes grew — the signature of a change that made the model move more memory for the
same work (an unfused op, a materialized attention, a lost KV-cache reuse).  Counting needs no
GPU: CI runs it on CPU (or meta) tensors.

    result = check_model("model.py", "rooflight-baseline.json")
    assert result.ok, result.text()
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ._version import __version__
from .errors import RooflightError, UsageError
from .groups import group_ops
from .profile_data import Profile, now_iso, region_and_ancestors
from .roofline import intensity
from .runner import Options, profile_workloads
from .units import is_amount
from .workloads import load_model_file

SCHEMA = "rooflight.baseline"
SCHEMA_VERSION = 1


class BaselineError(RooflightError):
    """A baseline file that is missing, corrupt, of another version, or of another model: a usage
    error for the CI gate (exit code 2), never mistaken for a regression (exit code 1)."""

    exit_code = 2


@dataclass(frozen=True)
class Tolerances:
    max_intensity_drop: float = 0.05  # fraction: 0.05 = intensity may fall by up to 5%
    max_flops_growth: float = 0.05
    max_bytes_growth: float = 0.05

    def text(self) -> str:
        return (f"tolerances: intensity may fall {self.max_intensity_drop:.1%}, FLOPs and bytes may grow "
                f"{self.max_flops_growth:.1%} / {self.max_bytes_growth:.1%}")


def parse_fraction(text: str, option: str, *, at_most_one: bool = False) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a bare number above 1 ('5') is refused, not read as 500%.
    at_most_one: the value cannot pass 100% (an intensity cannot fall by more than all of it)."""
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UsageError(f"{option} {text!r}: give a percentage like 5% or a fraction like 0.05") from None
    if value < 0 or not math.isfinite(value):
        raise UsageError(f"{option} {text!r}: must be zero or more")
    if not t.endswith("%") and value > 1:
        raise UsageError(f"{option} {text!r}: a bare number is a fraction (0.05 = 5%); write {t}% for {t} percent")
    if at_most_one and value > 1:
        raise UsageError(f"{option} {text!r}: more than 100% would let any drop pass; give at most 100%")
    return value


def _entry(flops: float, nbytes: float) -> dict[str, float | None]:
    i = intensity(flops, nbytes)
    return {"flops": flops, "bytes": nbytes, "intensity": i if math.isfinite(i) else None}  # strict JSON: no Infinity


def _read_entry(p: Path, where: str, entry: Any) -> dict[str, float]:
    """A baseline entry, its numbers checked (finite, zero or more); its intensity recomputed from
    them (the stored one is derived: it cannot disagree)."""
    if not isinstance(entry, dict):
        raise BaselineError(f"{p}: {where} is {type(entry).__name__}, not an entry of flops and bytes; re-create "
                            "the baseline with `rooflight baseline`")
    out = {}
    for key in ("flops", "bytes"):
        v = entry.get(key)
        if not is_amount(v):
            raise BaselineError(f"{p}: {where}.{key} = {v!r}: must be a finite number, zero or more; re-create the "
                                "baseline with `rooflight baseline`")
        out[key] = float(v)
    out["intensity"] = intensity(out["flops"], out["bytes"])
    return out


# ops whose output shape follows tensor values (a boolean mask's True count, the unique values):
# the counts of what follows them depend on the data, not only on the shapes
_DATA_DEPENDENT = frozenset({"nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                             "_unique", "argwhere", "nonzero_numpy"})


def data_dependent_ops(profile: Profile) -> dict[str, int]:
    """{op: count} of the ops whose output shape depends on tensor values (boolean-mask indexing
    included)."""
    out: dict[str, int] = {}
    for o in profile.ops:
        name = o.short_op
        masked = name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
            t.dtype == "bool" for t in o.inputs[1:])
        if name in _DATA_DEPENDENT or masked:
            key = f"{name} (boolean mask)" if masked else name
            out[key] = out.get(key, 0) + 1
    return out


def summarize(profile: Profile) -> dict[str, Any]:
    """What a baseline keeps of one profile: totals, per region, per op group."""
    regions: dict[str, list[float]] = {}
    for o in profile.ops:
        for r in region_and_ancestors(o.region, profile.regions):
            acc = regions.setdefault(r, [0.0, 0.0])
            acc[0] += o.total_flops
            acc[1] += o.bytes
    # the op groups of rooflight.groups, by layer template and op only (what a change must not grow)
    groups = group_ops(profile, by=("module", "op"), keep=lambda o: bool(o.total_flops or o.bytes))
    order = {i: n for n, i in enumerate(o.index for o in profile.ops)}
    groups = sorted(groups, key=lambda g: order[g.indices[0]])
    return {
        "total": _entry(profile.total_flops, profile.total_bytes),
        "regions": {k: _entry(*v) for k, v in regions.items()},
        "groups": {f"{g.module} {g.op}".strip(): _entry(g.flops, g.bytes) for g in groups},
        "uncounted": profile.uncounted(),
        "data_dependent": data_dependent_ops(profile),
    }


def point_key(workload: str, label: str) -> str:
    return f"{workload}[{label}]" if label else workload


def make_baseline(results: Sequence, *, model: str, device: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "version": SCHEMA_VERSION, "model": model, "device": device,
        "torch_version": torch.__version__, "rooflight_version": __version__,
        "created": now_iso(),
        "points": {point_key(r.workload, r.label): {"workload": r.workload, "params": dict(r.params),
                                                    **summarize(r.profile)} for r in results},
    }


def load_baseline(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{p}: no such baseline; create one with `rooflight baseline MODEL.py -o {p}`") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BaselineError(f"{p}: corrupt baseline ({type(err).__name__}); re-create it with "
                            "`rooflight baseline`") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BaselineError(f"{p}: not a rooflight baseline; create one with `rooflight baseline`")
    if data.get("version") != SCHEMA_VERSION:
        raise BaselineError(f"{p}: baseline format version {data.get('version')!r}, this rooflight reads "
                            f"{SCHEMA_VERSION}; re-create it with `rooflight baseline`")
    points = data.get("points")
    if not isinstance(points, dict) or not all(isinstance(v, dict) and "total" in v for v in points.values()):
        raise BaselineError(f"{p}: corrupt baseline (no points); re-create it with `rooflight baseline`")
    for key, point in points.items():
        point["total"] = _read_entry(p, f"points[{key!r}].total", point["total"])
        for scope in ("regions", "groups"):
            entries = point.get(scope, {})
            if not isinstance(entries, dict):
                raise BaselineError(f"{p}: points[{key!r}].{scope} is not a table of entries; re-create the baseline")
            point[scope] = {name: _read_entry(p, f"points[{key!r}].{scope}[{name!r}]", e) for name, e in entries.items()}
    return data


@dataclass(frozen=True)
class Change:
    point: str
    scope: str  # "total", "region", "group"
    name: str
    old: Mapping[str, float] | None
    new: Mapping[str, float] | None
    problems: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    def delta(self, key: str) -> float:
        if not self.old or not self.new:
            return math.nan
        if key == "intensity":
            a, b = intensity(self.old["flops"], self.old["bytes"]), intensity(self.new["flops"], self.new["bytes"])
        else:
            a, b = self.old.get(key), self.new.get(key)
        if not a or a is None or b is None or not math.isfinite(a) or not math.isfinite(b):
            return math.nan
        return (b - a) / a


@dataclass(frozen=True)
class CheckResult:
    changes: tuple[Change, ...]
    tolerances: Tolerances
    missing_points: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failures(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.failed)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.missing_points

    def text(self, limit: int | None = None) -> str:
        """A plain table of what changed (failures first), for logs and assertion messages: every
        row, or the first `limit` and how many are left out."""
        rows = sorted((c for c in self.changes if c.failed or _moved(c)), key=lambda c: (not c.failed, c.point))
        lines = [f"{'':2}{'point':<24} {'scope':<7} {'name':<40} {'intensity':>20} {'FLOPs':>9} {'bytes':>9}"]
        for c in rows[:limit] if limit else rows:
            old_i = f"{intensity(c.old['flops'], c.old['bytes']):.3g}" if c.old else "(new)"
            new_i = f"{intensity(c.new['flops'], c.new['bytes']):.3g}" if c.new else "(gone)"
            lines.append(f"{'✗' if c.failed else ' ':2}{c.point[:24]:<24} {c.scope:<7} {c.name[:40]:<40} "
                         f"{old_i:>9} -> {new_i:<8} {_pct(c.delta('flops')):>9} {_pct(c.delta('bytes')):>9}"
                         + (f"  {'; '.join(c.problems)}" if c.problems else ""))
        if limit and len(rows) > limit:
            lines.append(f"  ... {len(rows) - limit} more rows (all of them: --format json, or no --limit)")
        for p in self.missing_points:
            lines.append(f"✗ {p}: in the baseline but not counted now")
        lines.extend(f"  note: {n}" for n in self.notes)
        verdict = "OK: no intensity regression" if self.ok else f"FAILED: {len(self.failures)} regressions"
        compared = f"  compared {len(self.changes)} entries ({len(rows)} moved) against {self.tolerances.text()}"
        return "\n".join(lines + [compared, verdict])

    def to_dict(self) -> dict[str, Any]:
        """Every compared entry with its values, changes and the tolerances (the JSON format)."""
        t = self.tolerances
        return {"schema": "rooflight.check", "version": 1, "ok": self.ok,
                "tolerances": {"max_intensity_drop": t.max_intensity_drop, "max_flops_growth": t.max_flops_growth,
                               "max_bytes_growth": t.max_bytes_growth},
                "failures": len(self.failures), "missing_points": list(self.missing_points), "notes": list(self.notes),
                "entries": [{"point": c.point, "scope": c.scope, "name": c.name, "failed": c.failed,
                             "problems": list(c.problems), "baseline": _finite(c.old), "now": _finite(c.new),
                             "change": {k: _or_none(c.delta(k)) for k in ("flops", "bytes", "intensity")}}
                            for c in self.changes]}

    def junit(self) -> str:
        """JUnit XML: one test case per compared entry, a <failure> for each regression."""
        from xml.sax.saxutils import quoteattr

        cases = []
        for c in self.changes:
            name = quoteattr(f"{c.scope}: {c.name}")
            cls = quoteattr(f"rooflight.check.{c.point}")
            if c.failed:
                msg = "; ".join(c.problems)
                cases.append(f"<testcase classname={cls} name={name}><failure message={quoteattr(msg)} "
                             f"type=\"intensity-regression\">{_xml(_entry_text(c))}</failure></testcase>")
            else:
                cases.append(f"<testcase classname={cls} name={name}/>")
        for p in self.missing_points:
            cases.append(f"<testcase classname={quoteattr('rooflight.check.' + p)} name=\"total: whole run\">"
                         f"<failure message={quoteattr('in the baseline but not counted now')} type=\"missing-point\"/>"
                         "</testcase>")
        fails = len(self.failures) + len(self.missing_points)
        return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                f"<testsuites tests=\"{len(cases)}\" failures=\"{fails}\">"
                f"<testsuite name=\"rooflight check\" tests=\"{len(cases)}\" failures=\"{fails}\">"
                + "".join(cases) + "</testsuite></testsuites>\n")

    def github(self, file: str = "") -> str:
        """GitHub Actions workflow commands: an ::error per regression, a ::notice with the verdict."""
        where = f" file={_gh(file, True)}," if file else " "
        lines = [f"::error{where}title={_gh('rooflight check: ' + c.point, True)}::"
                 f"{_gh(c.scope + ' ' + c.name + ': ' + '; '.join(c.problems))}" for c in self.failures]
        lines += [f"::error{where}title={_gh('rooflight check: ' + p, True)}::in the baseline but not counted now"
                  for p in self.missing_points]
        verdict = ("no intensity regression" if self.ok
                   else f"{len(self.failures)} regressions, {len(self.missing_points)} missing points")
        lines.append(f"::notice title=rooflight check::{_gh(verdict + ' (' + self.tolerances.text() + ')')}")
        return "\n".join(lines)


def _pct(x: float) -> str:
    return "" if math.isnan(x) else f"{x:+.1%}"


def _or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _finite(entry: Mapping[str, float] | None) -> dict[str, float | None] | None:
    return None if entry is None else {k: _or_none(v) for k, v in entry.items()}


def _entry_text(c: Change) -> str:
    def one(e: Mapping[str, float] | None) -> str:
        return ("absent" if e is None
                else f"{e['flops']:.6g} FLOPs, {e['bytes']:.6g} B, {intensity(e['flops'], e['bytes']):.6g} FLOP/B")

    return f"baseline: {one(c.old)}; now: {one(c.new)}"


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text)


def _gh(text: str, prop: bool = False) -> str:
    """Escape for a workflow command's message (or, prop=True, a property value)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _moved(c: Change) -> bool:
    return c.old is None or c.new is None or any(abs(c.delta(k)) > 1e-9 for k in ("flops", "bytes"))


def compare_baselines(baseline: Mapping[str, Any], current: Mapping[str, Any], tol: Tolerances = Tolerances()) -> CheckResult:
    """Compare two baseline dicts (the second from counting now)."""
    changes: list[Change] = []
    missing = tuple(k for k in baseline["points"] if k not in current["points"])
    for key, new_point in current["points"].items():
        old_point = baseline["points"].get(key)
        if old_point is None:
            changes.append(Change(key, "total", "(new workload point)", None, new_point["total"]))
            continue
        scopes = [("total", {"": old_point["total"]}, {"": new_point["total"]}),
                  ("region", old_point.get("regions", {}), new_point.get("regions", {})),
                  ("group", old_point.get("groups", {}), new_point.get("groups", {}))]
        for scope, olds, news in scopes:
            for name in list(olds) + [n for n in news if n not in olds]:
                old, new = olds.get(name), news.get(name)
                problems: list[str] = []
                if old is not None and new is not None:
                    i_old, i_new = intensity(old["flops"], old["bytes"]), intensity(new["flops"], new["bytes"])
                    drop = (i_old - i_new) / i_old if 0 < i_old < math.inf and i_new < math.inf else 0.0
                    if drop > tol.max_intensity_drop:
                        problems.append(f"intensity fell {drop:.1%}")
                    if old["flops"] > 0 and (new["flops"] - old["flops"]) / old["flops"] > tol.max_flops_growth:
                        problems.append(f"FLOPs grew {(new['flops'] - old['flops']) / old['flops']:.1%}")
                    if old["bytes"] > 0 and (new["bytes"] - old["bytes"]) / old["bytes"] > tol.max_bytes_growth:
                        problems.append(f"bytes grew {(new['bytes'] - old['bytes']) / old['bytes']:.1%}")
                changes.append(Change(key, scope, name or "whole run", old, new, tuple(problems)))
    notes = []
    for key, point in current["points"].items():
        dd = point.get("data_dependent") or {}
        if dd:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(dd.items()))
            notes.append(f"{key}: its counts depend on tensor values ({ops}): each point is seeded, so they repeat "
                         "from run to run, but other data would change them")
    if baseline.get("torch_version") and baseline.get("torch_version") != current.get("torch_version"):
        notes.append(f"baseline counted with torch {baseline['torch_version']}, now {current.get('torch_version')}")
    return CheckResult(tuple(changes), tol, missing, tuple(notes))


def count_model(model: str | Path, *, device: str = "cpu", params: Mapping[str, Any] | None = None,
                sweeps: Mapping[str, Sequence[Any]] | None = None, default_sweep: bool = True,
                dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Count every workload point of a model file (no timing) and summarize it as a baseline."""
    path = Path(model)
    workloads = load_model_file(path)
    results = profile_workloads(path, workloads, Options(device=device, count_only=True, check=False, dtype=dtype),
                                params=params, sweeps=sweeps, default_sweep=default_sweep)
    return make_baseline(results, model=str(path), device=device)


def check_model(model: str | Path, baseline: str | Path, tolerances: Tolerances = Tolerances(), *,
                device: str | None = None, **kwargs: Any) -> CheckResult:
    """The Python API of `rooflight check`: count the model again and compare with the baseline."""
    base = load_baseline(baseline)
    current = count_model(model, device=device or base.get("device", "cpu"), **kwargs)
    if not set(base["points"]) & set(current["points"]):
        raise BaselineError(f"{baseline}: none of its points ({', '.join(sorted(base['points']))}) was counted now "
                            f"({', '.join(sorted(current['points']))}): a baseline of another model or other "
                            "parameters; re-create it with `rooflight baseline`, or pass the same --param/--sweep")
    return compare_baselines(base, current, tolerances)


def plain_params(profile: Profile) -> dict[str, Any]:
    """A profile's parameters as a baseline stores them (JSON values)."""
    return json.loads(json.dumps(dict(profile.params), default=str))


def point_of(baseline: Mapping[str, Any], profile: Profile) -> str | None:
    """The key of the baseline point of the profile's workload and parameters, None if none."""
    params = plain_params(profile)
    return next((k for k, p in baseline["points"].items()
                 if p.get("workload") == profile.workload and p.get("params", {}) == params), None)


def check_profile(profile: Profile, baseline: str | Path | Mapping[str, Any],
                  tolerances: Tolerances = Tolerances()) -> CheckResult:
    """A saved profile (no re-count) against the baseline point of its workload and parameters."""
    base = load_baseline(baseline) if not isinstance(baseline, Mapping) else baseline
    params = plain_params(profile)
    key = point_of(base, profile)
    if key is None:
        known = ", ".join(sorted(base["points"])) or "none"
        raise BaselineError(f"the baseline has no point for {profile.workload or 'this profile'} with parameters "
                            f"{params or '{}'} (its points: {known}): compare a profile of one of them, or re-create "
                            "the baseline")
    current = {"points": {key: {"workload": profile.workload, "params": params, **summarize(profile)}},
               "torch_version": profile.torch_version}
    only = {**base, "points": {key: base["points"][key]}}
    return compare_baselines(only, current, tolerances)


def assert_no_regression(model: str | Path, baseline: str | Path, tolerances: Tolerances = Tolerances(),
                         **kwargs: Any) -> CheckResult:
    """For a pytest test: raises AssertionError with the table when intensity regressed."""
    result = check_model(model, baseline, tolerances, **kwargs)
    if not result.ok:
        raise AssertionError("arithmetic intensity regressed:\n" + result.text())
    return result
