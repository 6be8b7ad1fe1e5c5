"""The HTML report: one self-contained file (charts embedded as PNG data), viewable offline.

Every string that comes from the user's code or from the GPU stack (module names, region
names, kernel names such as `at::vectorized_elementwise_kernel<4, ...>`) goes through
`html.escape` before it reaches the page.  The table's sorting and filtering script reads and
writes text only through `textContent` and data attributes, never `innerHTML`.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Iterable, Sequence

from .counters import counters_html, counters_roofline
from .._version import __version__
from ..analysis import training_text
from ..classify import Label
from ..units import fmt_bandwidth, fmt_bytes, fmt_flops, fmt_flops_rate, fmt_runs, fmt_seconds
from .charts import figure_bytes, roofline_of, time_by_label_of
from .steps import (headline_text, phase_summary, setup_html, steps_figure, steps_table_html, summary_lines,
                    summary_regions)

e = html.escape


def _num(x: float) -> str:
    """A sortable numeric attribute value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float) and math.isinf(x):
        return "1e308"
    return repr(float(x))


def img(fig, alt: str) -> str:
    """A figure as an <img> with the PNG embedded (the page stays one self-contained file)."""
    data = base64.b64encode(figure_bytes(fig, "png")).decode("ascii")
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{data}">'


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def _intensity(x: float) -> str:
    if math.isinf(x):
        return "∞"
    return f"{x:.3g}"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555} .notes{background:#fff8e1;border:1px solid #f0d78c;padding:8px 12px;border-radius:6px}
.notes li{margin:2px 0} table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f7;position:sticky;top:0;cursor:pointer;user-select:none;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.lab{display:inline-block;padding:0 6px;border-radius:9px;color:#fff;font-size:11.5px;white-space:nowrap}
.lab-compute-bound{background:#D55E00}.lab-memory-bound{background:#0072B2}
.lab-communication-bound{background:#009E73}.lab-overhead-bound{background:#CC79A7}
.charts img{max-width:100%;border:1px solid #eee;border-radius:6px;margin:6px 0}
.advice li{margin:0 0 10px} .advice .effect{color:#333} .advice .seed,.advice .ev{color:#777;font-size:12px}
.controls{margin:6px 0;display:flex;gap:10px;align-items:center} input,select{font:inherit;padding:3px 6px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;overflow-wrap:anywhere}
.scroll{max-height:720px;overflow:auto;border:1px solid #eee}
tr.dim td{color:#888} .noisy{color:#b25000;font-weight:600}
.wide{overflow-x:auto;max-width:100%} details>summary{cursor:pointer;margin:6px 0;color:#0b57d0}
"""

# narrow windows (a phone, a split screen): the page keeps to the window, wide tables scroll inside
# their own box (kept apart from CSS: scoped_css handles flat rules only)
CSS_NARROW = """
@media (max-width:760px){body{margin:8px auto;padding:0 8px}h1{font-size:18px}.controls{flex-wrap:wrap}
input{width:100%}table{font-size:11.5px}}
"""

_JS = """
(function(){
  function key(td){var v=td.getAttribute('data-v');if(v!==null){return v===''?NaN:parseFloat(v);}return td.textContent.toLowerCase();}
  document.querySelectorAll('table.sortable').forEach(function(t){
    var heads=t.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads,function(th,i){
      th.addEventListener('click',function(){
        var body=t.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var dir=th.getAttribute('data-dir')==='desc'?'asc':'desc';
        Array.prototype.forEach.call(heads,function(h){h.removeAttribute('data-dir');});
        th.setAttribute('data-dir',dir);
        rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
          if(typeof x==='number'&&typeof y==='number'){if(isNaN(x))return 1;if(isNaN(y))return -1;return dir==='asc'?x-y:y-x;}
          x=String(x);y=String(y);return dir==='asc'?x.localeCompare(y):y.localeCompare(x);});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  var box=document.getElementById('op-filter'),sel=document.getElementById('label-filter'),
      count=document.getElementById('op-count'),table=document.getElementById('ops');
  function apply(){
    if(!table)return;var q=(box&&box.value||'').toLowerCase(),lab=sel&&sel.value||'',shown=0;
    Array.prototype.forEach.call(table.tBodies[0].rows,function(r){
      var ok=(!q||r.textContent.toLowerCase().indexOf(q)>=0)&&(!lab||r.getAttribute('data-label')===lab);
      r.style.display=ok?'':'none';if(ok)shown++;});
    if(count)count.textContent=shown+' of '+table.tBodies[0].rows.length+' ops shown';
  }
  if(box)box.addEventListener('input',apply);if(sel)sel.addEventListener('change',apply);apply();
})();
"""


def _label(text: str) -> str:
    return f'<span class="lab lab-{e(text)}">{e(text)}</span>'


def _ceilings_rows(a) -> str:
    rows = []
    c, sheet = a.ceilings, a.datasheet
    classes = list(a.profile.flops_by_class())
    rows.append(("memory bandwidth", fmt_bandwidth(sheet.memory_bytes_per_s) if sheet else "–",
                 fmt_bandwidth(c.memory_bytes_per_s) if "memory" in c.measured else "–",
                 _pct(c.memory_bytes_per_s / sheet.memory_bytes_per_s) if sheet and "memory" in c.measured else ""))
    seen = set()
    for cls in classes:
        try:
            r = c.resolve(cls)
        except (KeyError, ValueError):
            continue
        if r in seen:
            continue
        seen.add(r)
        ds = sheet.flops_per_s.get(r) if sheet else None
        meas = c.flops_per_s.get(r) if r.value in c.measured else None
        rows.append((f"{r.value} peak", fmt_flops_rate(ds) if ds else "–", fmt_flops_rate(meas) if meas else "–",
                     _pct(meas / ds) if ds and meas else ""))
    if c.launch_overhead_s:
        rows.append(("launch overhead (eager)", "–", fmt_seconds(c.launch_overhead_s), ""))
    out = "".join(f"<tr><td>{e(k)}</td><td class=n>{e(d)}</td><td class=n>{e(m)}</td><td class=n>{e(r)}</td></tr>"
                  for k, d, m, r in rows)
    return ("<table><thead><tr><th>roof</th><th class=n>datasheet</th><th class=n>calibrated</th>"
            f"<th class=n>ratio</th></tr></thead><tbody>{out}</tbody></table>")


def _steps_sections(a) -> list[str]:
    """The steps of a script: their table and chart, prefill against decode, setup and teardown."""
    if not a.profile.steps:
        return []
    fig = steps_figure(a)
    phases = "".join(f"<li>{e(x)}</li>" for x in phase_summary(a))
    out = ["<h2>Steps</h2>", f"<ul>{phases}</ul>" if phases else "",
           f"<div class=charts>{img(fig, 'time per step')}</div>" if fig is not None else "", steps_table_html(a)]
    setup = setup_html(a)
    if setup:
        out += ["<h2>Setup and teardown</h2>", setup]
    return out


def _label_table(a) -> str:
    d = a.diagnosis
    head = "".join(f"<th class=n>{e(str(lab))}</th>" for lab in Label)
    rows = []
    for name in summary_regions(a):
        r = d.regions[name]
        total = r.total_seconds
        cells = "".join(f"<td class=n data-v='{_num(r.seconds_by_label[lab])}'>"
                        f"{e(fmt_seconds(r.seconds_by_label[lab]))} ({_pct(r.fraction(lab))})</td>" for lab in Label)
        wall = r.wall_seconds
        rows.append(f"<tr><td>{e(name or 'whole run')}</td><td class=n data-v='{_num(total)}'>{e(fmt_seconds(total))}</td>"
                    f"<td class=n>{e(fmt_seconds(wall)) if not math.isnan(wall) else '–'}</td>"
                    f"<td class=n>{e(fmt_seconds(r.idle_seconds)) if r.idle_seconds else '–'}</td>{cells}"
                    f"<td>{_label(str(r.headline)) if total > 0 else ''}</td></tr>")
    idle = "idle between ops" if d.device_kind == "cpu" else "GPU idle"  # as the summary lines say it
    return ("<table class=sortable><thead><tr><th>region</th><th class=n>time</th><th class=n>wall</th>"
            f"<th class=n>{idle}</th>{head}<th>headline</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _advice(a) -> str:
    if not a.advice:
        return "<p>No advice: nothing stands out.</p>"
    items = []
    for tip in a.advice:
        where = f" — {e(tip.region)}" if getattr(tip, "region", "") else ""
        items.append(f"<li><b>{e(tip.recommendation)}</b>{where} {_label(str(tip.label)) if tip.label else ''}"
                     f"<div class=effect>{e(tip.effect)}</div><div class=ev>evidence: {e(tip.evidence)}</div>"
                     f"<div class=seed>from: {e(tip.seed)}</div></li>")
    return f"<ol class=advice>{''.join(items)}</ol>"


def _groups_table(a, limit: int = 40) -> str:
    rows = []
    for g in a.groups[:limit]:
        att = g.flops_per_s
        rows.append(
            f"<tr data-label='{e(g.label)}'><td class=mono>{e(g.name)}</td><td class=n data-v='{g.count}'>{g.count}</td>"
            f"<td class=n data-v='{_num(g.flops)}'>{e(fmt_flops(g.flops))}</td>"
            f"<td class=n data-v='{_num(g.bytes)}'>{e(fmt_bytes(g.bytes))}</td>"
            f"<td class=n data-v='{_num(g.intensity)}'>{e(_intensity(g.intensity))}</td>"
            f"<td class=n data-v='{_num(g.seconds)}'>{e(fmt_seconds(g.seconds))}</td>"
            f"<td class=n data-v='{_num(att)}'>{e(fmt_flops_rate(att)) if a.timed and att == att else '–'}</td>"
            f"<td>{_label(g.label)}</td></tr>")
    return ("<table class=sortable><thead><tr><th>op group</th><th class=n>ops</th><th class=n>FLOPs</th>"
            "<th class=n>bytes</th><th class=n>FLOP/B</th><th class=n>" + ("time" if a.timed else "roofline time")
            + "</th><th class=n>attained FLOP/s</th><th>label</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


# Above this many ops the op table starts folded (the op groups say what they hold).
COLLAPSE_OPS = 300

# A report lists at most this many ops one by one (a 1B model's generate() runs ~40,000): the
# heaviest by time (or roofline time), in run order; the profile's JSON and CSV keep every op.
MAX_OP_ROWS = 5000


def _noisy_title(t) -> str:
    if t is None or not t.noisy:
        return ""
    return (f" title='noisy: repeats spread {fmt_seconds(t.seconds_min)} to {fmt_seconds(t.seconds_max)} "
            f"around {fmt_seconds(t.seconds)}'")


def _ops_table(a) -> str:
    p = a.profile
    timing = p.timing
    rows = []
    shown = p.ops
    if len(p.ops) > MAX_OP_ROWS:
        weight = {i: (v.weight_s if v.weight_s == v.weight_s else 0.0) for i, v in a.diagnosis.verdicts.items()}
        keep = set(sorted(weight, key=lambda i: -weight[i])[:MAX_OP_ROWS])
        shown = [o for o in p.ops if o.index in keep]
    for o in shown:
        v = a.diagnosis.verdicts.get(o.index)
        t = timing.op(o.index) if timing is not None else None
        secs = t.seconds if t else math.nan
        att = v.attained if v is not None else math.nan
        label = str(v.label) if v is not None else ""
        ev = v.evidence if v is not None else ""
        rows.append(
            f"<tr data-label='{e(label)}'><td class=n data-v='{o.index}'>{o.index}</td><td class=mono>{e(o.module)}</td>"
            f"<td>{e(o.region)}</td><td class=mono title='{e(o.op)}'>{e(o.short_op)}</td>"
            f"<td class=mono>{e(o.shapes)}</td><td>{e(o.dtype)}</td>"
            f"<td class=n data-v='{_num(o.total_flops)}'>{e(fmt_flops(o.total_flops))}</td>"
            f"<td class=n data-v='{_num(o.bytes)}'>{e(fmt_bytes(o.bytes))}</td>"
            f"<td class=n data-v='{_num(o.intensity)}'>{e(_intensity(o.intensity))}</td>"
            f"<td class=n data-v='{_num(secs)}'{_noisy_title(t)}>{e(fmt_seconds(secs)) if t else '–'}"
            f"{' <span class=noisy>±</span>' if t is not None and t.noisy else ''}</td>"
            f"<td class=n data-v='{_num(att)}'>{_pct(att)}</td>"
            f"<td title='{e(ev)}'>{_label(label) if label else ''}</td>"
            f"<td>{e(o.note) if o.counted else '<b>uncounted</b> ' + e(o.note)}</td></tr>")
    opts = "".join(f"<option value='{e(str(lab))}'>{e(str(lab))}</option>" for lab in Label)
    cut = (f"<p class=meta>{len(shown)} of {len(p.ops)} ops shown: the heaviest, in run order; the profile's JSON "
           "and CSV hold every op.</p>") if len(shown) < len(p.ops) else ""
    return (cut + "<div class=controls><input id=op-filter placeholder='filter ops (module, op, region, shape…)' size=40>"
            f"<select id=label-filter><option value=''>all labels</option>{opts}</select><span id=op-count></span></div>"
            "<div class=scroll><table id=ops class=sortable><thead><tr><th class=n>#</th><th>module</th><th>region</th>"
            "<th>op</th><th>shapes</th><th>dtype</th><th class=n>FLOPs</th><th class=n>bytes</th><th class=n>FLOP/B</th>"
            "<th class=n>time</th><th class=n>of roof</th><th>label</th><th>note</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")


def _kernels_table(a, limit: int = 300) -> str:
    t = a.profile.timing
    if t is None or not t.kernels:
        return ""
    ks = sorted(t.kernels, key=lambda k: -k.seconds)[:limit]
    rows = "".join(
        f"<tr><td class=mono>{e(k.name)}</td><td class=n data-v='{k.op_index}'>{k.op_index}</td><td>{e(k.kind)}</td>"
        f"<td class=mono>{e(str(list(k.grid)))}</td><td class=mono>{e(str(list(k.block)))}</td>"
        f"<td class=n data-v='{_num(k.seconds)}'>{e(fmt_seconds(k.seconds))}</td>"
        f"<td class=n>{e(fmt_seconds(k.seconds_min))} – {e(fmt_seconds(k.seconds_max))}</td></tr>" for k in ks)
    return ("<h2>Kernels</h2><div class=scroll><table class=sortable><thead><tr><th>kernel</th><th class=n>op</th>"
            "<th>kind</th><th>grid</th><th>block</th><th class=n>median</th><th class=n>min – max</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def _notes(notes: Iterable[str]) -> str:
    items = "".join(f"<li>{e(n)}</li>" for n in notes)
    return f"<ul class=notes>{items}</ul>" if items else ""


def report_html(a, *, extra_sections: Sequence[tuple[str, str]] = ()) -> str:
    """The whole report for one Analysis, as a string.  `extra_sections`: (title, trusted HTML)."""
    p = a.profile
    t = p.timing
    if t is not None and t.device_kind == "cpu":
        mode = "timed on the CPU — CPU results: wall time per op on the host, not GPU kernel time"
    elif t is not None:
        runs = fmt_runs(t.repeats)
        warm = f"{t.warmup} warm-up run{'' if t.warmup == 1 else 's'}"
        mode = f"timed on {t.device_name} ({runs} after {warm}" + (
            ", L2 flushed" if t.flush_l2 else "") + (", CUDA graph" if t.cuda_graph else "") + ")"
    else:
        mode = f"counted only on {p.device_name or p.device}: no timing, labels predicted from the roofline"
    params = ", ".join(f"{k}={v}" for k, v in p.params.items())
    lines = summary_lines(a) + ([training_text(a.training)] if a.training is not None else [])
    sentences = "".join(f"<li>{e(line)}</li>" for line in lines)
    hw = a.spec.name if a.spec is not None else a.ceilings.name
    head = (f"<h1>rooflight report: {e(p.workload or 'workload')}</h1>"
            f"<div class=meta>{e(mode)}<br>held against: <b>{e(hw)}</b> ({e(a.ceilings.source)} roofs)"
            f"{'<br>parameters: ' + e(params) if params else ''}<br>{len(p.ops)} ops, "
            f"{e(fmt_flops(p.total_flops))}, {e(fmt_bytes(p.total_bytes))} of device-memory traffic, "
            f"intensity {e(_intensity(p.intensity))} FLOP/B"
            f"{' (a lower bound: ' + str(sum(p.uncounted().values())) + ' ops uncounted)' if p.uncounted() else ''}"
            f" · torch {e(p.torch_version)} · "
            f"rooflight {e(p.rooflight_version or __version__)} · {e(p.created)}</div>")
    scope = headline_text(a)
    body = [
        head, _notes(a.notes),
        "<h2>Summary</h2>", f"<p class=meta>{e(scope)}</p>" if scope else "", f"<ul>{sentences}</ul>", _label_table(a),
        "<h2>Hardware</h2>", _ceilings_rows(a),
        "<h2>Roofline</h2>", f"<div class=charts>{img(roofline_of(a), 'roofline chart')}"
                             f"{img(time_by_label_of(a), 'time by label and region')}</div>",
        *_steps_sections(a),
        "<h2>Advice for the heaviest ops</h2>", _advice(a),
        "<h2>Op groups (the same op at the same place of every layer)</h2>", _groups_table(a),
    ]
    if p.counters is not None:
        fig = counters_roofline(a)
        chart = img(fig, "counted and measured intensity") if fig is not None else ""
        body += ["<h2>Hardware counters: counted beside measured</h2>", counters_html(a, chart)]
    for title, section in extra_sections:
        body += [f"<h2>{e(title)}</h2>", section]
    ops = _ops_table(a) + _kernels_table(a)
    if len(p.ops) > COLLAPSE_OPS:  # the op groups above summarize them; the full table one click away
        ops = f"<details><summary>show all {len(p.ops)} ops</summary>{ops}</details>"
    body += ["<h2>Ops</h2>", ops]
    return page(f"rooflight: {p.workload}", "".join(body), script=True)


def page(title: str, body: str, *, script: bool = False) -> str:
    """A whole self-contained page: the report's style, `body` (trusted HTML) and, with script=True,
    the sortable/filterable tables' script."""
    js = f"<script>{_JS}</script>" if script else ""
    body = body.replace("<table", "<div class=wide><table").replace("</table>", "</table></div>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{e(title)}</title>"
            f"<style>{CSS}{CSS_NARROW}</style></head><body>{body}{js}</body></html>")


def scoped_css(css: str, scope: str = ".rooflight") -> str:
    """The report's style with every selector inside `scope` (`body` becomes the scope itself), so
    a notebook cell's output restyles nothing outside it (a pandas table beside it keeps its look)."""
    out = []
    for rule in css.replace("\n", "").split("}"):
        if "{" not in rule:
            continue
        sels, body = rule.split("{", 1)
        scoped = []
        for sel in sels.split(","):
            sel = sel.strip()
            scoped.append(scope if sel == "body" else f"{scope} {sel}")
        out.append(f"{','.join(scoped)}{{{body}}}")
    return "".join(out)


def summary_html(a, *, chart: bool = True) -> str:
    """A compact summary for notebooks: the sentences, the label table and the roofline."""
    sentences = "".join(f"<li>{e(line)}</li>" for line in summary_lines(a))
    chart_img = img(roofline_of(a), "roofline chart") if chart else ""
    notes = _notes(a.notes)
    return (f"<div class=rooflight><style>{scoped_css(CSS)}</style>"
            f"<b>rooflight: {e(a.profile.workload or 'workload')}</b> on {e(a.spec.name if a.spec else a.ceilings.name)}"
            f"{notes}<ul>{sentences}</ul>{_label_table(a)}<div class=charts>{chart_img}</div></div>")
