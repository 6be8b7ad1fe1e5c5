"""Rich tables for the terminal.  They return a Table; the caller decides where it goes."""

from __future__ import annotations

from rich.markup import escape as esc
from rich.table import Table

from ..hardware import HardwareSpec
from ..math_class import MathClass
from ..roofline import resolve_class, ridge_point
from ..units import fmt_bandwidth, fmt_bytes, fmt_flops, fmt_flops_rate, fmt_hz, fmt_seconds


def _fmt_figure(dotted: str, value) -> str:
    if isinstance(value, str):
        return value
    section, key = dotted.split(".", 1)
    if section in ("peak_dense", "peak_sparse"):
        text = fmt_flops_rate(value)
        return text.replace("FLOP/s", "OP/s") if MathClass(key).is_integer else text
    if key in ("bandwidth", "pcie_bandwidth", "nvlink_bandwidth"):
        return fmt_bandwidth(value)
    if key in ("capacity", "l2_cache", "infinity_cache"):
        return fmt_bytes(value)
    if key == "boost_clock":
        return fmt_hz(value)
    if key == "tdp":
        return f"{value:g} W"
    return str(value)


def spec_table(spec: HardwareSpec) -> Table:
    """Every figure of a spec as written, with its note and source; then derived ridge points."""
    t = Table(show_lines=False)
    t.add_column("field", no_wrap=True)
    t.add_column("value", no_wrap=True, justify="right")
    t.add_column("as written", no_wrap=True)
    t.add_column("note")
    t.add_column("source", no_wrap=True)
    for dotted, fig in spec.figures.items():
        t.add_row(dotted, _fmt_figure(dotted, fig.value), fig.text, fig.note, fig.source_key)
    for cls in MathClass:
        runs_as = resolve_class(spec, cls)
        if runs_as is cls:
            t.add_row(f"ridge.{cls.value}", f"{ridge_point(spec, cls):.1f} FLOP/B", "derived",
                      f"{cls.value} peak / memory bandwidth", "")
    return t


def sources_table(spec: HardwareSpec) -> Table:
    t = Table(title="sources", show_header=False, title_justify="left")
    t.add_column("key", no_wrap=True, style="bold")
    t.add_column("citation")
    for key, text in spec.sources.items():
        t.add_row(key, text)
    return t


def fmt_quantity(value: float | None, unit: str) -> str:

    if value is None:
        return ""
    return {"seconds": fmt_seconds, "bytes_per_s": fmt_bandwidth}.get(unit, fmt_flops_rate)(value)


def calibration_table(rows: list[dict], title: str) -> Table:
    """Measured ceilings beside the datasheet (rows from rooflight.calibrate.compare)."""
    t = Table(title=title, title_justify="left")
    t.add_column("figure", no_wrap=True)
    t.add_column("measured", justify="right", no_wrap=True)
    t.add_column("datasheet", justify="right", no_wrap=True)
    t.add_column("ratio", justify="right", no_wrap=True)
    t.add_column("how")
    for r in rows:
        ratio = f"{r['ratio']:.0%}" if r["ratio"] else ""
        t.add_row(r["figure"], fmt_quantity(r["value"], r["unit"]), fmt_quantity(r["datasheet"], r["unit"]), ratio, r["how"])
    return t


def curve_table(rows: list[dict]) -> Table:
    """The interconnect's curve (calibration rows "curve.<collective>.<bytes>"): bus bandwidth by
    message size, one column per collective, beside the datasheet's link each way."""
    curve: dict[int, dict[str, float]] = {}
    ref = None
    for r in rows:
        if r["figure"].startswith("curve."):
            _, kind, size = r["figure"].split(".")
            curve.setdefault(int(size), {})[kind] = r["value"]
            ref = ref or r["datasheet"]
    kinds = sorted({k for v in curve.values() for k in v})
    t = Table(title="bus bandwidth by message size (nccl-tests' busbw)"
                    + (f"; the link each way: {fmt_quantity(ref, 'bytes_per_s')}" if ref else ""), title_justify="left")
    t.add_column("message", justify="right", no_wrap=True)
    for k in kinds:
        t.add_column(k, justify="right", no_wrap=True)
    for size in sorted(curve):
        t.add_row(fmt_bytes(size), *(fmt_quantity(curve[size][k], "bytes_per_s") if k in curve[size] else "" for k in kinds))
    return t


def groups_table(a, n: int = 5) -> Table:
    """The heaviest op groups of an Analysis: time, FLOPs, bytes, intensity, attained rate, label."""
    t = Table(show_edge=False, pad_edge=False, box=None)
    for col in ("op group", "time" if a.timed else "roofline time", "FLOPs", "bytes", "FLOP/B", "attained FLOP/s", "label"):
        t.add_column(col, no_wrap=True)
    for g in a.groups[:n]:
        att = fmt_flops_rate(g.flops_per_s) if a.timed and g.flops_per_s == g.flops_per_s else "–"
        t.add_row(esc(g.name[:60]), fmt_seconds(g.seconds), fmt_flops(g.flops), fmt_bytes(g.bytes),
                  f"{g.intensity:.3g}", att, g.label)
    return t
