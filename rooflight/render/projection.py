"""Rendering a Projection: an HTML table across every target GPU, and a roofline per target.

Like the other renderers these return a string or a Figure and never print or write files.
Every name that comes from the user's code or a spec file is escaped (html.escape) before it
reaches the page; chart text has matplotlib's '$' math escaped.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Sequence

from ..groups import group_ops
from ..units import fmt_seconds
from .charts import CLASS_COLORS, Point, Roof, _chart_text, legend_outside, roofline
from .html import img

if TYPE_CHECKING:
    from matplotlib.figure import Figure

e = html.escape

MAX_REGION_COLUMNS = 8


def outer_regions(projection, limit: int = MAX_REGION_COLUMNS) -> list[str]:
    """The outermost regions (a path no other region contains), in order, at most `limit`."""
    paths = [r for r in projection.regions if r]
    outer = [r for r in paths if not any(r != o and r.startswith(o + "/") and o in paths for o in paths)]
    return outer[:limit]


def _speedup(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.2f}x"


def projection_table_html(projection) -> str:
    """A sortable table: one row per target GPU with the predicted total, its outer regions,
    the speedup over the source (timed profiles) and the label holding most of the time."""
    regions = outer_regions(projection)
    head = ["GPU", "predicted total"] + [f"region {r}" for r in regions]
    if projection.timed:
        head.append(f"vs {projection.source}")
    head += ["dominant label", "notes"]
    rows = []
    for t in projection.targets:
        cells = [f"<td>{e(t.name)}</td>", f"<td class=n data-v='{t.total_s!r}'>{e(fmt_seconds(t.total_s))}</td>"]
        for r in regions:
            v = t.regions.get(r, 0.0)
            cells.append(f"<td class=n data-v='{v!r}'>{e(fmt_seconds(v))}</td>")
        if projection.timed:
            sp = projection.source_total_s / t.total_s if t.total_s > 0 else math.nan
            cells.append(f"<td class=n data-v='{'' if math.isnan(sp) else repr(sp)}'>{e(_speedup(sp))}</td>")
        share = t.dominant_share
        lab = t.dominant_label
        cells.append(f"<td><span class='lab lab-{e(lab)}'>{e(lab)}</span> "
                     f"{'' if math.isnan(share) else f'{share:.0%}'}</td>")
        cells.append(f"<td>{e('; '.join(t.notes))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    heads = "".join(f"<th{' class=n' if i and i < len(head) - 2 else ''}>{e(h)}</th>" for i, h in enumerate(head))
    src = (f"measured on {projection.source}: {fmt_seconds(projection.source_total_s)} of GPU time"
           + (f", GPU idle {fmt_seconds(projection.source_idle_s)} (not in any prediction)"
              if not math.isnan(projection.source_idle_s) else "")
           if projection.timed else f"from counts only ({projection.source})")
    meta = (f"<p class=meta>{e(projection.workload or 'workload')}: {e(src)}. Model: {e(projection.model)}; "
            f"{e(projection.kernel_fixed)}. Each op: fixed part + roofline floor on the target / efficiency.</p>")
    notes = "".join(f"<li>{e(n)}</li>" for n in projection.notes)
    notes = f"<ul class=notes>{notes}</ul>" if notes else ""
    return (f"{meta}{notes}<table class=sortable><thead><tr>{heads}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _points(projection, target) -> list[Point]:
    """One point per op group (the same op at the same place of every layer): intensity from the
    counts, FLOP/s = FLOPs / predicted seconds on the target."""
    prof = projection.profile
    if prof is None:
        return []
    pts = []
    for g in group_ops(prof, by=("module", "op", "math_class"), keep=lambda o: o.total_flops > 0 and o.bytes > 0):
        seconds = sum(target.op(i).seconds for i in g.indices)
        if seconds <= 0:
            continue
        by_label: dict[str, float] = {}
        for i in g.indices:
            p = target.op(i)
            by_label[p.label] = by_label.get(p.label, 0.0) + p.seconds
        pts.append(Point(_chart_text(g.name), g.flops / g.bytes, g.flops / seconds, seconds,
                         max(by_label, key=by_label.get), g.math_class))
    return pts


def _roofs(projection, target) -> list[Roof]:
    ceil = target.ceilings
    roofs = [Roof("memory", "memory", ceil.memory_bytes_per_s, False)]
    seen: list[str] = []
    classes = projection.profile.flops_by_class() if projection.profile is not None else {}
    for c in classes:
        try:
            r = ceil.resolve(c).value
        except (KeyError, ValueError):
            continue
        if r not in seen:
            seen.append(r)
            roofs.append(Roof(r, "compute", ceil.flops_per_s[ceil.resolve(r)], False))
    return roofs


def projection_roofline(projection, target, *, label_top: int = 8) -> Figure:
    """The roofline of one target's datasheet with the op groups at their predicted FLOP/s."""
    t = projection.target(target) if isinstance(target, str) else target
    title = _chart_text(f"{projection.workload or 'workload'} projected on {t.name}: "
                        f"{fmt_seconds(t.total_s)} ({projection.model})")
    if len(title) > 110:
        title = title[:107] + "..."
    fig = roofline(_points(projection, t), _roofs(projection, t), title=title, label_top=label_top)
    fig.axes[0].set_ylabel(f"predicted FLOP/s on the {_chart_text(t.name)} (FLOPs / predicted time)")
    return fig


def projection_html(projection, *, charts: bool | Sequence[str] = True) -> str:
    """The table and, when `charts` (True: every target; or a list of names), a roofline per
    target, as one HTML section for report_html(..., extra_sections=[("Projection", ...)])."""
    parts = [projection_table_html(projection)]
    if charts:
        chosen = projection.targets if charts is True else [projection.target(n) for n in charts]
        imgs = [img(projection_roofline(projection, t), f"roofline projected on {t.name}") for t in chosen]
        parts.append(f"<div class=charts>{''.join(imgs)}</div>")
    return "".join(parts)



def llm_roofline(estimate) -> Figure:
    """The GPU's roofline with the model's decode step at each batch (a path as the batch grows),
    its prefill at each batch, and the decode step at the largest batch that fits."""
    ceil = estimate.ceilings
    roofs = [Roof("memory", "memory", ceil.memory_bytes_per_s, False),
             Roof(estimate.ridge_class, "compute", ceil.peak(estimate.ridge_class), False)]
    pts = []
    for r in estimate.rows:
        fit = "" if r.fits else " (does not fit)"
        pts.append(Point(f"decode B={r.batch}{fit}", r.decode_intensity, r.decode_flops / r.tpot_s, r.tpot_s,
                         r.decode_label))
        if r.prefill_bytes and r.prefill_bytes == r.prefill_bytes:
            pts.append(Point(f"prefill B={r.batch}", r.prefill_flops / r.prefill_bytes, r.prefill_flops / r.ttft_s,
                             r.tpot_s, r.prefill_label))
    cfg = estimate.config
    title = _chart_text(f"{cfg.name} ({cfg.weights} weights, {cfg.kv} KV, {estimate.mode}) on {estimate.gpu}, "
                        f"context {estimate.context}")
    fig = roofline(pts, roofs, title=title, label_top=2 * len(estimate.rows) + 1)
    ax = fig.axes[0]
    dec = [p for p in pts if p.name.startswith("decode")]
    if len(dec) > 1:
        ax.plot([p.intensity for p in dec], [p.flops_per_s for p in dec], "-", color=CLASS_COLORS[2], lw=1.0,
                zorder=3)
    if estimate.max_batch:
        ax.scatter([estimate.best_decode_intensity], [estimate.best_decode_flops_per_s], marker="*", s=160,
                   color=CLASS_COLORS[6], zorder=5,
                   label=f"decode at the largest batch that fits ({estimate.max_batch})")
        legend_outside(fig, ax)
    ax.set_ylabel("predicted FLOP/s (FLOPs / predicted GPU time)")
    return fig


__all__ = ["llm_roofline", "projection_html", "projection_roofline", "projection_table_html"]
