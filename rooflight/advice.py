"""Advice: what to do about a diagnosis, as data.

`RULES` is a table.  Each Rule says where it applies (the labels, the op kinds, a range of the
attained fraction, a predicate on the shape facts) and what it recommends, with a function that
computes the expected effect from the facts and the ceilings, and the seed document it comes
from.  `advise` finds the heaviest ops and op groups of a profile, gathers their facts, and
returns every rule that fires, deduplicated, heaviest first; region rules (CUDA graphs for an
overhead-bound step, continuous batching for a memory-bound decode, ...) are judged on the
regions' breakdowns.

Facts are read from the profile alone: op names, shapes, dtypes, modules and regions.  An op's
kind comes from its name, with context for two cases a name cannot tell: a materialized
attention (a softmax over a [.., Sq, Sk] score tensor between two bmm's of the same module) and
a decomposed norm (elementwise ops inside a module whose type ends in "Norm").

The seeds (/work/shared/seeds) are cited by file prefix and section:
000 LLM acceleration notes (FlashAttention, MQA, vLLM PagedAttention, DeepSpeed, sparse attention);
001 the four bottleneck modes and what to do for each (roofline, fusion, CUDA graphs, FlashDecoding);
002 LLM inference optimization (batching, quantization by batch size, paged KV, GQA/MQA, pipelining);
003 MLC-LLM on AMD (decode speed follows memory bandwidth, not FLOPS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from .classify import FAR_BELOW_ROOF, NEAR_ROOF, Diagnosis, Label, Verdict, summary
from .costs.model import TensorMeta, matrix_like
from .counters import is_tensor_pipe
from .math_class import MathClass
from .groups import (ATTENTION_MATH_OPS, BATCHED_MATMUL_OPS, FUSIBLE, GROUPED_MATMUL_OPS, SOFTMAX_OPS, Kind,
                     EXPERT_MATMUL_OPS, chain_passes, expert_loops, fusible_chains, gathered_weights, kind_of,
                     materialized_attention, module_template, op_kinds, origin)
from .profile_data import DECODE_MAX_QUERY_ROWS, TRAINING_PHASES, OpRecord, Profile, region_and_ancestors
from .roofline import Ceilings, intensity
from .units import fmt_bandwidth, fmt_bytes, fmt_flops_rate, fmt_seconds

# ---------------------------------------------------------------------------- thresholds


# Weight-only INT4/INT8 pays off while the matmul is memory-bound on its weights.  Seed 002:
# "when the batch reaches 64 or 128, INT4 weight-only quantization no longer helps".  The
# roofline agrees: an INT4-weight GEMM on an H100 reaches the bf16 ridge (295 FLOP/B) near
# M = 295 * 0.5 B / 2 FLOP ~ 74 rows.
WEIGHT_ONLY_MAX_ROWS = 64

# Weights and activations in 8 bits (FP8, INT8 SmoothQuant) from this many rows on.  Seed 002:
# "large-batch inference, especially serving (batch size >= 16): quantize weights and
# activations; start with FP8".
W8A8_MIN_ROWS = 16

# A decode over this many cached keys is long-context.  Seed 001: the pre-2.2 FlashAttention
# decode kernel was worst "for longer sequences that need smaller batches"; 4096 tokens marks
# where a sequence's KV cache (e.g. 4096 x 8 heads x 128 x 2 B x 2 = 16 MB per layer) rivals
# the weights a decode step reads.
LONG_CONTEXT_MIN_KEYS = 4096

# A decode attention kernel that does not split the keys launches one block per (batch, head):
# fewer than about two blocks per SM of a 132-SM H100 leaves SMs idle (seed 001, FlashDecoding).
FLASH_DECODING_MAX_BLOCKS = 256

# A prefill attention over this many keys may be worth a sparse pattern (seed 000): the score
# work grows as S^2 and dominates the layer's matmuls (2·S·d per token) once S is several d.
SPARSE_ATTENTION_MIN_KEYS = 8192

# Three or more fusible kernels in a row form a chain worth fusing: each intermediate is
# written and read back, and each kernel pays a launch.
FUSION_MIN_OPS = 3
# A memory-bound chain is worth fusing for its traffic only when fused it moves this much less.
FUSION_MIN_GAIN = 1.25

# A region rule fires when at least this share of the region's time carries one of its labels.
REGION_SHARE = 0.3

# GPU idle above this share of a region's time means the host is on the critical path.
IDLE_SHARE = 0.2

# Experts that copy each routed token's weights (grouped-experts) make a step's time grow with its
# batch: from this share of a decode step's time on, "more sequences at about the same step time"
# is untrue, and the batching advice waits for the grouped GEMM.
COPIED_EXPERTS_SHARE = 0.2

# A host<->device copy below this fraction of the PCIe link is likely from pageable memory
# (the driver stages it through a pinned buffer) or too small to reach the link rate.
PAGEABLE_PCIE_ATTAINED = 0.5

# At most this many bytes read back from the device is a host sync (.item(), a flag), not data.
HOST_SYNC_MAX_BYTES = 64

_SIXTEEN_OR_MORE_BITS = ("float32", "bfloat16", "float16")
_SIXTEEN_BITS = ("bfloat16", "float16")


# ---------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class OpFacts:
    """What the rules may know about a group of like ops (or one op)."""

    kind: Kind
    label: Label  # the group's label (most of its time)
    attained: float  # sum of max floors / sum of seconds; NaN without timing
    seconds: float  # measured (or, without timing, predicted) time of the whole group
    share: float  # of the whole run
    ops: tuple[int, ...]
    copies: int  # how many like ops (or chains) the group holds
    region: str
    op: str  # the representative aten op
    dtype: str  # of the first input (the activation)
    roof_class: str
    flops: float
    bytes: float
    compute_floor_s: float
    memory_floor_s: float
    comm_floor_s: float
    evidence: str
    # matmul: activation [M, K] x weight [K, N]
    m_rows: int | None = None
    n: int | None = None
    k: int | None = None
    has_weight: bool = False  # False for bmm (two activations)
    weight_dtype: str = ""  # "bfloat16", "int8", "int4", "float8_e4m3fn"
    weight_bytes: float = 0.0  # over the group
    m_ridge: float = math.nan  # rows at which this GEMM's intensity reaches the ridge
    experts: int = 1  # a grouped GEMM (mixture of experts): its groups; m_rows is then the mean rows per expert
    # experts run as gathered copies (groups.gathered_weights): the copies each (gather, matmul) makes, one per
    # routed token; fused_bytes is then what one grouped GEMM would move, chain_bytes what the pair moves now
    gathered_rows: int = 0
    gathered_shape: tuple[int, ...] = ()  # the [E, A, B] stack of expert matrices the copies come from
    # experts run one at a time (groups.expert_loops), per module call: matmuls, kernels, host syncs
    loop_matmuls: int = 0
    loop_kernels: int = 0
    loop_syncs: int = 0
    # attention: q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D]
    batch: int | None = None
    sq: int | None = None
    sk: int | None = None
    hq: int | None = None
    hkv: int | None = None
    fused: bool = True
    kv_dtype: str = ""
    kv_bytes: float = 0.0  # over the group
    kv_reserved: int | None = None  # cache positions the K storage holds per sequence and head
    causal: bool = False  # is_causal (a causal mask passed as a tensor is `masked`)
    masked: bool = False  # a mask over (query, key) positions: causal or padding
    score_bytes: float = 0.0  # materialized attention: the score matrix's traffic (one chain)
    fused_bytes: float = 0.0  # estimated traffic of one fused kernel (attention), chain or grouped GEMM
    chain_bytes: float = 0.0  # traffic of one chain, materialized attention or gathered-experts pair as it runs now
    chain_ops: tuple[str, ...] = ()  # the op names of one chain
    chain_passes: int = 1  # passes over memory a fused chain still makes (a global reduction's result used after it)
    chain_barrier: str = ""  # the first global reduction that cuts the chain into passes
    chain_phase: str = ""  # the phase its ops ran in ("optimizer": an optimizer step's per-tensor updates)
    # transfers and collectives
    comm_bytes: float = 0.0  # per op
    link: str = ""
    direction: str = ""
    strided_inputs: tuple[str, ...] = ()  # inputs of the representative op that are not contiguous
    # hardware counters (profile --counters): measured over the counted, over the group; NaN without
    dram_read_ratio: float = math.nan  # DRAM bytes read / the modelled bytes read
    executed_ratio: float = math.nan  # tensor-pipe FLOPs executed / the useful tensor FLOPs counted
    training: bool = False  # in a region that runs backward or optimizer ops (a training step)
    counted: bool = True  # every op of the group has a cost (an uncounted op's floor is no roof to be below)

    @property
    def is_decode(self) -> bool:
        return self.sq is not None and self.sq <= DECODE_MAX_QUERY_ROWS

    @property
    def max_floor_s(self) -> float:
        return max(self.compute_floor_s, self.memory_floor_s, self.comm_floor_s)


@dataclass(frozen=True)
class RegionFacts:
    region: str  # "" for the whole run
    headline: Label
    fractions: Mapping[Label, float]
    seconds: float  # labelled time: op time plus GPU idle
    share: float  # of the whole run
    idle_seconds: float
    idle_share: float  # of the region's time
    kernels: int  # ops that ran a kernel
    short_kernels: int  # of them overhead-bound
    is_decode: bool
    is_prefill: bool  # an inference prefill: a training step's long forward is not one
    batch: int | None  # sequences per step, from attention (else the smallest matmul row count)
    m_ridge: float  # the heaviest weight matmul's ridge row count
    kv_reserved: int | None  # cache positions per sequence the KV storage holds
    kv_used: int | None  # keys the attention reads
    evidence: str
    copied_experts_share: float  # of the region's time, in experts that copy each routed token's weights
    timed: bool


# ---------------------------------------------------------------------------- the rule table


def _always(_facts) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    id: str
    scope: str  # "op" (facts: OpFacts) or "region" (facts: RegionFacts)
    labels: frozenset[Label]
    recommendation: str
    effect: Callable[..., str]  # (facts, ceilings) -> the expected effect, with numbers
    seed: str
    kinds: frozenset[Kind] = frozenset()  # op scope: empty = any kind
    attained: tuple[float, float] = (0.0, math.inf)  # [low, high); a narrower range needs timing
    when: Callable[..., bool] = _always  # predicate on the facts
    devices: frozenset[str] = frozenset({"cuda", "cpu"})  # device kinds whose diagnoses it applies to
    # op scope: the advice speaks for every group it applies to, not only the heaviest ones, and its
    # effect is computed on their facts merged (an optimizer step: one chain per parameter shape)
    every_group: bool = False

    def applies(self, facts: OpFacts | RegionFacts) -> bool:
        if self.scope == "region":
            return any(facts.fractions.get(label, 0.0) >= REGION_SHARE for label in self.labels) and self.when(facts)
        if facts.label not in self.labels or (self.kinds and facts.kind not in self.kinds):
            return False
        low, high = self.attained
        if (low, high) != (0.0, math.inf):
            if math.isnan(facts.attained) or not low <= facts.attained < high:
                return False
        return self.when(facts)


# ------------------------------------------------------------------ effect helpers


def _x(before: float, after: float) -> str:
    if after <= 0:
        return "unbounded"
    ratio = before / after
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def _ridge(ceilings: Ceilings, cls: str) -> float:
    try:
        return ceilings.ridge(cls or MathClass.BF16_TENSOR)
    except (KeyError, ValueError):
        return ceilings.ridge(MathClass.FP32)


def _eight_bit_class(ceilings: Ceilings) -> MathClass | None:
    """FP8 tensor math where the chip has it, else INT8 tensor math, else none."""
    for cls in (MathClass.FP8_TENSOR, MathClass.INT8_TENSOR):
        try:
            if ceilings.resolve(cls) is cls:
                return cls
        except KeyError:
            pass
    return None


def _resolved(ceilings: Ceilings, cls: MathClass | str) -> str:
    try:
        return ceilings.resolve(cls).value
    except (KeyError, ValueError):
        return ""


def _peak_or_nan(ceilings: Ceilings, cls: MathClass | str) -> float:
    try:
        return ceilings.peak(cls)
    except (KeyError, ValueError):
        return math.nan


def _bits(dtype: str) -> float:
    if dtype == "int4":
        return 4
    return TensorMeta.contiguous((1,), dtype).itemsize * 8


def _speedup_with_bytes(f: OpFacts, new_bytes: float, compute_scale: float = 1.0) -> float:
    """Time ratio if the bytes became `new_bytes` and the compute floor scaled by `compute_scale`,
    at the same attained fraction of whichever roof then dominates."""
    before = max(f.memory_floor_s, f.compute_floor_s)
    after = max(f.memory_floor_s * new_bytes / f.bytes if f.bytes else 0.0, f.compute_floor_s * compute_scale)
    return before / after if after > 0 else math.inf


# ------------------------------------------------------------------ effects: matmul


def _batch_more_effect(f: OpFacts, c: Ceilings) -> str:
    ridge = _ridge(c, f.roof_class)
    rows = f"M={f.m_rows} rows per expert ({f.experts} experts)" if f.experts > 1 else f"M={f.m_rows}"
    head = (f"at {rows} this {f.dtype} GEMM does {intensity(f.flops, f.bytes):.3g} FLOP/B; the {f.roof_class} ridge of "
            f"{c.name} is {ridge:.0f} FLOP/B. The weights ({fmt_bytes(f.weight_bytes / f.copies)} per op) are read "
            "once per step whatever M is, so intensity grows ~linearly with the batch")
    if math.isinf(f.m_ridge):
        return head + "; at this shape it stays memory-bound at any batch, but every extra row is nearly free"
    return (head + f": up to M≈{f.m_ridge:.0f} rows cost about the same time, "
            f"~{f.m_ridge / max(f.m_rows or 1, 1):.0f}x the tokens per step")


def _grouped_experts_effect(f: OpFacts, c: Ceilings) -> str:
    if f.loop_matmuls:
        syncs = (f", {f.loop_syncs} of them reads back to the host (nonzero's size, .item()) that stall the GPU"
                 if f.loop_syncs else "")
        return (f"the experts run one at a time: {f.loop_kernels} kernels per call ({f.loop_matmuls} expert "
                f"matmuls{syncs}), x{f.copies} calls, {fmt_seconds(f.seconds)} ({f.share:.0%} of the run); a grouped "
                "GEMM runs every expert's routed tokens in one kernel per projection with no host sync: the launches "
                "and the waits go, the weights are read as before")
    e, a, b = f.gathered_shape
    return (f"each of the {f.copies} expert matmuls copies {f.gathered_rows} of {e} [{a},{b}] {f.dtype} expert "
            f"matrices (one per routed token) and reads the copies again: {fmt_bytes(f.chain_bytes)} per matmul; "
            f"a grouped GEMM reads each expert's matrix once (at most {min(f.gathered_rows, e)} of them), "
            f"~{fmt_bytes(f.fused_bytes)}: ~{_x(f.chain_bytes, f.fused_bytes)} less traffic, up to "
            f"{_speedup_with_bytes(f, f.fused_bytes * f.copies):.1f}x on {fmt_seconds(f.seconds)} "
            f"({f.share:.0%} of the run)" + (
                "; in training the backward also writes a weight-gradient copy per routed token and adds them up per "
                "expert (index_put), where a grouped GEMM's backward writes each expert's gradient once"
                if f.training else ""))


def _weight_only_effect(f: OpFacts, c: Ceilings) -> str:
    w_bits = _bits(f.weight_dtype)
    out = [f"weights are {f.weight_bytes / f.bytes:.0%} of the {fmt_bytes(f.bytes / f.copies)} each op moves"]
    for name, bits in (("INT4", 4), ("INT8", 8)):
        if bits >= w_bits:
            continue
        new = f.bytes - f.weight_bytes * (1 - bits / w_bits)
        out.append(f"as {name} up to {_speedup_with_bytes(f, new):.1f}x "
                   f"(memory floor {fmt_seconds(f.memory_floor_s / f.copies)} -> "
                   f"{fmt_seconds(f.memory_floor_s * new / f.bytes / f.copies)})")
    m4 = _m_ridge(f.n or 0, f.k or 0, _item(f.dtype), 0.5, _item(f.dtype), _ridge(c, f.roof_class))
    if not math.isinf(m4):
        out.append(f"INT4 weights reach the ridge near M≈{m4:.0f}, where weight-only quantization stops paying off "
                   "(the seed: batch 64-128)")
    return "; ".join(out)


def _w8a8_effect(f: OpFacts, c: Ceilings) -> str:
    cls = _eight_bit_class(c)
    new_bytes = f.bytes / 2  # 16-bit operands to 8 bits
    if cls is None:
        return (f"{c.name} has no 8-bit tensor roof: the gain is in bytes only, up to "
                f"{_speedup_with_bytes(f, new_bytes):.1f}x while memory-bound")
    ratio = _peak_or_nan(c, cls) / _peak_or_nan(c, f.roof_class)
    name = "FP8 (torch._scaled_mm)" if cls is MathClass.FP8_TENSOR else "INT8 (SmoothQuant, torch._int_mm)"
    return (f"{name}: the {cls.value} roof is {fmt_flops_rate(_peak_or_nan(c, cls))} vs "
            f"{fmt_flops_rate(_peak_or_nan(c, f.roof_class))} for {f.roof_class} ({ratio:.1f}x), and 8-bit operands "
            f"halve the bytes: up to {_speedup_with_bytes(f, new_bytes, 1 / ratio):.1f}x for this "
            f"{f.label} GEMM at M={f.m_rows}")


def _tensor_core_effect(f: OpFacts, c: Ceilings) -> str:
    here = _peak_or_nan(c, f.roof_class)
    out = [f"now on the {f.roof_class} roof at {fmt_flops_rate(here)}"]
    for cls, how in ((MathClass.TF32_TENSOR, "TF32 (torch.set_float32_matmul_precision('high'))"),
                     (MathClass.BF16_TENSOR, "bf16 (torch.autocast or bf16 weights)")):
        peak = _peak_or_nan(c, cls)
        if math.isnan(peak) or _resolved(c, cls) in (f.roof_class, _resolved(c, f.roof_class)):
            continue  # the chip runs it on the roof it already uses
        out.append(f"{how} {fmt_flops_rate(peak)}: up to {_speedup_with_bytes(f, f.bytes, here / peak):.1f}x")
    return "; ".join(out)


# ------------------------------------------------------------------ effects: attention


def _flash_attention_effect(f: OpFacts, c: Ceilings) -> str:
    if not f.chain_bytes or not f.fused_bytes:
        return ("a fused kernel never writes the score matrix to memory (the seed: 2-4x faster, "
                "5-20x less memory than standard attention)")
    return (f"the {len(f.ops) // f.copies} ops move {fmt_bytes(f.chain_bytes)} per attention, "
            f"{fmt_bytes(f.score_bytes)} of it the [{f.batch or '?'},{f.hq or '?'},{f.sq},{f.sk}] score matrix "
            f"written and read back; a fused kernel reads q, k, v and writes the output once, "
            f"~{fmt_bytes(f.fused_bytes)}: ~{_x(f.chain_bytes, f.fused_bytes)} less traffic "
            "(the seed: 2-4x faster, 5-20x less memory)")


def _gqa_effect(f: OpFacts, c: Ceilings) -> str:
    hq = f.hq or 1
    group = 4 if hq >= 4 else hq
    other = f.bytes - f.kv_bytes
    gqa = other + f.kv_bytes / group
    mqa = other + f.kv_bytes / hq
    return (f"K/V are {f.kv_bytes / f.bytes:.0%} of this decode attention's bytes with {hq} KV heads; "
            f"GQA {group}:1 reads {group}x less of them: ~{_x(f.bytes, gqa)} faster while memory-bound, "
            f"MQA (1 KV head) ~{_x(f.bytes, mqa)}; the KV cache shrinks as much, so more sequences fit")


def _kv_quant_effect(f: OpFacts, c: Ceilings) -> str:
    bits = _bits(f.kv_dtype)
    other = f.bytes - f.kv_bytes
    out = [f"K/V ({f.kv_dtype}) are {f.kv_bytes / f.bytes:.0%} of the bytes"]
    for name, b in (("8-bit", 8), ("4-bit", 4)):
        if b < bits:
            out.append(f"{name}: ~{_x(f.bytes, other + f.kv_bytes * b / bits)}")
    return "; ".join(out) + "; the cache holds proportionally more tokens or sequences"


def _flash_decoding_effect(f: OpFacts, c: Ceilings) -> str:
    blocks = (f.batch or 1) * (f.hq or 1)
    return (f"batch {f.batch} x {f.hq} heads = {blocks} (batch, head) blocks over {f.sk} keys, at "
            f"{f.attained:.0%} of bandwidth: splitting the keys across blocks and reducing the partial "
            f"softmaxes keeps every SM loading, up to {_x(1, f.attained)} to the memory roof")


def _sparse_attention_effect(f: OpFacts, c: Ceilings) -> str:
    window = 1024
    return (f"each query meets {f.sk} keys; a {window}-token local window (plus a few strided/global keys) "
            f"computes ~{window / f.sk:.0%} of the score pairs: up to ~{f.sk / window:.0f}x less attention work "
            "(only if the model was trained or tuned for the pattern)")


# ------------------------------------------------------------------ effects: everything else


def _fusion_effect(f: OpFacts, c: Ceilings) -> str:
    n = len(f.chain_ops)
    names = ", ".join(f.chain_ops[:6]) + (", ..." if n > 6 else "")
    if f.chain_passes > 1:
        fused = (f"fused, it still makes {f.chain_passes} passes over memory (a global reduction, {f.chain_barrier}, "
                 f"must finish before the ops after it use its result), ~{fmt_bytes(f.fused_bytes)}")
    else:
        fused = f"fused, it reads its inputs and writes its output once, ~{fmt_bytes(f.fused_bytes)}"
    less = (f"~{_x(f.chain_bytes, f.fused_bytes)} less traffic and" if _fusion_saves_traffic(f)
            else "about the same traffic; the gain is")
    # one fused kernel per pass
    return (f"each chain of {n} kernels ({names}) moves {fmt_bytes(f.chain_bytes)}; {fused}: {less} "
            f"{n - f.chain_passes} fewer launches per chain, x{f.copies} chains ({f.share:.0%} of the run)")


def _fused_optimizer_effect(f: OpFacts, c: Ceilings) -> str:
    # f: every unfused optimizer chain merged (every_group).  No fused-traffic figure: the step's
    # tensors (parameters, gradients, moments) are each read and written whatever the kernel count
    distinct = list(dict.fromkeys(f.chain_ops))  # the step repeats its few ops for every tensor
    names = ", ".join(distinct[:6]) + (", ..." if len(distinct) > 6 else "")
    if all(o.startswith("_foreach") for o in f.chain_ops):
        how = f"{len(f.ops)} multi-tensor ops ({names})"
    else:
        how = f"{len(f.ops)} ops, one tensor at a time ({names})"
    return (f"the optimizer step runs {how}: {fmt_seconds(f.seconds)} ({f.share:.0%} of the run) moving "
            f"{fmt_bytes(f.bytes)}; a fused step launches a few kernels for all of them and reads each "
            "parameter's state once per step")


def _launch_bound_effect(f: OpFacts, c: Ceilings) -> str:
    # a GPU's kernel launches (a graph replays them), or a CPU's op calls (fewer, larger ops)
    per = f.seconds / f.copies if f.copies else f.seconds
    what, fix = (("calls", "fewer, larger ops remove") if c.device_kind == "cpu"
                 else ("launches", "fewer, larger kernels or one graph launch remove"))
    return (f"{f.copies} {what} of ~{fmt_seconds(per)} each, {fmt_seconds(f.seconds)} ({f.share:.0%} of the run), "
            f"of which the floors explain {f.attained:.0%}: {fix} most of it")


def _below_roof_effect(f: OpFacts, c: Ceilings) -> str:
    layout = ""
    if f.strided_inputs:
        layout = f"; input {f.strided_inputs[0]} is not contiguous, so its loads do not stream"
    return (f"reaches {f.attained:.0%} of its {f.label.value.split('-')[0]} roof: at the roof it would take "
            f"{fmt_seconds(f.max_floor_s)} instead of {fmt_seconds(f.seconds)}, up to {_x(1, f.attained)}{layout}")


def _at_memory_roof_effect(f: OpFacts, c: Ceilings) -> str:
    text = (f"{fmt_bytes(f.bytes)} in {fmt_seconds(f.seconds)} = {fmt_bandwidth(f.bytes / f.seconds)}, "
            f"{f.attained:.0%} of {fmt_bandwidth(c.memory_bytes_per_s)}: the time is the bytes, and only fewer bytes "
            "(8/4-bit weights or KV) or more bandwidth make it faster")
    if f.is_decode or (f.m_rows is not None and f.m_rows <= DECODE_MAX_QUERY_ROWS):
        text += ("; decode speed follows memory bandwidth, not FLOPS (the seed: a 7900 XTX reaches ~80% of a "
                 "4090 on 4-bit decode with half its FP16 FLOPS)")
    return text


def _pcie_effect(f: OpFacts, c: Ceilings) -> str:
    per_s = f.seconds / f.copies if f.copies else f.seconds
    link = c.link("pcie") or math.nan
    text = (f"{fmt_bytes(f.comm_bytes)} {f.direction} per copy in {fmt_seconds(per_s)} = "
            f"{fmt_bandwidth(f.comm_bytes / per_s) if per_s > 0 else '?'}")
    if not math.isnan(f.attained):
        text += f", {f.attained:.0%} of {fmt_bandwidth(link)} each way"
        if f.attained < PAGEABLE_PCIE_ATTAINED:
            text += ": below half the link, as copies from pageable memory run; pinned, non_blocking copies approach it"
    return text + f"; {f.copies} copies, {f.share:.0%} of the run; a copy hidden behind compute costs nothing"


def _host_sync_effect(f: OpFacts, c: Ceilings) -> str:
    return (f"{f.copies} reads of {fmt_bytes(f.comm_bytes)} back to the host: each waits for every queued kernel, "
            "then the GPU waits for the host to issue more")


def _collective_effect(f: OpFacts, c: Ceilings) -> str:
    per_s = f.seconds / f.copies if f.copies else f.seconds
    rate = f" = {fmt_bandwidth(f.comm_bytes / per_s)}" if per_s > 0 else ""
    attained = f", {f.attained:.0%} of {fmt_bandwidth(c.link(f.link) or math.nan)} each way" \
        if not math.isnan(f.attained) else ""
    small = (f"; at {fmt_bytes(f.comm_bytes)} a message the link's latency, not its bandwidth, sets the time: "
             "bucket them into fewer, larger ones" if 0 < f.comm_bytes < SMALL_MESSAGE_BYTES else "")
    return (f"{fmt_bytes(f.comm_bytes)} per call over the {f.link} link in {fmt_seconds(per_s)}{rate}{attained}; "
            f"{f.copies} calls, {f.share:.0%} of the run: overlapped with independent compute it hides up to that "
            f"share; a partitioning that moves fewer bytes shortens it{small}")


# below this a collective is latency-bound on NVLink/InfiniBand (NCCL's bus bandwidth curves
# reach their plateau in the tens of MB)
SMALL_MESSAGE_BYTES = 1e6


# ------------------------------------------------------------------ effects: regions


def _graphs_effect(r: RegionFacts, c: Ceilings) -> str:
    ov = r.fractions[Label.OVERHEAD]
    name = r.region or "the run"
    text = (f"{ov:.0%} of {name}'s {fmt_seconds(r.seconds)} is overhead-bound (GPU idle "
            f"{fmt_seconds(r.idle_seconds)}, {r.short_kernels} of {r.kernels} kernels launch-bound)")
    # a graph removes the gaps between kernels, not the kernels' own time, and costs a little per op
    busy = r.seconds - r.idle_seconds
    per_op = c.graph_launch_overhead_s or 0.0
    after = max(busy, r.kernels * per_op)
    if r.idle_seconds > 0 and after > 0:
        text += f"; replayed as one graph the step keeps its kernels' {fmt_seconds(busy)}: up to {_x(r.seconds, after)}"
    else:
        text += "; no GPU idle time was measured, so the gain is the host dispatch a graph no longer pays"
    if c.graph_launch_overhead_s and c.launch_overhead_s:
        text += (f" ({fmt_seconds(c.graph_launch_overhead_s)} per op inside a graph vs "
                 f"{fmt_seconds(c.launch_overhead_s)} eager on this machine)")
    return text + "; fusing the short kernels shrinks what remains"


def _pipelining_effect(r: RegionFacts, c: Ceilings) -> str:
    return (f"the GPU is idle {r.idle_share:.0%} of {r.region or 'the run'}'s time ({fmt_seconds(r.idle_seconds)}): "
            "that time is the host's; overlapping it with GPU work recovers up to all of it")


def _continuous_batching_effect(r: RegionFacts, c: Ceilings) -> str:
    mem = r.fractions[Label.MEMORY]
    tail = f", up to M≈{r.m_ridge:.0f} rows for the heaviest GEMM" if not math.isnan(r.m_ridge) \
        and not math.isinf(r.m_ridge) else ""
    return (f"{r.region or 'the run'} runs at batch {r.batch}, {mem:.0%} of its {fmt_seconds(r.seconds)} memory-bound: "
            f"a step reads the weights and each sequence's KV once whatever the batch, so more sequences per step "
            f"raise tokens/s at about the same step time{tail}")


def _paged_kv_effect(r: RegionFacts, c: Ceilings) -> str:
    if r.kv_reserved and r.kv_used and r.kv_reserved > r.kv_used:
        return (f"the KV cache reserves {r.kv_reserved} positions per sequence and this step uses {r.kv_used} "
                f"({r.kv_used / r.kv_reserved:.0%}); in fixed blocks allocated as tokens arrive, ~"
                f"{r.kv_reserved / r.kv_used:.0f}x the sequences fit at this length (the seed: up to 55% less memory, "
                "2.2x throughput with sharing)")
    return ("a cache allocated in fixed-size blocks as tokens arrive wastes under one block per sequence instead "
            "of reserving the longest length, so more sequences fit (the seed: up to 55% less memory, 2.2x throughput)")


def _prefix_cache_effect(r: RegionFacts, c: Ceilings) -> str:
    comp = r.fractions[Label.COMPUTE]
    return (f"{comp:.0%} of {r.region or 'the run'}'s {fmt_seconds(r.seconds)} is compute-bound prefill: a system "
            "prompt shared by requests, cached once, skips its share of this work and of the first-token latency")


# ------------------------------------------------------------------ predicates


def _rereads_effect(f: OpFacts, c: Ceilings) -> str:
    r = f.dram_read_ratio
    at_min = f.seconds / r if r > 0 else math.nan
    pad = (f"; its {f.executed_ratio:.1f}x executed FLOPs (tile padding) cost nothing here: the time is bytes"
           if f.executed_ratio == f.executed_ratio and f.executed_ratio > 2 else "")
    return (f"Nsight Compute read {r:.1f}x the bytes this group must move from DRAM: at its minimum it would take "
            f"about {fmt_seconds(at_min)} instead of {fmt_seconds(f.seconds)} (up to {r:.1f}x), and a faster "
            f"memory would not close that gap{pad}")


def _rereads(f: OpFacts) -> bool:
    return f.dram_read_ratio == f.dram_read_ratio and f.dram_read_ratio >= REREAD_RATIO


# the three below speak of a GEMM reading its weights once; experts run as copies or one at a time
# (_experts) are grouped-experts' first (profile again: the grouped GEMM then gets these)


def _small_batch_weight_gemm(f: OpFacts) -> bool:
    return not _experts(f) and f.has_weight and f.m_rows is not None and f.m_rows < f.m_ridge


def _weight_only_fits(f: OpFacts) -> bool:
    # a training step updates its weights: quantizing them is an inference technique
    return (not f.training and not _experts(f) and f.has_weight and f.m_rows is not None
            and f.m_rows <= WEIGHT_ONLY_MAX_ROWS and f.weight_dtype in _SIXTEEN_OR_MORE_BITS)


def _w8a8_fits(f: OpFacts) -> bool:
    # 16-bit operands only: an fp32 GEMM gets tensor cores (TF32/bf16) first
    return (not _experts(f) and f.has_weight and f.m_rows is not None and f.m_rows >= W8A8_MIN_ROWS
            and f.weight_dtype in _SIXTEEN_BITS and f.dtype in _SIXTEEN_BITS)


def _fp32_math(f: OpFacts) -> bool:
    return f.roof_class in (MathClass.FP32.value, MathClass.TF32_TENSOR.value)


def _mha_decode(f: OpFacts) -> bool:
    return f.is_decode and f.hq is not None and f.hq > 1 and f.hkv == f.hq


def _decode_kv_16bit(f: OpFacts) -> bool:
    return f.is_decode and f.kv_dtype in _SIXTEEN_OR_MORE_BITS and f.kv_bytes > 0


def _long_small_batch_decode(f: OpFacts) -> bool:
    return (f.is_decode and f.fused and f.sk is not None and f.sk >= LONG_CONTEXT_MIN_KEYS
            and (f.batch or 1) * (f.hq or 1) < FLASH_DECODING_MAX_BLOCKS)


def _long_prefill(f: OpFacts) -> bool:
    return not f.is_decode and f.sk is not None and f.sk >= SPARSE_ATTENTION_MIN_KEYS


def _experts(f: OpFacts) -> bool:
    """Experts run as copies or one at a time (grouped-experts): what the other op rules would say of
    their time (at the roof, below it, launch-bound) is about work the grouped GEMM removes."""
    return bool(f.gathered_rows or f.loop_matmuls)


def _chain(f: OpFacts) -> bool:
    return len(f.chain_ops) >= FUSION_MIN_OPS


def _fusion_saves_traffic(f: OpFacts) -> bool:
    """Fused, the chain moves at least FUSION_MIN_GAIN less (a chain a global reduction cuts in
    passes may save almost none)."""
    return f.chain_bytes >= FUSION_MIN_GAIN * f.fused_bytes


def _fusion_pays(f: OpFacts) -> bool:
    """Fusing saves launches (what an overhead-bound chain needs) or traffic (a memory-bound one)."""
    return f.label is _L.OVERHEAD or _fusion_saves_traffic(f)


def _unfused_optimizer(f: OpFacts) -> bool:
    """An optimizer step's chain with no fused optimizer kernel in it (`_fused_adamw_`, `_fused_sgd_` ...:
    a fused step's own kernel and its `_foreach_add_` of the step counts are no chain to fuse)."""
    return _chain(f) and f.chain_phase == "optimizer" and not any(o.startswith("_fused_") for o in f.chain_ops)


def _host_sync(f: OpFacts) -> bool:
    return f.direction.startswith("device to host") and f.comm_bytes <= HOST_SYNC_MAX_BYTES


def _big_transfer(f: OpFacts) -> bool:
    return not _host_sync(f)


def _small_decode(r: RegionFacts) -> bool:
    return (r.is_decode and r.batch is not None and r.batch <= WEIGHT_ONLY_MAX_ROWS
            and r.copied_experts_share < COPIED_EXPERTS_SHARE)


_L = Label
_K = Kind
_GPU = frozenset({"cuda"})  # GPU techniques: no use for a diagnosis of CPU timings

# A memory-bound kernel reading this many times the bytes it must move has a tiling, fusion or
# layout problem (re-reads, gathers by sector), not a bandwidth one (seen with --counters).
REREAD_RATIO = 2.0

RULES: tuple[Rule, ...] = (
    # ---- what the hardware counters show (profile --counters)
    Rule("dram-rereads", "op", frozenset({_L.MEMORY}), when=_rereads,
         recommendation="Make the kernel read each byte once: its DRAM reads are several times the bytes it must "
                        "move, so the fix is its tiling, fusion or data layout (keep reused tiles in shared memory "
                        "or L2, avoid strided gathers), not more bandwidth",
         effect=_rereads_effect,
         seed="001 memory-bound: the roofline counts the bytes that must move; Nsight Compute's dram__bytes_read "
              "measures the bytes that did"),
    # ---- matmuls
    Rule("grouped-experts", "op", frozenset(Label), kinds=frozenset({_K.MATMUL}),
         when=_experts,
         recommendation="Run the experts as a grouped GEMM over the tokens sorted by expert (torch._grouped_mm; "
                        "in Hugging Face transformers, experts_implementation=\"grouped_mm\" in from_pretrained "
                        "or the config), which reads each expert's weights once in place, in one kernel per "
                        "projection, instead of copying every routed token's expert weights (weights[expert_ids]) "
                        "for a batched matmul, or running the experts one at a time",
         effect=_grouped_experts_effect,
         seed="001 memory-bound: the time is the bytes that move, so move fewer (the copies are bytes no "
              "result needs)"),
    Rule("batch-more", "op", frozenset({_L.MEMORY}), kinds=frozenset({_K.MATMUL}), when=_small_batch_weight_gemm,
         recommendation="Batch more: run more sequences (or tokens) per step so each weight read serves more rows; "
                        "in serving, continuous batching merges new requests' prefill into running decodes",
         effect=_batch_more_effect,
         seed="002 §4 dynamic batching; 001 roofline: intensity rises with the batch"),
    Rule("weight-only-quant", "op", frozenset({_L.MEMORY}), kinds=frozenset({_K.MATMUL}), when=_weight_only_fits,
         recommendation="Quantize the weights only (INT4/INT8 GPTQ or AWQ; torch._weight_int4pack_mm / "
                        "_weight_int8pack_mm): at small batch the matmul is weight loading, and dequantizing on "
                        "chip keeps the math in 16 bits",
         effect=_weight_only_effect,
         seed="002 §5 low-bit quantization (weight-only INT4 at small batch, stops paying off at batch 64-128); "
              "001 memory-bound: GPTQ/AWQ"),
    Rule("w8a8-fp8", "op", frozenset({_L.COMPUTE, _L.MEMORY}), kinds=frozenset({_K.MATMUL}), when=_w8a8_fits,
         recommendation="Quantize weights and activations: FP8 on Hopper/Ada (torch._scaled_mm), else INT8 "
                        "SmoothQuant; at this batch weight-only INT4 no longer pays",
         effect=_w8a8_effect,
         seed="002 §5 low-bit quantization (batch >= 16: W8A8, start with FP8); 001 compute-bound: 8-bit tensor cores, "
              "LLM.int8()/SmoothQuant"),
    Rule("tensor-cores", "op", frozenset({_L.COMPUTE}), kinds=frozenset({_K.MATMUL, _K.ATTENTION}), when=_fp32_math,
         recommendation="Run the matmuls on tensor cores in lower precision: TF32 "
                        "(torch.set_float32_matmul_precision('high')) or bf16/fp16 autocast",
         effect=_tensor_core_effect,
         devices=_GPU,
         seed="001 compute-bound: tensor cores (H100 PCIe 51 vs 378 TFLOPS) and lower precision; 000 mixed precision"),
    # ---- attention
    Rule("flash-attention", "op", frozenset(Label), kinds=frozenset({_K.ATTENTION}), when=lambda f: not f.fused,
         recommendation="Use a fused attention (F.scaled_dot_product_attention on the flash or cuDNN backend, "
                        "FlexAttention for custom masks) instead of materializing the score matrix",
         effect=_flash_attention_effect,
         seed="000 FlashAttention (2-4x faster, 5-20x less memory); 002 §8 Flash Attention; 001 fused kernels"),
    Rule("gqa-mqa", "op", frozenset({_L.MEMORY}), kinds=frozenset({_K.ATTENTION}), when=_mha_decode,
         recommendation="Use grouped-query or multi-query attention (a model trained or uptrained with shared "
                        "KV heads): decode reads the whole KV cache every step",
         effect=_gqa_effect,
         seed="002 §10 MHA/GQA/MQA; 000 Multi-Query Attention"),
    Rule("kv-cache-quant", "op", frozenset({_L.MEMORY}), kinds=frozenset({_K.ATTENTION}), when=_decode_kv_16bit,
         recommendation="Quantize the KV cache (FP8 or INT8, per head or per channel scales)",
         effect=_kv_quant_effect,
         seed="001 memory-bound: weight-only and KV-cache quantization; 002 §5 low-bit quantization"),
    Rule("flash-decoding", "op", frozenset({_L.MEMORY}), kinds=frozenset({_K.ATTENTION}), attained=(0.0, NEAR_ROOF),
         when=_long_small_batch_decode,
         recommendation="Use a split-KV decode kernel (flash-decoding: FlashAttention >= 2.2 "
                        "flash_attn_with_kvcache, FlashInfer, or a paged decode kernel) for long contexts at "
                        "small batch",
         effect=_flash_decoding_effect,
         devices=_GPU,
         seed="001 FlashDecoding (parallel over the KV sequence; the old kernel was worst at long context, "
              "small batch)"),
    Rule("sparse-attention", "op", frozenset({_L.COMPUTE}), kinds=frozenset({_K.ATTENTION}), when=_long_prefill,
         recommendation="If the model allows it, a sparse pattern (local window, strided/dilated, "
                        "local+global; FlexAttention block masks) instead of full attention",
         effect=_sparse_attention_effect,
         seed="000 Sparse Attention (atrous, local, local+strided, DeepSpeed random/local/global)"),
    # ---- elementwise chains, launches, kernels below their roof
    Rule("fused-optimizer", "op", frozenset({_L.MEMORY, _L.OVERHEAD}), kinds=FUSIBLE,
         when=_unfused_optimizer,
         recommendation="Use a fused optimizer step: fused=True on torch.optim's Adam, AdamW, SGD or Adagrad (e.g. "
                        "torch.optim.AdamW(..., fused=True)), or torch.compile the "
                        "optimizer's step, updates every parameter of a group in one or a few kernels (foreach=True "
                        "still runs one multi-tensor kernel per arithmetic op, each a pass over the states)",
         effect=_fused_optimizer_effect, every_group=True,
         seed="001 overhead-bound: fewer, larger kernels; memory-bound: operator fusion"),
    Rule("fuse-elementwise", "op", frozenset({_L.MEMORY, _L.OVERHEAD}), kinds=FUSIBLE,
         when=lambda f: _chain(f) and f.chain_phase != "optimizer" and _fusion_pays(f),
         recommendation="Fuse the chain: torch.compile the module (or a fused kernel, e.g. a fused RMSNorm / "
                        "rotary embedding) so intermediates stay on chip",
         effect=_fusion_effect,
         seed="001 memory-bound: operator fusion (TorchInductor, XLA); 000 DeepSpeed deep fusion"),
    Rule("launch-bound", "op", frozenset({_L.OVERHEAD}),
         when=lambda f: f.seconds > 0 and not _chain(f) and not _experts(f),
         recommendation="These kernels are launch-bound: fold them into their neighbours (torch.compile) or "
                        "replay them in a CUDA graph",
         effect=_launch_bound_effect,
         devices=_GPU,
         seed="001 overhead-bound: CUDA graphs, AOT/JIT compilation"),
    Rule("dispatch-bound", "op", frozenset({_L.OVERHEAD}),
         when=lambda f: f.seconds > 0 and not _chain(f) and not _experts(f),
         recommendation="These ops are dispatch-bound on the CPU: each pays PyTorch's per-op cost more than its "
                        "work; do the work in fewer, larger ops (batch it, or torch.compile the code around them)",
         effect=_launch_bound_effect,
         devices=frozenset({"cpu"}),
         seed="001 overhead-bound: fewer, larger kernels, AOT/JIT compilation"),
    Rule("below-own-roof", "op", frozenset({_L.MEMORY, _L.COMPUTE}), attained=(0.0, FAR_BELOW_ROOF),
         when=lambda f: f.counted and not _experts(f) and (f.kind is not Kind.ATTENTION or not f.is_decode),
         recommendation="The kernel runs far below its roof: check the layout (make strided inputs contiguous "
                        "upstream), the parallelism (on a GPU too few blocks for the SMs; on a CPU an op too small "
                        "for its threads) and the shape (dimensions that are not multiples of 64/128); try "
                        "torch.compile(mode='max-autotune') or another kernel",
         effect=_below_roof_effect,
         seed="001 roofline with sub-optimal implementations (fig. 11): a kernel sits under its own, lower roof"),
    Rule("at-memory-roof", "op", frozenset({_L.MEMORY}), kinds=frozenset({_K.MATMUL, _K.ATTENTION}),
         attained=(NEAR_ROOF, math.inf), when=lambda f: f.fused and not _experts(f),
         recommendation="At the bandwidth roof: only fewer bytes or more bandwidth help (quantized weights/KV, "
                        "or a chip with more bandwidth per dollar)",
         effect=_at_memory_roof_effect,
         seed="003 MLC-LLM: 4-bit decode speed follows memory bandwidth, not FP16 FLOPS; 001 memory-bound"),
    # ---- transfers and collectives
    Rule("pcie-transfer", "op", frozenset(Label), kinds=frozenset({_K.TRANSFER}), when=_big_transfer,
         recommendation="Keep the data resident on the GPU (quantize to fit rather than offload); when it must "
                        "be offloaded, copy from pinned memory (pin_memory(), non_blocking=True) on a side stream, "
                        "prefetching the next layer while this one computes",
         effect=_pcie_effect,
         devices=_GPU,
         seed="000 DeepSpeed ZeRO-Offload (CPU memory supplements GPU memory); 002 §3 pipelining"),
    Rule("host-sync", "op", frozenset(Label), kinds=frozenset({_K.TRANSFER}), when=_host_sync,
         recommendation="Avoid per-step reads back to the host (.item(), printing, data-dependent Python "
                        "branches): keep sampling on the GPU and read results once per several steps",
         effect=_host_sync_effect,
         devices=_GPU,
         seed="002 §3 pipelining (don't wait for detokenize: the next decode can start at once)"),
    Rule("collective-overlap", "op", frozenset({_L.COMMUNICATION}), kinds=frozenset({_K.COLLECTIVE}),
         recommendation="Overlap the collective with independent compute (async collectives, bucketing), send "
                        "fewer and larger messages, or re-partition so fewer bytes move: tensor parallelism inside "
                        "a node and pipeline parallelism across nodes, fewer tensor-parallel ranks for decode, "
                        "activations stationary with gathered weights for long prefills, communication in bf16 or "
                        "fp8, and for data parallelism ZeRO-1/2 before ZeRO-3 (which gathers the weights every "
                        "step)",
         effect=_collective_effect,
         devices=_GPU,
         seed="001 communication-bound: better partitioning and collectives (Pope et al. weight-gathered layouts); "
              "002 §2 distributed inference"),
    # ---- regions
    Rule("cuda-graphs", "region", frozenset({_L.OVERHEAD}),
         recommendation="Launch the step as one CUDA graph: torch.compile(mode='reduce-overhead') or "
                        "torch.cuda.graphs with static buffers (in decode, a static KV cache)",
         effect=_graphs_effect,
         devices=_GPU,
         seed="001 overhead-bound: CUDA graphs, AOT tracing, JIT compilation (TorchDynamo)"),
    Rule("host-pipelining", "region", frozenset({_L.OVERHEAD}), when=lambda r: r.idle_share >= IDLE_SHARE,
         recommendation="Take host work off the GPU's critical path: overlap it with the GPU's work (loading and "
                        "tokenizing data, sampling and detokenizing, logging), avoid syncs such as .item(), and issue "
                        "the next step before reading this one's result",
         effect=_pipelining_effect,
         devices=_GPU,
         seed="002 §3 pipelining CPU work"),
    Rule("continuous-batching", "region", frozenset({_L.MEMORY}), when=_small_decode,
         recommendation="Serve more sequences per decode step: continuous (in-flight) batching, joining new "
                        "requests' prefill to running decodes",
         effect=_continuous_batching_effect,
         seed="002 §4 dynamic batching (merge step); 001 decode is memory-bound, batching raises intensity"),
    Rule("paged-kv", "region", frozenset({_L.MEMORY}), when=_small_decode,
         recommendation="Page the KV cache (vLLM PagedAttention: block tables, copy-on-write sharing) to fit "
                        "more sequences and raise the batch",
         effect=_paged_kv_effect,
         seed="000 vLLM PagedAttention (up to 55% less memory, 2.2x throughput); 002 §9 Paged Attention"),
    Rule("prefix-caching", "region", frozenset({_L.COMPUTE}), when=lambda r: r.is_prefill,
         recommendation="Cache the KV of prompt prefixes shared by requests (system prompts) and skip their prefill",
         effect=_prefix_cache_effect,
         seed="002 §6 System Prompt (shared-prefix KV caching)"),
)


def _check_unique(rules: Sequence[Rule]) -> None:
    seen: set[str] = set()
    for r in rules:
        if r.id in seen:
            raise ValueError(f"duplicate advice rule id {r.id!r}")
        if r.scope not in ("op", "region"):
            raise ValueError(f"rule {r.id!r}: scope must be 'op' or 'region'")
        seen.add(r.id)


_check_unique(RULES)


# ---------------------------------------------------------------------------- advice


@dataclass(frozen=True)
class Advice:
    rule: str  # the Rule's id
    recommendation: str
    effect: str  # expected effect, with numbers from the facts
    seed: str
    label: Label
    kind: str  # the op kind, or "region"
    region: str  # where the ops are ("" = the whole run)
    ops: tuple[int, ...]  # the op indexes it concerns (a region rule: the region's ops)
    seconds: float  # time at stake: the group's time, or the region's time under the rule's labels
    share: float  # that time's share of the whole run
    evidence: str


@dataclass
class _Group:
    kind: Kind
    ops: list[int]  # all op indexes
    units: list[tuple[int, ...]]  # one tuple per like op / chain / materialized attention
    region: str
    chain_ops: tuple[str, ...] = ()
    unit_kind: str = ""  # "gathered-experts" (a gather and its matmul), "expert-loop" (a module's experts one by one)


def _groups(profile: Profile, diagnosis: Diagnosis, kinds: Mapping[int, Kind]) -> list[_Group]:
    """Like ops grouped: materialized attentions, fusible chains, then single ops by signature."""
    by_index = {o.index: o for o in profile.ops}
    used: set[int] = set()
    groups: dict[tuple, _Group] = {}

    def add(key: tuple, kind: Kind, unit: tuple[int, ...], region: str, chain_ops: tuple[str, ...] = (),
            unit_kind: str = "") -> None:
        g = groups.setdefault(key, _Group(kind, [], [], region, chain_ops, unit_kind))
        g.ops.extend(unit)
        g.units.append(unit)
        used.update(unit)

    for unit in materialized_attention(profile):
        ops = [by_index[i] for i in unit]
        add(("attention-math", ops[0].region, tuple(o.short_op for o in ops), tuple(o.shapes for o in ops)),
            Kind.ATTENTION, unit, ops[0].region)

    for unit in gathered_weights(profile):
        ops = [by_index[i] for i in unit]
        add(("gathered-experts", ops[0].region, tuple(o.shapes for o in ops), ops[1].dtype), Kind.MATMUL, unit,
            ops[0].region, unit_kind="gathered-experts")

    for unit in expert_loops(profile):
        unit = tuple(i for i in unit if i not in used)
        first = by_index[unit[0]]
        # every layer's loop of a region together (their shapes differ with the routing)
        add(("expert-loop", first.region, module_template(first.module)), Kind.MATMUL, unit, first.region,
            unit_kind="expert-loop")

    for chain in fusible_chains(profile, kinds, used, FUSION_MIN_OPS):
        ops = [by_index[i] for i in chain]
        names = tuple(o.short_op for o in ops)
        chain_kinds = [kinds[i] for i in chain]
        kind = max(dict.fromkeys(chain_kinds), key=chain_kinds.count)  # the most common kind in it
        add(("chain", ops[0].region, names, tuple(o.shapes for o in ops)), kind, chain, ops[0].region, names)

    for op in profile.ops:
        if op.index in used or diagnosis.verdicts[op.index].weight_s <= 0:
            continue
        add(("op", op.region, kinds[op.index], op.op, op.shapes, op.dtype, op.link, op.note), kinds[op.index],
            (op.index,), op.region)
    return list(groups.values())


def _weighted_label(verdicts: Sequence[Verdict]) -> Label:
    seconds = {label: 0.0 for label in Label}
    for v in verdicts:
        if v.weight_s > 0:
            seconds[v.label] += v.weight_s
    if not any(seconds.values()):
        return verdicts[0].label
    return max(Label, key=lambda label: seconds[label])


def _item(dtype: str) -> float:
    return TensorMeta.contiguous((1,), dtype).itemsize if dtype else 2.0


def _m_ridge(n: int, k: int, a_item: float, w_item: float, o_item: float, ridge: float) -> float:
    """Rows M at which a [M, K] x [K, N] GEMM's intensity reaches the ridge:
    2·M·N·K = ridge·(w·N·K + a·M·K + o·M·N)  =>  M = ridge·w·N·K / (2·N·K - ridge·(a·K + o·N))."""
    if not n or not k:
        return math.nan
    denom = 2 * n * k - ridge * (a_item * k + o_item * n)
    return ridge * w_item * n * k / denom if denom > 0 else math.inf


def _matmul_facts(op: OpRecord) -> dict:
    """M, N, K, the weight and its dtype, from the op's inputs."""
    name = op.short_op
    ins = [t for t in op.inputs if t.ndim >= 1]
    if not ins or not op.outputs:
        return {}
    out = op.outputs[0]
    if name in GROUPED_MATMUL_OPS:
        return _grouped_facts(op, ins)
    if name in BATCHED_MATMUL_OPS and len(ins) >= 2:
        a = ins[-2]
        return dict(m_rows=a.shape[-2] if a.ndim >= 2 else 1, k=a.shape[-1], n=out.shape[-1],
                    batch=a.shape[0] if a.ndim >= 3 else None, has_weight=False, weight_dtype=ins[-1].dtype)
    if name in ("addmm", "_addmm_activation", "addmv") and len(ins) >= 3:
        a, w = ins[1], ins[2]
    elif len(ins) >= 2:
        a, w = ins[0], ins[1]
    else:
        return {}
    weight_dtype = {"_weight_int4pack_mm": "int4", "_weight_int4pack_mm_for_cpu": "int4",
                    "_weight_int8pack_mm": "int8"}.get(name, w.dtype)
    m = math.prod(a.shape[:-1]) if a.ndim >= 2 else 1
    return dict(m_rows=m, k=a.shape[-1], n=out.shape[-1], has_weight=True, weight_dtype=weight_dtype,
                weight_bytes=w.bytes)


def _grouped_facts(op: OpRecord, ins: list[TensorMeta]) -> dict:
    """A mixture-of-experts GEMM, tokens [T, K] sorted by expert x weights [E, K, N]: each expert's
    GEMM has the rows routed to it, M = T/E on average, and reads its own [K, N] weight.  Its
    other forms (groups over K: a weight gradient; batched [E, M, K]) multiply no weight by
    tokens: no batch facts."""
    if len(ins) < 2 or ins[0].ndim != 2 or ins[1].ndim != 3:
        return {}
    a, w = ins[0], ins[1]
    e, k, n = w.shape
    rows = op.total_flops / (2 * k * n) if k and n else 0  # the rows really routed (the formula read offs)
    return dict(m_rows=max(1, round(rows / e)), k=k, n=n, has_weight=True, weight_dtype=w.dtype,
                weight_bytes=max(op.bytes_read - rows * k * a.itemsize, 0.0), experts=e)


def _loop_facts(g: _Group, by_index: Mapping[int, OpRecord]) -> dict:
    """An expert loop (groups.expert_loops), per module call on average: the expert matmuls, the
    kernels (ops that move or compute something) and the host syncs (_local_scalar_dense: a
    nonzero's size, an .item()) it runs."""
    n = len(g.units)
    ops = [by_index[i] for i in g.ops]
    return dict(loop_matmuls=round(sum(o.short_op in EXPERT_MATMUL_OPS and o.total_flops > 0 for o in ops) / n),
                loop_kernels=round(sum(o.bytes > 0 or o.total_flops > 0 for o in ops) / n),
                loop_syncs=round(sum(o.short_op == "_local_scalar_dense" for o in ops) / n))


def _gathered_facts(gather: OpRecord, mm: OpRecord, by_index: Mapping[int, OpRecord]) -> dict:
    """A gathered-experts pair (groups.gathered_weights): `gather` copies S of the E matrices of
    a [E, A, B] stack, one per routed token, and `mm` multiplies each copy by its token's rows.  A
    grouped GEMM over the tokens sorted by expert reads each expert's matrix once, in place: at most
    min(S, E) of them, with the same rows in and the same output out."""
    w = gather.inputs[0]
    e, a, b = w.shape
    s = gather.outputs[0].shape[0]
    pos = next(j for j, src in enumerate(mm.sources) if origin(src, by_index) == gather.index)
    x = mm.inputs[len(mm.inputs) - 1 if pos == len(mm.inputs) - 2 else len(mm.inputs) - 2]
    if pos == len(mm.inputs) - 2:  # the copy first: [S, A, B] @ [S, B, r]
        n, k, rows = a, b, x.shape[-1]
    else:  # [S, r, A] @ [S, A, B]
        k, n, rows = a, b, x.shape[-2]
    matrix = a * b * w.itemsize
    grouped = min(s, e) * matrix + x.bytes + mm.bytes_written
    return dict(m_rows=max(1, round(s * rows / e)), k=k, n=n, has_weight=True, weight_dtype=w.dtype,
                weight_bytes=min(s, e) * matrix, experts=e, gathered_rows=s, gathered_shape=tuple(w.shape),
                chain_bytes=gather.bytes + mm.bytes, fused_bytes=grouped)


def _attention_facts(op: OpRecord) -> dict:
    """q [B, Hq, Sq, D], k [B, Hkv, Sk, D] of a fused attention op ([B, S, H, D] for _flash_attention_forward;
    a backward's come after its dO)."""
    inputs = op.inputs[1:] if op.short_op.endswith("_backward") else op.inputs
    if len(inputs) < 3 or inputs[0].ndim < 3:
        return {}
    q, k, v = inputs[0], inputs[1], inputs[2]
    if op.short_op == "_flash_attention_forward" and q.ndim == 4:
        (b, sq, hq, _), (_, sk, hkv, _) = q.shape, k.shape
    else:
        b = math.prod(q.shape[:-3]) if q.ndim >= 4 else None
        hq, sq = q.shape[-3], q.shape[-2]
        hkv, sk = k.shape[-3], k.shape[-2]
    fused = "math" not in op.note and op.short_op not in ATTENTION_MATH_OPS
    reserved = None
    if k.storage_numel and b and hkv and k.shape[-1]:
        per_seq = k.storage_numel // (b * hkv * k.shape[-1])
        reserved = per_seq if per_seq > sk else None
    # causal: the cost formula read is_causal; a mask over (query, key) may be causal or padding
    masked = any(isinstance(t, TensorMeta) and t.ndim >= 2 and t.shape[-1] == sk and t.shape[-2] in (1, sq)
                 for t in inputs[3:])
    return dict(batch=b, sq=sq, sk=sk, hq=hq, hkv=hkv, fused=fused, kv_dtype=k.dtype,
                kv_bytes=k.bytes + v.bytes, kv_reserved=reserved, causal="causal" in op.note, masked=masked)


def _materialized_facts(ops: Sequence[OpRecord]) -> dict:
    """Facts of one materialized attention: the score bmm first, the PV bmm last."""
    softmax = next(o for o in ops if o.short_op in SOFTMAX_OPS)
    qk, pv = ops[0], ops[-1]
    scores = softmax.inputs[0]
    b, hq = (scores.shape[0], scores.shape[1]) if scores.ndim == 4 else (None, None)
    v = pv.inputs[-1] if len(pv.inputs) >= 2 else None
    fused = sum(t.bytes for t in qk.inputs[-2:]) + (v.bytes if v else 0) + pv.bytes_written
    chain = sum(o.bytes for o in ops)
    score_traffic = sum(o.bytes for o in ops[1:-1]) + qk.bytes_written + (pv.inputs[0].bytes if pv.inputs else 0)
    # a mask over (query, key) positions: an op between the two matmuls mixing in a [.., Sq, Sk] tensor
    sq_sk = scores.shape[-2:]
    masked = any(o.short_op in _MASKING_OPS and sum(t.shape[-2:] == sq_sk for t in o.inputs if t.ndim >= 2) >= 2
                 or o.short_op in ("masked_fill", "masked_fill_") for o in ops[1:-1])
    return dict(batch=b, hq=hq, sq=scores.shape[-2], sk=scores.shape[-1], fused=False, masked=masked,
                kv_dtype=v.dtype if v else "", fused_bytes=fused, chain_bytes=chain, score_bytes=score_traffic)


_MASKING_OPS = frozenset({"add", "add_", "where", "masked_fill", "masked_fill_"})


def _strided(op: OpRecord) -> tuple[str, ...]:
    """The op's inputs whose loads do not stream: not contiguous, and for a matrix product or an
    attention not unit-strided in either of its last two dims either.  GEMM and attention kernels
    read through strides as long as rows or columns are dense: a transposed weight (a Hugging
    Face MoE's experts reach _grouped_mm as [E, N, K] transposed views), a padded leading
    dimension, or attention's [B, H, S, D] view of a [B, S, H, D] projection."""
    out = []
    matrix = matrix_like(op.short_op)
    for t in op.inputs:
        if t.ndim >= 2 and t.numel > 1 and t.stride != TensorMeta.contiguous(t.shape).stride \
                and 0 not in t.stride and not (matrix and 1 in t.stride[-2:]):
            out.append(f"{t.short()} (strides {','.join(str(s) for s in t.stride)})")
    return tuple(out)


def _measured(profile: Profile) -> dict[int, tuple[float, float]]:
    """Per op: (DRAM bytes read, tensor-pipe FLOPs executed) from the counter pass, if any."""
    out: dict[int, tuple[float, float]] = {}
    if profile.counters is None:
        return out
    for k in profile.counters.kernels:
        if k.op_index < 0:
            continue
        tensor = sum(v for cls, v in k.flops.items() if is_tensor_pipe(cls))
        r, t = out.get(k.op_index, (0.0, 0.0))
        out[k.op_index] = (r + k.dram_read, t + tensor)
    return out


def _training_regions(profile: Profile) -> frozenset[str]:
    """The region paths that run backward or optimizer ops, with the regions holding them ("" the
    whole run): a training step's forward ops are in one too."""
    paths = {o.region for o in profile.ops if o.phase in TRAINING_PHASES}
    return frozenset(r for p in paths for r in ("", *region_and_ancestors(p, profile.regions)))


def _op_facts(g: _Group, by_index: Mapping[int, OpRecord], diagnosis: Diagnosis, ceilings: Ceilings,
              total_s: float, measured: Mapping[int, tuple[float, float]] | None = None,
              training: frozenset[str] = frozenset()) -> OpFacts:
    ops = [by_index[i] for i in g.ops]
    verdicts = [diagnosis.verdicts[i] for i in g.ops]
    seconds = sum(v.weight_s for v in verdicts if v.weight_s > 0)
    label = _weighted_label(verdicts)
    gathered = g.unit_kind == "gathered-experts"  # a gather and its matmul: the matmul speaks
    rep_i = max(g.ops[1::2] if gathered else g.ops, key=lambda i: diagnosis.verdicts[i].weight_s)
    rep, rep_v = by_index[rep_i], diagnosis.verdicts[rep_i]
    timed = [v for v in verdicts if not v.predicted and v.seconds > 0]
    attained = sum(v.max_floor_s for v in timed) / sum(v.seconds for v in timed) if timed else math.nan
    facts: dict = dict(
        kind=g.kind, label=label, attained=attained, seconds=seconds,
        share=seconds / total_s if total_s > 0 else 0.0, ops=tuple(g.ops), copies=len(g.units), region=g.region,
        op=rep.op, dtype=rep.dtype, roof_class=rep_v.roof_class or (rep.math_class or ""),
        flops=sum(o.total_flops for o in ops), bytes=sum(o.bytes for o in ops),
        compute_floor_s=sum(v.compute_floor_s for v in verdicts),
        memory_floor_s=sum(v.memory_floor_s for v in verdicts),
        comm_floor_s=sum(v.comm_floor_s for v in verdicts), evidence=_group_evidence(g, rep_v, seconds, total_s),
        comm_bytes=rep.comm_bytes, link=rep.link, direction=rep.note if rep.link == "pcie" else "",
        strided_inputs=_strided(rep), chain_ops=g.chain_ops,
        chain_phase=by_index[g.units[0][0]].phase if g.chain_ops else "",
        training=g.region in training or any(o.phase in TRAINING_PHASES for o in ops),
        counted=all(o.counted for o in ops),
    )
    if measured and all(i in measured for i in g.ops):  # every op of the group was read by the counters
        read = sum(o.bytes_read for o in ops)
        useful = sum(v for o in ops for cls, v in o.flops.items() if is_tensor_pipe(cls))
        if read > 0:
            facts["dram_read_ratio"] = sum(measured[i][0] for i in g.ops) / read
        if useful > 0:
            facts["executed_ratio"] = sum(measured[i][1] for i in g.ops) / useful
    if gathered:
        mf = _gathered_facts(*(by_index[i] for i in g.units[0]), by_index)
        mf["weight_bytes"] *= len(g.units)
        mf["m_ridge"] = _m_ridge(mf["n"], mf["k"], _item(rep.dtype), _item(mf["weight_dtype"]),
                                 _item(by_index[g.units[0][1]].dtype), _ridge(ceilings, facts["roof_class"]))
        facts.update(mf)
    elif g.unit_kind == "expert-loop":
        facts.update(_loop_facts(g, by_index))
    elif g.kind is Kind.MATMUL:
        mf = _matmul_facts(rep)
        if mf:
            per_op = mf.get("weight_bytes", 0.0)
            w_item = per_op / (mf["n"] * mf["k"] * mf.get("experts", 1)) if mf["has_weight"] and mf["n"] and mf["k"] \
                else _item(rep.dtype)
            out_item = rep.outputs[0].itemsize if rep.outputs else 2.0
            mf["weight_bytes"] = per_op * len(g.units)
            mf["m_ridge"] = _m_ridge(mf["n"], mf["k"], _item(rep.dtype), w_item, out_item,
                                     _ridge(ceilings, facts["roof_class"]))
            facts.update(mf)
    elif g.kind is Kind.ATTENTION and len(g.units[0]) > 1:
        facts.update(_materialized_facts([by_index[i] for i in g.units[0]]))
    elif g.kind is Kind.ATTENTION:
        af = _attention_facts(rep)
        if af:
            af["kv_bytes"] *= len(g.units)
            facts.update(af)
    if g.chain_ops:
        ops = [by_index[i] for i in g.units[0]]
        chain = sum(o.bytes for o in ops)
        passes = chain_passes(ops)
        if all(len(o.sources) == len(o.inputs) for o in ops):
            # which op made each input is known: a pass reads each tensor made outside it once
            fused = sum(_pass_reads(p, by_index) + p[-1].bytes_written for p in passes)
        elif len(passes) == 1:  # each op feeds the next: the first op's inputs in, the last one's output out
            fused = ops[0].bytes_read + ops[-1].bytes_written
        else:  # each pass reads at least what its heaviest reader reads (the data the reduction ran over, again)
            fused = sum(max(o.bytes_read for o in p) + p[-1].bytes_written for p in passes)
        facts.update(chain_bytes=chain, fused_bytes=min(fused, chain), chain_passes=len(passes),
                     chain_barrier=passes[0][-1].short_op if len(passes) > 1 else "")
    return OpFacts(**facts)


def _pass_reads(ops: Sequence[OpRecord], by_index: Mapping[int, OpRecord]) -> float:
    """Bytes one fused kernel over `ops` must read: each input made outside them, once (a tensor
    two ops read, a norm's x and weight, counts once; what an earlier op of them made, none)."""
    made: set[int] = set()
    seen: set[tuple] = set()
    reads = 0.0
    for o in ops:
        for t, s in zip(o.inputs, o.sources):
            src = origin(s, by_index)
            if src in made:
                continue
            key = (src, t.shape, t.dtype)  # (an op's outputs are told apart by shape and dtype)
            if key not in seen:
                seen.add(key)
                reads += t.bytes
        made.add(o.index)
    return reads


def _merged(facts: Sequence[OpFacts]) -> OpFacts:
    """Groups' facts as one (heaviest first): their ops, times, work and chains summed; the rest,
    the label included, from the group with most of the time."""
    if len(facts) == 1:
        return facts[0]
    top = facts[0]
    seconds = sum(f.seconds for f in facts)
    chains = sum(f.copies for f in facts)
    return replace(
        top, ops=tuple(i for f in facts for i in f.ops), seconds=seconds, share=sum(f.share for f in facts),
        copies=chains, flops=sum(f.flops for f in facts), bytes=sum(f.bytes for f in facts),
        compute_floor_s=sum(f.compute_floor_s for f in facts), memory_floor_s=sum(f.memory_floor_s for f in facts),
        comm_floor_s=sum(f.comm_floor_s for f in facts), chain_ops=tuple(o for f in facts for o in f.chain_ops),
        chain_bytes=sum(f.chain_bytes * f.copies for f in facts),
        evidence=f"{len(facts)} groups ({chains} chains or ops): {fmt_seconds(seconds)}; heaviest: {top.evidence}")


def _group_evidence(g: _Group, rep: Verdict, seconds: float, total_s: float) -> str:
    what = f"{len(g.chain_ops)}-op chain" if g.chain_ops else (
        "materialized attention" if g.kind is Kind.ATTENTION and len(g.units[0]) > 1 else
        {"gathered-experts": "gathered expert weights", "expert-loop": "experts one at a time"}.get(g.unit_kind)
        or str(g.kind))
    where = f" in {g.region}" if g.region else ""
    share = f", {seconds / total_s:.0%} of the run" if total_s > 0 else ""
    return f"{what} x{len(g.units)}{where}: {fmt_seconds(seconds)}{share}; heaviest op: {rep.evidence}"


def _region_facts(profile: Profile, diagnosis: Diagnosis, ceilings: Ceilings, region: str,
                  op_facts: Sequence[OpFacts], total_s: float, training: frozenset[str] = frozenset()) -> RegionFacts:
    r = diagnosis.region(region)
    ops = profile.select(region=region)
    attention = [_attention_facts(o) for o in ops if kind_of(o) is Kind.ATTENTION]
    attention = [a for a in attention if a]
    inside = [f for f in op_facts if region == "" or f.region == region or f.region.startswith(region + "/")]
    # materialized attentions too (SDPA's math path, an fp32 GQA, a hand-written softmax(QK^T)V)
    attention += [dict(batch=f.batch, sq=f.sq, sk=f.sk, causal=f.causal, masked=f.masked, kv_reserved=None)
                  for f in inside if f.kind is Kind.ATTENTION and not f.fused and f.sq is not None]
    matmuls = [f for f in inside if f.kind is Kind.MATMUL and f.has_weight]
    batch = next((a["batch"] for a in attention if a.get("batch")), None)
    if batch is None and matmuls:
        batch = min(f.m_rows for f in matmuls if f.m_rows is not None)
    heaviest = max(matmuls, key=lambda f: f.seconds, default=None)
    is_decode = "decode" in region.lower() or "generat" in region.lower() or (
        bool(attention) and all(a["sq"] <= DECODE_MAX_QUERY_ROWS for a in attention))
    # a prefill is a decoder's prompt: causal attention over many queries, or masked attention where
    # the same region also decodes (a padded batch's mask); an encoder's (BERT, ViT, Whisper's
    # encoder, nn.TransformerEncoder) attends both ways and has no KV cache to reuse
    decodes = any(a["sq"] <= DECODE_MAX_QUERY_ROWS for a in attention)
    is_prefill = "prefill" in region.lower() or any(
        a["sq"] > DECODE_MAX_QUERY_ROWS and (a["causal"] or (a["masked"] and decodes)) for a in attention)
    verdicts = [diagnosis.verdicts[i] for i in r.ops]
    kernels = [v for v in verdicts if not v.predicted and v.seconds > 0]
    reserved = next((a["kv_reserved"] for a in attention if a.get("kv_reserved")), None)
    used = max((a["sk"] for a in attention), default=None)
    total = r.total_seconds
    return RegionFacts(
        region=region, headline=r.headline, fractions=r.fractions, seconds=total,
        share=total / total_s if total_s > 0 else 0.0, idle_seconds=r.idle_seconds,
        idle_share=r.idle_seconds / total if total > 0 else 0.0, kernels=len(kernels),
        short_kernels=sum(1 for v in kernels if v.label is Label.OVERHEAD), is_decode=is_decode,
        is_prefill=is_prefill and not is_decode and region not in training, batch=batch,
        m_ridge=heaviest.m_ridge if heaviest else math.nan,
        kv_reserved=reserved, kv_used=used, evidence=summary(diagnosis, region), timed=diagnosis.timed,
        copied_experts_share=sum(f.seconds for f in inside if f.gathered_rows) / total if total > 0 else 0.0)


def _nested(a: str, b: str) -> bool:
    """One region path inside the other (or the same)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def advise(profile: Profile, diagnosis: Diagnosis, ceilings: Ceilings, top: int = 5,
           rules: Sequence[Rule] = RULES) -> tuple[Advice, ...]:
    """Advice for the `top` heaviest op groups (by time, or by largest floor without timing) and
    for the regions, heaviest first (by the time at stake).  An op rule gives one piece of advice
    however many groups it fires on (their ops merged); a region rule one per region it fires on,
    never for both a region and a region inside it."""
    kinds = op_kinds(profile)
    total_s = diagnosis.region("").total_seconds
    groups = sorted(_groups(profile, diagnosis, kinds),
                    key=lambda g: -sum(diagnosis.verdicts[i].weight_s for i in g.ops))
    by_index = {o.index: o for o in profile.ops}
    measured = _measured(profile)
    training = _training_regions(profile)
    facts = [_op_facts(g, by_index, diagnosis, ceilings, total_s, measured, training) for g in groups]
    facts = [f for f in facts if f.seconds > 0]

    found: dict[str, Advice] = {}
    rules = [r for r in rules if diagnosis.device_kind in r.devices]
    for f in facts[:top]:
        for rule in rules:
            if rule.scope != "op" or rule.every_group or not rule.applies(f):
                continue
            if rule.id in found:
                a = found[rule.id]
                found[rule.id] = replace(a, ops=a.ops + f.ops, seconds=a.seconds + f.seconds,
                                         share=a.share + f.share)
                continue
            found[rule.id] = Advice(rule.id, rule.recommendation, rule.effect(f, ceilings), rule.seed, f.label,
                                    str(f.kind), f.region, f.ops, f.seconds, f.share, f.evidence)

    # a rule speaking for all its groups: when one of them is among the heaviest, or all together
    # would be (weigh at least the top-th heaviest group)
    floor = facts[min(top, len(facts)) - 1].seconds if facts and top > 0 else math.inf
    for rule in rules:
        if rule.scope != "op" or not rule.every_group:
            continue
        hits = [(i, f) for i, f in enumerate(facts) if rule.applies(f)]
        if not hits:
            continue
        m = _merged([f for _, f in hits])
        if hits[0][0] < top or m.seconds >= floor:
            found[rule.id] = Advice(rule.id, rule.recommendation, rule.effect(m, ceilings), rule.seed, m.label,
                                    str(m.kind), m.region, m.ops, m.seconds, m.share, m.evidence)

    # regions: each rule on the named regions where it applies, heaviest first, skipping a region
    # nested in (or holding) one it already fired on; on the whole run only if no named region took it
    region_facts = {path: _region_facts(profile, diagnosis, ceilings, path, facts, total_s, training)
                    for path in diagnosis.regions}
    for rule in rules:
        if rule.scope != "region":
            continue

        def at_stake(path: str) -> float:
            return sum(diagnosis.regions[path].seconds_by_label[label] for label in rule.labels)

        applies = [p for p, rf in region_facts.items() if rf.seconds > 0 and rule.applies(rf)]
        fired: list[str] = []
        for path in sorted((p for p in applies if p), key=lambda p: -at_stake(p)):
            if not any(_nested(path, q) for q in fired):
                fired.append(path)
        if not fired and "" in applies:
            fired.append("")
        for path in fired:
            seconds = at_stake(path)
            label = max(rule.labels, key=lambda lab: diagnosis.regions[path].seconds_by_label[lab])
            found[f"{rule.id}@{path}"] = Advice(
                rule.id, rule.recommendation, rule.effect(region_facts[path], ceilings), rule.seed, label, "region",
                path, diagnosis.regions[path].ops, seconds, seconds / total_s if total_s > 0 else 0.0,
                region_facts[path].evidence)
    return tuple(sorted(found.values(), key=lambda a: -a.seconds))


__all__ = ["Kind", "Rule", "RULES", "Advice", "OpFacts", "RegionFacts", "advise", "kind_of", "op_kinds",
           "materialized_attention", "DECODE_MAX_QUERY_ROWS", "WEIGHT_ONLY_MAX_ROWS", "W8A8_MIN_ROWS",
           "LONG_CONTEXT_MIN_KEYS", "FLASH_DECODING_MAX_BLOCKS", "SPARSE_ATTENTION_MIN_KEYS", "FUSION_MIN_OPS",
           "REGION_SHARE", "IDLE_SHARE", "COPIED_EXPERTS_SHARE", "PAGEABLE_PCIE_ATTAINED", "HOST_SYNC_MAX_BYTES"]
