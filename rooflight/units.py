"""Physical units: parsing the strings written in spec files, formatting numbers for people.

Every quantity inside rooflight is a plain float in a base SI unit named by its field
(`bytes`, `bytes_per_s`, `flops_per_s`, `hz`, `watts`, `seconds`).  Units exist only at
the edges: spec files are written the way datasheets print them ("3.35 TB/s",
"989.4 TFLOPS"), and tables print them back that way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# kind -> {unit symbol: factor to the base unit}
UNITS: dict[str, dict[str, float]] = {
    "bytes": {
        "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
        "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30, "TiB": 2.0**40,
    },
    "bytes_per_s": {
        "B/s": 1.0, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12,
        "GiB/s": 2.0**30, "TiB/s": 2.0**40,
    },
    # floating-point operations per second
    "flops_per_s": {"GFLOPS": 1e9, "TFLOPS": 1e12, "PFLOPS": 1e15},
    # integer operations per second (int8/int4 tensor math is quoted in TOPS)
    "ops_per_s": {"GOPS": 1e9, "TOPS": 1e12, "POPS": 1e15},
    "hz": {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
    "watts": {"W": 1.0, "kW": 1e3},
}

_QUANTITY = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([A-Za-z/]+)\s*$")


class UnitError(ValueError):
    """A quantity string that does not parse, or has a unit of the wrong kind."""


@dataclass(frozen=True)
class Quantity:
    value: float  # in the base unit of `kind`
    kind: str
    text: str  # as written


def parse_quantity(text: str, kind: str) -> Quantity:
    """Parse "3.35 TB/s" as kind "bytes_per_s" -> 3.35e12.

    Raises UnitError naming the accepted units when the unit is unknown or of another kind
    (a bandwidth written in TFLOPS, say).
    """
    allowed = UNITS[kind]
    m = _QUANTITY.match(str(text))
    if not m:
        raise UnitError(f"{text!r} is not a number followed by a unit (e.g. '{_example(kind)}')")
    number, unit = float(m.group(1)), m.group(2)
    if unit not in allowed:
        other = next((k for k, units in UNITS.items() if unit in units), None)
        what = f"a unit of {other.replace('_', ' ')}" if other else "an unknown unit"
        raise UnitError(
            f"{text!r} has {what}; expected one of {', '.join(allowed)} (e.g. '{_example(kind)}')"
        )
    return Quantity(number * allowed[unit], kind, str(text))


def _example(kind: str) -> str:
    return {
        "bytes": "80 GB", "bytes_per_s": "3.35 TB/s", "flops_per_s": "989.4 TFLOPS",
        "ops_per_s": "1979 TOPS", "hz": "1980 MHz", "watts": "700 W",
    }[kind]


def _scaled(value: float, steps: list[tuple[float, str]], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    for factor, suffix in steps:
        if abs(value) >= factor:
            return f"{_sig(value / factor, digits)} {suffix}"
    factor, suffix = steps[-1]
    return f"{_sig(value / factor, digits)} {suffix}"


def _sig(x: float, digits: int) -> str:
    """`digits` significant figures, without exponent notation for ordinary magnitudes."""
    if x == 0:
        return "0"
    x = float(f"{x:.{digits}g}")  # round first: 9.9999 -> 10.0, not "10.00"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{decimals}f}"


def is_amount(v: object, *, positive: bool = False) -> bool:
    """A number read from a file that may stand for an amount: a real int or float (not a bool),
    finite, and zero or more (above zero with positive=True)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return v > 0 if positive else v >= 0


def fmt_bytes(n: float) -> str:
    return _scaled(n, [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1, "B")])


def fmt_bandwidth(bytes_per_s: float) -> str:
    return _scaled(bytes_per_s, [(1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "KB/s"), (1, "B/s")])


def fmt_flops(n: float) -> str:
    return _scaled(n, [(1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"),
                       (1e3, "kFLOP"), (1, "FLOP")])


def fmt_flops_rate(flops_per_s: float) -> str:
    return _scaled(flops_per_s, [(1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"),
                                 (1e6, "MFLOP/s"), (1e3, "kFLOP/s"), (1, "FLOP/s")])


def fmt_seconds(s: float) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "–"
    if s >= 1:
        return f"{_sig(s, 3)} s"
    if s >= 1e-3:
        return f"{_sig(s * 1e3, 3)} ms"
    if s >= 1e-6 or s == 0:
        return f"{_sig(s * 1e6, 3)} µs"
    return f"{_sig(s * 1e9, 3)} ns"


def fmt_runs(repeats: int) -> str:
    """How many timed runs a figure is taken over, in words: 'one timed run', 'median of 5 repeats'."""
    return f"median of {repeats} repeats" if repeats > 1 else "one timed run"


def fmt_hz(hz: float) -> str:
    return _scaled(hz, [(1e9, "GHz"), (1e6, "MHz"), (1e3, "kHz"), (1, "Hz")])
