"""A comparison of two runs (rooflight.diff) as text, as a roofline with arrows, and as HTML."""

from __future__ import annotations

import math
from typing import Sequence

from ..diff import Diff, Side
from ..units import fmt_bytes, fmt_flops, fmt_seconds
from .charts import (
    LABEL_COLORS,
    Point,
    Roof,
    _chart_text,
    draw_roofs,
    legend_outside,
    new_figure,
    place_labels,
    si_axes,
)
from .html import _label, _notes, _num, e, img, page

_MARK = {"faster": "▼", "slower": "▲", "no change": "=", "only in A": "−", "only in B": "+", "counts changed": "≠",
         "same counts": "="}


def _secs(s: Side | None) -> str:
    if s is None:
        return "–"
    if not s.timed:
        return "(untimed)"
    return fmt_seconds(s.seconds)


def _spread(s: Side | None) -> str:
    if s is None or not s.timed or s.seconds_lo != s.seconds_lo:
        return ""
    return f"±{fmt_seconds(max(s.seconds - s.seconds_lo, s.seconds_hi - s.seconds))}"


def _ratio(x: float) -> str:
    return "" if x != x else f"{x:.3g}×"


def _inten(s: Side | None) -> str:
    if s is None:
        return "–"
    x = s.intensity
    return "∞" if math.isinf(x) else f"{x:.3g}"


def diff_text(d: Diff, limit: int | None = None, *, unchanged: bool = True) -> str:
    """A plain table: the verdict, every row (or the first `limit`, saying how many are left
    out), the notes.  unchanged=False keeps only the rows that changed (and the headline)."""
    rows = [r for r in d.rows if unchanged or r.changed or r.scope == "run"]
    shown = rows if not limit else rows[:limit]
    w = min(max([len(r.name) for r in shown] + [12]), 72)
    head = (f"  {'scope':<7} {'name':<{w}} {d.a_name + ' time':>18} {d.b_name + ' time':>18} {'B/A':>7} "
            f"{'FLOPs B/A':>9} {'bytes B/A':>9} {'FLOP/B A→B':>17} {'label A → B':<34}")
    lines = [f"{d.a_name}: {d.a_about}; held against {d.a_roofs}" if d.a_about else "",
             f"{d.b_name}: {d.b_about}; held against {d.b_roofs}" if d.b_about else "", head]
    for r in shown:
        ta = f"{_secs(r.a)} {_spread(r.a)}".strip()
        tb = f"{_secs(r.b)} {_spread(r.b)}".strip()
        ratio = "" if r.speedup != r.speedup else f"{1 / r.speedup:.3g}×"
        labels = f"{(r.a.label if r.a else '–') or '–'} → {(r.b.label if r.b else '–') or '–'}"
        inten = f"{_inten(r.a)} → {_inten(r.b)}"
        lines.append(f"{_MARK[r.change]} {r.scope:<7} {_short(r.name, w):<{w}} {ta:>18} {tb:>18} {ratio:>7} "
                     f"{_ratio(r.ratio('flops')):>9} {_ratio(r.ratio('bytes')):>9} {inten:>17} {labels:<34}"
                     + (f"  ({r.change})" if r.change in ("only in A", "only in B") else "")
                     + (f"  [{r.note}]" if r.note else ""))
    if len(rows) > len(shown):
        lines.append(f"  ... {len(rows) - len(shown)} more rows (all of them: --limit 0, or the JSON / HTML output)")
    lines.append("  ▼ faster  ▲ slower  = inside both runs' spread (or the same counts)  ≠ counts changed  + only in B  − only in A")
    lines.extend(f"note: {n}" for n in d.notes)
    lines.append(d.verdict)
    return "\n".join(x for x in lines if x != "")


# ---------------------------------------------------------------------------- the chart


def _y(s: Side, roofs: Sequence[Roof]) -> float:
    """Attained FLOP/s, or for an untimed side the roofline bound at its intensity."""
    if s.timed:
        return s.flops / s.seconds if s.seconds > 0 else math.nan
    mem = next((r.value for r in roofs if r.kind == "memory"), math.nan)
    top = max((r.value for r in roofs if r.kind == "compute"), default=math.nan)
    return min(top, s.intensity * mem)


def diff_chart(d: Diff, roofs: Sequence[Roof], *, top: int = 12, title: str = ""):
    """One roofline with both points of every compared group (A hollow, B filled, coloured by B's
    label), an arrow from A to B; the `top` rows that moved most are labelled."""
    fig = new_figure(10.5, 6.2)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    rows = [r for r in d.rows if r.scope in ("group", "module")]
    pairs = []
    for r in rows:
        pa = (r.a.intensity, _y(r.a, roofs)) if r.a is not None and r.a.flops > 0 and r.a.bytes > 0 else None
        pb = (r.b.intensity, _y(r.b, roofs)) if r.b is not None and r.b.flops > 0 and r.b.bytes > 0 else None
        ok = [p for p in (pa, pb) if p is not None and all(v > 0 and math.isfinite(v) for v in p)]
        if ok:
            pairs.append((r, pa if pa in ok else None, pb if pb in ok else None))
    xs = [p[0] for _, pa, pb in pairs for p in (pa, pb) if p] or [1.0]
    ys = [p[1] for _, pa, pb in pairs for p in (pa, pb) if p] or [1.0]
    comps = [r for r in roofs if r.kind == "compute"]
    mems = [r for r in roofs if r.kind == "memory"]
    x_lo = 10 ** math.floor(math.log10(min(xs))) / 2
    x_hi = 10 ** math.ceil(math.log10(max(xs + [c.value / mems[0].value for c in comps] if mems else xs))) * 2
    y_top = max(ys + [c.value for c in comps])
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(min(min(ys), y_top / 10) / 5, y_top * 3)
    draw_roofs(ax, roofs, x_lo, x_hi)
    total = sum(r.time_moved for r, _, _ in pairs) or 1.0
    for r, pa, pb in pairs:
        color = LABEL_COLORS.get((r.b or r.a).label, "#777777")
        if pa is not None:  # A in its own label's colour, hollow
            ax.scatter([pa[0]], [pa[1]], s=46, facecolors="none", edgecolors=LABEL_COLORS.get(r.a.label, "#777777"),
                       linewidths=1.4, zorder=4)
        if pb is not None:
            ax.scatter([pb[0]], [pb[1]], s=46, c=color, edgecolors="white", linewidths=0.6, zorder=5)
        if pa is not None and pb is not None and pa != pb:
            ax.annotate("", xy=pb, xytext=pa, zorder=3,
                        arrowprops=dict(arrowstyle="->", color=color, lw=0.8 + 2.2 * r.time_moved / total,
                                        alpha=0.85, shrinkA=4, shrinkB=4))
    ax.scatter([], [], s=46, facecolors="none", edgecolors="#555555", label=f"{d.a_name} (hollow)")
    ax.scatter([], [], s=46, c="#555555", label=f"{d.b_name} (filled); colour: each side's label")
    for lab in dict.fromkeys(s.label for r, _, _ in pairs for s in (r.a, r.b) if s is not None and s.label):
        ax.scatter([], [], s=30, c=LABEL_COLORS.get(lab, "#777777"), label=lab)
    moved = sorted(pairs, key=lambda t: -t[0].time_moved - (0 if d.timed else t[0].bytes_moved))[:top]
    labels = [Point(_chart_text(_short(r.name)), *(pb or pa), 1.0, (r.b or r.a).label) for r, pa, pb in moved]
    place_labels(fig, ax, labels)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of device memory)")
    ax.set_ylabel("attained FLOP/s" if d.timed else "roofline bound FLOP/s (counts only)")
    si_axes(ax)
    legend_outside(fig, ax)
    ax.set_title(_chart_text(title or f"{d.a_name} → {d.b_name}: every op group on one roofline"), fontsize=10)
    return fig


def _short(name: str, n: int = 48) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


# ---------------------------------------------------------------------------- HTML


def _cells(s: Side | None, timed: bool) -> str:
    if s is None:
        return "<td class=n>–</td>" * (5 if timed else 3) + "<td>–</td>"
    t = (f"<td class=n data-v='{_num(s.seconds)}'>{e(_secs(s))} <span class=meta>{e(_spread(s))}</span></td>"
         f"<td class=n data-v='{_num(s.attained)}'>{'–' if s.attained != s.attained else f'{s.attained:.0%}'}</td>"
         if timed else "")
    return (t + f"<td class=n data-v='{_num(s.flops)}'>{e(fmt_flops(s.flops))}</td>"
            f"<td class=n data-v='{_num(s.bytes)}'>{e(fmt_bytes(s.bytes))}</td>"
            f"<td class=n data-v='{_num(s.intensity)}'>{e(_inten(s))}</td>"
            f"<td>{_label(s.label) if s.label else '–'}</td>")


def _table(d: Diff) -> str:
    timed = d.timed
    sub = (["time", "of roof"] if timed else []) + ["FLOPs", "bytes", "FLOP/B", "label"]
    head = ("<thead><tr><th rowspan=2>change</th><th rowspan=2>scope</th><th rowspan=2>name</th>"
            f"<th colspan={len(sub)}>{e(d.a_name)}</th><th colspan={len(sub)}>{e(d.b_name)}</th>"
            + ("<th rowspan=2 class=n>B/A time</th>" if timed else "") + "</tr><tr>"
            + "".join(f"<th class=n>{s}</th>" for s in sub) * 2 + "</tr></thead>")
    body = []
    for r in d.rows:
        ratio = "" if r.speedup != r.speedup else f"{1 / r.speedup:.3g}×"
        body.append(f"<tr class='{'' if r.changed or r.scope == 'run' else 'dim'}'>"
                    f"<td>{e(_MARK[r.change])} {e(r.change)}</td><td>{e(r.scope)}</td>"
                    f"<td class='mono name'>{e(r.name)}{'<br><span class=meta>' + e(r.note) + '</span>' if r.note else ''}</td>"
                    f"{_cells(r.a, timed)}{_cells(r.b, timed)}"
                    + (f"<td class=n data-v='{_num(1 / r.speedup if r.speedup == r.speedup else math.nan)}'>{ratio}</td>"
                       if timed else "") + "</tr>")
    # two header rows: the sort script reads the first, so this table is not marked sortable
    style = "<style>td.name{min-width:320px;word-break:normal;overflow-wrap:anywhere}</style>"
    return f"{style}<div class=scroll><table>{head}<tbody>{''.join(body)}</tbody></table></div>"


def diff_html(d: Diff, roofs: Sequence[Roof], *, title: str = "") -> str:
    """The comparison report: the verdict, the notes, the roofline with arrows, the table."""
    run = d.run
    facts = ""
    if run is not None and run.a is not None and run.b is not None:
        facts = (f"<div class=meta><b>{e(d.a_name)}</b>: {e(d.a_about)}; held against {e(d.a_roofs)}<br>"
                 f"<b>{e(d.b_name)}</b>: {e(d.b_about)}; held against {e(d.b_roofs)}<br>"
                 f"{e(run.name)}: FLOPs {e(fmt_flops(run.a.flops))} → {e(fmt_flops(run.b.flops))}, bytes "
                 f"{e(fmt_bytes(run.a.bytes))} → {e(fmt_bytes(run.b.bytes))}, intensity {e(_inten(run.a))} → "
                 f"{e(_inten(run.b))} FLOP/B</div>")
    changed = len(d.changed())
    body = [f"<h1>{e(title or f'rooflight diff: {d.a_name} → {d.b_name}')}</h1>", facts,
            f"<p><b>{e(d.verdict)}</b></p>", _notes(d.notes),
            "<h2>Roofline: A → B</h2>", f"<div class=charts>{img(diff_chart(d, roofs), 'roofline of both runs')}</div>",
            f"<h2>Every row ({changed} changed of {len(d.rows)})</h2>",
            "<p class=meta>A time is a change only when the runs' spreads over their repeats do not overlap; "
            "greyed rows did not change.</p>", _table(d)]
    return page(title or f"rooflight diff: {d.a_name} → {d.b_name}", "".join(body))


__all__ = ["diff_chart", "diff_html", "diff_text"]
