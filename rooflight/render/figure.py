"""The Figure every rooflight chart is drawn on: imported by charts.new_figure on the first chart
drawn, so that matplotlib (~0.7 s to import, and on a machine without its font cache ~10 s to
build it) loads only in a run that draws."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# who made the file, in the formats that carry it
_METADATA = {"png": {"Software": "rooflight"}, "svg": {"Creator": "rooflight"}}


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """A figure as PNG or SVG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, metadata=_METADATA.get(fmt))
    return buf.getvalue()


class ChartFigure(Figure):
    """A matplotlib Figure that shows itself in a notebook (as a PNG) whatever the kernel's
    backend: a Figure made without pyplot has no display of its own, so a fresh kernel would print
    `<Figure size 990x660 with 1 Axes>` instead of the chart."""

    def _repr_png_(self) -> bytes:
        return figure_bytes(self, "png")

    def __repr__(self) -> str:
        w, h = self.get_size_inches()
        return f"<rooflight chart {w:.0f}x{h:.0f} in: {self.axes[0].get_title() if self.axes else ''}>"


def chart_figure(width: float, height: float, dpi: int) -> ChartFigure:
    fig = ChartFigure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig
