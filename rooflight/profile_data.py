"""The profile: plain frozen data about one run of a workload, with a JSON round-trip and `.df`.

A Profile holds one OpRecord per operation (its aten op, shapes, module path, region, and cost),
the region paths, what produced it (device, torch version, mode) and, when timed, its Timing.
It knows nothing about any GPU's roofline and imports no analysis and no renderer: classifying,
advising and projecting are functions of a profile and its roofs (rooflight.analysis,
rooflight.projection), rendering reads their results (rooflight.render), and the notebook
conveniences (`prof.plot()`, `prof.to_html()`, display in Jupyter) live in the facade
(rooflight.api.Profile, what `rooflight.count` and `rooflight.profile` return).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .costs.model import Settings, TensorMeta, Traffic
from .errors import RooflightError
from .files import read_text, write_text_atomic
from .math_class import MathClass
from .roofline import intensity
from .units import is_amount

SCHEMA = "rooflight.profile"
SCHEMA_VERSION = 1


class ProfileFormatError(RooflightError):
    """A profile file that is not a rooflight profile, is corrupt, or has another version."""


_new, _set = object.__new__, object.__setattr__


# the phases of a training step (OpRecord.phase): a region running them trains
TRAINING_PHASES = frozenset(("backward", "recompute", "optimizer", "after backward"))

# A query of at most this many rows per sequence over a KV cache is a decode step (one new token;
# up to 8 covers speculative decoding's verification of a few draft tokens).
DECODE_MAX_QUERY_ROWS = 8


@dataclass(frozen=True)
class OpRecord(Traffic):
    index: int
    op: str  # "aten::mm.default"; composite records: "aten::scaled_dot_product_attention"
    module: str = ""  # "layers.3.attn.wo"; "" for the root module or no module
    module_type: str = ""  # "Linear"
    region: str = ""  # "decode/attn"
    # or "backward" (autograd's), "recompute" (an activation checkpoint's forward, run again during
    # backward), "optimizer" (inside an optimizer's step), "after backward" (in no module, after a
    # backward and before the next model call: clip_grad_norm_, GradScaler's unscale, the loop's
    # .item() of the loss), "no-grad" (in a script that trains, a
    # model call made with autograd off or in eval mode: a DPO reference model's, rooflight.steps)
    phase: str = "forward"
    device: str = ""
    inputs: tuple[TensorMeta, ...] = ()
    outputs: tuple[TensorMeta, ...] = ()
    flops: Mapping[str, float] = field(default_factory=dict)  # math class -> FLOPs
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    comm_bytes: float = 0.0
    link: str = ""
    counted: bool = True  # False: no formula (or the formula failed); the note says which
    note: str = ""
    # per input, the op that made it (its index, >= 0), or a number < 0 per tensor no op made (a
    # parameter, the model's input: the same number where two ops read the same one); () unknown
    sources: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if type(self.flops) is not MappingProxyType:  # the capture hands in a ready (str -> float) proxy
            object.__setattr__(self, "flops", MappingProxyType({str(k): float(v) for k, v in dict(self.flops).items()}))

    @staticmethod
    def shared(op: str, device: str, inputs: tuple, outputs: tuple, flops: MappingProxyType, bytes_read: float,
               bytes_written: float, comm_bytes: float, link: str, counted: bool, note: str) -> dict:
        """What the records of one call share (all but the op's index and where it ran): the
        template `at` copies; `flops` must already be a read-only str -> float mapping."""
        return {"index": 0, "op": op, "module": "", "module_type": "", "region": "", "phase": "forward",
                "device": device, "inputs": inputs, "outputs": outputs, "flops": flops, "bytes_read": bytes_read,
                "bytes_written": bytes_written, "comm_bytes": comm_bytes, "link": link, "counted": counted,
                "note": note, "sources": ()}

    @classmethod
    def at(cls, shared: dict, index: int, module: str, module_type: str, region: str, phase: str,
           sources: tuple[int, ...] = ()) -> "OpRecord":
        """The capture's fast constructor, one per op of a run: a copy of a call's `shared` fields
        with the op's own (~0.4 us, against ~0.8 for a dict built field by field and the frozen
        dataclass's ~2)."""
        d = shared.copy()
        d["index"] = index
        d["module"] = module
        d["module_type"] = module_type
        d["region"] = region
        d["phase"] = phase
        d["sources"] = sources
        rec = _new(cls)
        _set(rec, "__dict__", d)
        return rec

    def _with(self, **changes: Any) -> "OpRecord":
        """A fast copy with `changes` (no __post_init__: the fields are already checked)."""
        rec = _new(type(self))
        _set(rec, "__dict__", {**self.__dict__, **changes})
        return rec

    def in_region(self, region: str) -> "OpRecord":
        """This op moved to `region` (a fast copy: segmenting a run relabels every op)."""
        return self._with(region=region)

    def in_module(self, prefix: str) -> "OpRecord":
        """This op with its module path put under `prefix` (a part called on its own, named as in
        the module holding it)."""
        return self._with(module=f"{prefix}.{self.module}" if self.module else prefix)

    @property
    def math_class(self) -> str:
        """The class holding most of the FLOPs ("" for an op with none)."""
        return max(self.flops, key=self.flops.get) if self.flops else ""

    @property
    def dtype(self) -> str:
        ts = self.inputs or self.outputs
        return ts[0].dtype if ts else ""

    @property
    def short_op(self) -> str:
        """"mm" for "aten::mm.default"."""
        name = self.op.split("::")[-1]
        return name.split(".")[0]

    @property
    def shapes(self) -> str:
        return " ".join(t.short() for t in self.inputs)


@dataclass(frozen=True)
class Step:
    """One step of a script's run (rooflight.steps): a model call with what it pulled along, or a
    region the script marked.  Its ops are those of the region `name` (and its sub-regions)."""

    index: int  # 1-based
    name: str  # the region holding it: "step 3" (or the script's own region, for a marked step)
    kind: str  # "prefill", "decode", "train", "forward" or "marked"
    warmup: bool = False  # the first of its kind, with later ones of the same kind
    headline: bool = True  # counted in the headline (steady state): not a warm-up, or chosen by --steps
    module: str = ""  # type of the outermost module called ("LlamaForCausalLM")
    batch: int | None = None  # sequences
    query_len: int | None = None  # new tokens per sequence (decode: 1; verifying draft tokens: up to 8)
    kv_len: int | None = None  # keys each query attends (decode: the context), when known
    first_op: int = 0
    last_op: int = 0
    call_last_op: int = -1  # the last op inside the (last) model call itself (what follows joined the step); -1: marked
    calls: int = 1  # model calls in it: a training iteration's micro-batches (gradient accumulation)
    # which module's calls the steps are: its place among the run's outermost-called module
    # instances, in the order of their first calls (two models of one class: a DPO policy is the
    # second, after its reference); and the call that begins the step, when another model's call
    # joined it (that instance's place, and which of its calls, from 0); -1: the step's own first call
    instance: int = 0
    begins_instance: int = -1
    begins_call: int = -1

    @property
    def tokens(self) -> int | None:
        return self.batch * self.query_len if self.batch and self.query_len else None


@dataclass(frozen=True)
class KernelRecord:
    """One GPU kernel (or memcpy/memset) of a timed run, with its spread over the repeats."""

    op_index: int  # the OpRecord that launched it; -1 if it could not be joined to one
    name: str
    kind: str = "kernel"  # "kernel", "memcpy", "memset"
    grid: tuple[int, ...] = ()
    block: tuple[int, ...] = ()
    seconds: float = 0.0  # median over repeats
    seconds_min: float = 0.0
    seconds_max: float = 0.0


@dataclass(frozen=True)
class KernelCounters:
    """One kernel's hardware counters, read by Nsight Compute in one extra run (rooflight.ncu)."""

    op_index: int  # the OpRecord that launched it (joined by kernel order); -1 if not joined
    name: str
    flops: Mapping[str, float] = field(default_factory=dict)  # executed FLOPs by math class (FMA = 2)
    dram_read: float = 0.0  # bytes
    dram_write: float = 0.0
    l2_bytes: float = 0.0  # lts__t_bytes: every L2 transaction's bytes, reads and writes
    seconds: float = 0.0  # ncu's gpu__time_duration (under replay: not the timing's figure)
    # -1: measured on this op's own launch; else the earlier op whose launch was measured for it (the
    # same op on the same argument metadata: the counter pass measures each distinct call once)
    measured_on: int = -1


@dataclass(frozen=True)
class Counters:
    """The counter pass of a timed profile: its kernels and how they were read."""

    tool: str  # "Nsight Compute 2025.3.1.0"
    kernels: tuple[KernelCounters, ...] = ()
    metrics: tuple[str, ...] = ()
    clock_control: str = "none"
    cache_control: str = "all"  # ncu flushes the caches before each kernel's replay
    notes: tuple[str, ...] = ()
    # the counter pass's wall seconds by phase (rooflight.ncu NcuRun.phases): start, warm-ups,
    # measured run, report (ncu writing it), import (reading it back)
    pass_seconds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OpTiming:
    """Measured time of one OpRecord: GPU kernel time (or CPU wall time on a CPU run)."""

    op_index: int
    seconds: float  # median over repeats of the op's summed kernel time (CPU runs: wall time)
    seconds_min: float
    seconds_max: float
    cpu_seconds: float = math.nan  # CPU dispatch time of the op (median), when measured
    kernels: int = 0  # kernels per repeat

    @property
    def noisy(self) -> bool:
        """Spread over the repeats above 20% of the median (and above 2 µs)."""
        spread = self.seconds_max - self.seconds_min
        return spread > 0.2 * self.seconds and spread > 2e-6


@dataclass(frozen=True)
class RegionTiming:
    region: str  # "" for the whole run
    wall_seconds: float  # median over repeats, from the region's first launch to its last kernel's end
    busy_seconds: float  # GPU busy time inside it (union of kernel intervals); CPU runs: op time
    cpu_seconds: float = math.nan  # host time inside the region
    comm_seconds: float = 0.0  # collectives' kernels inside it (union of their intervals), median over repeats
    comm_exposed_seconds: float = 0.0  # of it, while no compute kernel ran on the GPU: what it costs the step

    @property
    def idle_seconds(self) -> float:
        return max(self.wall_seconds - self.busy_seconds, 0.0)

    @property
    def busy_fraction(self) -> float:
        return self.busy_seconds / self.wall_seconds if self.wall_seconds > 0 else math.nan


@dataclass(frozen=True)
class Timing:
    """What a timed run measured, beside the counted costs."""

    device_kind: str  # "cuda" or "cpu": CPU results are wall time per op, and say so everywhere
    device_name: str
    repeats: int
    warmup: int
    flush_l2: bool = False
    cuda_graph: bool = False
    ops: tuple[OpTiming, ...] = ()
    kernels: tuple[KernelRecord, ...] = ()
    regions: tuple[RegionTiming, ...] = ()  # the whole run first (region "")
    notes: tuple[str, ...] = ()  # e.g. kernels that could not be joined to an op
    plain_wall_seconds: float = math.nan  # median wall time of a run with no profiler and no capture

    def op(self, index: int) -> OpTiming | None:
        return self._by_index().get(index)

    def _by_index(self) -> dict[int, OpTiming]:
        cache = self.__dict__.get("_index")
        if cache is None:
            cache = {t.op_index: t for t in self.ops}
            object.__setattr__(self, "_index", cache)
        return cache

    def region(self, name: str) -> RegionTiming | None:
        return next((r for r in self.regions if r.region == name), None)

    @property
    def total(self) -> RegionTiming | None:
        return self.region("")


@dataclass(frozen=True)
class Profile:
    ops: tuple[OpRecord, ...]
    workload: str = ""
    device: str = ""  # where the ops ran: "cpu", "cuda:0", "meta"
    device_name: str = ""  # "NVIDIA H100 80GB HBM3", the CPU model, or "meta"
    mode: str = "count"  # "count" (costs only) or "timed"
    torch_version: str = ""
    rooflight_version: str = ""
    created: str = ""  # ISO-8601, UTC
    settings: Settings = field(default_factory=Settings)
    regions: tuple[str, ...] = ()  # region paths in order of first appearance
    params: Mapping[str, Any] = field(default_factory=dict)  # workload parameters (sweep point ...)
    timing: Timing | None = None  # set when mode == "timed"
    steps: tuple[Step, ...] = ()  # a script's steps (rooflight.steps); () when none were found or looked for
    notes: tuple[str, ...] = ()  # how it was made, e.g. how the steps were found
    counters: Counters | None = None  # hardware counters of one more run (profile --counters)
    # the roofs it was analysed against when it was made (rooflight.roofline.roofs_to_dict): a
    # re-render anywhere holds it against the same ones unless told otherwise
    roofs: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ totals

    @property
    def total_flops(self) -> float:
        return sum(o.total_flops for o in self.ops)

    @property
    def total_bytes(self) -> float:
        return sum(o.bytes for o in self.ops)

    @property
    def intensity(self) -> float:
        return intensity(self.total_flops, self.total_bytes)

    def flops_by_class(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in self.ops:
            for k, v in o.flops.items():
                out[k] = out.get(k, 0.0) + v
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @property
    def total_comm_bytes(self) -> float:
        return sum(o.comm_bytes for o in self.ops)

    def uncounted(self) -> dict[str, int]:
        """Ops with no cost formula: op name -> how many calls.  Reported, never silently zero."""
        out: dict[str, int] = {}
        for o in self.ops:
            if not o.counted:
                out[o.op] = out.get(o.op, 0) + 1
        return out

    def region_paths(self) -> list[str]:
        """"" (the whole run) first, then every region path and its parents, in order of first
        appearance: in the region list, in the ops, in the timing."""
        out = [""]
        names = list(self.regions) + [o.region for o in self.ops]
        if self.timing is not None:
            names += [r.region for r in self.timing.regions]
        for name in names:
            for path in region_and_ancestors(name, self.regions):
                if path not in out:
                    out.append(path)
        return out

    def step_ops(self, step: Step) -> tuple[OpRecord, ...]:
        return self.select(region=step.name)

    def subset(self, indices: Iterable[int], whole: RegionTiming | None = None) -> "Profile":
        """The same profile with only the ops `indices` (their indexes kept), the regions they use,
        and their timing rows; `whole` is the timing row for "" (the subset's whole)."""
        keep = set(indices)
        ops = tuple(o for o in self.ops if o.index in keep)
        used = {o.region for o in ops}
        regions = tuple(r for r in self.regions if any(u == r or u.startswith(r + "/") for u in used))
        timing = self.timing
        if timing is not None:
            rows = tuple(r for r in timing.regions if r.region in regions)
            timing = replace(timing, ops=tuple(t for t in timing.ops if t.op_index in keep),
                             kernels=tuple(k for k in timing.kernels if k.op_index in keep),
                             regions=((whole,) if whole is not None else ()) + rows)
        return replace(self, ops=ops, regions=regions, timing=timing, steps=(), notes=())

    def select(self, *, region: str | None = None, module: str | None = None) -> tuple[OpRecord, ...]:
        """Ops in a region (and its sub-regions) or a module (and its children)."""
        def inside(path: str, prefix: str, sep: str) -> bool:
            return prefix == "" or path == prefix or path.startswith(prefix + sep)

        return tuple(o for o in self.ops
                     if (region is None or inside(o.region, region, "/"))
                     and (module is None or inside(o.module, module, ".")))

    # ------------------------------------------------------------------ tables

    @property
    def df(self):
        """One row per op (pandas DataFrame)."""
        import pandas as pd

        rows = [{
            "index": o.index, "module": o.module, "module_type": o.module_type, "region": o.region,
            "phase": o.phase, "op": o.short_op, "aten": o.op, "shapes": o.shapes, "dtype": o.dtype,
            "math_class": o.math_class, "flops": o.total_flops, "bytes_read": o.bytes_read,
            "bytes_written": o.bytes_written, "bytes": o.bytes, "intensity": o.intensity,
            "comm_bytes": o.comm_bytes, "link": o.link, "counted": o.counted, "note": o.note,
        } for o in self.ops]
        cols = ["index", "module", "module_type", "region", "phase", "op", "aten", "shapes", "dtype",
                "math_class", "flops", "bytes_read", "bytes_written", "bytes", "intensity", "comm_bytes",
                "link", "counted", "note"]
        if self.timing is not None:
            for row in rows:
                t = self.timing.op(row["index"])
                row.update(seconds=t.seconds if t else math.nan, seconds_min=t.seconds_min if t else math.nan,
                           seconds_max=t.seconds_max if t else math.nan,
                           cpu_seconds=t.cpu_seconds if t else math.nan, kernels=t.kernels if t else 0,
                           noisy=t.noisy if t else False)
            cols += ["seconds", "seconds_min", "seconds_max", "cpu_seconds", "kernels", "noisy"]
        return pd.DataFrame(rows, columns=cols).set_index("index")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": SCHEMA_VERSION,
            "workload": self.workload, "device": self.device, "device_name": self.device_name,
            "mode": self.mode, "torch_version": self.torch_version,
            "rooflight_version": self.rooflight_version, "created": self.created,
            "settings": asdict(self.settings), "regions": list(self.regions), "params": dict(self.params),
            "ops": [_op_to_dict(o) for o in self.ops],
            "timing": _timing_to_dict(self.timing) if self.timing is not None else None,
            "steps": [asdict(st) for st in self.steps], "notes": list(self.notes),
            "counters": asdict(self.counters) if self.counters is not None else None,
            "roofs": dict(self.roofs) if self.roofs is not None else None,
        }

    def to_json(self, indent: int | None = 1) -> str:
        """Strict JSON: a value not measured (NaN) is null, as any JSON parser expects."""
        return json.dumps(strict_json(self.to_dict()), indent=indent, default=_json_default, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically (a half-written file never replaces a good one)."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Profile":
        if not isinstance(d, Mapping) or d.get("schema") != SCHEMA:
            raise ProfileFormatError("not a rooflight profile (no 'schema': 'rooflight.profile'); "
                                     "give a file written by rooflight")
        if d.get("version") != SCHEMA_VERSION:
            raise ProfileFormatError(f"profile format version {d.get('version')!r} is not supported by this "
                                     f"rooflight (reads version {SCHEMA_VERSION}); re-create it with this version")
        try:
            settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.get("settings", {}).items()})
            ops = tuple(_op_from_dict(o) for o in d["ops"])
            return cls(
                ops=ops, workload=d.get("workload", ""), device=d.get("device", ""),
                device_name=d.get("device_name", ""), mode=d.get("mode", "count"),
                torch_version=d.get("torch_version", ""), rooflight_version=d.get("rooflight_version", ""),
                created=d.get("created", ""), settings=settings, regions=tuple(d.get("regions", ())),
                params=dict(d.get("params", {})),
                timing=_timing_from_dict(d["timing"]) if d.get("timing") else None,
                steps=tuple(Step(**st) for st in d.get("steps", ())), notes=tuple(d.get("notes", ())),
                counters=_counters_from_dict(d["counters"]) if d.get("counters") else None,
                roofs=d["roofs"] if isinstance(d.get("roofs"), Mapping) else None,
            )
        except ValueError as err:  # a number out of range: the field and the value
            raise ProfileFormatError(f"profile has a bad number: {err}; re-create it") from None
        except (KeyError, TypeError) as err:
            raise ProfileFormatError(f"profile is corrupt ({type(err).__name__}: {err}); re-create it") from None

    @classmethod
    def from_json(cls, text: str) -> "Profile":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProfileFormatError(f"profile is not valid JSON ({err.msg} at line {err.lineno}); "
                                     "re-create it") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        p = Path(path)
        if p.suffix.lower() == ".py":
            raise ProfileFormatError(f"{p} is a Python file, not a saved profile: profile it with `rooflight profile "
                                     f"{p}` (its --format json writes the profile this reads)")
        text = read_text(p, ProfileFormatError)
        try:
            return cls.from_json(text)
        except ProfileFormatError as err:
            raise ProfileFormatError(f"{p}: {err}") from None


def region_and_ancestors(path: str, known: Iterable[str]) -> list[str]:
    """The known region paths that contain `path` (itself included), outermost first.

    Region names may contain '/' (a region named '<script>alert(1)</script>' is allowed), so the
    nesting is read from the paths the capture recorded, never by splitting a path on '/'."""
    if not path:
        return []
    out = [r for r in known if r and (path == r or path.startswith(r + "/"))]
    if path not in out:
        out.append(path)
    return sorted(out, key=len)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _json_default(x: Any) -> Any:
    if isinstance(x, MathClass):
        return x.value
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    if isinstance(x, Mapping):
        return dict(x)
    return str(x)


def _meta_to_list(t: TensorMeta) -> list:
    return [list(t.shape), list(t.stride), t.dtype, t.device, t.storage_offset, t.storage_numel]


def _meta_from_list(x: list) -> TensorMeta:
    shape, stride, dtype, device, offset, storage = x
    return TensorMeta(tuple(shape), tuple(stride), dtype, device, offset, storage)


def _op_to_dict(o: OpRecord) -> dict[str, Any]:
    d = {f.name: getattr(o, f.name) for f in fields(o)}
    d["inputs"] = [_meta_to_list(t) for t in o.inputs]
    d["outputs"] = [_meta_to_list(t) for t in o.outputs]
    d["flops"] = dict(o.flops)
    return d


def strict_json(x: Any) -> Any:
    """`x` with every NaN or infinite float replaced by None (JSON null), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def _seconds(cls, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A timing record's fields with null read back as NaN (not measured) and every time checked:
    a number, finite and zero or more, else a ValueError naming the field and the value."""
    out = dict(d)
    for f in fields(cls):
        if f.name not in out or str(f.type) not in ("float", "float | None"):
            continue
        v = out[f.name]
        if v is None:
            out[f.name] = math.nan
            continue
        if not (is_amount(v) or (isinstance(v, float) and math.isnan(v))):
            raise ValueError(f"{where}.{f.name} = {v!r}: must be a finite number, zero or more (or null)")
    return out


def _check_amount(v: Any, where: str) -> float:
    if not is_amount(v):
        raise ValueError(f"{where} = {v!r}: must be a finite number, zero or more")
    return v  # as written (an int stays an int: the JSON round-trips byte for byte)


def _op_from_dict(d: Mapping[str, Any]) -> OpRecord:
    d = dict(d)
    where = f"ops[{d.get('index', '?')}]"
    for key in ("bytes_read", "bytes_written", "comm_bytes"):
        if key in d:
            d[key] = _check_amount(d[key], f"{where}.{key}")
    if "flops" in d:
        if not isinstance(d["flops"], Mapping):
            raise ValueError(f"{where}.flops is not a table of math class -> FLOPs")
        d["flops"] = {str(c): _check_amount(v, f"{where}.flops[{c!r}]") for c, v in d["flops"].items()}
    d["inputs"] = tuple(_meta_from_list(t) for t in d.get("inputs", ()))
    d["outputs"] = tuple(_meta_from_list(t) for t in d.get("outputs", ()))
    sources = d.get("sources", ())
    if not isinstance(sources, (list, tuple)) or not all(type(s) is int for s in sources):
        raise ValueError(f"{where}.sources is not a list of op indexes")
    d["sources"] = tuple(sources)
    known = {f.name for f in fields(OpRecord)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown op fields {sorted(unknown)}")
    return OpRecord(**d)


def _counters_from_dict(d: Mapping[str, Any]) -> Counters:
    kernels = tuple(KernelCounters(**_seconds(KernelCounters, {**k, "flops": {str(c): _check_amount(v, f"counters.flops[{c!r}]")
                                                                         for c, v in k["flops"].items()}},
                                              "counters.kernels"))
                    for k in d.get("kernels", ()))
    return Counters(d["tool"], kernels, tuple(d.get("metrics", ())), d.get("clock_control", "none"),
                    d.get("cache_control", "all"), tuple(d.get("notes", ())),
                    {str(k): _check_amount(v, f"counters.pass_seconds[{k!r}]") for k, v in d.get("pass_seconds", {}).items()})


def _timing_to_dict(t: Timing) -> dict[str, Any]:
    d = {f.name: getattr(t, f.name) for f in fields(t)}
    d["ops"] = [{**asdict(o), "noisy": o.noisy} for o in t.ops]  # noisy: derived, for readers of the file
    d["kernels"] = [asdict(k) for k in t.kernels]
    d["regions"] = [asdict(r) for r in t.regions]
    d["notes"] = list(t.notes)
    return d


def _timing_from_dict(d: Mapping[str, Any]) -> Timing:
    d = dict(d)
    d["ops"] = tuple(OpTiming(**_seconds(OpTiming, {k: v for k, v in o.items() if k != "noisy"},
                                         f"timing.ops[{o.get('op_index', '?')}]")) for o in d.get("ops", ()))
    d["kernels"] = tuple(KernelRecord(**_seconds(KernelRecord, {**k, "grid": tuple(k.get("grid", ())),
                                                                "block": tuple(k.get("block", ()))}, "timing.kernels"))
                         for k in d.get("kernels", ()))
    d["regions"] = tuple(RegionTiming(**_seconds(RegionTiming, r, f"timing.regions[{r.get('region', '')!r}]"))
                         for r in d.get("regions", ()))
    d = _seconds(Timing, d, "timing")
    d["notes"] = tuple(d.get("notes", ()))
    return Timing(**d)
