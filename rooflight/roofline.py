"""The roofline primitive: the roofs a run is held against, and what an op's cost means on them.

- `Ceilings`: memory bandwidth, one compute roof per math class, link bandwidths and launch
  costs, from the datasheet (`from_spec`) or measured on this machine (a calibration), merged by
  `merge` (calibrated where measured, datasheet for the rest).  `Ceilings.resolve` follows
  math_class.FALLBACK where a chip has no figure for a class (fp8 on an A100 runs as fp16 tensor
  math): the one class-fallback walk in rooflight.
- `floors(cost, ceilings)`: the compute, memory and communication floors of an op, the least
  time it could take on those roofs.
- `intensity(flops, bytes)`: FLOP per byte, with one rule for zero bytes (inf if there are FLOPs,
  0 if there are none), used by every cost, record, group and profile.
- `Roofs`: the ceilings chosen for one analysis, with the datasheet beside them and why they were
  chosen (rooflight.api chooses them; everything downstream only reads them).

Pure: no I/O, no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from .hardware import HardwareSpec
from .math_class import FALLBACK, MathClass


def intensity(flops: float, nbytes: float) -> float:
    """FLOP per byte: inf for work with no bytes, 0 for neither."""
    if nbytes == 0:
        return math.inf if flops else 0.0
    return flops / nbytes


@dataclass(frozen=True)
class Ceilings:
    name: str  # what they describe, e.g. "H100 SXM" or "NVIDIA H100 80GB HBM3 (calibrated)"
    memory_bytes_per_s: float
    flops_per_s: Mapping[MathClass, float]  # per math class (integer classes in ops/s)
    link_bytes_per_s: Mapping[str, float] = field(default_factory=dict)  # "pcie", "peer": each way
    launch_overhead_s: float | None = None  # wall time per tiny eager op, when measured
    graph_launch_overhead_s: float | None = None  # per op inside a CUDA graph, when measured
    source: str = "datasheet"  # "datasheet" or "calibrated"
    measured: frozenset[str] = frozenset()  # which figures a calibration measured ("memory", "bf16_tensor", ...)
    device_kind: str = "cuda"  # "cuda" or "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops_per_s", MappingProxyType({MathClass(k): float(v)
                                                                  for k, v in dict(self.flops_per_s).items()}))
        object.__setattr__(self, "link_bytes_per_s", MappingProxyType(dict(self.link_bytes_per_s)))

    def resolve(self, cls: MathClass | str) -> MathClass:
        """The class whose roof `cls` runs under here (itself, or its fallback)."""
        cls = MathClass(cls)
        while cls not in self.flops_per_s:
            if cls not in FALLBACK:
                raise KeyError(f"{self.name}: no compute roof for {cls}")
            cls = FALLBACK[cls]
        return cls

    def peak(self, cls: MathClass | str) -> float:
        return self.flops_per_s[self.resolve(cls)]

    def link(self, link: str) -> float | None:
        """Bandwidth each way of a link ("pcie", "peer"); "peer" falls back to PCIe without NVLink."""
        if link in self.link_bytes_per_s:
            return self.link_bytes_per_s[link]
        if link == "peer":
            return self.link_bytes_per_s.get("pcie")
        return None

    def source_of(self, figure: str) -> str:
        return "calibrated" if figure in self.measured else "datasheet"

    def ridge(self, cls: MathClass | str = MathClass.BF16_TENSOR) -> float:
        """FLOP per byte where the compute roof of `cls` meets the memory roof."""
        return self.peak(cls) / self.memory_bytes_per_s


def from_spec(spec: HardwareSpec) -> Ceilings:
    """The datasheet roofs of a GPU."""
    links = {"pcie": spec.pcie_bytes_per_s_each_way}
    if spec.nvlink_bytes_per_s_each_way:
        links["peer"] = spec.nvlink_bytes_per_s_each_way
    return Ceilings(name=spec.name, memory_bytes_per_s=spec.memory_bytes_per_s,
                    flops_per_s=dict(spec.peak_flops_per_s), link_bytes_per_s=links, source="datasheet")


def merge(measured: "Ceilings", datasheet: Ceilings | None) -> Ceilings:
    """Calibrated figures where measured, datasheet figures for the rest (e.g. fp64 not calibrated)."""
    if datasheet is None:
        return measured
    flops = dict(datasheet.flops_per_s)
    flops.update(measured.flops_per_s)
    links = dict(datasheet.link_bytes_per_s)
    links.update(measured.link_bytes_per_s)
    return Ceilings(
        name=measured.name, memory_bytes_per_s=measured.memory_bytes_per_s or datasheet.memory_bytes_per_s,
        flops_per_s=flops, link_bytes_per_s=links, launch_overhead_s=measured.launch_overhead_s,
        graph_launch_overhead_s=measured.graph_launch_overhead_s, source="calibrated",
        measured=measured.measured, device_kind=measured.device_kind,
    )


# ---------------------------------------------------------------------------- a spec's roofs


def resolve_class(spec: HardwareSpec, cls: MathClass | str) -> MathClass:
    """The class whose peak the chip really runs `cls` at (itself, or its fallback)."""
    return from_spec(spec).resolve(cls)


def peak_flops_per_s(spec: HardwareSpec, cls: MathClass | str) -> float:
    """Dense datasheet peak for a math class, following the fallback where the chip lacks it."""
    return from_spec(spec).peak(cls)


def ridge_point(spec: HardwareSpec, cls: MathClass | str = MathClass.BF16_TENSOR) -> float:
    """FLOP per byte where the datasheet compute roof of `cls` meets the memory roof."""
    return from_spec(spec).ridge(cls)


def compute_floor_s(flops: float, spec: HardwareSpec, cls: MathClass | str) -> float:
    """The least time `flops` of class `cls` can take at the datasheet peak."""
    return flops / peak_flops_per_s(spec, cls)


def memory_floor_s(nbytes: float, spec: HardwareSpec) -> float:
    """The least time moving `nbytes` through device memory can take at datasheet bandwidth."""
    return nbytes / spec.memory_bytes_per_s


# ---------------------------------------------------------------------------- an op's floors


class Cost(Protocol):
    """What the floors read of an op: an OpRecord or a costs.OpCost both qualify."""

    flops: Mapping[str, float]
    bytes_read: float
    bytes_written: float
    comm_bytes: float
    link: str


@dataclass(frozen=True)
class Floors:
    """The three floors of one op on some ceilings, in seconds."""

    compute_s: float
    memory_s: float
    comm_s: float
    roof_class: str  # the math class whose term dominates the compute floor ("" for none)
    link_bytes_per_s: float = math.nan  # the link's bandwidth each way, when the op uses one

    @property
    def max_s(self) -> float:
        return max(self.compute_s, self.memory_s, self.comm_s)

    @property
    def dominant(self) -> str:
        """"compute", "memory", "communication" or "none" (no floor at all)."""
        if self.max_s <= 0:
            return "none"
        if self.comm_s > 0 and self.comm_s >= max(self.compute_s, self.memory_s):
            return "communication"
        return "compute" if self.compute_s > self.memory_s else "memory"


def peak_or_fp32(ceilings: Ceilings, cls: str) -> float:
    """The roof of a class; a class these ceilings cannot place runs at the fp32 vector rate."""
    try:
        return ceilings.peak(cls)
    except (KeyError, ValueError):
        return ceilings.peak(MathClass.FP32)


def floors(op: Cost, ceilings: Ceilings) -> Floors:
    """The compute, memory and communication floors of an op on these ceilings."""
    terms = {str(getattr(c, "value", c)): flops / peak_or_fp32(ceilings, c) for c, flops in op.flops.items() if flops}
    compute_s = sum(terms.values())
    roof_class = max(terms, key=terms.get) if terms else ""
    memory_s = (op.bytes_read + op.bytes_written) / ceilings.memory_bytes_per_s
    comm_s, link_bw = 0.0, math.nan
    if op.comm_bytes and op.link:
        bw = ceilings.link(op.link)
        if bw:  # a link these ceilings have no figure for gives no floor (the evidence says so)
            comm_s, link_bw = op.comm_bytes / bw, bw
    return Floors(compute_s, memory_s, comm_s, roof_class, link_bw)


# ---------------------------------------------------------------------------- the roofs of one analysis


@dataclass(frozen=True)
class Roofs:
    """The ceilings an analysis holds a profile against, the datasheet drawn beside them (None
    for a CPU), the GPU spec they belong to, and notes on how they were chosen."""

    ceilings: Ceilings
    datasheet: Ceilings | None = None
    spec: HardwareSpec | None = None
    notes: tuple[str, ...] = ()


def ceilings_to_dict(c: Ceilings) -> dict[str, Any]:
    return {"name": c.name, "memory_bytes_per_s": c.memory_bytes_per_s,
            "flops_per_s": {k.value: v for k, v in c.flops_per_s.items()}, "link_bytes_per_s": dict(c.link_bytes_per_s),
            "launch_overhead_s": c.launch_overhead_s, "graph_launch_overhead_s": c.graph_launch_overhead_s,
            "source": c.source, "measured": sorted(c.measured), "device_kind": c.device_kind}


def ceilings_from_dict(d: Mapping[str, Any]) -> Ceilings:
    """The inverse of ceilings_to_dict; a ValueError names what is wrong with a damaged record."""
    try:
        c = Ceilings(name=str(d["name"]), memory_bytes_per_s=float(d["memory_bytes_per_s"]),
                     flops_per_s={MathClass(k): float(v) for k, v in dict(d["flops_per_s"]).items()},
                     link_bytes_per_s={str(k): float(v) for k, v in dict(d.get("link_bytes_per_s") or {}).items()},
                     launch_overhead_s=d.get("launch_overhead_s"), graph_launch_overhead_s=d.get("graph_launch_overhead_s"),
                     source=str(d.get("source", "datasheet")), measured=frozenset(d.get("measured") or ()),
                     device_kind=str(d.get("device_kind", "cuda")))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"a damaged roofs record ({type(err).__name__}: {err})") from None
    values = [c.memory_bytes_per_s, *c.flops_per_s.values()]
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError("a roofs record with a zero, negative or non-finite roof")
    return c


def roofs_to_dict(r: "Roofs") -> dict[str, Any]:
    """What a profile keeps of the roofs it was analysed against (plain data, JSON-ready)."""
    return {"ceilings": ceilings_to_dict(r.ceilings),
            "datasheet": ceilings_to_dict(r.datasheet) if r.datasheet is not None else None,
            "spec": r.spec.key if r.spec is not None else None, "notes": list(r.notes)}


__all__ = ["Ceilings", "Cost", "Floors", "Roofs", "ceilings_from_dict", "ceilings_to_dict", "roofs_to_dict", "compute_floor_s", "floors", "from_spec", "intensity", "memory_floor_s",
           "merge", "peak_flops_per_s", "peak_or_fp32", "resolve_class", "ridge_point"]
