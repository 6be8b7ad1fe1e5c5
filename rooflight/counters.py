"""Counted against measured: rooflight's FLOPs and bytes beside Nsight Compute's counters.

`parse_csv` reads `ncu --import ... --csv --page raw --print-units base` (rooflight.ncu makes it);
`join` matches its kernels to the timed profile's (the same run's kernel order, names compared
by their function identifier) and so to the ops; `compare` sums them per op and explains each
ratio where a rule knows why:

- executed vs useful FLOPs: tensor pipes pad a small M (a GEMV runs 8x its FLOPs), a decode
  attention pads its single query row to a tile, causal attention computes the diagonal tiles
  whole, a backward recomputes the forward's scores;
- DRAM reads vs the modelled minimum: a compute-bound GEMM re-reads its operand tiles (2-3x),
  a multi-pass kernel (softmax, a norm) reads its input twice, a gather reads whole sectors;
  below the minimum, the model overcounts or the data came from L2;
- DRAM writes: an output that stays in the L2 at the kernel's end is written back later, by
  whichever kernel evicts it, so writes read low (ncu flushes before each replay, not after).

Pure: no torch, no subprocess.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from .errors import RooflightError
from .math_class import is_tensor_name
from .profile_data import Counters, KernelCounters, OpRecord, Profile
from .trace import align_to_ops


class CounterFormatError(RooflightError):
    """Nsight Compute output this reader does not understand."""


_TENSOR_CLASS = [  # (pattern in the metric name, math class)
    (r"src_bf16", "bf16_tensor"), (r"src_fp16_dst_fp16", "fp16_tensor_fp16_acc"), (r"src_fp16", "fp16_tensor"),
    (r"src_tf32", "tf32_tensor"), (r"src_fp8", "fp8_tensor"), (r"src_int8", "int8_tensor"),
    (r"src_int4", "int4_tensor"), (r"src_fp64|dmma", "fp64_tensor"),
]
_CORE_CLASS = {"f": "fp32", "h": "fp16", "d": "fp64"}
_CORE = re.compile(r"^smsp__sass_thread_inst_executed_op_([fhd])(add|mul|fma)_pred_on\.sum$")


def metric_class(metric: str) -> tuple[str, float] | None:
    """(math class, FLOPs per count) of a FLOP metric; None for a byte/time metric."""
    if metric.startswith("sm__ops_path_tensor") and metric.endswith(".sum"):
        for pat, cls in _TENSOR_CLASS:
            if re.search(pat, metric):
                return cls, 1.0  # the tensor-path op counters count an FMA as 2 already
        return "tensor", 1.0
    m = _CORE.match(metric)
    if m:
        return _CORE_CLASS[m.group(1)], 2.0 if m.group(2) == "fma" else 1.0
    return None


def _number(text: str) -> float:
    t = text.strip().replace(",", "")
    if t in ("", "n/a", "N/A", "-"):
        return 0.0
    return float(t)


@dataclass(frozen=True)
class NcuKernel:
    """One row of ncu's raw page: a kernel and its metrics."""

    id: int
    name: str
    flops: Mapping[str, float]
    dram_read: float
    dram_write: float
    l2_bytes: float
    seconds: float


def parse_csv(text: str) -> list[NcuKernel]:
    """ncu's raw CSV (`--csv --page raw`, any units row, numbers with thousands separators)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        raise CounterFormatError("the counter pass's output has no kernel table (no \"ID\" header): ncu profiled "
                                 "no kernel, or printed an error instead")
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    head = rows[0]
    col = {name: i for i, name in enumerate(head)}
    if "Kernel Name" not in col:
        raise CounterFormatError("the counter table has no 'Kernel Name' column")
    flop_cols = [(i, metric_class(n)) for n, i in col.items() if metric_class(n) is not None]
    out = []
    for r in rows[1:]:
        if len(r) != len(head) or not r[col["ID"]].strip():  # the units row, a cut line
            continue
        get = lambda name: _number(r[col[name]]) if name in col else 0.0  # noqa: E731
        flops: dict[str, float] = {}
        for i, (cls, per) in flop_cols:
            v = _number(r[i]) * per
            if v:
                flops[cls] = flops.get(cls, 0.0) + v
        out.append(NcuKernel(int(_number(r[col["ID"]])), r[col["Kernel Name"]], flops, get("dram__bytes_read.sum"),
                             get("dram__bytes_write.sum"), get("lts__t_bytes.sum"),
                             get("gpu__time_duration.sum") * 1e-9))
    return out


def kernel_key(name: str) -> str:
    """A kernel's function identifier, as both CUPTI (torch.profiler) and ncu spell it: the last
    name before its template or argument list ("void at::native::foo<4>(int)" -> "foo")."""
    n = name.strip().replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    if n.startswith("void "):
        n = n[5:]
    cut = min((i for i in (n.find("<"), n.find("(")) if i >= 0), default=len(n))
    return n[:cut].split("::")[-1].strip()


def join(profile: Profile, kernels: Sequence[NcuKernel], *, tool: str, metrics: Sequence[str] = (),
         notes: Sequence[str] = (), same_as: Mapping[int, int] | None = None) -> Counters:
    """Join the counter pass's kernels to the profile's ops, by the order of the timed run's
    kernels (Timing.kernels, already joined to ops); names are compared by kernel_key.

    `same_as` (op index -> the earlier op that made the same call): the pass measured only the
    first op of each distinct call, so only those ops' kernels are in `kernels`; each other op gets
    its first's counters, marked `measured_on`."""
    ref = [k for k in (profile.timing.kernels if profile.timing else ()) if k.kind == "kernel"]
    if same_as:
        ref = [k for k in ref if k.op_index not in same_as]
    # the timing's own alignment: a run of kernels standing in for one op's (another algorithm
    # picked this time) is joined to that op; anything else unmatched keeps op -1
    _, owner = align_to_ops([kernel_key(k.name) for k in ref], [k.op_index for k in ref],
                            [kernel_key(k.name) for k in kernels])
    out = tuple(KernelCounters(o, k.name, dict(k.flops), k.dram_read, k.dram_write, k.l2_bytes, k.seconds)
                for k, o in zip(kernels, owner))
    notes = list(notes)
    lost = sum(1 for o in owner if o < 0)
    if lost:
        notes.append(f"{lost} of {len(kernels)} kernels of the counter pass could not be joined to an op (not in the "
                     "timed run's kernel sequence); they are left out of per-op figures")
    if len(kernels) != len(ref):
        notes.append(f"the counter pass measured {len(kernels)} kernels where the timed run ran {len(ref)}"
                     + (" (of the ops measured)" if same_as else ""))
    if same_as:
        of_op: dict[int, list[KernelCounters]] = {}
        for kc in out:
            of_op.setdefault(kc.op_index, []).append(kc)
        copies = tuple(replace(kc, op_index=op, measured_on=first) for op, first in sorted(same_as.items())
                       for kc in of_op.get(first, ()))
        if copies:
            firsts = len(set(same_as.values()))
            notes.append(f"{len(out)} kernels measured, of each distinct call's first op; {len(copies)} more kernels "
                         f"of {len(same_as)} ops that made one of {firsts} of those calls again (the same op on the "
                         "same argument shapes, strides and dtypes: a model's repeated layers, a loop's repeated "
                         "steps) show their first op's counters (measured_on); ncu flushes the caches before "
                         "each kernel, so a repeat would read the same counters")
        out = tuple(sorted(out + copies, key=lambda k: (k.op_index < 0, k.op_index)))
    return Counters(tool, out, tuple(metrics), notes=tuple(notes))


def attach(profile: Profile, counters: Counters) -> Profile:
    return replace(profile, counters=counters)


# ---------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """One op (or a group of ops): counted beside measured, with each ratio's explanation."""

    name: str
    ops: tuple[int, ...]
    kernels: int
    useful_tensor: float  # counted tensor FLOPs
    executed_tensor: float  # tensor-pipe counters
    useful_core: float  # counted non-tensor FLOPs
    executed_core: float  # CUDA-core add/mul/fma (FMA = 2)
    model_read: float
    dram_read: float
    model_write: float
    dram_write: float
    l2_bytes: float
    why: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tensor_ratio(self) -> float:
        return self.executed_tensor / self.useful_tensor if self.useful_tensor else math.nan

    @property
    def read_ratio(self) -> float:
        return self.dram_read / self.model_read if self.model_read else math.nan

    @property
    def write_ratio(self) -> float:
        return self.dram_write / self.model_write if self.model_write else math.nan

    @property
    def measured_intensity(self) -> float:
        """Executed FLOPs per DRAM byte (reads and writes)."""
        moved = self.dram_read + self.dram_write
        return (self.executed_tensor + self.executed_core) / moved if moved else math.nan

    @property
    def l2_intensity(self) -> float:
        return (self.executed_tensor + self.executed_core) / self.l2_bytes if self.l2_bytes else math.nan


def is_tensor_pipe(cls: str) -> bool:
    """A FLOP class of the tensor pipes: a tensor math class, or a counter's "tensor" of no known
    precision."""
    return cls == "tensor" or is_tensor_name(cls)


def _attention_facts(o: OpRecord) -> tuple[int, int] | None:
    """(query length, key length) of an attention op, when its inputs say so."""
    if "attention" not in o.op or len(o.inputs) < 2:
        return None
    q, k = o.inputs[0], o.inputs[1]
    if len(q.shape) < 3 or len(k.shape) < 3:
        return None
    if "_flash_attention_forward" in o.op and len(q.shape) == 4:
        return q.shape[1], k.shape[1]
    return q.shape[-2], k.shape[-2]


def _gemm_m(o: OpRecord) -> int | None:
    short = o.op.split("::")[-1].split(".")[0]
    if short in ("mm", "addmm", "matmul", "linear", "bmm", "baddbmm", "_scaled_mm", "_int_mm", "_weight_int8pack_mm",
                 "_weight_int4pack_mm", "_weight_int4pack_mm_for_cpu") and o.inputs:
        x = o.inputs[1] if short in ("addmm", "baddbmm") and len(o.inputs) > 2 else o.inputs[0]
        if len(x.shape) >= 2:
            return math.prod(x.shape[:-1]) if short not in ("bmm", "baddbmm") else x.shape[-2]
    return None


def explain(ops: Sequence[OpRecord], c: "Comparison", l2_mb: float | None = None) -> tuple[str, ...]:
    """Why the measured figures differ from the counted ones, where a rule knows."""
    why = []
    r = c.tensor_ratio
    att = next((f for f in (_attention_facts(o) for o in ops) if f), None)
    m = next((x for x in (_gemm_m(o) for o in ops) if x), None)
    backward = any(o.phase == "backward" for o in ops)
    if r == r and r > 1.05:
        if m is not None and m < 64:
            why.append(f"padding: the GEMM has M = {m} rows and the tensor-core tile is larger, so it executes "
                       f"{r:.1f}x its useful FLOPs; the time is the weights' bytes either way (still memory-bound)")
        elif (att is not None and att[0] <= 16) or any("decode" in o.op for o in ops):
            why.append(f"padding: a decode attention's {att[0] if att else 1} query row(s) per head fill a tensor-core tile "
                       f"({r:.1f}x the useful FLOPs); it stays bound by reading the KV cache")
        elif backward and att is not None:
            why.append(f"recomputation: the attention backward recomputes the scores ({r:.2f}x the FLOPs counted)")
        elif att is not None:
            why.append(f"causal masking at tile granularity: the diagonal tiles compute masked scores too "
                       f"({r:.2f}x the useful FLOPs)")
        else:
            why.append(f"executes {r:.2f}x the useful tensor FLOPs: padding to the tile, or recomputation")
    elif r == r and r < 0.95:
        why.append(f"the tensor pipes executed {r:.2f}x the FLOPs counted: the formula overcounts (or the work ran "
                   "on a pipe outside the metric set)")
    elif c.useful_tensor == 0 and c.executed_tensor > 0:
        why.append("tensor-pipe work where rooflight counted none (a kernel doing its arithmetic on tensor cores)")
    rr = c.read_ratio
    heavy = c.useful_tensor > 0 and c.model_read and c.useful_tensor / c.model_read > 100
    short = {o.op.split("::")[-1].split(".")[0] for o in ops}
    if rr == rr and c.model_read > 1e6:
        if rr > 1.3 and heavy:
            why.append(f"tile re-reads: DRAM reads are {rr:.1f}x the minimum (each operand tile is read again by "
                       "every tile row/column that does not find it in L2); normal for a compute-bound GEMM")
        elif rr > 1.3 and short & {"_softmax", "softmax", "_log_softmax", "native_layer_norm", "layer_norm",
                                   "_fused_rms_norm", "rms_norm"}:
            why.append(f"multi-pass kernel: it reads its input {rr:.1f}x (a pass for the statistics, one to "
                       "normalize) where the L2 cannot hold the rows between passes")
        elif rr > 1.3:
            why.append(f"reads {rr:.1f}x its minimum bytes: a tiling or caching problem (re-reads, a gather by "
                       "sectors), not a bandwidth one")
        elif rr > 1.05 and c.kernels > 1:
            extra = (c.dram_read - c.model_read) / 1e6
            why.append(f"reads {rr:.2f}x the modelled bytes: its {c.kernels} kernels pass partial results through "
                       f"memory (split-K / split-KV partials, a workspace: ~{extra:.1f} MB beyond the inputs)")
        elif rr < 0.7:
            why.append(f"DRAM reads are {rr:.2f}x the modelled bytes: part of the input came from L2, or the model "
                       "counts a broadcast or repeated read the kernel serves from cache")
        else:
            why.append(f"DRAM reads match the modelled bytes ({rr:.2f}x)")
    wr = c.write_ratio
    if wr == wr and c.model_write > 1e6 and wr < 0.8:
        fits = f" ({c.model_write / 1e6:.0f} MB fits in the {l2_mb:.0f} MB L2)" if l2_mb and c.model_write < l2_mb * 1e6 else ""
        why.append(f"writes read low ({wr:.2f}x): the output stays in the L2 at the kernel's end{fits} and is "
                   "written back later, by whichever kernel evicts it")
    return tuple(why)


def compare(profile: Profile, *, by: str = "op", l2_mb: float | None = None) -> list[Comparison]:
    """Counted beside measured, per op (by="op") or per op group (by="group": same op and module
    template, as rooflight.groups names them), in the order the ops ran."""
    from .groups import module_template

    if profile.counters is None:
        return []
    per_op: dict[int, list[KernelCounters]] = {}
    for k in profile.counters.kernels:
        if k.op_index >= 0:
            per_op.setdefault(k.op_index, []).append(k)
    ops = {o.index: o for o in profile.ops}
    buckets: dict[str, list[int]] = {}
    for idx in sorted(per_op):
        o = ops.get(idx)
        if o is None:
            continue
        key = f"{module_template(o.module) + ' ' if o.module else ''}{o.short_op}"
        name = f"#{idx} {key}" if by == "op" else key
        buckets.setdefault(name, []).append(idx)
    out = []
    for name, idxs in buckets.items():
        members = [ops[i] for i in idxs]
        ks = [k for i in idxs for k in per_op[i]]
        ut = sum(v for o in members for c, v in o.flops.items() if is_tensor_pipe(c))
        uc = sum(v for o in members for c, v in o.flops.items() if not is_tensor_pipe(c))
        et = sum(v for k in ks for c, v in k.flops.items() if is_tensor_pipe(c))
        ec = sum(v for k in ks for c, v in k.flops.items() if not is_tensor_pipe(c))
        c = Comparison(name, tuple(idxs), len(ks), ut, et, uc, ec, sum(o.bytes_read for o in members),
                       sum(k.dram_read for k in ks), sum(o.bytes_written for o in members),
                       sum(k.dram_write for k in ks), sum(k.l2_bytes for k in ks))
        out.append(replace(c, why=explain(members, c, l2_mb)))
    return out


__all__ = ["Comparison", "CounterFormatError", "NcuKernel", "attach", "compare", "explain", "is_tensor_pipe", "join",
           "kernel_key",
           "metric_class", "parse_csv"]
