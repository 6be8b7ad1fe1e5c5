"""The one grouping of ops: layer templates, op groups, op kinds, fusible chains.

A 32-layer model runs the same ops at the same place of every layer; rooflight shows them as one
group (`layers.*.attention.wq mm ×32`): `module_template` turns a module path into its layer
template and `group_ops` buckets ops by template, op, math class, dtype and outermost region
(or a coarser key: `by=("module", "op")` is what a baseline keeps).  The analysis, the baseline
check, the projection chart and the advice all group through here.

`kind_of`/`op_kinds` name what an op is (matmul, attention, norm, ...) from its name, with the
context a name cannot give (a materialized attention's bmm-softmax-bmm, a decomposed norm), and
`fusible_chains` finds runs of fusible ops.  Pure functions of a profile (and, for groups'
labels and times, its diagnosis).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Mapping, Sequence

from .classify import Diagnosis
from .costs.model import TensorMeta
from .math_class import is_tensor_name
from .profile_data import OpRecord, Profile, region_and_ancestors
from .roofline import intensity

# ---------------------------------------------------------------------------- layer templates

_LAYER = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def module_template(path: str) -> str:
    """`layers.3.attention.wq` -> `layers.*.attention.wq`."""
    return _LAYER.sub("*", path)


# ---------------------------------------------------------------------------- op groups


@dataclass(frozen=True)
class OpGroup:
    """Ops that are the same work at the same place of each layer: `layers.*.attention.wq mm`."""

    name: str
    module: str  # module path with layer indexes as '*'
    op: str  # short op name
    indices: tuple[int, ...]
    flops: float
    bytes: float
    comm_bytes: float
    seconds: float  # measured (sum), or the largest floor (sum) for a count-only profile
    label: str  # the label holding most of the group's time
    math_class: str
    dtype: str
    shapes: str  # of the first member

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def intensity(self) -> float:
        return intensity(self.flops, self.bytes)

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds if self.seconds > 0 else math.nan


KEY_FIELDS = ("module", "op", "math_class", "dtype", "region")


def has_work(o: OpRecord) -> bool:
    """Counted and moving or computing something: views and other free ops are left out."""
    return o.counted and not (o.total_flops == 0 and o.bytes == 0 and o.comm_bytes == 0)


def group_ops(profile: Profile, diagnosis: Diagnosis | None = None, *, by: Sequence[str] = KEY_FIELDS,
              keep: Callable[[OpRecord], bool] = has_work,
              region_of: Callable[[OpRecord], str] | None = None) -> tuple[OpGroup, ...]:
    """Merge ops that repeat across layers, heaviest first.

    by: which of KEY_FIELDS make a group (module template, short op name, math class, dtype,
    outermost region, or what `region_of` says: a script's step kind).  keep: which ops take part
    (default: counted ops that do some work).
    With a diagnosis, a group's seconds are its ops' measured times (or largest floors for a
    count-only profile) and its label the one holding most of that time; without, 0 and "".
    """
    unknown = [f for f in by if f not in KEY_FIELDS]
    if unknown:
        raise ValueError(f"group_ops: unknown key fields {unknown}; choose from {KEY_FIELDS}")
    buckets: dict[tuple, list[OpRecord]] = {}
    for o in profile.ops:
        if not keep(o):
            continue
        if region_of is not None:
            where = region_of(o)
        else:
            outer = region_and_ancestors(o.region, profile.regions)
            where = outer[0] if outer else ""
        module = module_template(o.module)
        if module and o.phase in ("backward", "recompute", "no-grad"):  # (a backward op sits in the module it differentiates)
            module += f" ({o.phase})"
        elif not module and o.phase != "forward":
            # in no module: an optimizer's step, or autograd's own work (accumulating .grad), apart
            # from the forward's loose ops of the same name
            module = f"({o.phase})"
        full = {"module": module, "op": o.short_op, "math_class": o.math_class, "dtype": o.dtype, "region": where}
        buckets.setdefault(tuple(full[f] for f in by), []).append(o)
    tops = {dict(zip(by, k)).get("region", "") for k in buckets}
    groups = []
    for key, ops in buckets.items():
        k = dict(zip(by, key))
        module, op, region = k.get("module", ""), k.get("op", ""), k.get("region", "")
        seconds: dict[str, float] = {}
        label = ""
        if diagnosis is not None:
            for o in ops:
                v = diagnosis.verdicts[o.index]
                w = v.weight_s if not math.isnan(v.weight_s) else 0.0
                seconds[str(v.label)] = seconds.get(str(v.label), 0.0) + w
            label = max(seconds, key=seconds.get) if sum(seconds.values()) > 0 \
                else str(diagnosis.verdicts[ops[0].index].label)
        total = sum(seconds.values())
        where = f"{region}: " if region and len(tops) > 1 else ""
        name = f"{where}{module + ' ' if module else ''}{op}" + (f" ×{len(ops)}" if len(ops) > 1 else "")
        groups.append(OpGroup(name, module, op, tuple(o.index for o in ops), sum(o.total_flops for o in ops),
                              sum(o.bytes for o in ops), sum(o.comm_bytes for o in ops), total, label,
                              k.get("math_class", ops[0].math_class), k.get("dtype", ops[0].dtype), ops[0].shapes))
    groups.sort(key=lambda g: (-g.seconds, -g.bytes))
    return tuple(groups)


# ---------------------------------------------------------------------------- op kinds


class Kind(str, Enum):
    MATMUL = "matmul"
    ATTENTION = "attention"
    ELEMENTWISE = "elementwise"  # pointwise ops and reductions
    NORM = "norm"
    SOFTMAX = "softmax"
    EMBEDDING = "embedding"  # embedding lookups and indexing (gather, scatter, index_copy)
    COPY = "copy"  # copies, casts, concatenation, factories on the device
    TRANSFER = "transfer"  # host<->device over PCIe
    COLLECTIVE = "collective"  # GPU<->GPU
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


FUSIBLE = frozenset({Kind.ELEMENTWISE, Kind.NORM, Kind.SOFTMAX, Kind.COPY})

MATMUL_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mv", "addmv", "dot", "_addmm_activation",
                         "_scaled_mm", "_int_mm", "_weight_int8pack_mm", "_weight_int4pack_mm",
                         "_weight_int4pack_mm_for_cpu", "_grouped_mm", "_scaled_grouped_mm"})
BATCHED_MATMUL_OPS = frozenset({"bmm", "baddbmm", "matmul"})  # both operands are activations
GROUPED_MATMUL_OPS = frozenset({"_grouped_mm", "_scaled_grouped_mm"})  # mixture-of-experts: one GEMM per expert
SOFTMAX_OPS = frozenset({"softmax", "_softmax", "_safe_softmax", "log_softmax", "_log_softmax"})
NORM_OPS = frozenset({"layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "group_norm",
                       "native_group_norm", "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                       "_native_batch_norm_legit_no_training", "_batch_norm_with_update", "_batch_norm_no_update"})
EMBEDDING_OPS = frozenset({"embedding", "embedding_bag", "_embedding_bag", "index_select", "gather", "index",
                            "index_put", "index_put_", "_index_put_impl_", "scatter", "scatter_", "scatter_add",
                            "scatter_add_", "scatter_reduce", "index_copy", "index_copy_", "index_add",
                            "index_add_", "take"})
ATTENTION_MATH_OPS = frozenset({"_scaled_dot_product_attention_math"})




def kind_of(op: OpRecord) -> Kind:
    """An op's kind from its name, link and cost alone (no context)."""
    name = op.short_op
    if op.link == "pcie":
        return Kind.TRANSFER
    if op.link == "peer" or op.comm_bytes:
        return Kind.COLLECTIVE
    if name in MATMUL_OPS:
        return Kind.MATMUL
    if "attention" in name:
        return Kind.ATTENTION
    if name in SOFTMAX_OPS:
        return Kind.SOFTMAX
    if name in NORM_OPS:
        return Kind.NORM
    if name in EMBEDDING_OPS:
        return Kind.EMBEDDING
    if op.flops and not any(is_tensor_name(c) for c in op.flops):
        return Kind.ELEMENTWISE
    if name == "_local_scalar_dense":  # .item() off the GPU: the host waits for a value, no kernel to fuse
        return Kind.OTHER
    if not op.flops and op.bytes > 0:
        return Kind.COPY
    return Kind.OTHER


def materialized_attention(profile: Profile, window: int = 24) -> list[tuple[int, ...]]:
    """Groups of op indexes that compute attention with a score matrix in memory: a softmax over
    a [.., Sq, Sk] tensor, the nearest earlier matmul of the same module that produced [.., Sq, Sk]
    (QKᵀ) and the nearest later one that consumes it (PV), within `window` ops; with everything
    of that module between them (scaling, masking, casts)."""
    ops = profile.ops
    groups: list[tuple[int, ...]] = []
    claimed: set[int] = set()
    for pos, op in enumerate(ops):
        if op.short_op not in SOFTMAX_OPS or not op.inputs or op.inputs[0].ndim < 2 or pos in claimed:
            continue
        sq_sk = op.inputs[0].shape[-2:]
        if sq_sk[-1] <= 1:
            continue

        def same(o: OpRecord) -> bool:
            return o.module == op.module and o.region == op.region

        start = next((p for p in range(pos - 1, max(pos - window, -1), -1)
                      if same(ops[p]) and ops[p].short_op in MATMUL_OPS and ops[p].outputs
                      and ops[p].outputs[0].shape[-2:] == sq_sk), None)
        end = next((p for p in range(pos + 1, min(pos + window, len(ops)))
                    if same(ops[p]) and ops[p].short_op in MATMUL_OPS and ops[p].inputs
                    and ops[p].inputs[0].shape[-2:] == sq_sk), None)
        if start is None or end is None:
            continue
        members = tuple(p for p in range(start, end + 1) if same(ops[p]))
        claimed.update(members)
        groups.append(tuple(ops[p].index for p in members))
    return groups


def _through_views(source: int, by_index: Mapping[int, OpRecord]) -> tuple[list[OpRecord], int]:
    """An input's data (an OpRecord.sources entry) followed back through the views (ops that move
    nothing) in between: those views, nearest first, and the source they start from."""
    views: list[OpRecord] = []
    while source >= 0 and len(views) < 64:
        op = by_index.get(source)
        if op is None or op.flops or op.bytes or not op.sources:
            break
        views.append(op)
        source = op.sources[0]
    return views, source


def origin(source: int, by_index: Mapping[int, OpRecord]) -> int:
    """The op that made an input's data: through the views in between."""
    return _through_views(source, by_index)[1]


_INTEGER_DTYPES = frozenset({"int64", "int32", "int16", "int8", "uint8"})


def _gathers_matrices(op: OpRecord) -> bool:
    """`w[ids]` over a stack of matrices: an index of a 3-D [E, A, B] tensor by one 1-D integer
    tensor of S ids, copying S whole [A, B] matrices out (a mixture of experts that copies each
    routed token's expert weight: Hugging Face's batched_mm experts, gate_up_proj[expert_ids])."""
    if op.short_op != "index" or len(op.inputs) != 2 or not op.outputs:
        return False
    w, ids, out = op.inputs[0], op.inputs[1], op.outputs[0]
    return (w.ndim == 3 and ids.ndim == 1 and ids.dtype in _INTEGER_DTYPES and min(w.shape[1:]) > 1
            and out.shape == (ids.shape[0], *w.shape[1:]))


def gathered_weights(profile: Profile) -> list[tuple[int, int]]:
    """(gather, matmul) op-index pairs: a `_gathers_matrices` index whose copy a batched matmul
    (bmm, baddbmm, matmul) of the same region reads as one operand: S copies of E matrices, each
    multiplied by its own token's rows, where a grouped GEMM would read each matrix once in place."""
    by_index = {o.index: o for o in profile.ops}
    pairs: list[tuple[int, int]] = []
    claimed: set[int] = set()
    for op in profile.ops:
        if op.short_op not in BATCHED_MATMUL_OPS or not op.sources:
            continue
        for s in op.sources[-2:]:  # the two matrix operands (baddbmm's self comes first)
            g = by_index.get(origin(s, by_index))
            if g is not None and g.index not in claimed and g.region == op.region and _gathers_matrices(g):
                pairs.append((g.index, op.index))
                claimed.add(g.index)
                break
    return pairs


def _stack_slice(source: int, by_index: Mapping[int, OpRecord]) -> OpRecord | None:
    """The `select` of a 3-D [E, A, B] stack that an input is a view of (through the views in
    between: a transpose), or None: one expert's matrix of a stacked experts' weight, w[e]."""
    return next((v for v in _through_views(source, by_index)[0]
                 if v.short_op == "select" and v.inputs and v.inputs[0].ndim == 3), None)


EXPERT_MATMUL_OPS = frozenset({"mm", "addmm", "linear", "matmul", "_addmm_activation"})  # one expert's, in a loop


def expert_loops(profile: Profile) -> list[tuple[int, ...]]:
    """Op-index units, one per module call that runs its experts one at a time: two or more
    matmuls of one module whose weights are matrices of one [E, A, B] stack (`w[e]`: Hugging
    Face's eager experts, `for e in experts_hit: linear(x[tokens], gate_up_proj[e])`).  A unit is
    every op of that module (and of its direct submodules: its activation) in that region: the routing, its host syncs
    (nonzero, .item()), each expert's gather, matmuls and scatter-add."""
    by_index = {o.index: o for o in profile.ops}
    slices: dict[tuple[str, str], dict[tuple, int]] = {}  # (region, module) -> stack -> matmuls
    for op in profile.ops:
        if op.short_op not in EXPERT_MATMUL_OPS or not op.sources or not op.module:
            continue
        for s in op.sources[-2:]:
            stack = _stack_slice(s, by_index)
            if stack is not None:
                key = (stack.sources[0] if stack.sources else -1, stack.inputs[0].shape)
                per = slices.setdefault((op.region, op.module), {})
                per[key] = per.get(key, 0) + 1
                break
    loops = {k for k, per in slices.items() if max(per.values()) >= 2}
    units: dict[tuple[str, str], list[int]] = {k: [] for k in loops}
    for op in profile.ops:
        for region, module in ((op.region, op.module), (op.region, op.module.rsplit(".", 1)[0])):
            if (region, module) in units:
                units[(region, module)].append(op.index)
                break
    return [tuple(u) for u in units.values() if u]


def op_kinds(profile: Profile) -> dict[int, Kind]:
    """Every op's kind, with context: ops of a materialized attention are ATTENTION, elementwise
    ops inside a module whose type ends in "Norm" (a decomposed RMSNorm) are NORM."""
    kinds = {op.index: kind_of(op) for op in profile.ops}
    for op in profile.ops:
        if kinds[op.index] is Kind.ELEMENTWISE and op.module_type.endswith("Norm"):
            kinds[op.index] = Kind.NORM
    for group in materialized_attention(profile):
        for i in group:
            kinds[i] = Kind.ATTENTION
    return kinds


def fusible_chains(profile: Profile, kinds: Mapping[int, Kind], used: set[int], min_ops: int) -> list[tuple[int, ...]]:
    """Runs of `min_ops` or more consecutive fusible ops in one region and one phase (a
    backward's last ops and the optimizer step after it are not one kernel's work); ops that move
    and compute nothing (views) neither join nor break a run."""
    chains: list[tuple[int, ...]] = []
    run: list[int] = []
    region = phase = None

    def close() -> None:
        if len(run) >= min_ops:
            chains.append(tuple(run))
        run.clear()

    for op in profile.ops:
        if not op.flops and not op.bytes and not op.comm_bytes:
            continue  # a view: no kernel
        fusible = kinds[op.index] in FUSIBLE and op.index not in used
        if not fusible or op.region != region or op.phase != phase:
            close()
        region, phase = op.region, op.phase
        if fusible:
            run.append(op.index)
    close()
    return chains


# A reduction to one value per tensor over more than this many bytes cannot finish inside one
# thread block (an SM holds ~228 KB of shared memory on an H100): the whole grid must finish it
# before an op that uses its result can start, so a fused kernel still makes a second pass over
# the data (clip_grad_norm_'s norm, then its scale; an fp8 cast's amax, then the scaled cast).
GLOBAL_REDUCTION_MIN_BYTES = 256 * 1024


def _global_reduction(op: OpRecord) -> bool:
    outs = [t for t in op.outputs if isinstance(t, TensorMeta)]
    return bool(outs) and all(t.numel <= 1 for t in outs) and op.bytes_read > GLOBAL_REDUCTION_MIN_BYTES


def chain_passes(ops: Sequence[OpRecord]) -> list[list[OpRecord]]:
    """A fusible chain cut after each global reduction whose result a later op of the chain could
    use on as much data: one list per pass a fused kernel must still make over memory (one list,
    the whole chain, when every op could run in one pass)."""
    # the last op that reads as much as a global reduction does: a reduction before it cuts
    last_big = max((i for i, o in enumerate(ops) if o.bytes_read > GLOBAL_REDUCTION_MIN_BYTES), default=-1)
    passes: list[list[OpRecord]] = [[]]
    for i, op in enumerate(ops):
        passes[-1].append(op)
        if i < last_big and _global_reduction(op):
            passes.append([])
    return passes if ops else []


__all__ = ["ATTENTION_MATH_OPS", "BATCHED_MATMUL_OPS", "EMBEDDING_OPS", "EXPERT_MATMUL_OPS", "FUSIBLE",
           "GLOBAL_REDUCTION_MIN_BYTES", "GROUPED_MATMUL_OPS", "KEY_FIELDS", "Kind", "MATMUL_OPS", "NORM_OPS",
           "OpGroup", "SOFTMAX_OPS", "chain_passes", "expert_loops", "fusible_chains", "gathered_weights",
           "group_ops", "has_work", "kind_of", "materialized_attention", "module_template", "op_kinds", "origin"]
