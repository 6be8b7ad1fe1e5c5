"""Ceilings: the roofs a run is held against, from the datasheet or measured on this machine.

The classifier never reads a spec file directly: it takes Ceilings, which come either from a
HardwareSpec (the datasheet: what the vendor promises) or from a calibration (what this machine
reaches: the practical roof).  A calibrated ceiling covers the classes it measured; the others
keep the datasheet figure, and `source_of` says which is which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .hardware import HardwareSpec
from .math_class import FALLBACK, MathClass


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
