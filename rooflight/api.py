"""The facade: what `import rooflight` and the `rooflight` command stand on.

Everything below this module is a pure pipeline (capture -> profile data -> classify / advise /
project -> render).  What needs the world happens here, in one place:

- `roofs(profile, hw)` chooses the roofs a profile is held against: the GPU named, else the one
  it was timed on, else this machine's GPU (NVML), else an H100 SXM datasheet; calibrated where
  the calibration cache has this GPU (or CPU).  Displaying, plotting or re-rendering never
  measures the machine and never writes a file: a CPU-timed profile whose CPU has no cached
  calibration raises MissingCalibrationError naming the command that makes one.  Only the
  profiling entry points (`profile` here, `rooflight profile`), which measure anyway, may
  measure and cache a quick CPU calibration (`measure=True`).
- `analyze`, `project`: those roofs (and the database's target GPUs) handed to the pure
  rooflight.analysis.analyze and rooflight.projection.project.
- `Profile`: the profile data with the notebook conveniences (`analyze`, `plot`, `savefig`,
  `to_html`, display in Jupyter); its analysis is computed once per choice of roofs.
  `count`, `profile` and `load` return one.
- `render_run` / `write`: the files of a run (reports, charts, CSV, sweep charts, the index page),
  what `rooflight profile` writes and a notebook can write too.
"""

from __future__ import annotations

import tempfile
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import calibrate as _cal
from . import check as _check
from . import diff as _diff
from . import ncu as _ncu
from .analysis import Analysis as _Analysis
from .analysis import analyze as _analyze
from .capture import count as _count
from .detect import describe_cpu, detect
from .errors import RooflightError, UnknownHardwareError
from .files import OutputDir, write_files
from .hardware import HardwareDB, HardwareSpec, load_database, resolve_targets
from .profile_data import Profile as ProfileData
from .projection import Projection
from .projection import project as _project
from .render.charts import Roof, chart_format, figure_bytes, roofline_of, roofs_of
from .render.diff import diff_chart, diff_html, diff_text
from .render.html import e, report_html, summary_html
from .render.outputs import run_files
from .roofline import Ceilings, Roofs, from_spec, merge, roofs_to_dict
from .runner import Result
from .timing import profile as _time
from .units import fmt_bytes, fmt_flops

DEFAULT_HW = "h100"


class MissingCalibrationError(RooflightError):
    """CPU timings with no calibration of that CPU to hold them against."""


# ---------------------------------------------------------------------------- which roofs


def roofs(profile: ProfileData, hw: str | HardwareSpec | None = None, *, calibrated: bool = True,
          db: HardwareDB | None = None, measure: bool = False) -> Roofs:
    """The roofs to hold `profile` against (see the module doc), with notes on the choice."""
    notes: list[str] = []
    timing = profile.timing
    if hw is None and calibrated and profile.roofs:
        stored = _stored_roofs(profile.roofs, db)
        if stored is not None:
            return stored
    if timing is not None and timing.device_kind == "cpu":
        return _cpu_roofs(timing.device_name, measure)

    db = db or load_database()
    spec: HardwareSpec | None = hw if isinstance(hw, HardwareSpec) else None
    if spec is None and hw:
        spec = db.get(hw)
    ran_on = timing.device_name if timing is not None else ""
    if spec is None and ran_on:
        spec = db.get(ran_on)
    if spec is None:
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
        return Roofs(sheet, sheet, spec, tuple(notes))
    cal = _cal.load_cached(ran_on) if ran_on else None
    if cal is None:
        cal = next((c for c in _cal.cached() if c.spec_key == spec.key and c.device_kind == "cuda"), None)
    if cal is not None and (cal.spec_key in ("", spec.key)):
        notes.append(f"calibrated roofs of {cal.device_name} ({cal.created[:10]}) beside the datasheet")
        return Roofs(merge(cal.to_ceilings(), sheet), sheet, spec, tuple(notes))
    return Roofs(sheet, sheet, spec, tuple(notes))


def _stored_roofs(record: Mapping[str, Any], db: HardwareDB | None) -> Roofs | None:
    """The roofs a profile kept from its first analysis (None if the record is damaged: the
    roofs are then chosen afresh, as for a profile without one)."""
    from .roofline import ceilings_from_dict

    try:
        ceilings = ceilings_from_dict(record["ceilings"])
        sheet = ceilings_from_dict(record["datasheet"]) if record.get("datasheet") else None
    except (KeyError, TypeError, ValueError):
        return None
    spec = None
    if record.get("spec"):
        try:
            spec = (db or load_database()).get(str(record["spec"]))
        except RooflightError:
            spec = None
    notes = tuple(str(n) for n in record.get("notes") or ()) + (
        f"held against the roofs it was analysed against when profiled ({ceilings.name}, {ceilings.source}), kept "
        "in the profile; --hw or --datasheet chooses others",)
    return Roofs(ceilings, sheet, spec, notes)


def _cpu_roofs(cpu: str, measure: bool) -> Roofs:
    cal = _cal.load_cached(cpu)
    notes: list[str] = []
    if cal is None and measure and cpu == describe_cpu().model:
        cal = _cal.calibrate("cpu", quick=True)
        try:
            path = _cal.save(cal)
            notes.append(f"no cached CPU calibration for {cpu}: measured a quick one now and cached it in {path} "
                         "(run `rooflight calibrate --device cpu` for a full one)")
        except OSError as err:  # an unwritable cache costs the cache, never the results
            notes.append(f"no cached CPU calibration for {cpu}: measured a quick one now, but could not cache it "
                         f"({err.strerror or err}; set ROOFLIGHT_CACHE_DIR to a writable directory)")
    if cal is None:
        raise MissingCalibrationError(
            f"these are CPU timings of {cpu}, and no calibration of that CPU is cached here to hold them against: "
            "run `rooflight calibrate --device cpu` on it (or profile there, which makes one)")
    return Roofs(cal.to_ceilings(), None, None, tuple(notes))


@dataclass(frozen=True, repr=False)
class Analysis(_Analysis):
    """rooflight.analysis.Analysis that displays itself in a notebook (the summary, the label
    table and the roofline); `frame()` is its verdicts as a DataFrame."""

    def _repr_html_(self) -> str:
        return summary_html(self)


def analyze(profile: ProfileData, hw: str | HardwareSpec | None = None, *, calibrated: bool = True,
            db: HardwareDB | None = None, advice_top: int = 5, measure: bool = False) -> Analysis:
    """Classify and advise a profile against a GPU's roofs (default: where it ran, or this
    machine's GPU, or an H100 SXM for a count-only profile), calibrated where cached."""
    return _wrap(_analyze(profile, roofs(profile, hw, calibrated=calibrated, db=db, measure=measure),
                          advice_top=advice_top))


def _wrap(a: _Analysis) -> Analysis:
    return Analysis(**{f.name: getattr(a, f.name) for f in fields(_Analysis)})


def source_ceilings_of(profile: ProfileData, db: HardwareDB) -> tuple[Ceilings | None, str]:
    """The datasheet ceilings of the GPU a profile was timed on, and a note when there are none."""
    t = profile.timing
    if t is None:
        return None, ""
    if t.device_kind != "cuda":
        return None, ("the profile was timed on the CPU: CPU wall times say nothing about a GPU's efficiency, "
                      "so default efficiencies are used")
    try:
        return from_spec(db.get(t.device_name)), ""
    except UnknownHardwareError:
        return None, (f"{t.device_name} (where the profile was timed) is not in the hardware database: default "
                      "efficiencies are used; add a spec file for it to carry its measured efficiencies over")


def project(profile: ProfileData, targets: str | HardwareSpec | Iterable[str | HardwareSpec] | None = "all",
            source_ceilings: Ceilings | None = None, *, db: HardwareDB | None = None,
            kernel_fixed_s: float | None = None, use_measured: bool = True,
            default_efficiency: Mapping[str, float] | None = None) -> Projection:
    """Predict `profile` on GPUs of the database: "all" (default), a name, "a10,4090", or a list
    of names / HardwareSpecs (the model: rooflight.projection).  source_ceilings: the roofs its
    times were measured against (default: the datasheet of the GPU named in its timing)."""
    db = db or load_database()
    specs = resolve_targets(targets, db)
    note = ""
    if source_ceilings is None and use_measured:
        source_ceilings, note = source_ceilings_of(profile, db)
    extra = {} if default_efficiency is None else {"default_efficiency": default_efficiency}
    return _project(profile, specs, source_ceilings, source_note=note, kernel_fixed_s=kernel_fixed_s,
                    use_measured=use_measured, **extra)


# ---------------------------------------------------------------------------- the notebook profile


@dataclass(frozen=True, repr=False)
class Profile(ProfileData):
    """A profile (rooflight.profile_data.Profile) with the notebook's conveniences.  The analysis
    behind `plot`, `to_html` and the Jupyter display is made once per choice of roofs."""

    @classmethod
    def of(cls, p: ProfileData) -> "Profile":
        if isinstance(p, cls):
            return p
        return cls(**{f.name: getattr(p, f.name) for f in fields(ProfileData)})

    def analyze(self, hw: Any = None, *, calibrated: bool = True) -> Analysis:
        """Classify and advise this profile against a GPU's roofs (default: where it ran, or this
        machine's GPU, or an H100 SXM for a count-only profile)."""
        cache = self.__dict__.setdefault("_analyses", {})
        key = (hw.key if isinstance(hw, HardwareSpec) else hw, calibrated)
        if key not in cache:
            cache[key] = analyze(self, hw, calibrated=calibrated)
        return cache[key]

    def plot(self, hw: Any = None):
        """The roofline chart as a matplotlib Figure (nothing is shown or printed)."""
        return roofline_of(self.analyze(hw))

    def savefig(self, path: str | Path, hw: Any = None) -> Path:
        """Write the roofline chart as PNG or SVG (by the file suffix)."""
        return save_figure(self.plot(hw), path)

    def to_html(self, path: str | Path | None = None, hw: Any = None) -> str:
        """The self-contained HTML report; written to `path` (atomically) when one is given."""
        text = report_html(self.analyze(hw))
        if path is not None:
            write_files({Path(path): text}, force=True)
        return text

    def _repr_html_(self) -> str:
        try:
            return summary_html(self.analyze())
        except RooflightError as err:
            return f"<div class=rooflight><b>rooflight: {e(self.workload or 'workload')}</b>: {e(str(err))}</div>"

    def __repr__(self) -> str:  # not the dataclass's dump of every op (millions of characters)
        return (f"<rooflight Profile {self.workload or 'workload'!r}: {len(self.ops)} ops, {fmt_flops(self.total_flops)}, "
                f"{fmt_bytes(self.total_bytes)}, intensity {self.intensity:.3g} FLOP/B, "
                + (f"timed on {self.timing.device_name}>" if self.timing is not None
                   else f"counted on {self.device_name or self.device}>"))


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG or SVG (by the suffix), atomically."""
    path = Path(path)
    data = figure_bytes(fig, chart_format(path))
    return write_files({path: data}, force=True)[0]


def count(fn: Callable[..., Any], *args: Any, workload: str = "", **kwargs: Any) -> Profile:
    """Run `fn(*args, **kwargs)` once and return the costs of every op it ran (no timing).

    Works on CPU, CUDA, meta and fake tensors; on meta tensors nothing is computed, so a 70B
    model's step can be counted on a laptop."""
    return Profile.of(_count(fn, *args, workload=workload or getattr(fn, "__qualname__", type(fn).__name__),
                             **kwargs))


def profile(fn: Callable[..., Any], *args: Any, warmup: int = 3, repeats: int = 10, flush_l2: bool = False,
            cuda_graph: bool = False, device: str | None = None, workload: str = "", params: dict | None = None,
            counters: bool | str = False, **kwargs: Any) -> Profile:
    """Count and time `fn(*args, **kwargs)`: a Profile whose ops carry measured times (GPU kernel
    times; CPU wall times where the workload runs on the CPU, with a quick CPU calibration made
    and cached if none is).  device: "cuda" or "cpu" says where to take times from.
    counters=True: one more run under Nsight Compute puts executed FLOPs, DRAM and L2 bytes beside
    the counted ones (`fn` must be defined at the top level of a .py file: the run is a child process);
    each distinct call (op and argument shapes) is measured once and its repeats show its counters;
    counters="every-kernel" replays every kernel instead."""
    if counters not in (False, True, "every-kernel"):
        raise RooflightError(f"counters={counters!r}: give True (each distinct call measured once) or "
                             "'every-kernel'")
    p = Profile.of(_time(fn, *args, warmup=warmup, repeats=repeats, flush_l2=flush_l2, cuda_graph=cuda_graph,
                         device=device, workload=workload, params=params, **kwargs))
    if counters:
        if p.timing is None or p.timing.device_kind == "cpu":
            raise RooflightError("counters=True reads a GPU's hardware counters: the workload must run on a CUDA GPU")
        with tempfile.TemporaryDirectory(prefix="rooflight-args-") as tmp:
            p = Profile.of(_ncu.read_counters(p, _ncu.callable_spec(fn, args, kwargs, warmup, tmp),
                                              one_of_each=counters is True))
    if p.timing is not None and p.timing.device_kind == "cpu":
        roofs(p, measure=True)  # profiling measures anyway: make sure this CPU has roofs for the display
    return p


def load(path: str | Path) -> Profile:
    """A profile saved by rooflight (`prof.save(path)`, `rooflight profile`'s JSON)."""
    return Profile.load(path)


# ---------------------------------------------------------------------------- comparing two runs


@dataclass(frozen=True)
class Diff(_diff.Diff):
    """rooflight.diff.Diff with the notebook's conveniences: `frame()` (a DataFrame), `text()`,
    `plot()` (both runs on one roofline), `to_html(path)`, display in Jupyter."""

    roofs: tuple[Roof, ...] = field(default_factory=tuple)  # drawn on the comparison chart

    def text(self, limit: int | None = None, *, unchanged: bool = True) -> str:
        return diff_text(self, limit, unchanged=unchanged)

    def plot(self):
        return diff_chart(self, self.roofs)

    def to_html(self, path: str | Path | None = None) -> str:
        text = diff_html(self, self.roofs)
        if path is not None:
            write_files({Path(path): text}, force=True)
        return text

    def _repr_html_(self) -> str:
        from .render.html import e

        rows = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        return (f"<div class=rooflight><b>{e(self.verdict)}</b>{'<ul>' + rows + '</ul>' if rows else ''}"
                f"{self.frame().head(20).to_html(index=False)}</div>")

    def __repr__(self) -> str:
        return f"<rooflight diff {self.a_name} -> {self.b_name}: {self.verdict}>"


def _read_side(x: "ProfileData | str | Path | Mapping") -> "ProfileData | Mapping":
    """A profile, or a baseline dict (schema rooflight.baseline), from an object or a JSON file."""
    if isinstance(x, (ProfileData, Mapping)):
        return x
    path = Path(x)
    if path.is_file() and path.suffix == ".json":
        try:
            head = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            head = None
        if isinstance(head, dict) and head.get("schema") == _check.SCHEMA:
            return _check.load_baseline(path)
    return Profile.load(path)


def _point_of(baseline: Mapping, profile: ProfileData) -> Mapping:
    """The baseline point of the profile's workload and parameters (or the baseline's only one)."""
    key = _check.point_of(baseline, profile)
    return _diff.pick_point(baseline, key if key is not None else _check.point_key(profile.workload, ""))


def diff(a: "ProfileData | str | Path", b: "ProfileData | str | Path", *, hw: str | HardwareSpec | None = None,
         calibrated: bool = True, db: HardwareDB | None = None, a_name: str = "A", b_name: str = "B") -> Diff:
    """What changed from run A to run B: profiles (or their JSON files), or a `rooflight baseline`
    file on either side (counts only).  Each profile is held against the roofs of where it ran
    (or `hw`); see rooflight.diff for how rows are matched and when a time counts as changed."""
    sa, sb = _read_side(a), _read_side(b)
    if isinstance(sa, Mapping) or isinstance(sb, Mapping):
        def summary(side, other):
            if isinstance(side, Mapping):
                return _point_of(side, other) if isinstance(other, ProfileData) else _diff.pick_point(side, "")
            return _check.summarize(side)

        d = _diff.diff_counts(summary(sa, sb), summary(sb, sa), a_name=a_name, b_name=b_name,
                              baseline=tuple(n for n, s in ((a_name, sa), (b_name, sb)) if isinstance(s, Mapping)))
        return Diff(**{f.name: getattr(d, f.name) for f in fields(_diff.Diff)})
    db = db or load_database()
    an_a = analyze(sa, hw, calibrated=calibrated, db=db)
    an_b = analyze(sb, hw, calibrated=calibrated, db=db)
    d = _diff.diff(an_a, an_b, a_name=a_name, b_name=b_name)
    classes = list(dict.fromkeys([*sa.flops_by_class(), *sb.flops_by_class()]))
    roofs = roofs_of(an_b, classes)
    if d.a_roofs != d.b_roofs:  # A's roofs beside B's, named
        roofs += [Roof(f"{a_name}: {r.name}", r.kind, r.value, r.calibrated) for r in roofs_of(an_a, classes)]
    return Diff(**{f.name: getattr(d, f.name) for f in fields(_diff.Diff)}, roofs=tuple(roofs))


# ---------------------------------------------------------------------------- a run's files


@dataclass(frozen=True)
class RunOutputs:
    """A run's results, their analyses and every file they make, ready to write."""

    results: tuple[Result, ...]
    analyses: tuple[Analysis, ...]
    files: Mapping[str, bytes]

    def write(self, out: str | Path, *, force: bool = False) -> list[Path]:
        """Write every file into `out` (created) under rooflight.files' overwrite policy."""
        od = OutputDir(Path(out), force=force)
        for name, data in self.files.items():
            od.add(name, data)
        return od.commit()


def _as_result(r: Result | ProfileData) -> Result:
    if isinstance(r, Result):
        return r
    return Result(r.workload, "", dict(r.params), r)


def render_run(results: Sequence[Result | ProfileData] | ProfileData, *, formats: Sequence[str] = ("html", "json", "png"),
               hw: str | HardwareSpec | None = None, db: HardwareDB | None = None, source: str = "",
               measure: bool = False) -> RunOutputs:
    """Analyse every result (a runner Result or a Profile) and make its files (nothing written)."""
    if isinstance(results, ProfileData):
        results = [results]
    rs = tuple(_as_result(r) for r in results)
    db = db or load_database()
    chosen = [roofs(r.profile, hw, db=db, measure=measure) for r in rs]
    # each profile keeps the roofs it is analysed against here, so a re-render elsewhere agrees
    rs = tuple(replace(r, profile=replace(r.profile, roofs=roofs_to_dict(c))) for r, c in zip(rs, chosen))
    analyses = tuple(_wrap(_analyze(r.profile, c)) for r, c in zip(rs, chosen))
    name = source or (rs[0].workload if rs else "run")
    return RunOutputs(rs, analyses, run_files(rs, analyses, tuple(formats), name))


def write(results: Sequence[Result | ProfileData] | ProfileData, out: str | Path = "rooflight-out", *,
          formats: Sequence[str] = ("html", "json", "png"), hw: str | HardwareSpec | None = None,
          db: HardwareDB | None = None, force: bool = False, source: str = "") -> list[Path]:
    """Write what `rooflight profile` writes for these results (or profiles) into `out`."""
    return render_run(results, formats=formats, hw=hw, db=db, source=source).write(out, force=force)


__all__ = ["Analysis", "DEFAULT_HW", "Diff", "MissingCalibrationError", "Profile", "RunOutputs", "analyze", "count", "diff", "load", "profile",
           "project", "render_run", "roofs", "save_figure", "source_ceilings_of", "write"]
