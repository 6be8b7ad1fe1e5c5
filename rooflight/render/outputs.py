"""A run's files: the report, the charts, the profile and the CSV of every workload point, the
sweep charts of each swept workload (each drawn once), and the index page across the points.

`run_files` returns {file name: bytes}; it writes nothing (rooflight.api.write puts the files
on disk under rooflight.files' overwrite policy).  What `rooflight profile` writes and what a
notebook's `rooflight.write(...)` writes are the same files, made here.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from typing import Sequence

from ..classify import summary
from .charts import figure_bytes, roofline_of, sweep_of
from ..units import fmt_runs
from .html import img, page, report_html

e = html.escape


def slug(text: str) -> str:
    """A file-name-safe form of a workload name or a parameter point."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("=", "-").replace(",", "_")).strip("._")
    return s[:120] or "run"



def point_name(workload: str, label: str) -> str:
    """The file stem of one workload point: `decode`, `linear_bf16__m-64`."""
    return slug(f"{workload}__{label}" if label else workload)


def ops_csv(a) -> str:
    """One row per op: the profile's columns, then its label, attained FLOP/s, the fraction of its
    roof attained (of_roof, 0-1) and the evidence; '#' lines first say what the file is
    (pandas.read_csv(path, comment="#") skips them)."""
    from .._version import __version__

    p = a.profile
    df = p.df.copy()
    v = a.diagnosis.verdicts
    df["label"] = [str(v[i].label) for i in df.index]
    flops = {o.index: o.total_flops for o in p.ops}
    df["attained_flops_per_s"] = [flops[i] / v[i].seconds if a.timed and v[i].seconds > 0 else math.nan
                                  for i in df.index]
    df["of_roof"] = [v[i].attained for i in df.index]
    df["evidence"] = [v[i].evidence for i in df.index]
    where = (f"timed on {p.timing.device_name}, {fmt_runs(p.timing.repeats)}" if p.timing is not None
             else f"counted only on {p.device_name or p.device}")
    held = a.spec.name if a.spec is not None else a.ceilings.name
    head = [f"# rooflight {p.rooflight_version or __version__}: {p.workload or 'workload'}"
            + (f" [{', '.join(f'{k}={x}' for k, x in p.params.items())}]" if p.params else ""),
            f"# {where}; torch {p.torch_version}; created {p.created}",
            f"# held against {held} ({a.ceilings.source} roofs); units: FLOPs, bytes, seconds, FLOP/s; "
            "of_roof = the largest roofline floor / the time (1 = at the roof)"]
    return "\n".join(x.replace("\n", " ") for x in head) + "\n" + df.to_csv()


def check_section(check: tuple[float, float] | None) -> list[tuple[str, str]]:
    """The report's correctness section for a point checked against its float64 reference."""
    if check is None:
        return []
    err, tol = check
    return [("Correctness", f"<p>relative error {err:.3e} against a float64 reference "
                            f"(tolerance {tol:.0e}): {'pass' if err <= tol else 'FAIL'}</p>")]


def sweep_figures(results: Sequence, analyses: Sequence) -> dict[str, object]:
    """workload -> its sweep chart, for every workload with more than one point (drawn once)."""
    by_workload: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        by_workload.setdefault(r.workload, []).append(i)
    return {w: sweep_of([analyses[i] for i in idx], [results[i].label or "defaults" for i in idx],
                        title=f"{w}: sweep across the roofline")
            for w, idx in by_workload.items() if len(idx) > 1}


def point_names(results: Sequence) -> list[str]:
    """Each result's file stem, unique within the run: a stem that two points would share (names
    differing only in punctuation, non-ASCII names, names cut at 120 characters) gets a short hash
    of the point's full name, never a silent overwrite."""
    out: list[str] = []
    seen: set[str] = set()
    for r in results:
        stem = point_name(r.workload, r.label)
        if stem in seen:
            full = f"{r.workload}[{r.label}]"
            stem = f"{stem[:110]}-{hashlib.sha1(full.encode('utf-8')).hexdigest()[:8]}"
            n = 2
            while stem in seen:
                stem, n = f"{stem}-{n}", n + 1
        seen.add(stem)
        out.append(stem)
    return out


def index_html(results: Sequence, analyses: Sequence, source_name: str, sweeps: dict[str, object]) -> str:
    """The page across a run's points: each point's summary and check, linked to its report, and
    the sweep charts."""
    rows = []
    for r, a, name in zip(results, analyses, point_names(results)):
        check = "" if r.check is None else ("pass" if r.check[0] <= r.check[1] else "FAIL")
        rows.append(f"<tr><td><a href='{e(name)}.html'>{e(r.workload)}</a></td>"
                    f"<td>{e(r.label or 'defaults')}</td><td>{e(summary(a.diagnosis))}</td>"
                    f"<td>{e(check)}</td></tr>")
    charts = "".join(f"<h2>{e(w)}</h2>{img(fig, w + ' sweep')}" for w, fig in sweeps.items())
    body = (f"<h1>rooflight: {e(source_name)}</h1>"
            "<table><thead><tr><th>workload</th><th>point</th><th>summary</th><th>check</th></tr></thead><tbody>"
            f"{''.join(rows)}</tbody></table><div class=charts>{charts}</div>")
    return page(f"rooflight: {source_name}", body)


def run_files(results: Sequence, analyses: Sequence, formats: Sequence[str], source_name: str) -> dict[str, bytes]:
    """Every file of a run, by name.  `results` have .workload, .label, .profile and .check
    (rooflight.runner.Result); `analyses` are theirs, in the same order; `formats` among html,
    json, png, svg, csv."""
    files: dict[str, bytes] = {}

    def add(name: str, data: bytes | str) -> None:
        files[name] = data.encode("utf-8") if isinstance(data, str) else data

    for r, a, name in zip(results, analyses, point_names(results)):
        if "json" in formats:
            add(f"{name}.json", r.profile.to_json())
        if "html" in formats:
            add(f"{name}.html", report_html(a, extra_sections=check_section(r.check)))
        charts = [f for f in ("png", "svg") if f in formats]
        if charts:
            fig = roofline_of(a)
            for f in charts:
                add(f"{name}.{f}", figure_bytes(fig, f))
        if "csv" in formats:
            add(f"{name}.csv", ops_csv(a))
    sweeps = sweep_figures(results, analyses)
    chart_formats = [f for f in ("png", "svg") if f in formats] or (["png"] if "html" in formats else [])
    for w, fig in sweeps.items():
        for f in chart_formats:
            add(f"{slug(w)}__sweep.{f}", figure_bytes(fig, f))
    if "html" in formats and len(results) > 1:
        add("index.html", index_html(results, analyses, source_name, sweeps))
    return files


__all__ = ["point_names", "slug", "check_section", "index_html", "ops_csv", "point_name", "run_files", "sweep_figures"]
