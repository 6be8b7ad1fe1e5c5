"""Matplotlib figures: the roofline, time by label and region, sweep trajectories.

Every function takes plain data and returns a Figure (or its bytes); nothing here prints, shows a
window or writes a file.  The figures use matplotlib's object API
with the Agg canvas, so they work on headless machines and in notebooks alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from ..errors import UsageError
from ..math_class import MathClass
from ..steps import STEADY, summary_regions
from ..units import fmt_bandwidth, fmt_flops_rate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# one colour per label, readable for the common colour-vision deficiencies (Okabe-Ito)
LABEL_COLORS = {
    "compute-bound": "#D55E00",
    "memory-bound": "#0072B2",
    "communication-bound": "#009E73",
    "overhead-bound": "#CC79A7",
    "idle": "#BBBBBB",
    "predicted": "#777777",
}
DPI = 150  # PNGs sharp on a high-density screen and in print

CLASS_COLORS = ["#222222", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]


@dataclass(frozen=True)
class Point:
    """One op (or op group) on the roofline."""

    name: str  # label text, e.g. "layers.*.feed_forward.w1 mm"
    intensity: float  # FLOP per byte
    flops_per_s: float  # attained (measured), or the roofline bound for count-only profiles
    seconds: float  # time share decides the marker size
    label: str  # "memory-bound" ...
    math_class: str = ""


@dataclass(frozen=True)
class Roof:
    name: str  # "bf16_tensor", "memory", ...
    kind: str  # "compute" or "memory"
    value: float  # FLOP/s for compute roofs, bytes/s for the memory roof
    calibrated: bool  # solid if measured here, dashed if from the datasheet
    basis: str = ""  # where a roof neither measured nor on a datasheet comes from ("fp32's measured rate, assumed")


def new_figure(width: float = 9.0, height: float = 6.0) -> Figure:
    """A chart's figure (render.figure: matplotlib is imported here, on the first chart drawn)."""
    from .figure import chart_figure

    return chart_figure(width, height, DPI)


def layout(fig: Figure) -> None:
    """Lay the figure out as it will be drawn (constrained layout, text sizes) without rasterizing
    it, so that pixel positions (a label's box, the memory roof's angle on screen) can be read:
    the same positions as a full draw, at a fraction of its cost (a chart is laid out 4-5 times
    as its labels are placed, then drawn once when saved)."""
    fig.draw_without_rendering()


def _fmt_rate(v: float) -> str:
    return fmt_flops_rate(v)


def roofline(points: Sequence[Point], roofs: Sequence[Roof], *, title: str = "", label_top: int = 8,
             predicted: bool = False, extent: Sequence[Point] = ()) -> Figure:
    """Log-log roofline: intensity (FLOP/B) against attained FLOP/s, each roof labelled on its
    line, ridge points marked, ops coloured by label and sized by their share of the time, the
    heaviest labelled, the legend outside the data.  extent: points the axes must hold that the
    caller draws itself (a sweep's paths), so every roof spans them."""
    fig = new_figure(10.0, 6.0)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    pts = [p for p in points if p.intensity > 0 and p.flops_per_s > 0 and math.isfinite(p.intensity)]
    room = pts + [p for p in extent if p.intensity > 0 and p.flops_per_s > 0 and math.isfinite(p.intensity)]
    mems = [r for r in roofs if r.kind == "memory"]
    comps = sorted((r for r in roofs if r.kind == "compute"), key=lambda r: -r.value)
    xs = [p.intensity for p in room] + [r.value / m.value for r in comps for m in mems]
    x_lo = 10 ** math.floor(math.log10(max(min(xs, default=0.1), 1e-3))) / 2 if xs else 0.01
    x_hi = 10 ** math.ceil(math.log10(max(xs, default=1000))) * 2 if xs else 1e4
    top = max([r.value for r in comps] + [p.flops_per_s for p in room] + [1.0])
    y_lo = min([p.flops_per_s for p in room] + [top / 1e4]) / 3
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, top * 3)

    draw_roofs(ax, roofs, x_lo, x_hi)

    # points
    total = sum(p.seconds for p in pts) or 1.0
    for label in LABEL_COLORS:
        sel = [p for p in pts if p.label == label]
        if not sel:
            continue
        sizes = [20 + 900 * (p.seconds / total) for p in sel]
        ax.scatter([p.intensity for p in sel], [p.flops_per_s for p in sel], s=sizes, c=LABEL_COLORS[label],
                   alpha=0.75, edgecolors="white", linewidths=0.6, zorder=4, label=label)
    heaviest = sorted(pts, key=lambda p: -p.seconds)[:label_top]
    place_labels(fig, ax, heaviest)

    ax.set_xlabel("arithmetic intensity (FLOP / byte of device memory)")
    ax.set_ylabel("attained FLOP/s" + (" (roofline bound: no timing)" if predicted else ""))
    si_axes(ax)
    legend_outside(fig, ax)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# one colour per math class, the same in every chart (Okabe-Ito order; black for the commonest)
ROOF_COLORS = {"bf16_tensor": "#222222", "fp16_tensor": "#444444", "fp16_tensor_fp16_acc": "#666666",
               "fp8_tensor": "#E69F00", "int8_tensor": "#56B4E9", "int4_tensor": "#0072B2", "tf32_tensor": "#009E73",
               "fp32": "#CC79A7", "fp16": "#D55E00", "bf16": "#D55E00", "fp64": "#F0E442", "fp64_tensor": "#F0E442",
               "int32": "#999999"}


def roof_color(name: str) -> str:
    base = name.split(": ", 1)[-1]  # "A: bf16_tensor" (a diff's other side) takes its class's colour
    return ROOF_COLORS.get(base, "#555555")


def draw_roofs(ax, roofs: Sequence[Roof], x_lo: float, x_hi: float) -> None:
    """The roofs, each labelled along its own line with its value: memory diagonals, one compute
    ceiling per class from its ridge (marked), measured solid, datasheet dashed."""
    mems = [r for r in roofs if r.kind == "memory"]
    # highest first; of equal roofs the measured one drawn last, on top of an assumed or datasheet twin
    comps = sorted((r for r in roofs if r.kind == "compute"), key=lambda r: (-r.value, r.calibrated))
    labels: list[tuple[float, str, str]] = []  # (roof value, colour, text) of the compute roofs
    for m in mems:
        style = "-" if m.calibrated else "--"
        ax.plot([x_lo, x_hi], [m.value * x_lo, m.value * x_hi], style, color="#444444", lw=1.6, zorder=2)
        y_lo = ax.get_ylim()[0]
        x = max(x_lo * 1.25, y_lo * 1.6 / m.value)  # where the diagonal is inside the plot
        # with a measured and a datasheet memory roof, the higher one's label above its line, the other below
        below = len(mems) > 1 and m.value < max(o.value for o in mems)
        t = ax.annotate(f"{m.name} {fmt_bandwidth(m.value)} ({'measured' if m.calibrated else 'datasheet'})",
                        (x * (3 if below else 1), m.value * x * (3 if below else 1)), textcoords="offset points",
                        xytext=(4, -11) if below else (-3, 5), fontsize=7, color="#444444",
                        rotation=_slope_degrees(ax, final=False), rotation_mode="anchor", zorder=3)
        t.set_gid(_ALONG_MEMORY)  # its angle is set again once the layout is final (legend_outside)
    for r in comps:
        color = roof_color(r.name)
        style = "-" if r.calibrated else "--"
        bw = next((m.value for m in mems if m.calibrated == r.calibrated), mems[0].value if mems else None)
        ridge = r.value / bw if bw else x_lo
        ax.plot([ridge, x_hi], [r.value, r.value], style, color=color, lw=1.3, zorder=2)
        ax.plot([ridge], [r.value], "D", ms=4, color=color, zorder=3)
        basis = r.basis or ("measured" if r.calibrated else "datasheet")
        labels.append((r.value, color, f"{r.name} {_fmt_rate(r.value)} ({basis}), ridge {ridge:.0f} FLOP/B"))
    _stack_labels(ax, labels, x_hi)


def _stack_labels(ax, labels: Sequence[tuple[float, str, str]], x_hi: float) -> None:
    """The compute roofs' labels at the right end of their lines, just above each; where roofs lie
    closer than a line of text, the labels are pushed apart vertically (never overlapping)."""
    if not labels:
        return
    fig = ax.figure
    layout(fig)
    to_px = ax.transData.transform
    pt = fig.dpi / 72.0  # pixels per point
    height = 9 * pt  # a 7-pt line of text and a little air
    ys = [to_px((x_hi, v))[1] for v, _, _ in labels]

    def spot(y: float) -> float:  # above its line; below it when another roof runs just above
        crowded = any(0 < other - y < height + 3 * pt for other in ys)
        return y - 3 * pt - height + 2 * pt if crowded else y + 3 * pt

    wanted = sorted(((spot(to_px((x_hi, v))[1]), v, color, text) for v, color, text in labels))
    placed: list[float] = []
    for y, v, color, text in wanted:
        y = max(y, placed[-1] + height) if placed else y
        placed.append(y)
        offset = (y - to_px((x_hi, v))[1]) / pt
        ax.annotate(text, (x_hi, v), textcoords="offset points", xytext=(-4, offset), ha="right", va="bottom",
                    fontsize=7, color=color, zorder=3)


def _slope_degrees(ax, final: bool = True) -> float:
    """The on-screen angle of a slope-1 line on log-log axes (the memory roof); final=False: from
    the axes' shape now, not laid out (a first guess, set again once the layout is final)."""
    if final:
        layout(ax.figure)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    bbox = ax.get_window_extent()
    dx = bbox.width / (math.log10(x1) - math.log10(x0))
    dy = bbox.height / (math.log10(y1) - math.log10(y0))
    return math.degrees(math.atan2(dy, dx))


_ALONG_MEMORY = "rooflight-memory-roof-label"
_ROOF_LABEL = "rooflight-compute-roof-label"


def _si_tick(v: float) -> str:
    """1e15 -> '1 PFLOP/s', 1e11 -> '100 GFLOP/s' (decade ticks: no trailing zeros)."""
    for factor, unit in ((1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s"), (1e3, "kFLOP/s")):
        if v >= factor:
            return f"{v / factor:g} {unit}"
    return f"{v:g} FLOP/s"


def si_axes(ax) -> None:
    """Ticks in units: FLOP/s with SI prefixes on y, plain numbers on the intensity axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _si_tick(v) if v > 0 else ""))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, which="major", alpha=0.3)


def legend_outside(fig, ax) -> None:
    """The legend beside the plot, never over the data."""
    for old in list(fig.legends):  # one legend: redrawn with what was added since
        old.remove()
    if ax.get_legend_handles_labels()[0]:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7, frameon=False)
    along = [t for t in ax.texts if t.get_gid() == _ALONG_MEMORY]
    if along:  # the legend changed the axes' shape: the memory roof's angle on screen with it
        angle = _slope_degrees(ax)
        for t in along:
            t.set_rotation(angle)


def place_labels(fig: Figure, ax, points: Iterable[Point]) -> list:
    """Label points without overlapping text: try offsets around each point, keep the first whose
    box overlaps no earlier label, the axes' edges nor the legend area; leave a point unlabelled
    rather than overlap."""
    renderer = fig.canvas.get_renderer()
    layout(fig)
    placed: list = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]  # the roofs' own labels
    texts = []
    axbox = ax.get_window_extent(renderer)
    offsets = [(8, 6), (8, -14), (-8, 6), (-8, -14), (12, 16), (12, -22), (-12, 16), (-12, -22), (0, 20), (0, -26)]
    for p in points:
        for dx, dy in offsets:
            t = ax.annotate(p.name, (p.intensity, p.flops_per_s), textcoords="offset points", xytext=(dx, dy),
                            fontsize=7, ha="left" if dx >= 0 else "right", zorder=5,
                            arrowprops=dict(arrowstyle="-", lw=0.5, color="#666666"))
            box = t.get_window_extent(renderer).expanded(1.05, 1.15)
            inside = (box.x0 >= axbox.x0 and box.x1 <= axbox.x1 and box.y0 >= axbox.y0 and box.y1 <= axbox.y1)
            if inside and not any(box.overlaps(b) for b in placed):
                placed.append(box)
                texts.append(t)
                break
            t.remove()
    return texts


def _time_unit(seconds: float) -> tuple[float, str]:
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= factor:
            return factor, unit
    return 1e-9, "ns"


def stacked_bars(rows: Sequence[tuple[str, dict[str, float]]], *, title: str, xlabel: str = "time") -> Figure:
    """Horizontal stacked bars: one bar per row (a region, or the whole run), segments by label;
    values in seconds, drawn in the unit that suits the largest bar."""
    factor, unit = _time_unit(max((sum(v.values()) for _, v in rows), default=1.0))
    rows = [(name, {k: v / factor for k, v in vals.items()}) for name, vals in rows]
    xlabel = f"{xlabel} ({unit})"
    fig = new_figure(8.0, 0.6 + 0.45 * max(len(rows), 1) + 0.8)
    ax = fig.add_subplot()
    labels = [lab for lab in LABEL_COLORS if any(vals.get(lab, 0) > 0 for _, vals in rows)]
    names = [name for name, _ in rows]
    lefts = [0.0] * len(rows)
    for lab in labels:
        widths = [vals.get(lab, 0.0) for _, vals in rows]
        ax.barh(range(len(rows)), widths, left=lefts, color=LABEL_COLORS[lab], label=lab, height=0.6)
        lefts = [a + b for a, b in zip(lefts, widths)]
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    legend_outside(fig, ax)  # beside the bars: inside, it covered the end of the longest one
    return fig


def trajectories(series: dict[str, list[tuple[str, float, float]]], roofs: Sequence[Roof], *, title: str) -> Figure:
    """Sweeps: each kernel group's path across the roofline as a parameter grows.
    series: name -> [(point label e.g. 'batch=8', intensity, FLOP/s), ...] in sweep order."""
    pts = [Point(f"{n} {lab}", x, y, 1.0, "predicted") for n, s in series.items() for lab, x, y in s]
    fig = roofline([], roofs, title=title, extent=pts)  # every roof spans the paths
    ax = fig.axes[0]
    for i, (name, s) in enumerate(series.items()):
        color = CLASS_COLORS[(i + 1) % len(CLASS_COLORS)]
        good = [(lab, x, y) for lab, x, y in s if x > 0 and y > 0]
        if not good:
            continue
        ax.plot([x for _, x, _ in good], [y for _, _, y in good], "-o", color=color, ms=4, lw=1.2, label=name, zorder=4)
        for lab, x, y in (good[0], good[-1]):
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7, color=color)
    legend_outside(fig, ax)
    return fig


def chart_format(path: str | Path) -> str:
    """"png" or "svg" from a file name's suffix; anything else is a usage error."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg"):
        raise UsageError(f"cannot save a chart as '.{fmt}': use .png or .svg")
    return fmt


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """A figure as PNG or SVG bytes (render.figure's, imported when a figure exists to write)."""
    from .figure import figure_bytes as to_bytes

    return to_bytes(fig, fmt)


# ---------------------------------------------------------------------------- from an Analysis


def _chart_text(s: str) -> str:
    """Text from the user's code shown as-is: matplotlib would read '$...$' as math."""
    return s.replace("$", r"\$")


_CLASS_NAMES = frozenset(c.value for c in MathClass)


def roofs_of(analysis, classes: Sequence[str] | None = None) -> list[Roof]:
    """Memory roof and one compute roof per math class present in the profile, calibrated (solid)
    where measured and datasheet (dashed) beside them."""
    ceil, sheet = analysis.ceilings, analysis.datasheet
    if classes is None:
        classes = [c for c in analysis.profile.flops_by_class()]
    resolved: list[str] = []
    for c in classes:
        try:
            r = ceil.resolve(c).value
        except (KeyError, ValueError):
            continue
        if r not in resolved:
            resolved.append(r)
    roofs: list[Roof] = []
    calibrated = ceil.source == "calibrated"
    if calibrated and "memory" in ceil.measured:
        roofs.append(Roof("memory", "memory", ceil.memory_bytes_per_s, True))
    if sheet is not None:
        roofs.append(Roof("memory", "memory", sheet.memory_bytes_per_s, False))
    elif not calibrated or "memory" not in ceil.measured:
        roofs.append(Roof("memory", "memory", ceil.memory_bytes_per_s, ceil.source == "calibrated"))
    for c in resolved:
        cls = MathClass(c)
        if calibrated and c in ceil.measured:
            roofs.append(Roof(c, "compute", ceil.flops_per_s[cls], True))
        if sheet is not None and cls in sheet.flops_per_s:
            roofs.append(Roof(c, "compute", sheet.flops_per_s[cls], False))
        elif not calibrated:
            roofs.append(Roof(c, "compute", ceil.peak(cls), False))
        elif c not in ceil.measured:
            # calibrated, not measured, on no datasheet (a CPU's classes all run at its measured
            # fp32 rate): say whose figure it is, dashed, never "measured"
            twin = next((m for m in sorted(ceil.measured) if m in _CLASS_NAMES and m != c
                         and ceil.flops_per_s.get(MathClass(m)) == ceil.peak(cls)), "")
            roofs.append(Roof(c, "compute", ceil.peak(cls), False,
                              f"{twin}'s measured rate, assumed" if twin else "not measured"))
    return roofs


def points_of(analysis) -> list[Point]:
    """One point per op group: measured FLOP/s, or for a count-only profile the roofline bound."""
    pts = []
    for g in analysis.groups:
        if g.flops <= 0 or g.bytes <= 0:
            continue
        if analysis.timed:
            y = g.flops_per_s
            if not (y > 0):
                continue
        else:
            try:
                peak = analysis.ceilings.peak(g.math_class) if g.math_class else analysis.ceilings.peak("fp32")
            except (KeyError, ValueError):
                continue
            y = min(peak, g.intensity * analysis.ceilings.memory_bytes_per_s)
        pts.append(Point(_chart_text(g.name), g.intensity, y, g.seconds, g.label, g.math_class))
    return pts


def roofline_of(analysis, *, title: str | None = None, label_top: int = 8) -> Figure:
    p = analysis.profile
    where = analysis.ceilings.name
    kind = "CPU wall times" if analysis.device_kind == "cpu" and analysis.timed else (
        "measured" if analysis.timed else "counted only (points sit on the roof they are bound by)")
    title = title if title is not None else _chart_text(f"{p.workload or 'workload'} on {where}: {kind}")
    return roofline(points_of(analysis), roofs_of(analysis), title=title, label_top=label_top,
                    predicted=not analysis.timed)


def time_by_label_of(analysis, *, top_regions: int = 12) -> Figure:
    """Stacked bars of time by label: the whole run, then each region."""
    d = analysis.diagnosis
    rows = []
    names = summary_regions(analysis.profile, d)
    if analysis.profile.steps:  # the steady state on its own scale: the setup can be 100x longer
        names = [n for n in names if n == STEADY or n.startswith(STEADY + ": ")] or names
    for name in names[: top_regions + 1]:
        r = d.regions[name]
        vals = {str(k): v for k, v in r.seconds_by_label.items() if v > 0}
        if r.idle_seconds > 0:  # show idle apart from the overhead-bound ops it is counted with
            vals["overhead-bound"] = max(vals.get("overhead-bound", 0.0) - r.idle_seconds, 0.0)
            vals["idle"] = r.idle_seconds
        rows.append((_chart_text(name or "whole run"), vals))
    what = "time" if d.timed else "time at the roofline (no timing)"
    return stacked_bars(rows, title="time by label" + (" (CPU)" if d.device_kind == "cpu" and d.timed else ""),
                        xlabel=what)


def sweep_of(analyses: Sequence, point_labels: Sequence[str], *, top: int = 6, title: str = "") -> Figure:
    """The heaviest op groups' paths across the roofline over a sweep (analyses in sweep order)."""
    first = analyses[0]
    names = [g.module + " " + g.op for g in first.groups[:top]]
    series: dict[str, list[tuple[str, float, float]]] = {}
    for a, lab in zip(analyses, point_labels):
        for g in a.groups:
            key = g.module + " " + g.op
            if key in names and g.flops > 0 and g.bytes > 0:
                y = g.flops_per_s if a.timed else min(
                    a.ceilings.peak(g.math_class or "fp32"), g.intensity * a.ceilings.memory_bytes_per_s)
                series.setdefault(_chart_text(key.strip()), []).append((lab, g.intensity, y))
    return trajectories(series, roofs_of(first), title=title or "sweep: each op group across the roofline")
