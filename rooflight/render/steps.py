"""A script's steps, rendered: which regions the summary lists, the per-step table (HTML and
terminal), the step-time chart, prefill against decode, and the setup and teardown section.

Plain functions of an Analysis (rooflight.analysis); they return strings, tables and figures and
write nothing.  A profile without steps renders as before: every region, in order.
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.markup import escape as esc
from rich.table import Table

from ..classify import summary
from ..comm import exposed_in, exposure_text
from ..steps import BETWEEN, OUTSIDE, SETUP, TEARDOWN, UNMARKED
from ..steps import summary_regions as _summary_regions
from ..units import fmt_bytes, fmt_seconds
from .charts import LABEL_COLORS, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

e = html.escape


@dataclass(frozen=True)
class StepRow:
    index: int
    name: str
    kind: str
    status: str  # "headline", "warm-up" or "left out"
    tokens: int | None
    kv_len: int | None
    seconds: float  # wall time when timed (GPU busy + idle), else the time at the roofline
    busy_seconds: float  # GPU busy (CPU runs: op time); NaN without timing
    idle_seconds: float
    label: str
    share: float  # of its time under that label
    query_len: int | None = None  # new tokens per sequence (decode: 1; verifying drafts: more)


def summary_regions(a) -> list[str]:
    """The regions the summary lists (rooflight.steps.summary_regions)."""
    return _summary_regions(a.profile, a.diagnosis)


def headline_text(a) -> str:
    """Which steps the headline describes, in words ("" without steps)."""
    steps = a.profile.steps
    if not steps:
        return ""
    chosen = [s for s in steps if s.headline]
    warm = [s for s in steps if s.warmup]
    kinds = {}
    for s in chosen:
        kinds[s.kind] = kinds.get(s.kind, 0) + 1
    what = ", ".join(f"{n} {k}" for k, n in kinds.items())
    text = (f"the headline describes {len(chosen)} of {len(steps)} steps ({what}); "
            f"setup and teardown are reported apart")
    if warm:
        text += (f"; warm-up (first of its kind, left out): step{'s' if len(warm) > 1 else ''} "
                 f"{', '.join(str(s.index) for s in warm)}")
    left = [s for s in steps if not s.headline and not s.warmup]
    if left:
        text += f"; not chosen (--steps): {len(left)}"
    return text


def step_rows(a) -> list[StepRow]:
    d, t = a.diagnosis, a.profile.timing
    rows = []
    for s in a.profile.steps:
        r = d.regions.get(s.name)
        if r is None:
            continue
        rt = t.region(s.name) if t is not None else None
        seconds = rt.wall_seconds if rt is not None else r.total_seconds
        status = "headline" if s.headline else ("warm-up" if s.warmup else "left out")
        label = r.headline
        rows.append(StepRow(s.index, s.name, s.kind, status, s.tokens, s.kv_len, seconds,
                            rt.busy_seconds if rt is not None else math.nan,
                            rt.idle_seconds if rt is not None else math.nan, str(label), r.fraction(label),
                            s.query_len))
    return rows


def phase_summary(a) -> list[str]:
    """Prefill against decode, as measured: time to first token and time per output token."""
    rows = step_rows(a)
    timed = a.profile.timing is not None
    out = []
    # the headline's prefills; a run's only prefill counts even when it is not in the headline
    pre = [r for r in rows if r.kind == "prefill"]
    pre = [r for r in pre if r.status == "headline"] or pre[:1]
    dec = [r for r in rows if r.kind == "decode" and r.status == "headline"]
    word = "measured" if timed else "at the roofline (no timing)"
    if pre:
        tokens = sorted({r.tokens for r in pre if r.tokens})
        tok = "?" if not tokens else str(tokens[0]) if len(tokens) == 1 else f"{tokens[0]}–{tokens[-1]}"
        many = f", median of {len(pre)} prefills" if len(pre) > 1 else ""
        out.append(f"prefill ({tok} token{'' if tok == '1' else 's'}): "
                   f"{fmt_seconds(statistics.median(r.seconds for r in pre))} {word} "
                   f"(time to first token, the model's part{many})")
    if dec:
        med = statistics.median(r.seconds for r in dec)
        kv = [r.kv_len for r in dec if r.kv_len]
        q = sorted({r.query_len for r in dec if r.query_len})
        steps = f"median of {len(dec)} steps" if len(dec) > 1 else "1 step"
        # a step verifying draft tokens yields as many as it accepts, which no shape tells
        per = (f"per step {word} ({steps} of {q[0]}–{q[-1]} new tokens a sequence: speculative decoding's "
               "verification, a step yields the drafts it accepts and one more") if q and q[-1] > 1 else (
            f"per output token {word} ({steps}")
        out.append(f"decode: {fmt_seconds(med)} " + per
                   + (f", KV length {min(kv)}–{max(kv)}" if kv else "")
                   + ")")
    for kind in ("train", "forward", "marked"):
        ks = [r for r in rows if r.kind == kind and r.status == "headline"]
        if ks:
            out.append(f"{kind}: {fmt_seconds(statistics.median(r.seconds for r in ks))} per step {word} "
                       + (f"(median of {len(ks)})" if len(ks) > 1 else "(1 step)"))
    return out


def steps_table_html(a) -> str:
    rows = step_rows(a)
    timed = a.profile.timing is not None
    body = []
    for r in rows:
        cls = "" if r.status == "headline" else " class=dim"
        body.append(
            f"<tr{cls}><td class=n data-v='{r.index}'>{r.index}</td><td>{e(r.kind)}</td><td>{e(r.status)}</td>"
            f"<td class=n>{r.tokens if r.tokens else '–'}</td><td class=n>{r.kv_len if r.kv_len else '–'}</td>"
            f"<td class=n data-v='{r.seconds!r}'>{e(fmt_seconds(r.seconds))}</td>"
            + (f"<td class=n>{e(fmt_seconds(r.busy_seconds))}</td><td class=n>{e(fmt_seconds(r.idle_seconds))}</td>"
               if timed else "")
            + f"<td><span class='lab lab-{e(r.label)}'>{e(r.label)}</span> {r.share:.0%}</td></tr>")
    head = ("<th class=n>step</th><th>kind</th><th>in the headline</th><th class=n>tokens</th>"
            "<th class=n>KV length</th><th class=n>" + ("wall" if timed else "roofline time") + "</th>"
            + (f"<th class=n>{'op time' if a.device_kind == 'cpu' else 'GPU busy'}</th><th class=n>idle</th>"
               if timed else "") + "<th>label</th>")
    return f"<div class=scroll><table class=sortable><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def steps_table(a, limit: int = 12) -> Table:
    """The terminal's step table: the first steps and the last, when there are many."""
    rows = step_rows(a)
    timed = a.profile.timing is not None
    t = Table(show_edge=False, pad_edge=False, box=None)
    busy = "op time" if a.device_kind == "cpu" else "GPU busy"
    for col in ("step", "kind", "headline", "tokens", "KV", "wall" if timed else "roofline time",
                *((busy, "idle") if timed else ()), "label"):
        t.add_column(col, no_wrap=True)
    shown = rows if len(rows) <= limit else rows[: limit // 2] + [None] + rows[-(limit // 2):]
    for r in shown:
        if r is None:
            t.add_row("…", f"{len(rows) - 2 * (limit // 2)} more", "", "", "", "", *(("", "") if timed else ()), "")
            continue
        t.add_row(str(r.index), r.kind, r.status, str(r.tokens or "–"), str(r.kv_len or "–"), fmt_seconds(r.seconds),
                  *((fmt_seconds(r.busy_seconds), fmt_seconds(r.idle_seconds)) if timed else ()),
                  esc(f"{r.label} {r.share:.0%}"))
    return t


def steps_figure(a) -> Figure | None:
    """Step time against the step index (wall, GPU busy, idle), and for decode steps against the KV
    length; None without steps."""
    from matplotlib.ticker import MaxNLocator

    rows = step_rows(a)
    if not rows:
        return None
    timed = a.profile.timing is not None
    dec = [r for r in rows if r.kind == "decode" and r.kv_len]
    fig = new_figure(9.0, 3.8)
    axes = fig.subplots(1, 2 if len(dec) > 1 else 1, squeeze=False)[0]
    ax = axes[0]
    xs = [r.index for r in rows]
    # the wall on top, dashed: where a step's op time is its wall (no idle) the two lines coincide
    ax.plot(xs, [r.seconds * 1e3 for r in rows], "--o", ms=3, color="#222222", zorder=3,
            label="wall" if timed else "roofline time")
    if timed:
        ax.plot(xs, [r.busy_seconds * 1e3 for r in rows], "-o", ms=3, color=LABEL_COLORS["memory-bound"],
                label="GPU busy" if a.device_kind != "cpu" else "op time")
        ax.plot(xs, [r.idle_seconds * 1e3 for r in rows], "-o", ms=3, color=LABEL_COLORS["overhead-bound"],
                label="idle")
    for r in rows:
        if r.status != "headline":
            ax.axvspan(r.index - 0.4, r.index + 0.4, color="#dddddd", zorder=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(xs) + 0.5)
    ax.set_xlabel("step (shaded: warm-up or left out)")
    ax.set_ylabel("ms")
    ax.set_title("time per step", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if len(dec) > 1:
        bx = axes[1]
        bx.plot([r.kv_len for r in dec], [r.seconds * 1e3 for r in dec], "-o", ms=3, color="#222222")
        bx.xaxis.set_major_locator(MaxNLocator(integer=True))
        bx.set_xlabel("KV length (keys attended)")
        bx.set_ylabel("ms per decode step")
        bx.set_title("decode steps against the KV length", fontsize=10)
        bx.grid(True, alpha=0.3)
    return fig


def setup_html(a) -> str:
    """Setup and teardown (and anything outside the steps): time, host<->device bytes, what ran."""
    d, p = a.diagnosis, a.profile
    parts = []
    for name in (SETUP, BETWEEN, TEARDOWN, OUTSIDE, UNMARKED):
        if name not in d.regions:
            continue
        r = d.regions[name]
        ops = p.select(region=name)
        pcie = sum(o.comm_bytes for o in ops if o.link == "pcie")
        t = p.timing.region(name) if p.timing is not None else None
        wall = fmt_seconds(t.wall_seconds) if t is not None else fmt_seconds(r.total_seconds) + " at the roofline"
        top: dict[str, float] = {}
        for o in ops:
            v = d.verdicts[o.index]
            top[o.short_op] = top.get(o.short_op, 0.0) + (v.weight_s if v.weight_s == v.weight_s else 0.0)
        heavy = ", ".join(f"{k} {fmt_seconds(s)}" for k, s in sorted(top.items(), key=lambda kv: -kv[1])[:5] if s > 0)
        parts.append(f"<li><b>{e(name)}</b>: {e(wall)}, {len(ops)} ops"
                     + (f", {e(fmt_bytes(pcie))} over PCIe" if pcie else "")
                     + (f"; heaviest: {e(heavy)}" if heavy else "") + "</li>")
    if not parts:
        return ""
    return ("<p>Never the workload's bottleneck: what the script did around its steps (building the model, "
            "copying it to the GPU, printing).</p><ul>" + "".join(parts) + "</ul>")


def summary_lines(a) -> list[str]:
    """Each summarised region's one-line verdict, and under it, where collectives ran, how much of
    their time was exposed (rooflight.comm)."""
    out = []
    for r in summary_regions(a):
        out.append(summary(a.diagnosis, r))
        e = exposed_in(a.profile, r)
        if e is not None:
            out.append(exposure_text(e, r or "the run"))
    return out


__all__ = ["StepRow", "headline_text", "phase_summary", "setup_html", "step_rows", "steps_figure", "steps_table",
           "steps_table_html", "summary_lines", "summary_regions"]
