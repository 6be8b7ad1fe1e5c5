"""Counted beside measured (rooflight.counters): a terminal table and the report's section."""

from __future__ import annotations

from html import escape as e

from rich.markup import escape as esc
from rich.table import Table

from ..counters import Comparison, compare
from ..units import fmt_bytes, fmt_flops

MAX_ROWS = 40


def _l2_mb(a) -> float | None:
    return a.spec.l2_bytes / 1e6 if a.spec is not None and a.spec.l2_bytes == a.spec.l2_bytes else None


def comparisons(a) -> list[Comparison]:
    """Per op group, heaviest (most DRAM bytes, then FLOPs) first."""
    rows = compare(a.profile, by="group", l2_mb=_l2_mb(a))
    return sorted(rows, key=lambda c: -(c.dram_read + c.dram_write + c.executed_tensor / 100))


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if x == x else "—"


def counters_table(a) -> Table:
    t = Table(title="counted vs Nsight Compute's counters (one run)", title_justify="left")
    for col in ("op group", "tensor FLOPs counted", "executed", "×", "DRAM read modelled", "measured", "×",
                "DRAM write ×", "L2 bytes", "why"):
        t.add_column(col, overflow="fold" if col == "why" else "ellipsis",
                     justify="right" if col not in ("op group", "why") else "left")
    rows = comparisons(a)
    for c in rows[:MAX_ROWS]:
        t.add_row(esc(c.name), fmt_flops(c.useful_tensor), fmt_flops(c.executed_tensor), _ratio(c.tensor_ratio),
                  fmt_bytes(c.model_read), fmt_bytes(c.dram_read), _ratio(c.read_ratio), _ratio(c.write_ratio),
                  fmt_bytes(c.l2_bytes), esc("; ".join(c.why)))
    if len(rows) > MAX_ROWS:
        t.caption = f"{len(rows) - MAX_ROWS} lighter groups in the JSON and HTML report"
    return t


def counters_html(a) -> str:
    rows = comparisons(a)
    if not rows:
        return ""
    c = a.profile.counters
    head = ("<tr><th>op group</th><th>why</th><th>kernels</th><th>tensor FLOPs counted</th><th>executed</th><th>×</th>"
            "<th>CUDA-core FLOPs counted</th><th>executed</th><th>DRAM read modelled</th><th>measured</th><th>×</th>"
            "<th>DRAM write modelled</th><th>measured</th><th>×</th><th>L2 bytes</th><th>measured FLOP/B (DRAM, L2)</th>"
            "</tr>")
    body = "".join(
        f"<tr><td>{e(r.name)}</td><td style='min-width:32em'>{e('; '.join(r.why))}</td><td>{r.kernels}</td>"
        f"<td>{e(fmt_flops(r.useful_tensor))}</td>"
        f"<td>{e(fmt_flops(r.executed_tensor))}</td><td>{_ratio(r.tensor_ratio)}</td>"
        f"<td>{e(fmt_flops(r.useful_core))}</td><td>{e(fmt_flops(r.executed_core))}</td>"
        f"<td>{e(fmt_bytes(r.model_read))}</td><td>{e(fmt_bytes(r.dram_read))}</td><td>{_ratio(r.read_ratio)}</td>"
        f"<td>{e(fmt_bytes(r.model_write))}</td><td>{e(fmt_bytes(r.dram_write))}</td><td>{_ratio(r.write_ratio)}</td>"
        f"<td>{e(fmt_bytes(r.l2_bytes))}</td><td>{r.measured_intensity:.3g}, {r.l2_intensity:.3g}</td></tr>"
        for r in rows)
    notes = "".join(f"<li>{e(n)}</li>" for n in c.notes)
    return (f"<p class=meta>{e(c.tool)}; clock control {e(c.clock_control)}, cache control {e(c.cache_control)} "
            f"(caches flushed before each kernel's replay); {len(c.kernels)} kernels of one run, {len(c.metrics)} "
            "metrics. Tensor-pipe counters count an FMA as 2, as rooflight does; CUDA-core FLOPs are add + mul + "
            "2 x fma thread instructions (a packed half-precision instruction counts once, and transcendental "
            "units are not counted).</p>" + (f"<ul class=notes>{notes}</ul>" if notes else "")
            + f"<div class=scroll><table class=sortable>{head}{body}</table></div>")


__all__ = ["comparisons", "counters_html", "counters_table"]
