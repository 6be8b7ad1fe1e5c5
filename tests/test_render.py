"""Charts, the HTML report and the notebook facade, built from a profile timed on an H100 (the
trace fixtures); the report opened in headless Chromium; user strings escaped."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib
import pytest
from matplotlib.figure import Figure

from rooflight.api import analyze, save_figure
from rooflight.groups import module_template
from rooflight.profile_data import Profile
from rooflight.render.charts import (Point, Roof, roofline, roofline_of, sweep_of,
                                     time_by_label_of)
from rooflight.render.html import report_html

FIX = Path(__file__).resolve().parent / "fixtures"
XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def timed(h100_decode) -> Profile:
    """The tiny Llama decode step timed on an H100 (the shared fixture of conftest.py)."""
    return h100_decode


@pytest.fixture(scope="module")
def hostile(timed) -> Profile:
    """The same profile with user strings that must never reach the page as markup."""
    ops = tuple(dataclasses.replace(o, region=XSS, module=o.module + ".<img src=x onerror=alert(2)>")
                if i % 3 == 0 else dataclasses.replace(o, region=XSS) for i, o in enumerate(timed.ops))
    kernels = tuple(dataclasses.replace(k, name="at::vectorized_elementwise_kernel<4, at::AddFunctor<float>>")
                    for k in timed.timing.kernels)
    regions = tuple(dataclasses.replace(r, region=XSS) if r.region else r for r in timed.timing.regions)
    t = dataclasses.replace(timed.timing, kernels=kernels, regions=regions)
    return dataclasses.replace(timed, ops=ops, regions=(XSS,), timing=t, workload=XSS)


def test_module_template_merges_layers():
    assert module_template("layers.3.attention.wq") == "layers.*.attention.wq"
    assert module_template("12.mlp") == "*.mlp"
    assert module_template("blocks3.fc") == "blocks3.fc"


def test_analysis_of_a_timed_profile(timed):
    a = analyze(timed, calibrated=False)
    assert a.spec.key == "h100_sxm" and a.timed
    assert set(a.diagnosis.verdicts) == {o.index for o in timed.ops}
    whole = a.diagnosis.region("")
    # a tiny model's decode step: kernels of a few µs with idle gaps between them
    assert str(whole.headline) == "overhead-bound"
    assert sum(g.count for g in a.groups) <= len(timed.ops)


def test_roofline_chart_shows_roofs_points_and_readable_labels(timed):
    a = analyze(timed, calibrated=False)
    fig = roofline_of(a)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # each roof is labelled along its own line with its value; the legend sits outside the axes
    roofs = [t.get_text() for t in ax.texts]
    assert "memory 3.35 TB/s (datasheet)" in roofs
    assert "bf16_tensor 989 TFLOP/s (datasheet), ridge 295 FLOP/B" in roofs
    texts = [c for c in ax.texts if c.get_text()]
    assert len(texts) > 2, "the heaviest points are labelled"
    r = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert not legend.get_window_extent(r).overlaps(ax.get_window_extent(r))
    assert fig.dpi >= 150
    assert ax.yaxis.get_major_formatter()(1e15, 0) == "1 PFLOP/s"
    boxes = [t.get_window_extent(r) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())


def test_label_placement_skips_rather_than_overlaps():
    # twenty points on top of each other: at most one label per free position, never overlapping
    pts = [Point(f"op number {i}", 10.0, 1e12, 1.0, "memory-bound") for i in range(20)]
    fig = roofline(pts, [Roof("memory", "memory", 3e12, False)], label_top=20)
    ax = fig.axes[0]
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.texts]
    assert 1 <= len(boxes) < 20
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))


def test_time_by_label_and_sweep_charts(timed):
    a = analyze(timed, calibrated=False)
    bars = time_by_label_of(a)
    assert isinstance(bars, Figure) and "time by label" in bars.axes[0].get_title()
    # the legend sits beside the bars, not over the longest one's end
    bars.canvas.draw()
    r = bars.canvas.get_renderer()
    (legend,) = bars.legends
    assert not legend.get_window_extent(r).overlaps(bars.axes[0].get_window_extent(r))
    sweep = sweep_of([a, a], ["batch=1", "batch=2"])
    assert isinstance(sweep, Figure) and sweep.axes[0].lines


def test_png_and_svg_files(tmp_path, timed):
    fig = roofline_of(analyze(timed, calibrated=False))
    png = save_figure(fig, tmp_path / "r.png")
    svg = save_figure(fig, tmp_path / "r.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:2000]


def test_report_escapes_every_user_string(hostile):
    page = report_html(analyze(hostile, calibrated=False))
    assert XSS not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "at::vectorized_elementwise_kernel&lt;4, at::AddFunctor&lt;float&gt;&gt;" in page
    assert page.count("<script>") == 1  # ours: the table's sort/filter code


def test_report_is_self_contained(timed):
    page = report_html(analyze(timed, calibrated=False))
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert page.count("data:image/png;base64,") == 2
    assert page.count("<tr data-label=") >= len(timed.ops)


def test_notebook_facade_never_prints_nor_opens_windows(tmp_path, timed, capsys):
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    html = timed._repr_html_()
    fig = timed.plot()
    assert isinstance(fig, Figure)
    assert "<table" in html and "rooflight" in html
    timed.savefig(tmp_path / "chart.svg")
    timed.to_html(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert len(timed.df) == len(timed.ops)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert matplotlib.get_backend() == backend and plt.get_fignums() == []


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="chromium not installed (apt-get install chromium; .ci/run installs it)")
def test_report_in_headless_chromium(tmp_path, hostile):
    """A real browser: the page renders (non-blank screenshot), its script runs (the op counter is
    filled in), the op table is there, and the hostile region name is text, not a script."""
    assert _chromium(), "CI must have chromium: .ci/run installs it"
    page = tmp_path / "report.html"
    page.write_text(report_html(analyze(hostile, calibrated=False)))
    shot = tmp_path / "shot.png"
    r = _run_chromium(tmp_path, "--window-size=1280,1800", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1200
    assert img[..., :3].std() > 0.05, "blank screenshot"
    assert (img[..., :3] < 0.5).mean() > 0.01, "no dark text or chart pixels"
    dom = _run_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    n = len(hostile.ops)
    assert f"{n} of {n} ops shown" in dom, "the table's script did not run"
    assert dom.count("<tr data-label=") >= n
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert dom.count("<script") == 1 and "onerror=alert" not in dom.replace("onerror=alert(2)&gt;", "")


def test_report_cli_renders_a_saved_profile_again(tmp_path, timed):
    from typer.testing import CliRunner

    from rooflight.cli import app

    src = tmp_path / "run.json"
    timed.save(src)
    r = CliRunner().invoke(app, ["report", str(src), "--png", "--svg", "--datasheet"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run.html").exists() and (tmp_path / "run.png").exists() and (tmp_path / "run.svg").exists()
    assert "whole run:" in r.output and "overhead-bound" in r.output
    # a file the user wrote is not overwritten without --force
    mine = tmp_path / "mine.html"
    mine.write_text("my notes")
    r = CliRunner().invoke(app, ["report", str(src), "-o", str(mine)])
    assert r.exit_code == 2 and mine.read_text() == "my notes"
    # rooflight's own report is replaced without asking
    r = CliRunner().invoke(app, ["report", str(src), "--datasheet"])
    assert r.exit_code == 0, r.output
    json.loads(src.read_text())


_PROBE = """<script>
window.addEventListener('load', function(){
  var out = {};
  out.overflow = document.documentElement.scrollWidth - window.innerWidth;
  var t = document.getElementById('ops'), th = t.tHead.rows[0].cells, col = -1;
  for (var i = 0; i < th.length; i++) { if (th[i].textContent === 'time') col = i; }
  th[col].click(); th[col].click();  // descending, then ascending
  var rows = Array.prototype.slice.call(t.tBodies[0].rows);
  var vals = rows.map(function(r){ var v = r.cells[col].getAttribute('data-v'); return v === '' ? null : parseFloat(v); });
  var firstNull = vals.indexOf(null);
  out.ascending = vals.filter(function(v){ return v !== null; }).every(function(v, i, a){ return i === 0 || a[i-1] <= v; });
  out.untimed_last = firstNull === -1 || vals.slice(firstNull).every(function(v){ return v === null; });
  var box = document.getElementById('op-filter'); box.value = 'mm'; box.dispatchEvent(new Event('input'));
  out.filtered = document.getElementById('op-count').textContent;
  var p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(out); document.body.appendChild(p);
});
</script>"""


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="chromium not installed (apt-get install chromium; .ci/run installs it)")
@pytest.mark.parametrize("width", [500, 1400])
def test_report_fits_narrow_and_wide_windows_and_its_table_sorts_and_filters(tmp_path, timed, width):
    page = tmp_path / "report.html"
    page.write_text(report_html(analyze(timed, calibrated=False)).replace("</body>", _PROBE + "</body>"))
    dom = _run_chromium(tmp_path, f"--window-size={width},1000", "--dump-dom", page.as_uri()).stdout
    import re

    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert probe["overflow"] <= 0, f"the page is {probe['overflow']} px wider than a {width} px window"
    assert probe["ascending"] and probe["untimed_last"], probe
    mm = sum(1 for o in timed.ops if "mm" in o.short_op or "mm" in o.module or "mm" in o.shapes)
    assert probe["filtered"].endswith(f"of {len(timed.ops)} ops shown") and int(probe["filtered"].split()[0]) >= mm


def test_csv_says_what_it_is_and_names_its_units(timed):
    import io

    import pandas as pd

    from rooflight.render.outputs import ops_csv

    text = ops_csv(analyze(timed, calibrated=False))
    head = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert len(head) == 3 and "timed on" in head[1] and "held against H100 SXM (datasheet roofs)" in head[2]
    df = pd.read_csv(io.StringIO(text), comment="#")
    assert {"attained_flops_per_s", "of_roof", "label", "evidence"} <= set(df.columns)
    assert len(df) == len(timed.ops)
    timed_rows = df[df["attained_flops_per_s"] > 0]
    assert not timed_rows.empty and (df["of_roof"].dropna() <= 1.5).all()  # a fraction, not a percentage


def test_a_cpu_report_calls_its_idle_time_idle_between_ops():
    import torch

    import rooflight

    m = torch.nn.Linear(64, 64)
    x = torch.randn(8, 64)
    html = rooflight.profile(lambda: m(x), repeats=1).to_html()
    assert "<th class=n>idle between ops</th>" in html and "<th class=n>GPU idle</th>" not in html


def test_a_cpu_roof_taken_from_another_class_is_not_called_measured():
    """A CPU calibration measures fp32 (and bf16) matmul rates; every other class is held to the
    fp32 figure.  The chart's int32 roof said '(measured)' for a rate nobody measured."""
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from rooflight.render.charts import draw_roofs, roofs_of
    from rooflight.roofline import Ceilings

    fp32 = 187e9
    ceil = Ceilings("AMD EPYC (calibrated)", 47.3e9, {"fp32": fp32, "bf16_tensor": 806e9, "int32": fp32},
                    source="calibrated", measured=frozenset({"memory", "fp32", "bf16_tensor"}), device_kind="cpu")
    a = SimpleNamespace(ceilings=ceil, datasheet=None,
                        profile=SimpleNamespace(flops_by_class=lambda: {"fp32": 1.0, "int32": 1.0}))
    roofs = {r.name: r for r in roofs_of(a)}
    assert roofs["fp32"].calibrated and not roofs["fp32"].basis
    assert not roofs["int32"].calibrated and roofs["int32"].basis == "fp32's measured rate, assumed"
    ax = Figure().subplots()
    ax.set_xscale("log"), ax.set_yscale("log")
    draw_roofs(ax, list(roofs.values()), 1e-3, 1e3)
    texts = [t.get_text() for t in ax.texts]
    assert "fp32 187 GFLOP/s (measured), ridge 4 FLOP/B" in texts
    assert "int32 187 GFLOP/s (fp32's measured rate, assumed), ridge 4 FLOP/B" in texts


def test_the_header_counts_its_runs_in_words(timed):
    """One repeat is one timed run, not 'median of 1 repeats'; the warm-ups counted as they are."""
    t = timed.timing
    many = report_html(analyze(timed, calibrated=False))
    assert f"median of {t.repeats} repeats after {t.warmup} warm-up run" in many and t.repeats > 1
    once = dataclasses.replace(timed, timing=dataclasses.replace(t, repeats=1, warmup=1))
    page = report_html(analyze(once, calibrated=False))
    assert "(one timed run after 1 warm-up run" in page and "median of 1 repeats" not in page
    # the CSV's header says it in the same words (one phrase, units.fmt_runs, for both)
    from rooflight.render.outputs import ops_csv
    assert f"median of {t.repeats} repeats;" in ops_csv(analyze(timed, calibrated=False)).splitlines()[1]
    assert "one timed run;" in ops_csv(analyze(once, calibrated=False)).splitlines()[1]
