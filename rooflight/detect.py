"""What is this machine?  The GPUs through NVML (nvidia-ml-py) and torch.cuda, else the CPU.

Detection returns plain data (DetectedGPU / DetectedCPU) and maps each GPU to a spec of the
database by its NVML name; it never raises for a missing GPU or a missing driver: it says why.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

from .errors import UnknownHardwareError
from .hardware import HardwareDB, HardwareSpec


@dataclass(frozen=True)
class DetectedGPU:
    index: int
    name: str
    memory_bytes: int | None = None
    multiprocessors: int | None = None
    max_sm_clock_hz: float | None = None
    max_memory_clock_hz: float | None = None
    memory_bus_width_bits: int | None = None
    pcie_generation: int | None = None
    pcie_lanes: int | None = None
    l2_bytes: int | None = None
    compute_capability: str | None = None
    driver_version: str | None = None
    spec_key: str | None = None  # the matching spec in the database, if any
    spec_name: str | None = None
    match_note: str = ""

    @property
    def bandwidth_from_clocks(self) -> float | None:
        """Peak DRAM bandwidth implied by the memory clock and bus (double data rate)."""
        if self.max_memory_clock_hz and self.memory_bus_width_bits:
            return self.max_memory_clock_hz * 2 * self.memory_bus_width_bits / 8
        return None


@dataclass(frozen=True)
class DetectedCPU:
    model: str
    physical_cores: int | None
    logical_cores: int | None
    machine: str


@dataclass(frozen=True)
class Detection:
    gpus: tuple[DetectedGPU, ...]
    cpu: DetectedCPU
    notes: tuple[str, ...] = field(default_factory=tuple)  # why no GPU was found, etc.

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)


def describe_cpu() -> DetectedCPU:
    model, physical = "", None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        cores = set()
        phys_id = core_id = None
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and not model:
                model = value
            elif key == "physical id":
                phys_id = value
            elif key == "core id":
                core_id = value
                cores.add((phys_id, core_id))
        physical = len(cores) or None
    except OSError:
        pass
    if not model:
        model = platform.processor() or platform.machine() or "unknown CPU"
    logical = os.cpu_count()
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    return DetectedCPU(model=model, physical_cores=physical, logical_cores=logical,
                       machine=platform.machine())


def _nvml_gpus(notes: list[str]) -> list[dict]:
    try:
        import pynvml
    except ImportError:
        notes.append("nvidia-ml-py is not installed (pip install nvidia-ml-py)")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        notes.append(f"NVML unavailable: {err}")
        return []
    out = []
    try:
        driver = _call(pynvml.nvmlSystemGetDriverVersion)
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = _call(pynvml.nvmlDeviceGetMemoryInfo, h)
            sm = _call(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM)
            mclk = _call(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM)
            out.append(dict(
                index=i,
                name=_text(_call(pynvml.nvmlDeviceGetName, h)) or f"GPU {i}",
                memory_bytes=int(mem.total) if mem is not None else None,
                max_sm_clock_hz=sm * 1e6 if sm else None,
                max_memory_clock_hz=mclk * 1e6 if mclk else None,
                memory_bus_width_bits=_call(pynvml.nvmlDeviceGetMemoryBusWidth, h),
                pcie_generation=_call(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
                pcie_lanes=_call(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
                driver_version=_text(driver),
            ))
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return out


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def _text(v) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _torch_gpus(notes: list[str]) -> list[dict]:
    try:
        import torch
    except ImportError:
        notes.append("torch is not installed")
        return []
    if not torch.cuda.is_available():
        build = "CPU-only build" if torch.version.cuda is None and torch.version.hip is None else "no device visible"
        notes.append(f"torch {torch.__version__}: torch.cuda.is_available() is False ({build})")
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(dict(
            index=i, name=p.name, memory_bytes=int(p.total_memory),
            multiprocessors=int(p.multi_processor_count),
            l2_bytes=int(getattr(p, "L2_cache_size", 0)) or None,
            compute_capability=f"{p.major}.{p.minor}",
        ))
    return out


def match_spec(db: HardwareDB, name: str) -> tuple[HardwareSpec | None, str]:
    try:
        return db.get(name), ""
    except UnknownHardwareError as err:
        return None, str(err)


def detect(db: HardwareDB) -> Detection:
    """NVML first (name, clocks, bus, PCIe), merged with torch.cuda (SM count, L2, capability)."""
    notes: list[str] = []
    nvml = {g["index"]: g for g in _nvml_gpus(notes)}
    tch = {g["index"]: g for g in _torch_gpus(notes)}
    gpus = []
    for i in sorted(set(nvml) | set(tch)):
        info = {**tch.get(i, {}), **{k: v for k, v in nvml.get(i, {}).items() if v is not None}}
        spec, why = match_spec(db, info["name"])
        gpus.append(DetectedGPU(
            **info,
            spec_key=spec.key if spec else None,
            spec_name=spec.name if spec else None,
            match_note=why,
        ))
    if gpus:
        notes = []
    return Detection(gpus=tuple(gpus), cpu=describe_cpu(), notes=tuple(notes))
