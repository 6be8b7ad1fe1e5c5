"""Counted beside measured (rooflight.counters): a terminal table and the report's section."""

from __future__ import annotations

from html import escape as e

from rich.markup import escape as esc
from rich.table import Table

import math

from ..counters import Comparison, compare
from ..units import fmt_bytes, fmt_flops
from .charts import (LABEL_COLORS, Point, _chart_text, draw_roofs, legend_outside, new_figure, place_labels,
                     roofs_of, si_axes)

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
    captions = []
    if len(rows) > MAX_ROWS:
        captions.append(f"{len(rows) - MAX_ROWS} lighter groups in the JSON and HTML report")
    ks = a.profile.counters.kernels if a.profile.counters is not None else ()
    copied = sum(1 for k in ks if k.measured_on >= 0)
    if copied:
        captions.append(f"{len(ks) - copied} of {len(ks)} kernels measured, one of each distinct call; the other "
                        f"{copied} show their first call's counters (--every-kernel replays them all)")
    if captions:
        t.caption = "; ".join(captions)
    return t


def counters_roofline(a, *, top: int = 10):
    """The hierarchical roofline of the counter pass: per op group, the counted point (useful FLOPs
    over modelled bytes, hollow), the measured DRAM point (executed FLOPs over DRAM bytes, filled)
    and the L2 point (executed FLOPs over L2 bytes, square), joined by a line, at the FLOP/s the
    group attained (its FLOPs over its measured time).  None without counters or timing."""
    rows = comparisons(a)
    if not rows or not a.timed:
        return None
    v = a.diagnosis.verdicts
    pts = []
    for c in rows:
        secs = sum(v[i].seconds for i in c.ops if i in v and v[i].seconds == v[i].seconds)
        useful = c.useful_tensor + c.useful_core
        executed = c.executed_tensor + c.executed_core
        model_bytes = c.model_read + c.model_write
        if not (secs > 0 and useful > 0 and model_bytes > 0):
            continue
        label = max((str(v[i].label) for i in c.ops if i in v), key=lambda lab: sum(
            v[i].seconds for i in c.ops if i in v and str(v[i].label) == lab and v[i].seconds == v[i].seconds))
        counted = (useful / model_bytes, useful / secs)
        dram = (c.measured_intensity, executed / secs) if executed > 0 and c.measured_intensity > 0 else None
        l2 = (c.l2_intensity, executed / secs) if executed > 0 and c.l2_intensity > 0 else None
        pts.append((c, label, secs, counted, dram, l2))
    if not pts:
        return None
    fig = new_figure(10.0, 6.0)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    roofs = roofs_of(a)
    xy = [p for _, _, _, *ps in pts for p in ps if p is not None and all(math.isfinite(q) for q in p)]
    comps = [r.value for r in roofs if r.kind == "compute"]
    mem = next((r.value for r in roofs if r.kind == "memory"), None)
    xs = [x for x, _ in xy] + ([cv / mem for cv in comps] if mem else [])
    x_lo, x_hi = 10 ** math.floor(math.log10(min(xs))) / 2, 10 ** math.ceil(math.log10(max(xs))) * 2
    y_top = max([y for _, y in xy] + comps)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(min(min(y for _, y in xy), y_top / 10) / 5, y_top * 3)
    draw_roofs(ax, roofs, x_lo, x_hi)
    for c, label, secs, counted, dram, l2 in pts:
        color = LABEL_COLORS.get(label, "#777777")
        chain = [p for p in (counted, dram, l2) if p is not None]
        ax.plot([p[0] for p in chain], [p[1] for p in chain], "-", color=color, lw=0.8, alpha=0.6, zorder=3)
        ax.scatter([counted[0]], [counted[1]], s=46, facecolors="none", edgecolors=color, linewidths=1.4, zorder=4)
        if dram is not None:
            ax.scatter([dram[0]], [dram[1]], s=46, c=color, edgecolors="white", linewidths=0.6, zorder=5)
        if l2 is not None:
            ax.scatter([l2[0]], [l2[1]], s=30, marker="s", c=color, alpha=0.6, zorder=5)
    ax.scatter([], [], s=46, facecolors="none", edgecolors="#555555", label="counted: useful FLOPs / modelled bytes")
    ax.scatter([], [], s=46, c="#555555", label="measured: executed FLOPs / DRAM bytes")
    ax.scatter([], [], s=30, marker="s", c="#555555", alpha=0.6, label="measured: executed FLOPs / L2 bytes")
    for lab in dict.fromkeys(label for _, label, *_ in pts):
        ax.scatter([], [], s=30, c=LABEL_COLORS.get(lab, "#777777"), label=lab)
    heavy = sorted(pts, key=lambda t: -t[2])[:top]
    place_labels(fig, ax, [Point(_chart_text(c.name), *(dram or counted), secs, label)
                           for c, label, secs, counted, dram, l2 in heavy])
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attained FLOP/s")
    si_axes(ax)
    legend_outside(fig, ax)
    ax.set_title(_chart_text(f"{a.profile.workload or 'workload'}: counted and measured intensity per op group"),
                 fontsize=10)
    return fig


def counters_html(a, chart: str = "") -> str:
    """The report's counters section; `chart`: the embedded counters_roofline image (html.py makes it)."""
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
    if chart:
        chart = (f"<div class=charts>{chart}</div><p class=meta>Each op "
                 "group three times: counted (useful FLOPs over the modelled bytes), measured against DRAM "
                 "(executed FLOPs over DRAM bytes) and against L2 (over L2 bytes), at the FLOP/s it attained; "
                 "the hardware database has no L2 bandwidth, so the L2 points have no roof of their own.</p>")
    return (f"<p class=meta>{e(c.tool)}; clock control {e(c.clock_control)}, cache control {e(c.cache_control)} "
            f"(caches flushed before each kernel's replay); {len(c.kernels)} kernels of one run, {len(c.metrics)} "
            "metrics. Tensor-pipe counters count an FMA as 2, as rooflight does; CUDA-core FLOPs are add + mul + "
            "2 x fma thread instructions (a packed half-precision instruction counts once, and transcendental "
            "units are not counted).</p>" + (f"<ul class=notes>{notes}</ul>" if notes else "")
            + chart + f"<div class=scroll><table class=sortable>{head}{body}</table></div>")


__all__ = ["comparisons", "counters_html", "counters_roofline", "counters_table"]
