"""Analysis: a profile held against its roofs, with its diagnosis, advice and op groups.

`analyze(profile, roofs)` is where the pieces meet: it classifies every op, region and the whole
run (rooflight.classify), advises (rooflight.advice) and groups ops so that a 32-layer model is
30 points on a chart rather than 3000 (rooflight.groups).  It is a pure function of the profile
and the roofs it is given: choosing them (the hardware database, this machine's GPU, the
calibration cache) is the facade's job (rooflight.api.roofs).  The result is plain data that the
renderers (tables, charts, HTML) and the CLI read; nothing here measures, prints or writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .advice import advise
from .classify import Diagnosis, Label, RegionBreakdown, Verdict, breakdown
from .costs.model import matrix_like
from .groups import Kind, OpGroup, group_ops, has_work, kind_of
from .hardware import HardwareSpec
from .profile_data import Profile, RegionTiming
from .roofline import Ceilings, Roofs
from .llm import ADAM_MIXED_BYTES
from .steps import STEADY


@dataclass(frozen=True)
class Analysis:
    profile: Profile
    ceilings: Ceilings  # the roofs the diagnosis used (calibrated where measured)
    datasheet: Ceilings | None  # the datasheet roofs of `spec`, drawn beside calibrated ones
    spec: HardwareSpec | None
    diagnosis: Diagnosis
    groups: tuple[OpGroup, ...]  # heaviest first
    advice: tuple = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    training: "TrainingFacts | None" = None  # when the profile runs a backward pass

    @property
    def timed(self) -> bool:
        return self.profile.timing is not None

    @property
    def device_kind(self) -> str:
        return self.diagnosis.device_kind

    def verdict(self, index: int) -> Verdict:
        return self.diagnosis.verdicts[index]

    def frame(self):
        """The verdicts as a pandas DataFrame: one row per op with work (its module, op, label,
        time, floors, attained fraction of the roof, band and evidence), heaviest first."""
        import pandas as pd

        rows = []
        for o in self.profile.ops:
            v = self.diagnosis.verdicts.get(o.index)
            if v is None or not (o.total_flops or o.bytes or o.comm_bytes):
                continue
            rows.append({"index": o.index, "module": o.module, "region": o.region, "op": o.short_op,
                         "label": str(v.label), "seconds": v.seconds, "compute_floor_s": v.compute_floor_s,
                         "memory_floor_s": v.memory_floor_s, "comm_floor_s": v.comm_floor_s, "attained": v.attained,
                         "band": v.band, "predicted": v.predicted, "evidence": v.evidence})
        df = pd.DataFrame.from_records(rows)
        if not df.empty:
            key = "seconds" if self.timed else "memory_floor_s"
            df = df.sort_values(key, ascending=False, na_position="last").reset_index(drop=True)
        return df

    def __repr__(self) -> str:
        d = self.diagnosis
        head = d.region(d.headline_region)
        where = self.spec.name if self.spec is not None else self.ceilings.name
        return (f"<rooflight Analysis of {self.profile.workload or 'workload'!r} on {where}: {head.headline} "
                f"({head.fraction(head.headline):.0%} of {'time' if self.timed else 'floor time'}), "
                f"{len(self.groups)} op groups, {len(self.advice)} advice>")


# a backward doing less matrix work than this times the forward's skips weight gradients (2x when
# every weight trains: dX and dW; a model whose first layer's input needs no gradient, a little less)
FROZEN_BELOW = 1.8


@dataclass(frozen=True)
class TrainingFacts:
    """A training step's useful work against what ran: model FLOPs are 3x the forward's matrix work
    (the forward, and a backward of twice it: dX and dW), the "6 x parameters x tokens" of the
    literature counted from the ops themselves (attention included); executed FLOPs are everything
    the step ran (elementwise work, the loss, the optimizer, any recomputation).  MFU is model FLOPs
    over the step's time at the roof of the forward's main matrix class."""

    steps: int  # training steps the figures are per (the headline's, or 1 for a whole profile)
    model_flops: float  # per step
    executed_flops: float  # per step
    roof_class: str  # the matrix class the forward's matrix work mostly ran on
    seconds: float  # per step (wall where timed); NaN without timing
    mfu: float  # model FLOPs / (seconds x peak of roof_class); NaN without timing
    optimizer_bytes: float  # per step: the device-memory traffic of the optimizer's ops
    parameters: int  # elements the optimizer updated (from its ops' first tensor list), 0 if none seen
    state_bytes: float = 0.0  # the optimizer states its fused kernel read (Adam's m and v), 0 if none seen
    recompute_flops: float = 0.0  # per step: activation checkpointing's forward run again in backward
    backward_matrix_flops: float = 0.0  # per step: the backward's matrix work (2x the forward's when every weight trains)
    # per step: the matrix work of forwards run with autograd off beside the trained one (a DPO
    # reference model's, a distillation teacher's: phase "no-grad"), counted once in model FLOPs
    no_grad_flops: float = 0.0

    @property
    def optimizer_bytes_per_parameter(self) -> float:
        return self.optimizer_bytes / self.parameters if self.parameters else float("nan")


def training_facts(profile: Profile, diagnosis: Diagnosis, ceilings: Ceilings) -> TrainingFacts | None:
    """TrainingFacts of a profile that runs a backward pass, per headline step (None otherwise)."""
    if not any(o.phase == "backward" for o in profile.ops):
        return None
    chosen = [s for s in profile.steps if s.headline and s.kind == "train"]
    if chosen:
        ops = [o for s in chosen for o in profile.step_ops(s)]
        n = len(chosen)
    else:
        ops, n = list(profile.ops), 1
    kinds = {o.index: kind_of(o) for o in ops}
    fwd = [o for o in ops if o.phase == "forward" and kinds[o.index] in (Kind.MATMUL, Kind.ATTENTION)]
    by_class: dict[str, float] = {}
    for o in fwd:
        for c, f in o.flops.items():
            by_class[c] = by_class.get(c, 0.0) + f
    matrix = {c: f for c, f in by_class.items() if c.endswith("_tensor")} or by_class
    roof = max(matrix, key=matrix.get) if matrix else "fp32"
    no_grad = sum(sum(o.flops.values()) for o in ops
                  if o.phase == "no-grad" and kinds[o.index] in (Kind.MATMUL, Kind.ATTENTION))
    model = 3 * sum(sum(o.flops.values()) for o in fwd) + no_grad
    executed = sum(o.total_flops for o in ops)
    opt = [o for o in ops if o.phase == "optimizer"]
    params, states = _updated_elements(opt)
    seconds = math.nan
    if profile.timing is not None:
        if chosen:
            rows = [profile.timing.region(s.name) for s in chosen]
            seconds = sum(r.wall_seconds for r in rows if r is not None) / n
        elif profile.timing.total is not None:
            seconds = profile.timing.total.wall_seconds
    try:
        peak = ceilings.peak(roof)
    except (KeyError, ValueError):
        peak = math.nan
    mfu = model / n / (seconds * peak) if seconds > 0 and peak > 0 else math.nan
    recompute = sum(o.total_flops for o in ops if o.phase == "recompute")
    back = sum(sum(o.flops.values()) for o in ops
               if o.phase == "backward" and kinds[o.index] in (Kind.MATMUL, Kind.ATTENTION))
    return TrainingFacts(n, model / n, executed / n, roof, seconds, mfu, sum(o.bytes for o in opt) / n, params // n,
                         states / n, recompute / n, back / n, no_grad / n)


def _updated_elements(opt_ops) -> tuple[int, float]:
    """(parameters, bytes of optimizer states) a fused optimizer kernel updated: its inputs are the
    params' list, the grads', then the states' (Adam: m and v; SGD: the momentum buffers)."""
    params, states = 0, 0.0
    for o in opt_ops:
        if o.short_op.startswith(("_fused_adam", "_fused_sgd")):
            lists = 5 if "adam" in o.short_op else 3  # adam: p, g, m, v, state steps; sgd: p, g, buf
            n = len(o.inputs) // lists
            params += sum(t.numel for t in o.inputs[:n])
            states += sum(t.bytes for t in o.inputs[2 * n:(4 if "adam" in o.short_op else 3) * n])
    return params, states


def training_text(t: TrainingFacts) -> str:
    """One sentence on a training step's useful work."""
    per = f" per step (over {t.steps})" if t.steps > 1 else " per step"
    how = "3x the forward's matrix work" + (", and once the no-grad forwards' (a frozen model's)" if t.no_grad_flops else "")
    text = (f"training: model FLOPs {t.model_flops:.4g}{per} ({how}), executed "
            f"{t.executed_flops:.4g} ({t.executed_flops / t.model_flops:.2f}x)" if t.model_flops else "training")
    if t.model_flops and t.recompute_flops:
        text += (f", of which {t.recompute_flops:.4g} ({t.recompute_flops / t.model_flops:.2f}x) the forward run again "
                 "by activation checkpointing")
    forward = (t.model_flops - t.no_grad_flops) / 3
    if forward and 0 < t.backward_matrix_flops < FROZEN_BELOW * forward:
        text += (f"; the backward's matrix work is {t.backward_matrix_flops / forward:.2f}x the forward's, not 2x: "
                 "gradients nothing needs are not computed (a frozen weight's, as in adapter fine-tuning; a first "
                 "layer's input's, when the input needs none), and model FLOPs count the backward as 2x the forward")
    if t.mfu == t.mfu:
        # (the mean: MFU is the steps' work over their time; the per-step line beside it is a median)
        text += (f"; MFU {t.mfu:.1%} of the {t.roof_class} roof at {t.seconds * 1e3:.3g} ms a step"
                 + (f" (mean of {t.steps})" if t.steps > 1 else ""))
    if t.optimizer_bytes:
        text += f"; optimizer {t.optimizer_bytes:.4g} B of memory traffic a step"
        if t.parameters:
            text += (f" = {t.optimizer_bytes_per_parameter:.3g} B per parameter (a fused Adam's minimum: read p, g, "
                     "m, v, write p, m, v)")
        if t.parameters and t.state_bytes:
            text += (f"; optimizer states {t.state_bytes / t.parameters:.3g} B per parameter (`rooflight llm --train` "
                     f"holds {ADAM_MIXED_BYTES['optimizer']} for Adam in mixed precision: an fp32 master copy, m and v)")
    return text


# An op that moved its counted bytes faster than this multiple of the memory roof cannot have
# moved them through device memory: its data came from L2 (a warm cache between repeats).
CACHE_RESIDENT_FRACTION = 1.05


def cache_note(profile: Profile, diagnosis: Diagnosis, ceilings: Ceilings, spec: HardwareSpec | None) -> str:
    """A note when memory-dominated ops beat the device-memory roof: warm-L2 times, not DRAM."""
    timing = profile.timing
    if timing is None or timing.flush_l2 or timing.device_kind != "cuda":
        return ""
    fast = [v for v in diagnosis.verdicts.values() if v.dominant == "memory" and v.seconds > 0
            and v.memory_floor_s / v.seconds > CACHE_RESIDENT_FRACTION]
    if not fast:
        return ""
    top = max(v.memory_floor_s / v.seconds for v in fast)
    l2 = f" (the {spec.l2_bytes / 2**20:.0f} MB L2 of the {spec.name})" if spec is not None and spec.l2_bytes else ""
    return (f"{len(fast)} memory-bound op{'s' if len(fast) > 1 else ''} beat the device-memory roof (up to "
            f"{top:.0%} of it): the data was served from cache{l2} between repeats, so these are warm-cache times; "
            "profile with --flush-l2 for device-memory numbers")


# Uncounted ops holding more than this share of the measured time make the headline a lower bound.
UNCOUNTED_MATERIAL_SHARE = 0.03


def uncounted_share(profile: Profile, diagnosis: Diagnosis) -> str:
    """A warning when uncounted ops could hold real work: a matrix-like op with no formula, or
    uncounted ops with more than UNCOUNTED_MATERIAL_SHARE of the measured time ("" otherwise)."""
    ops = [o for o in profile.ops if not o.counted]
    matrix = sorted({o.short_op for o in ops if matrix_like(o.short_op)})
    share = 0.0
    if profile.timing is not None:
        # of the time the headline describes (its steps: a setup's long copies dilute it otherwise)
        members = set(diagnosis.region(diagnosis.headline_region).ops)

        def timed(i: int) -> float:
            s = diagnosis.verdicts[i].seconds
            return s if i in members and s == s and s > 0 else 0.0

        total = sum(timed(i) for i in diagnosis.verdicts)
        held = sum(timed(o.index) for o in ops)
        share = held / total if total > 0 else 0.0
    if not matrix and share <= UNCOUNTED_MATERIAL_SHARE:
        return ""
    why = []
    if matrix:
        why.append(f"matrix work with no cost formula ({', '.join(matrix)})")
    if share > UNCOUNTED_MATERIAL_SHARE:
        why.append(f"uncounted ops hold {share:.0%} of the measured op time"
                   + (" of the headline's steps" if profile.steps else ""))
    return ("the intensity, FLOPs and bytes are lower bounds and the labels may be off: " + "; ".join(why)
            + " (register a formula with rooflight.register_cost)")


def noise_note(profile: Profile, diagnosis: Diagnosis) -> str:
    """A note when ops whose repeats spread more than OpTiming.noisy allows hold a material share
    of the measured time, and a louder one when that share could flip the headline's label."""
    t = profile.timing
    if t is None or t.repeats < 2:
        return ""
    head = diagnosis.region(diagnosis.headline_region)
    members = set(head.ops)
    timed = [ot for ot in t.ops if ot.op_index in members and ot.seconds == ot.seconds and ot.seconds > 0]
    total = sum(ot.seconds for ot in timed)
    noisy = [ot for ot in timed if ot.noisy]
    held = sum(ot.seconds for ot in noisy)
    if not noisy or total <= 0 or held / total < 0.05:
        return ""
    share = held / total
    shares = sorted((head.fraction(label) for label in head.seconds_by_label), reverse=True)
    margin = shares[0] - shares[1] if len(shares) > 1 else 1.0
    text = (f"timing noise: {len(noisy)} of {len(timed)} timed ops spread more than 20% over their "
            f"{t.repeats} repeats (they hold {share:.0%} of the measured op time; marked ± in the op table, "
            "'noisy' in the JSON)")
    of_region = held / head.total_seconds if head.total_seconds > 0 else 0.0
    if of_region >= margin:  # the noisy ops' time could carry the second label past the first
        text += (f"; the headline's lead ({margin:.0%} of the time between its top two labels) is within the "
                 f"noisy ops' {of_region:.0%}, so the headline label may flip between runs: profile with more "
                 "--repeats on a quieter machine before acting on it")
    else:
        text += "; run with more --repeats for steadier numbers"
    return text


def steady_state(profile: Profile, diagnosis: Diagnosis) -> tuple[Diagnosis, Profile, Diagnosis, dict[int, str]]:
    """For a script cut into steps: the diagnosis with the headline's steps summed as the region
    "steady state" (and, when several kinds of step are in it, one region per kind), the profile
    and diagnosis of those steps alone (what advice reads), and each of their ops' step kind."""
    chosen = [s for s in profile.steps if s.headline and s.name in diagnosis.regions]
    kind_of: dict[int, str] = {}
    for s in chosen:
        for o in profile.step_ops(s):
            kind_of[o.index] = s.kind

    def summed(name: str, steps) -> RegionBreakdown:
        rbs = [diagnosis.regions[s.name] for s in steps]
        seconds = {label: sum(r.seconds_by_label[label] for r in rbs) for label in Label}
        return RegionBreakdown(name, seconds, sum(r.idle_seconds for r in rbs),
                               sum(r.wall_seconds for r in rbs), tuple(sorted(i for r in rbs for i in r.ops)))

    steady = summed(STEADY, chosen)
    extra = {STEADY: steady}
    kinds = list(dict.fromkeys(s.kind for s in chosen))
    if len(kinds) > 1:
        for k in kinds:
            extra[f"{STEADY}: {k}"] = summed(f"{STEADY}: {k}", [s for s in chosen if s.kind == k])
    full = replace(diagnosis, regions={**extra, **diagnosis.regions}, headline_region=STEADY)
    whole = None
    if profile.timing is not None:
        rows = [profile.timing.region(s.name) for s in chosen]
        rows = [r for r in rows if r is not None]
        whole = RegionTiming("", sum(r.wall_seconds for r in rows), sum(r.busy_seconds for r in rows),
                             sum(r.cpu_seconds for r in rows), sum(r.comm_seconds for r in rows),
                             sum(r.comm_exposed_seconds for r in rows))
    scope = profile.subset(kind_of, whole=whole)
    # advice judges the steady state as one region: not once per step (steps are alike by design)
    scope_diag = Diagnosis(diagnosis.verdicts, {"": steady}, diagnosis.ceilings_name,
                           diagnosis.device_kind, diagnosis.timed)
    return full, scope, scope_diag, kind_of


def analyze(profile: Profile, roofs: Roofs | Ceilings, *, advice_top: int = 5) -> Analysis:
    """Classify, group and advise a profile against `roofs` (a Roofs, or bare Ceilings).  A script
    cut into steps is headlined, grouped and advised on its steady-state steps (rooflight.steps);
    every op, step, the setup and the teardown keep their verdicts and regions."""
    if isinstance(roofs, Ceilings):
        roofs = Roofs(roofs)
    ceilings, spec = roofs.ceilings, roofs.spec
    notes = list(roofs.notes) + list(profile.notes)
    diagnosis = breakdown(profile, ceilings)
    if any(s.headline for s in profile.steps):
        diagnosis, scope, scope_diag, kind_of = steady_state(profile, diagnosis)
        groups = group_ops(profile, diagnosis, keep=lambda o: has_work(o) and o.index in kind_of,
                           region_of=lambda o: kind_of[o.index])
        tips = tuple(advise(scope, scope_diag, ceilings, top=advice_top))
    else:
        groups = group_ops(profile, diagnosis)
        tips = tuple(advise(profile, diagnosis, ceilings, top=advice_top))
    if profile.timing is not None:
        notes.extend(profile.timing.notes)
        cache = cache_note(profile, diagnosis, ceilings, spec)
        if cache:
            notes.append(cache)
        noise = noise_note(profile, diagnosis)
        if noise:
            notes.insert(0, noise)
    uncounted = profile.uncounted()
    if uncounted:
        material = uncounted_share(profile, diagnosis)
        if material:
            notes.insert(0, material)
        notes.append("ops with no cost formula (counted as uncounted, not zero): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(uncounted.items())))
    return Analysis(profile, ceilings, roofs.datasheet, spec, diagnosis, groups, tips, tuple(notes),
                    training_facts(profile, diagnosis, ceilings))


__all__ = ["Analysis", "TrainingFacts", "training_facts", "training_text", "CACHE_RESIDENT_FRACTION", "UNCOUNTED_MATERIAL_SHARE", "analyze", "cache_note", "noise_note", "steady_state",
           "uncounted_share"]
