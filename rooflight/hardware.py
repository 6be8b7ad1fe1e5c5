"""The hardware-spec database: one TOML file per GPU, validated on load, looked up by a forgiving name.

A spec file (see hw_specs/h100_sxm.toml) writes every figure the way the vendor prints it,
with its unit and the source it came from:

    [memory]
    bandwidth = { value = "3.35 TB/s", source = "datasheet" }

    [peak_dense]                       # without 2:4 sparsity
    bf16_tensor = { value = "989.4 TFLOPS", source = "datasheet", note = "1979 with sparsity" }

`source` names an entry of the file's `[sources]` table, which cites the document.  Loading turns
every figure into a float in its base unit (bytes, bytes/s, FLOP/s, Hz, W) and keeps the text
and source beside it for `rooflight hw show`.

Built-in specs live in hw_specs/ (shipped as the package data `rooflight.hw_specs`).  Users add
their own with ROOFLIGHT_HW_DIR (directories separated by os.pathsep) or the `--hw-dir` option;
a user file whose `name` equals a built-in one replaces it.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .errors import SpecError, UnknownHardwareError, UsageError
from .math_class import MathClass
from .units import UnitError, _example, parse_quantity

SCHEMA_VERSION = 1
ENV_HW_DIR = "ROOFLIGHT_HW_DIR"

# --------------------------------------------------------------------------- the schema

# dotted field -> (kind, required).  kind is a unit kind of rooflight.units, or "int" / "str".
_IDENTITY: dict[str, tuple[str, bool]] = {
    "schema_version": ("int", True),
    "name": ("str", True),
    "vendor": ("str", True),
    "architecture": ("str", True),
    "die": ("str", False),  # e.g. GH100
    "form_factor": ("str", False),
    "aliases": ("list", False),
    "nvml_names": ("list", False),
}

_FIGURES: dict[str, tuple[str, bool]] = {
    "memory.capacity": ("bytes", True),
    "memory.type": ("str", True),
    "memory.bandwidth": ("bytes_per_s", True),
    "memory.bus_width_bits": ("int", False),
    "memory.l2_cache": ("bytes", True),
    "memory.infinity_cache": ("bytes", False),  # AMD's last-level cache beside L2
    "chip.multiprocessors": ("int", True),  # SMs (NVIDIA) or CUs (AMD)
    "chip.boost_clock": ("hz", True),
    "chip.tdp": ("watts", True),
    "interconnect.pcie_generation": ("int", True),
    "interconnect.pcie_lanes": ("int", True),
    "interconnect.pcie_bandwidth": ("bytes_per_s", True),  # both directions together, as quoted
    "interconnect.nvlink_bandwidth": ("bytes_per_s", False),  # per GPU, both directions together
    "interconnect.nvlink_generation": ("int", False),
}
for _cls in MathClass:
    _kind = "ops_per_s" if _cls.is_integer else "flops_per_s"
    _FIGURES[f"peak_dense.{_cls.value}"] = (_kind, _cls in (MathClass.FP32, MathClass.FP16_TENSOR))
    _FIGURES[f"peak_sparse.{_cls.value}"] = (_kind, False)

_SECTIONS = ("sources", "memory", "chip", "interconnect", "peak_dense", "peak_sparse")


@dataclass(frozen=True)
class Figure:
    """One datasheet figure: its value in the base unit, as written, and where it came from."""

    value: float | int | str
    text: str
    source: str  # the citation, resolved from the file's [sources] table
    note: str = ""
    source_key: str = ""  # the key of that citation in [sources]


@dataclass(frozen=True)
class HardwareSpec:
    key: str  # file stem, e.g. "h100_sxm"
    name: str
    vendor: str
    architecture: str
    memory_type: str
    memory_bytes: float
    memory_bytes_per_s: float
    l2_bytes: float
    multiprocessors: int
    boost_clock_hz: float
    tdp_watts: float
    pcie_generation: int
    pcie_lanes: int
    pcie_bytes_per_s: float  # both directions together, as vendors quote it
    peak_flops_per_s: Mapping[MathClass, float]  # dense peaks; integer classes in ops/s
    sparse_flops_per_s: Mapping[MathClass, float] = field(default_factory=dict)
    nvlink_bytes_per_s: float | None = None  # per GPU, both directions together
    infinity_cache_bytes: float | None = None
    die: str = ""
    form_factor: str = ""
    aliases: tuple[str, ...] = ()
    nvml_names: tuple[str, ...] = ()
    figures: Mapping[str, Figure] = field(default_factory=dict)  # every figure, by dotted field
    sources: Mapping[str, str] = field(default_factory=dict)  # citation key -> citation
    path: str = ""  # the file it was loaded from
    origin: str = "built-in"  # or "user"
    overrides: str = ""  # for a user file that replaces a built-in: the built-in's path

    @property
    def pcie_bytes_per_s_each_way(self) -> float:
        return self.pcie_bytes_per_s / 2

    @property
    def nvlink_bytes_per_s_each_way(self) -> float | None:
        return None if self.nvlink_bytes_per_s is None else self.nvlink_bytes_per_s / 2

    def has(self, cls: MathClass) -> bool:
        return MathClass(cls) in self.peak_flops_per_s


# --------------------------------------------------------------------------- loading


def _fail(path: Path | str, msg: str) -> SpecError:
    return SpecError(f"{Path(path).name}: {msg}")


def _closest(word: str, options: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


# the range a figure of each kind can take on any real chip (base units): a number outside it is a
# typo or a wrong unit (1e-30 TB/s would make every op "memory-bound" by 30 orders of magnitude)
PLAUSIBLE = {"bytes": (1e6, 1e14), "bytes_per_s": (1e6, 1e16), "flops_per_s": (1e8, 1e19),
             "ops_per_s": (1e8, 1e19), "hz": (1e6, 1e11), "watts": (1.0, 1e5)}


def load_spec_file(path: str | Path, origin: str = "built-in") -> HardwareSpec:
    """Load and validate one spec file; every problem is a SpecError naming the file and field."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as err:
        raise _fail(path, f"cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise _fail(path, f"not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text: save the spec file as UTF-8") from None
    return parse_spec(raw, path, origin)


def parse_spec(raw: Mapping[str, Any], path: str | Path, origin: str = "built-in") -> HardwareSpec:
    known_top = set(_IDENTITY) | set(_SECTIONS)
    for key in raw:
        if key not in known_top:
            raise _fail(path, f"unknown field '{key}'{_closest(key, known_top)}")
    for key, (kind, required) in _IDENTITY.items():
        if key not in raw:
            if required:
                raise _fail(path, f"missing required field '{key}'")
            continue
        value = raw[key]
        if kind == "list":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise _fail(path, f"field '{key}' must be a list of non-empty strings")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _fail(path, f"field '{key}' must be an integer")
        elif not isinstance(value, str) or not value.strip():
            raise _fail(path, f"field '{key}' must be a non-empty string")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise _fail(path, f"schema_version {raw['schema_version']} is not supported "
                          f"(this rooflight reads version {SCHEMA_VERSION})")

    sources = raw.get("sources")
    if not isinstance(sources, dict) or not sources:
        raise _fail(path, "missing [sources] table: every figure must cite where it came from")
    for key, text in sources.items():
        if not isinstance(text, str) or not text.strip():
            raise _fail(path, f"field 'sources.{key}' must be a non-empty citation string")

    figures: dict[str, Figure] = {}
    for section in _SECTIONS[1:]:
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise _fail(path, f"'{section}' must be a table")
        for key, entry in table.items():
            dotted = f"{section}.{key}"
            if dotted not in _FIGURES:
                choices = [f for f in _FIGURES if f.startswith(section + ".")]
                raise _fail(path, f"unknown field '{dotted}'{_closest(dotted, choices)}")
            figures[dotted] = _parse_figure(path, dotted, entry, sources)
    for dotted, (_, required) in _FIGURES.items():
        if required and dotted not in figures:
            raise _fail(path, f"missing required field '{dotted}'")
    for cls in MathClass:
        dense, sparse = figures.get(f"peak_dense.{cls.value}"), figures.get(f"peak_sparse.{cls.value}")
        if sparse is not None and dense is None:
            raise _fail(path, f"'peak_sparse.{cls.value}' given without its dense figure "
                              f"'peak_dense.{cls.value}' (a sparse figure goes beside the dense one)")
        if sparse is not None and sparse.value < dense.value:
            raise _fail(path, f"'peak_sparse.{cls.value}' ({sparse.text}) is below the dense figure "
                              f"({dense.text}): are the two swapped?")

    def val(dotted: str, default: Any = None) -> Any:
        fig = figures.get(dotted)
        return default if fig is None else fig.value

    return HardwareSpec(
        key=path.stem,
        name=raw["name"].strip(),
        vendor=raw["vendor"].strip(),
        architecture=raw["architecture"].strip(),
        die=raw.get("die", ""),
        form_factor=raw.get("form_factor", ""),
        aliases=tuple(raw.get("aliases", ())),
        nvml_names=tuple(raw.get("nvml_names", ())),
        memory_type=val("memory.type"),
        memory_bytes=val("memory.capacity"),
        memory_bytes_per_s=val("memory.bandwidth"),
        l2_bytes=val("memory.l2_cache"),
        infinity_cache_bytes=val("memory.infinity_cache"),
        multiprocessors=val("chip.multiprocessors"),
        boost_clock_hz=val("chip.boost_clock"),
        tdp_watts=val("chip.tdp"),
        pcie_generation=val("interconnect.pcie_generation"),
        pcie_lanes=val("interconnect.pcie_lanes"),
        pcie_bytes_per_s=val("interconnect.pcie_bandwidth"),
        nvlink_bytes_per_s=val("interconnect.nvlink_bandwidth"),
        peak_flops_per_s=MappingProxyType({
            cls: figures[f"peak_dense.{cls.value}"].value
            for cls in MathClass if f"peak_dense.{cls.value}" in figures
        }),
        sparse_flops_per_s=MappingProxyType({
            cls: figures[f"peak_sparse.{cls.value}"].value
            for cls in MathClass if f"peak_sparse.{cls.value}" in figures
        }),
        figures=MappingProxyType(figures),
        sources=MappingProxyType(dict(sources)),
        path=str(path),
        origin=origin,
    )


def _parse_figure(path: Path, dotted: str, entry: Any, sources: Mapping[str, str]) -> Figure:
    kind = _FIGURES[dotted][0]
    if not isinstance(entry, dict):
        raise _fail(path, f"field '{dotted}' must be a table like "
                          f"{{ value = ..., source = \"...\" }} so that it cites its source")
    for key in entry:
        if key not in ("value", "source", "note"):
            raise _fail(path, f"field '{dotted}' has unknown key '{key}' "
                              "(allowed: value, source, note)")
    if "value" not in entry:
        raise _fail(path, f"field '{dotted}' has no value")
    source_key = entry.get("source")
    if not source_key:
        raise _fail(path, f"field '{dotted}' names no source")
    if source_key not in sources:
        raise _fail(path, f"field '{dotted}' cites source '{source_key}', which is not in "
                          f"[sources]{_closest(str(source_key), sources)}")
    note = entry.get("note", "")
    if not isinstance(note, str):
        raise _fail(path, f"field '{dotted}': note must be a string")
    raw_value = entry["value"]
    if kind == "str":
        if not isinstance(raw_value, str) or not raw_value.strip():
            raise _fail(path, f"field '{dotted}' must be a non-empty string")
        value: float | int | str = raw_value.strip()
    elif kind == "int":
        if not isinstance(raw_value, int) or isinstance(raw_value, bool):
            raise _fail(path, f"field '{dotted}' must be a whole number without a unit")
        value = raw_value
    else:
        if not isinstance(raw_value, str):
            raise _fail(path, f"field '{dotted}' must be a quantity with its unit, "
                              f"e.g. value = \"{_example_for(kind)}\"")
        try:
            value = parse_quantity(raw_value, kind).value
        except UnitError as err:
            raise _fail(path, f"field '{dotted}': {err}") from None
    if not isinstance(value, str) and value <= 0:
        raise _fail(path, f"field '{dotted}' must be positive, got {raw_value!r}")
    lo_hi = PLAUSIBLE.get(kind)
    if lo_hi is not None and not (lo_hi[0] <= value <= lo_hi[1]):
        raise _fail(path, f"field '{dotted}' = {raw_value!r} is outside what any accelerator has "
                          f"({lo_hi[0]:.0e} to {lo_hi[1]:.0e} in base units): check the number and its unit")
    return Figure(value=value, text=str(raw_value), source=sources[source_key], note=note,
                  source_key=source_key)


def _example_for(kind: str) -> str:
    return _example(kind)


# --------------------------------------------------------------------------- the database


def _norm(name: str) -> str:
    s = name.lower()
    s = re.sub(r"\b(nvidia|amd|geforce|radeon|tesla)\b", " ", s)
    return re.sub(r"[^a-z0-9]", "", s)


def builtin_spec_dir() -> Path:
    """hw_specs/ as installed (package data: rooflight/hw_specs/ beside this file in a wheel), or
    at the top of a source checkout (an editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "hw_specs", here.parent / "hw_specs"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    return here.parent / "hw_specs"


def user_spec_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    dirs = [Path(d) for d in extra if str(d)]
    env = os.environ.get(ENV_HW_DIR, "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d]
    return dirs


@dataclass(frozen=True)
class HardwareDB:
    specs: tuple[HardwareSpec, ...]

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def get(self, name: str) -> HardwareSpec:
        """Find a spec by a forgiving name: 'h100', 'H100-SXM', 'h100_sxm', 'NVIDIA H100 80GB HBM3'.

        An unknown or ambiguous name raises UnknownHardwareError listing the near matches.
        """
        query = _norm(name)
        if not query:
            raise UnknownHardwareError(f"empty GPU name; `rooflight hw list` shows the {len(self)} known GPUs")
        idents = [(s, [_norm(i) for i in (s.key, s.name, *s.aliases, *s.nvml_names)]) for s in self.specs]
        exact = [s for s, ids in idents if query in ids]
        if len(exact) == 1:
            return exact[0]
        partial = exact or [s for s, ids in idents if any(query in i for i in ids)]
        if len(partial) == 1:
            return partial[0]
        if partial:
            raise UnknownHardwareError(
                f"GPU name '{name}' is ambiguous: it matches {', '.join(s.name for s in partial)}; "
                "give one of those names")
        all_ids = {i: s for s, ids in idents for i in ids}
        near = []
        for i in difflib.get_close_matches(query, list(all_ids), n=6, cutoff=0.5):
            if all_ids[i].name not in near:
                near.append(all_ids[i].name)
        hint = f"; near matches: {', '.join(near[:3])}" if near else ""
        raise UnknownHardwareError(
            f"unknown GPU '{name}'{hint}; `rooflight hw list` shows the known GPUs, or add a spec "
            f"file to a directory named by ${ENV_HW_DIR}")


@lru_cache(maxsize=None)
def _load_dir(directory: str, origin: str) -> tuple[HardwareSpec, ...]:
    d = Path(directory)
    if not d.is_dir():
        raise SpecError(f"hardware-spec directory {directory} does not exist "
                        f"(from ${ENV_HW_DIR} or --hw-dir); create it or fix the path")
    return tuple(load_spec_file(p, origin) for p in sorted(d.glob("*.toml")))


def load_database(user_dirs: Iterable[str | Path] = (), *, include_env: bool = True) -> HardwareDB:
    """Built-in specs, then user directories (option first, then $ROOFLIGHT_HW_DIR).

    A user spec with the same name as an earlier one replaces it; `overrides` records which file.
    """
    specs: dict[str, HardwareSpec] = {}
    for spec in _load_dir(str(builtin_spec_dir()), "built-in"):
        _add(specs, spec)
    dirs = user_spec_dirs(user_dirs) if include_env else [Path(d) for d in user_dirs]
    for d in dirs:
        for spec in _load_dir(str(d.resolve()), "user"):
            _add(specs, spec)
    return HardwareDB(tuple(specs.values()))


def _add(specs: dict[str, HardwareSpec], spec: HardwareSpec) -> None:
    key = _norm(spec.name)
    if key in specs:
        old = specs[key]
        if spec.origin == "built-in":
            raise SpecError(f"{Path(spec.path).name}: name '{spec.name}' is also used by "
                            f"{Path(old.path).name}; names must be unique")
        from dataclasses import replace

        spec = replace(spec, overrides=old.path)
    specs[key] = spec


def resolve_targets(targets: str | HardwareSpec | Iterable[str | HardwareSpec] | None,
                    db: HardwareDB) -> list[HardwareSpec]:
    """Specs for "all" (or None), one name, a comma-separated list, or a list of names/specs."""
    if targets is None or (isinstance(targets, str) and targets.strip().lower() in ("", "all")):
        return list(db)
    if isinstance(targets, (str, HardwareSpec)):
        targets = [targets]
    specs: list[HardwareSpec] = []
    for t in targets:
        if isinstance(t, HardwareSpec):
            found = [t]
        elif t.strip().lower() == "all":
            found = list(db)
        else:
            found = [db.get(n.strip()) for n in t.split(",") if n.strip()]
        for s in found:
            if s.key not in [x.key for x in specs]:
                specs.append(s)
    if not specs:
        raise UsageError("no target GPU given: name some (--hw a10,4090) or 'all'")
    return specs
