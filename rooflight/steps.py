"""Steps: a script's run cut into setup, steps and teardown, so that the headline describes the work.

A script builds a model (setup: weight initialisation, host-to-device copies), then runs it a few
times (the steps), then prints or saves (teardown).  The capture records where each outermost
`nn.Module` call (one not made from inside another module's forward) starts and ends, the
`torch.cuda.profiler.start()/stop()` marks (the capture range nsys and ncu users already put in
scripts), and which ops ran under autograd's backward or an optimizer's step.  `segment` turns
that into steps, by these rules, in order:

1. explicit marks win: ops outside the profiler's start/stop ranges are setup (before the first
   range), teardown (after the last) or "outside the capture range"; user regions
   (`rooflight.region`, NVTX ranges) inside the scope are the steps themselves (kind "marked",
   each outermost region one step, its ops keep their regions);
2. otherwise the steps are the calls of the step module, the module called most often at the
   outermost level (the first of them on a tie): a Hugging Face `generate()` calls the model once
   per token, a training loop once per iteration.  Everything between two calls joins the step it
   follows (the loss, `backward()`, the optimizer's step, a decode loop's sampling), so a
   training iteration is one step; the step module's own parts called just before its first call
   (an encoder-decoder's encoder, which `generate()` runs first) begin the first step, named as in
   the step module (`model.encoder...`); after the last call, its backward and optimizer ops and as many
   ops as the longest gap between earlier calls join it, the rest is teardown.  With gradient
   accumulation the calls that run backward but step no optimizer join the next call that does:
   one step per optimizer step (Step.calls model calls).  A step that turns
   out forward-only (rule 3) is its model call alone: the loop's ops between calls (printing a
   result, `.item()`, building the next input) are the region "between steps";
3. a step is "train" when it runs backward or optimizer ops; else, by its attention (or its
   embedding lookup; a query with its heads packed into its length, Hugging Face's pack_gqa, by
   its token ids), "decode" when its query length is 1, "prefill" when longer and later steps
   decode, "forward" otherwise; "marked" for marked steps and capture ranges with no module call;
4. the first step of each kind is warm-up (compile, autotune, library initialisation) when a later
   step of the same kind exists; a step alone of its kind stays in.  `select` (e.g. "2:") chooses
   the headline's steps instead.

Ops of auto steps, setup and teardown get a region prefix (`step 3`, `setup`, `teardown`), so
every region table, timing row and chart downstream sees them as regions.  Pure: no torch.
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from .errors import UsageError
from .profile_data import DECODE_MAX_QUERY_ROWS, TRAINING_PHASES, OpRecord, Step, region_and_ancestors

SETUP = "setup"
TEARDOWN = "teardown"
OUTSIDE = "outside the capture range"
UNMARKED = "unmarked"
BETWEEN = "between steps"  # a forward-only loop's own code between two model calls (printing, .item())
STEADY = "steady state"  # the headline region of a run with steps (rooflight.analysis)

_ATTENTION = ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention", "flex_attention")


@dataclass(frozen=True)
class TopCall:
    """One outermost module call, as the capture saw it: ops [start, end)."""

    module_id: int
    module_type: str
    start: int
    end: int
    # another module called outermost in the run that holds this one (id), and this one's path in
    # it: Hugging Face's generate() runs an encoder-decoder's encoder (model.encoder) before the
    # first call of the model itself
    within: int | None = None
    path: str = ""
    # called with autograd on and the module in training mode: a forward whose backward may come
    # after a later call (DPO's chosen and rejected passes, then one loss's backward)
    grad: bool = False


@dataclass(frozen=True)
class Segmentation:
    ops: tuple[OpRecord, ...]
    regions: tuple[str, ...]
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


def summary_regions(profile, diagnosis) -> list[str]:
    """The regions a summary lists: without steps, every region in order; with steps, the headline
    (and one per kind of step in it), the whole run, setup and teardown, the user's own regions;
    never every step one by one (they have their own table)."""
    if not profile.steps:
        return list(diagnosis.regions)
    names = {s.name for s in profile.steps}
    apart = (SETUP, BETWEEN, TEARDOWN, OUTSIDE, UNMARKED)
    out = [r for r in diagnosis.regions if r == STEADY or r.startswith(STEADY + ": ")] + [""]
    out += [r for r in apart if r in diagnosis.regions]
    out += [r for r in diagnosis.regions if r not in out and r not in names
            and not any(r.startswith(n + "/") for n in names) and not r.startswith(tuple(p + "/" for p in apart))]
    return out


def parse_select(text: str) -> tuple[int, int | None]:
    """"3" -> steps 3..3; "2:" -> 2 onward; "2:5" -> 2..5; ":4" -> 1..4 (1-based, inclusive)."""
    t = str(text).strip()
    m = re.fullmatch(r"(\d*)(:?)(\d*)", t)
    if not t or not m or (not m.group(2) and not m.group(1)):
        raise UsageError(f"--steps {text!r}: give a step or a range, e.g. 3, 2: or 2:5 (1-based, inclusive)")
    lo = int(m.group(1)) if m.group(1) else 1
    hi = (int(m.group(3)) if m.group(3) else None) if m.group(2) else lo
    if lo < 1 or (hi is not None and hi < lo):
        raise UsageError(f"--steps {text!r}: steps count from 1 and a range runs upward, e.g. 2:5")
    return lo, hi


_REGION = operator.attrgetter("region")
_PHASE = operator.attrgetter("phase")


def _in_regions(ops: Sequence[OpRecord], regions: Sequence[str | None]) -> tuple[OpRecord, ...]:
    """Each op moved to its region (None: left where it is), as copies."""
    return tuple(o if r is None else o.in_region(r) for o, r in zip(ops, regions))


def _prefixed(prefix: str, region: str) -> str:
    return f"{prefix}/{region}" if region else prefix


def _token_ids(ops: Sequence[OpRecord]):
    """The token ids of the first embedding lookup among `ops` ([..., S]), or None."""
    return next((o.inputs[1] for o in ops if o.short_op in ("embedding", "embedding_bag")
                 and len(o.inputs) >= 2 and o.inputs[1].ndim >= 1), None)


_CROSS_ATTENTION = ("encoder_attn", "encdecattention", "crossattention", "cross_attn")


def _self_attention(o: OpRecord) -> bool:
    """Not an encoder-decoder's cross-attention (over the encoder's output, not the context)."""
    return not any(c in o.module.lower() for c in _CROSS_ATTENTION)


def _kv_len(o: OpRecord) -> int:
    k = o.inputs[1]
    return k.shape[1] if "_flash_attention_forward" in o.op and k.ndim == 4 else k.shape[-2]  # flash: [B, S, H, D]


def _shape_facts(ops: Sequence[OpRecord]) -> tuple[int | None, int | None, int | None]:
    """(batch, query length, KV length) of a step: batch and query length from its first attention
    op, the KV length the longest any of its self-attentions reads (the context: a model mixing
    sliding-window and global layers reads its window in the first); else its first embedding
    lookup (no KV length then).  A decode step's attention with its query heads packed into the
    query's length (Hugging Face's pack_gqa: [B, H, 1, D] run as [B, H_kv, H / H_kv, D], as many
    query heads as KV heads) has the query length of its token ids.  Cross-attention (an
    encoder-decoder's, over the encoder's output) is not the context."""
    attn = [o for o in ops if any(a in o.op for a in _ATTENTION) and len(o.inputs) >= 2 and o.inputs[0].ndim >= 3]
    # a materialized attention: the softmax over [B, H, Sq, Sk] scores
    softmaxes = [o for o in ops if o.short_op in ("softmax", "_softmax", "_safe_softmax")
                 and o.inputs and o.inputs[0].ndim >= 4]
    scores = softmaxes[0].inputs[0] if softmaxes else None
    if attn:
        o = attn[0]
        q, k = o.inputs[0], o.inputs[1]
        flash = "_flash_attention_forward" in o.op and q.ndim == 4  # [B, S, H, D]
        b, raw = (q.shape[0], q.shape[1]) if flash else (math.prod(q.shape[:-3]) if q.ndim >= 4 else 1, q.shape[-2])
        sq = raw
        # the token ids of the call that runs this attention: the last lookup before it (an assistant
        # model's call, before the verifying model's in a step of assisted generation, has its own)
        at = next(i for i, x in enumerate(ops) if x is o)
        ids = _token_ids(ops[at::-1]) or _token_ids(ops)
        if (not flash and ids is not None and ids.ndim >= 2 and ids.shape[-1] == 1 < sq and q.ndim >= 4
                and k.ndim >= 4 and q.shape[-3] == k.shape[-3] and math.prod(ids.shape[:-1]) == b):
            sq = 1  # packed GQA: one token per sequence, its query heads in the length dimension
        # the fused attentions' keys, and the materialized ones' scores of this query length
        kv = max([_kv_len(a) for a in attn if _self_attention(a)]
                 + [m.inputs[0].shape[-1] for m in softmaxes
                    if _self_attention(m) and m.inputs[0].shape[-2] in (raw, sq)]
                 or [_kv_len(o)])
        return b, sq, kv
    ids = _token_ids(ops)
    if ids is not None:
        kv = scores.shape[-1] if scores is not None and scores.shape[-2] == ids.shape[-1] else None
        return math.prod(ids.shape[:-1]) if ids.ndim >= 2 else 1, ids.shape[-1], kv
    if scores is not None:
        return math.prod(scores.shape[:-3]), scores.shape[-2], scores.shape[-1]
    return None, None, None


def _iterations(groups: Sequence[Sequence[OpRecord]], grads: Sequence[bool] = ()) -> list[tuple[int, int]]:
    """Consecutive model calls joined into training iterations, as [first, last] call indices: a
    run of calls that run backward but no optimizer step (gradient accumulation), or that ran with
    autograd on in training mode and run no backward yet (`grads`: several forwards into one loss,
    as DPO's), belongs to the next call that steps the optimizer; a run of them left at the end is
    an iteration of its own when it ran a backward.  A loop whose optimizer steps at every call, or
    never, keeps one call a step; a forward-only call (an evaluation between iterations) stays a
    step of its own."""
    phases = [set(map(_PHASE, g)) for g in groups]
    grads = list(grads) or [False] * len(groups)
    if not any("optimizer" in p for p in phases) or all(
            "optimizer" in p or ("backward" not in p and not g) for p, g in zip(phases, grads)):
        return [(k, k) for k in range(len(groups))]
    out: list[tuple[int, int]] = []
    start = None

    def close(end: int) -> None:
        # pending calls with no optimizer step after them: one iteration if a backward ran in them
        if any("backward" in phases[i] for i in range(start, end + 1)):
            out.append((start, end))
        else:
            out.extend((i, i) for i in range(start, end + 1))

    for k, p in enumerate(phases):
        if "optimizer" in p:
            out.append((k if start is None else start, k))
            start = None
        elif "backward" in p or grads[k]:
            start = k if start is None else start
        else:
            if start is not None:
                close(k - 1)
                start = None
            out.append((k, k))
    if start is not None:
        close(len(groups) - 1)
    return out


def _reach(ops: Sequence[OpRecord]) -> list[int]:
    """Per op, the position of the last op that reads what it made, through any chain of ops in
    between (OpRecord.sources); -1 where nothing does.  One pass from the end: an op's readers all
    come after it."""
    reach = [-1] * len(ops)
    for i in range(len(ops) - 1, -1, -1):
        r = reach[i] if reach[i] > i else i
        for s in ops[i].sources:
            if 0 <= s < i and reach[s] < r:
                reach[s] = r
    return reach


def _summed_batch(micro: Sequence[Sequence[OpRecord]]) -> int | None:
    """The sequences of a training iteration's micro-batches together, when each has a batch and
    all share a query length; else the first micro-batch's."""
    facts = [_shape_facts(g) for g in micro]
    bs, qs = [f[0] for f in facts], {f[1] for f in facts}
    return sum(bs) if None not in bs and len(qs) == 1 else facts[0][0]


def _kinds(groups: Sequence[Sequence[OpRecord]]) -> list[tuple[str, int | None, int | None, int | None]]:
    facts = []
    for ops in groups:
        train = any(map(TRAINING_PHASES.__contains__, map(_PHASE, ops)))
        facts.append((train, *_shape_facts(ops)))
    out = []
    for i, (train, b, q, kv) in enumerate(facts):
        if train:
            kind = "train"
        elif q == 1 or _verifies(q, kv, out[-1] if out else None):
            kind = "decode"
        elif q is not None and any(f[2] == 1 and not f[0] for f in facts[i + 1:]):
            kind = "prefill"
        else:
            kind = "forward"
        out.append((kind, b, q, kv))
    return out


def _verifies(q: int | None, kv: int | None, before: tuple[str, int | None, int | None, int | None] | None) -> bool:
    """A step of a few new tokens that goes on with the cache of the step before it: speculative
    decoding's verification of its draft tokens (prompt lookup, an assistant model's drafts), a
    decode step of several tokens.  Going on: the cache it finds (its keys less its own tokens)
    holds at least what the step before found and at most that step's keys (a rejected draft is
    cropped off), or, a static cache, every slot read at each step as before.  (A new generation's
    prompt of at most 8 tokens on a static cache reads as one too.)"""
    if q is None or kv is None or not 1 < q <= DECODE_MAX_QUERY_ROWS or before is None:
        return False
    kind, _, q0, kv0 = before
    if kind not in ("prefill", "decode") or q0 is None or kv0 is None:
        return False
    if kv == kv0 > q:
        return True
    return kv > q and kv0 - q0 <= kv - q <= kv0


def _warmups(kinds: Sequence[str]) -> list[bool]:
    seen: dict[str, int] = {}
    total = Counter(kinds)
    out = []
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
        out.append(seen[k] == 1 and total[k] > 1)
    return out


def _in_ranges(n: int, ranges: Sequence[tuple[int, int | None]]) -> list[bool]:
    inside = [not ranges] * n
    for a, b in ranges:
        for i in range(max(a, 0), min(n if b is None else b, n)):
            inside[i] = True
    return inside


def segment(ops: Sequence[OpRecord], regions: Sequence[str], calls: Sequence[TopCall],
            ranges: Sequence[tuple[int, int | None]] = (), *, select: tuple[int, int | None] | None = None,
            relabel: Callable[[Sequence[OpRecord], Sequence[str | None]], tuple[OpRecord, ...]] | None = None,
            ) -> Segmentation:
    """Cut a script's ops into setup, steps and teardown (rules in the module doc).  relabel(ops,
    regions): each op moved to its segment's region (None: left where it is; default: copies,
    OpRecord.in_region; the capture, whose records are fresh, moves them in place)."""
    n = len(ops)
    if n == 0:
        return Segmentation(tuple(ops), tuple(regions), (), ("no op ran: nothing to segment",))
    # this runs once per profile over every op of a run (tens of thousands): C-level passes where it can
    inside = _in_ranges(n, ranges)
    if True not in inside:
        return Segmentation(tuple(ops), tuple(regions), (), (
            "the script's torch.cuda.profiler.start()/stop() range holds no op: the whole run is shown",))
    first_in, last_in = inside.index(True), n - 1 - inside[::-1].index(True)
    label: list[str | None] = [None] * n  # the segment prefix of each op (None: a marked step's own region)
    steps: list[Step] = []
    notes: list[str] = []

    old_regions = list(map(_REGION, ops))
    marked = [r for r in dict.fromkeys(old_regions if not ranges else
                                       (r for r, i in zip(old_regions, inside) if i)) if r]
    outer = [r for r in marked if not any(r != o and r.startswith(o + "/") for o in marked)]
    if outer:
        # explicit user regions are the steps; unmarked ops in scope are set apart
        seen_first = min(i for i in range(n) if inside[i] and ops[i].region)
        seen_last = max(i for i in range(n) if inside[i] and ops[i].region)
        for i in range(n):
            if inside[i] and ops[i].region:
                continue
            label[i] = SETUP if i < seen_first else TEARDOWN if i > seen_last else (
                UNMARKED if inside[i] else OUTSIDE)
        for k, r in enumerate(outer, 1):
            members = [o for o in ops if o.region == r or o.region.startswith(r + "/")]
            b, q, kv = _shape_facts(members)
            steps.append(Step(k, r, "marked", False, True, "", b, q, kv, members[0].index, members[-1].index))
        notes.append(f"steps are the script's own marks ({', '.join(outer[:4])}{' ...' if len(outer) > 4 else ''})")
    else:
        cand = [c for c in calls if c.end > c.start and inside[c.start] and inside[c.end - 1]]
        if cand:
            # the model being trained, if one is (called with autograd on in training mode: not a
            # frozen reference or teacher called as often), else any; the most called of them
            pool = [c for c in cand if c.grad] or cand
            counts = Counter(c.module_id for c in pool)
            top = max(counts.values())
            module_id = next(c.module_id for c in pool if counts[c.module_id] == top)
            chosen = [c for c in cand if c.module_id == module_id]
            chosen_starts = {c.start for c in chosen}
            frozen = [c for c in cand if not c.grad]
            if frozen and any(c.grad for c in cand) and "backward" in set(map(_PHASE, ops)):
                # a script that trains one model and calls another (or the same) with autograd off
                # or in eval mode: those calls' ops are phase "no-grad" (model FLOPs count them once)
                ops = list(ops)
                for c in frozen:
                    ops[c.start:c.end] = [o._with(phase="no-grad") if o.phase == "forward" else o
                                          for o in ops[c.start:c.end]]
            # the step module's own parts called just before its first call (an encoder-decoder's
            # encoder, run by generate()) are the first step's work, not the setup
            before = [c for c in cand if c.end <= chosen[0].start]
            owned: list[TopCall] = []
            for c in reversed(before):
                if c.within != module_id:
                    break
                owned.insert(0, c)
            first = owned[0].start if owned else chosen[0].start
            if owned:  # named as in the step module (model.encoder.layers.0 ...), as its other calls name them
                ops = list(ops)
                for c in owned:
                    ops[c.start:c.end] = [o.in_module(c.path) for o in ops[c.start:c.end]]
            # another model's calls just before a call of the step module join its step when what
            # they made is read from that call on (a DPO reference's log-probs, a teacher's logits,
            # an assistant's draft tokens); else, like the loop's other ops, the step they follow
            side = [c for c in cand if c.module_id != module_id and c not in owned]
            reach = _reach(ops) if side else []

            def begins(call_start: int, lo: int) -> int:
                start = call_start
                for c in reversed([c for c in side if lo <= c.start and c.end <= call_start]):
                    if max(reach[c.start:c.end]) < call_start:
                        break
                    start = c.start
                return start

            starts = [begins(first, 0)] + [begins(b.start, a.end) for a, b in zip(chosen, chosen[1:])]
            first = starts[0]
            # each outermost-called module's place in first-call order, and each call's number of its
            # module's calls: what a run without the capture can find again (rooflight.timing)
            place = {m: k for k, m in enumerate(dict.fromkeys(c.module_id for c in calls))}
            nth: dict[int, int] = {}
            call_at: dict[int, tuple[int, int]] = {}
            for c in calls:
                call_at[c.start] = (place[c.module_id], nth.get(c.module_id, 0))
                nth[c.module_id] = nth.get(c.module_id, 0) + 1
            gaps = [b.start - a.end for a, b in zip(chosen, chosen[1:])]
            last = chosen[-1]
            tail = list(range(last.end, last_in + 1))
            keep = min(len(tail), max(gaps, default=0))
            joined = [i for i in tail if ops[i].phase in TRAINING_PHASES]
            end = max([last.end + keep] + [i + 1 for i in joined])
            bounds = list(zip(starts, starts[1:] + [end]))
            begun = [call_at.get(a, (-1, -1)) if a not in chosen_starts else (-1, -1) for a in starts]
            iters = _iterations([ops[a:b] for a, b in bounds], [c.grad for c in chosen])
            n_calls = [j - i + 1 for i, j in iters]
            calls_of = [chosen[j] for _, j in iters]  # the iteration's last model call
            # an iteration of several calls: its micro-batches' sequences (of one query length)
            batches = [_summed_batch([ops[a:b] for a, b in bounds[i:j + 1]]) if j > i else None for i, j in iters]
            bounds0, bounds = bounds, [(bounds[i][0], bounds[j][1]) for i, j in iters]
            begun = [begun[i] for i, _ in iters]
            for k, (a, b) in enumerate(bounds, 1):  # the bounds cover chosen[0].start .. end, end to end
                label[a:b] = [f"step {k}"] * (b - a)
            label[:first] = [SETUP] * first
            label[end:] = [TEARDOWN] * (n - end)
            groups = [ops[a:b] for a, b in bounds]
            many = sorted({m for m in n_calls if m > 1})
            if many:
                # gradient accumulation: a backward after each call; else several forwards, one backward
                accumulated = any(o.phase == "backward" for i, j in iters if j > i
                                  for a, b in bounds0[i:j] for o in ops[a:b])
                why = ("gradient accumulation" if accumulated else
                       "forwards whose one backward runs after the last, as DPO's chosen and rejected passes")
                notes.append(f"a train step is an iteration up to its optimizer step: "
                             f"{many[0] if len(many) == 1 else f'{many[0]} to {many[-1]}'} calls of "
                             f"{chosen[0].module_type} ({why})")
            instance = place[module_id]
            for k, ((a, b), (kind, bt, q, kv), c, m, nb, (bi, bc)) in enumerate(
                    zip(bounds, _kinds(groups), calls_of, n_calls, batches, begun), 1):
                bt = nb if m > 1 else bt
                if k == 1 and owned:
                    # its kind from all its work (an encoder's long attention: a prefill); its
                    # shape from the step module's own call (a VLM's prompt, not its image patches)
                    own = _shape_facts(ops[chosen[0].start:b])
                    if own[1] is not None:
                        bt, q, kv = own
                if kind == "forward" and b > c.end:
                    # a forward-only step is its model call: what the loop does between calls
                    # (print a result, .item(), build the next input) is the script's, set apart
                    for i in range(c.end, b):
                        label[i] = BETWEEN if k < len(bounds) else TEARDOWN
                    b = c.end
                steps.append(Step(k, f"step {k}", kind, False, True, chosen[0].module_type, bt, q, kv, a, b - 1,
                                  c.end - 1, m, instance, bi, bc))
            if BETWEEN in label:
                notes.append("the loop's own ops between two forward calls (outside the model) are the region "
                             f"'{BETWEEN}', apart from the steps")
            if owned:
                parts = ", ".join(dict.fromkeys(f"{c.path} ({c.module_type})" for c in owned))
                notes.append(f"step 1 begins with {parts}, called before the first call of {chosen[0].module_type} "
                             "(as generate() runs an encoder-decoder's encoder or a VLM's vision tower): its work, "
                             "not the setup")
            # a second model of the step module's type (generate()'s assistant model, a reference
            # model) is named as another one, not as the step module itself
            others = sorted({f"another {c.module_type} (a second model)" if c.module_type == chosen[0].module_type
                             else c.module_type
                             for c in cand if c.module_id != module_id and c.end > chosen[0].start})
            if others:
                notes.append(f"steps are the {len(chosen)} calls of {chosen[0].module_type}; the outermost calls of "
                             f"{', '.join(others)} between them join the next step when it reads what they made, "
                             "else the step they follow")
        elif ranges:
            for i in range(n):
                label[i] = (SETUP if i < first_in else TEARDOWN if i > last_in else None if inside[i] else OUTSIDE)
            k = 0
            i = first_in
            while i <= last_in:
                if not inside[i]:
                    i += 1
                    continue
                j = i
                while j + 1 <= last_in and inside[j + 1]:
                    j += 1
                k += 1
                for x in range(i, j + 1):
                    label[x] = f"step {k}"
                b, q, kv = _shape_facts(ops[i:j + 1])
                steps.append(Step(k, f"step {k}", "marked", False, True, "", b, q, kv, i, j))
                i = j + 1
        else:
            return Segmentation(tuple(ops), tuple(regions), (), (
                "no steps found (no nn.Module was called, and no torch.cuda.profiler.start()/stop() or "
                "rooflight.region marks): the headline describes the whole run, setup included",))

    # warm-up and the headline's steps
    warm = _warmups([s.kind for s in steps])
    sel = None
    if select is not None:
        lo, hi = select
        if lo > len(steps):
            raise UsageError(f"--steps {lo}{':' if hi != lo else ''}{hi or '' if hi != lo else ''}: the run has "
                             f"{len(steps)} step{'s' if len(steps) != 1 else ''}")
        sel = [lo <= s.index <= (hi if hi is not None else len(steps)) for s in steps]
    steps = [replace(s, warmup=w, headline=(sel[i] if sel is not None else not w))
             for i, (s, w) in enumerate(zip(steps, warm))]

    # each op's segment, the script's own region inside it (None: a marked step's op, left in its own)
    new_names = label if not any(old_regions) else [
        None if lab is None else _prefixed(lab, old) for lab, old in zip(label, old_regions)]
    new_ops = (relabel or _in_regions)(ops, new_names)
    new_regions: dict[str, None] = {}  # ordered, first seen first
    for key in dict.fromkeys(zip(label, old_regions)):  # each (segment, region) once, in order
        lab, region = key
        if lab is None:
            chain = region_and_ancestors(region, regions)
        else:
            chain = [lab] + [_prefixed(lab, r) for r in region_and_ancestors(region, regions)]
        new_regions.update(dict.fromkeys(chain))
    return Segmentation(new_ops, tuple(new_regions), tuple(steps), tuple(notes))


__all__ = ["BETWEEN", "OUTSIDE", "SETUP", "STEADY", "Segmentation", "TEARDOWN", "TopCall", "UNMARKED", "parse_select",
           "segment", "summary_regions"]
