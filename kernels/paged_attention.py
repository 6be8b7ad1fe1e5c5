"""Paged decode attention: one Triton kernel over a block-table KV cache that reads each K/V
block it needs once per step, also the blocks several sequences share, and splits long
sequences across programs (flash-decoding).

Layouts:

    q:            [B, Hq, D]                 the new token of each sequence
    k/v cache:    [num_blocks, Hkv, P, D]    P tokens per block; a (block, kv head) tile is P*D
                                             contiguous elements (4 KiB at P=16, D=128, bf16)
    block_tables: [B, max_blocks] int32      logical block j of sequence b -> physical block
    seq_lens:     [B] int32                  tokens in each sequence's cache, new one included
    out:          [B, Hq, D]

Plan, then run (as FlashInfer does).  `plan()` looks at the block tables once per batch
composition, on the host, and makes WORK ITEMS: (the sequences that read a token range, the
block-table row it is read through, first token, end token).  Then:

- a sequence alone is one item: [0, seq_len) of its own row;
- sequences of one prompt whose tables start with the same physical blocks (copy-on-write
  sharing) get ONE item for the shared tokens, whose query rows are every member's query heads:
  the shared blocks are loaded once and meet all of those queries; each member then has its own
  item for the rest (the shared-prefix, "cascade" scheme);
- when the items are too few to fill the GPU (small batch, long context), each is cut into
  token ranges of equal length (flash-decoding), rounded to the kernel's tile.

The kernel runs a grid of (items, kv heads).  A program holds, as the rows of its query tile,
the GROUP = Hq/Hkv query heads of its kv head for each sequence of its item (GQA heads share the
K/V loads; the rows are padded to 16 for the tensor cores), walks its token range TILE_N tokens
at a time, and keeps an online softmax in fp32.  Each tile gathers its blocks through the block
table; the block ids are loaded one tile ahead, so that no K/V address waits on a load of its
own iteration and Triton's pipeliner can keep num_stages - 1 tiles of K and V in flight
(16-byte cp.async copies into shared memory, checked in the sm_90 TTGIR/PTX by the tests).  One
pass over K and V.  An item that is a whole sequence writes the output; otherwise it writes a
partial output and its log-sum-exp, which a second small kernel merges.

Bytes per step (the cost formula registered below): the K/V token rows the items read (a shared
block once), q, the block-table entries used, the plan, and the outputs; FLOPs are the useful
ones, 4*D per (query head, cache token) pair plus the softmax's 5 (the padding rows of a tile
are not counted).  Both come from the plan (`Plan.kv_tokens` etc.), which the op takes as
arguments, so the formula stays a pure function of the call.

Off the GPU the same op runs the Triton kernel through Triton's interpreter when
TRITON_INTERPRET=1 is set (slow: tests at small sizes), or else a plain PyTorch version of the
same plan (what `rooflight profile --device cpu` runs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Sequence

import torch

import rooflight
from rooflight.costs import OpCall, OpCost
from rooflight.costs.registry import lookup
from rooflight.math_class import MathClass

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU machine without Triton: the PyTorch path only
    triton = None
    tl = None

LOG2E = 1.4426950408889634
H100_SMS = 132  # the plan's default on a machine without a GPU: count for the GPU rooflight is pointed at
MAX_ROWS = 128  # query rows (sequences x GROUP) of one program: more sequences share a prefix -> more items
MIN_SPLIT_TOKENS = 256  # a split shorter than this costs more to merge than it gains


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """What the kernel does for one batch composition (see the module docstring).

    item_info[i] = (block-table row, first token, end token, first slot, sequences): the item's
    query rows are the sequences item_seqs[first slot : first slot + sequences]; each
    (item, sequence) pair is a SLOT, which owns one partial output when `direct` is False.
    """

    item_info: torch.Tensor  # [items, 5] int32
    item_seqs: torch.Tensor  # [slots] int32
    merge_ptr: torch.Tensor  # [B + 1] int32: sequence b's slots are merge_slots[merge_ptr[b]:merge_ptr[b + 1]]
    merge_slots: torch.Tensor  # [slots] int32
    launches: tuple[tuple[int, int, int], ...]  # kernel launches: (first item, items, sequences per item, a power of 2)
    direct: bool  # every sequence is one item of its own: the kernel writes the output itself
    batch: int
    page_size: int
    kv_tokens: int  # token rows read per kv head, summed over items (a shared block's once)
    kv_pages: int  # block-table entries read, summed over items
    attended_tokens: int  # sum of seq_lens: (query head, token) pairs per query head
    max_parts: int  # most slots of one sequence
    shared_tokens: int  # tokens read once on behalf of several sequences
    split_tokens: int  # tokens per split (0: no split)

    @property
    def n_items(self) -> int:
        return int(self.item_info.shape[0])

    @property
    def n_slots(self) -> int:
        return int(self.item_seqs.shape[0])

    def to(self, device: torch.device | str) -> "Plan":
        return replace(self, item_info=self.item_info.to(device), item_seqs=self.item_seqs.to(device),
                       merge_ptr=self.merge_ptr.to(device), merge_slots=self.merge_slots.to(device))

    def describe(self) -> str:
        parts = [f"{self.n_items} items"]
        if self.shared_tokens:
            parts.append(f"{self.shared_tokens} shared tokens read once")
        if self.split_tokens:
            parts.append(f"KV split every {self.split_tokens} tokens")
        parts.append("direct output" if self.direct else f"merge of up to {self.max_parts} partials")
        return ", ".join(parts)


def num_sms(device: torch.device | str | None = None) -> int:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H100_SMS


def plan(block_tables: torch.Tensor, seq_lens: torch.Tensor | Sequence[int], *, page_size: int, n_heads: int,
         n_kv_heads: int, share_prefix: bool = True, splits: int | str = "auto", sms: int | None = None,
         tile_n: int = 64, device: torch.device | str | None = None) -> Plan:
    """The work items for one decode step of this batch (host-side; reuse it while the batch's
    block tables keep their shared prefixes).  splits: "auto" (cut long items when there are
    fewer than two programs per SM, or when some items are over twice the mean length), 1
    (never), or n (cut the longest item into n, and the others at the same length)."""
    bt = block_tables.detach().to("cpu", torch.int64)
    lens = [int(x) for x in (seq_lens.tolist() if isinstance(seq_lens, torch.Tensor) else seq_lens)]
    batch = len(lens)
    if bt.shape[0] != batch:
        raise ValueError(f"block_tables has {bt.shape[0]} rows for {batch} sequences")
    if n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads do not group evenly over {n_kv_heads} kv heads")
    if any(n > bt.shape[1] * page_size for n in lens):
        raise ValueError("a sequence is longer than its block table holds")
    group = n_heads // n_kv_heads
    device = torch.device(device) if device is not None else block_tables.device

    # 1. segments: (members, block-table row, first token, end token)
    segments: list[tuple[list[int], int, int, int]] = []
    own_start = [0] * batch
    shared_tokens = 0
    if share_prefix:
        by_first: dict[int, list[int]] = {}
        for b, n in enumerate(lens):
            if n > 0:
                by_first.setdefault(int(bt[b, 0]), []).append(b)
        per_item = max(1, MAX_ROWS // group)
        for members in by_first.values():
            if len(members) < 2:
                continue
            used = min(math.ceil(lens[m] / page_size) for m in members)
            rows = bt[members, :used]
            same = (rows == rows[0]).all(dim=0)
            common = int(used if bool(same.all()) else int(torch.nonzero(~same)[0]))
            shared = min(common * page_size, min(lens[m] for m in members))
            if shared <= 0:
                continue
            for i in range(0, len(members), per_item):
                segments.append((members[i:i + per_item], members[0], 0, shared))
            shared_tokens += shared
            for m in members:
                own_start[m] = shared
    for b, n in enumerate(lens):
        if n > own_start[b]:
            segments.append(([b], b, own_start[b], n))

    # 2. splits (flash-decoding): cut long segments when the segments are too few to fill the
    # GPU twice over, or too unequal for the short ones to hide the long ones
    lengths = [e - s for _, _, s, e in segments]
    total, longest = sum(lengths), max(lengths, default=0)
    chunk = 0
    if splits == "auto":
        target = 2 * (sms or num_sms(device))
        balanced = longest <= 2 * total / max(len(segments), 1)
        if not (len(segments) * n_kv_heads >= target and balanced):
            chunk = max(MIN_SPLIT_TOKENS, math.ceil(total / math.ceil(target / n_kv_heads)))
    elif int(splits) > 1:
        chunk = math.ceil(longest / int(splits))
    elif int(splits) < 1:
        raise ValueError(f"splits={splits!r}: use 'auto' or a count >= 1")
    items: list[tuple[list[int], int, int, int]] = []
    split = 0
    for members, row, s, e in segments:
        pieces = math.ceil((e - s) / chunk) if chunk else 1
        step = max(tile_n, math.ceil((e - s) / pieces / tile_n) * tile_n) if pieces > 1 else e - s
        if step < e - s:
            split = max(split, step)
        for t in range(s, e, step):
            items.append((members, row, t, min(t + step, e)))

    # 3. one launch (query rows for the largest item), slots, merge lists
    seqs_p2 = _pow2(max((len(m) for m, *_ in items), default=1))
    info, seqs = [], []
    for members, row, s, e in items:
        info.append((row, s, e, len(seqs), len(members)))
        seqs.extend(members)
    launches = [(0, len(items), seqs_p2)] if items else []
    slots_of: list[list[int]] = [[] for _ in range(batch)]
    for slot, b in enumerate(seqs):
        slots_of[b].append(slot)
    direct = all(len(m) == 1 for m, *_ in items) and all(len(s) == 1 for s in slots_of)
    merge_ptr = [0]
    for s in slots_of:
        merge_ptr.append(merge_ptr[-1] + len(s))
    i32 = dict(dtype=torch.int32)
    return Plan(
        item_info=torch.tensor(info, **i32).reshape(-1, 5).to(device),
        item_seqs=torch.tensor(seqs, **i32).to(device),
        merge_ptr=torch.tensor(merge_ptr, **i32).to(device),
        merge_slots=torch.tensor([x for s in slots_of for x in s], **i32).to(device),
        launches=tuple(launches), direct=direct, batch=batch, page_size=page_size,
        kv_tokens=sum(e - s for _, _, s, e in items),
        kv_pages=sum(math.ceil(e / page_size) - s // page_size for _, _, s, e in items),
        attended_tokens=sum(lens), max_parts=max((len(s) for s in slots_of), default=1),
        shared_tokens=shared_tokens, split_tokens=split,
    )


# ---------------------------------------------------------------------------- the kernels


def _decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, info_ptr, seqs_ptr, o_ptr, lse_ptr, scale_log2,
                   stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                   stride_bt, stride_ob, stride_oh, stride_lb,
                   HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                   PAGE: tl.constexpr, TILE_N: tl.constexpr, DIRECT: tl.constexpr, UPCAST: tl.constexpr):
    item = tl.program_id(0)
    kvh = tl.program_id(1)
    info = info_ptr + item * 5
    bt_row = tl.load(info)
    tok_start = tl.load(info + 1)
    tok_end = tl.load(info + 2)
    slot0 = tl.load(info + 3)
    n_seqs = tl.load(info + 4)

    # query rows: GROUP heads of kv head `kvh` for each sequence of the item
    rows = tl.arange(0, BLOCK_M)
    member = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    row_ok = member < n_seqs
    seq = tl.load(seqs_ptr + slot0 + member, mask=row_ok, other=0)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(q_ptr + seq[:, None].to(tl.int64) * stride_qb + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:  # Triton's interpreter (3.6-3.9) computes bf16 dots wrongly: fp32 there
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, TILE_N)
    bt_base = bt_ptr + bt_row.to(tl.int64) * stride_bt
    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    # the block ids of the next tile are loaded one iteration ahead, so that the K/V addresses of a
    # tile never wait on a load of the same iteration
    next_page = tl.load(bt_base + (tok_start + offs_n) // PAGE, mask=tok_start + offs_n < tok_end, other=0)
    for start in range(tok_start, tok_end, TILE_N):
        tok = start + offs_n
        ok = tok < tok_end
        page = next_page.to(tl.int64)
        ahead = tok + TILE_N
        next_page = tl.load(bt_base + ahead // PAGE, mask=ahead < tok_end, other=0)
        slot = (tok % PAGE).to(tl.int64)
        kv_ok = ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + page[:, None] * stride_kb + slot[:, None] * stride_kt + d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(v_base + page[:, None] * stride_vb + slot[:, None] * stride_vt + d[None, :], mask=kv_ok, other=0.0)
        if UPCAST:  # full fp32 dots in the interpreter
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2
        else:
            s = tl.dot(q, tl.trans(k)) * scale_log2  # [BLOCK_M, TILE_N], log2 units
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if UPCAST:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out = acc / l_i[:, None]
    st_ok = row_ok[:, None] & d_ok[None, :]
    if DIRECT:  # the item is the whole sequence: the final output
        dst = seq.to(tl.int64)
        tl.store(o_ptr + dst[:, None] * stride_ob + head[:, None] * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=st_ok)
    else:  # a partial: normalized output and log2-sum-exp, merged by the combine kernel
        dst = (slot0 + member).to(tl.int64)
        tl.store(o_ptr + dst[:, None] * stride_ob + head[:, None] * stride_oh + d[None, :], out, mask=st_ok)
    tl.store(lse_ptr + dst * stride_lb + head, m_i + tl.log2(l_i), mask=row_ok)


def _combine_kernel(o_ptr, lse_ptr, ptr_ptr, slots_ptr, out_ptr, stride_ob, stride_oh, stride_lb,
                    stride_xb, stride_xh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MAX_PARTS: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    first = tl.load(ptr_ptr + b)
    n = tl.load(ptr_ptr + b + 1) - first
    parts = tl.arange(0, MAX_PARTS)
    ok = parts < n
    slot = tl.load(slots_ptr + first + parts, mask=ok, other=0).to(tl.int64)
    lse = tl.load(lse_ptr + slot * stride_lb + h, mask=ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))
    w = tl.where(ok, w, 0.0)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    o = tl.load(o_ptr + slot[:, None] * stride_ob + h * stride_oh + d[None, :], mask=ok[:, None] & d_ok[None, :],
                other=0.0)
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + b.to(tl.int64) * stride_xb + h * stride_xh + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


# TRITON_INTERPRET=1 must be set before Triton is imported: the interpreter replaces triton.language's
# own jit functions (tl.zeros, tl.sum, ...) at import time, so it is a choice per process
INTERPRET = triton is not None and os.environ.get("TRITON_INTERPRET", "0") == "1"
if triton is not None:
    _decode_jit, _combine_jit = triton.jit(_decode_kernel), triton.jit(_combine_kernel)


@dataclass(frozen=True)
class Config:
    """Launch settings of the decode kernel (0 = the default for the shape)."""

    tile_n: int = 64  # tokens per loop step: 64 x D=128 x bf16 = 16 KiB of K and as much of V
    num_warps: int = 0  # 4 for up to 32 query rows, else 8
    num_stages: int = 3  # loads in flight ahead of the math

    def resolved(self, block_m: int) -> tuple[int, int, int]:
        return self.tile_n, self.num_warps or (4 if block_m <= 32 else 8), self.num_stages


def interpreting() -> bool:
    """Whether CPU tensors go through the Triton kernels (in Triton's interpreter): this process
    was started with TRITON_INTERPRET=1 and Triton is installed."""
    return INTERPRET


def _launch_decode(q, k_cache, v_cache, block_tables, item_info, item_seqs, launches, scale, direct, n_slots,
                   config: Config = Config()) -> tuple[torch.Tensor, torch.Tensor]:
    batch, n_heads, head_dim = q.shape
    n_kv = k_cache.shape[1]
    group = n_heads // n_kv
    rows_out = batch if direct else n_slots
    o = torch.empty(rows_out, n_heads, head_dim, device=q.device, dtype=q.dtype if direct else torch.float32)
    lse = torch.empty(rows_out, n_heads, device=q.device, dtype=torch.float32)
    kernel = _decode_jit
    for first, count, seqs_p2 in launches:
        block_m = max(16, _pow2(seqs_p2 * group))
        tile_n, warps, stages = config.resolved(block_m)
        kernel[(count, n_kv)](
            q, k_cache, v_cache, block_tables, item_info[first:first + count], item_seqs, o, lse, scale * LOG2E,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
            o.stride(0), o.stride(1), lse.stride(0),
            head_dim, GROUP=group, BLOCK_M=block_m, BLOCK_D=max(16, _pow2(head_dim)), PAGE=k_cache.shape[2],
            TILE_N=tile_n, DIRECT=direct, UPCAST=INTERPRET, num_warps=warps, num_stages=stages)
    return o, lse


def _launch_combine(o_part, lse_part, merge_ptr, merge_slots, max_parts, out_dtype) -> torch.Tensor:
    batch, (n_heads, head_dim) = merge_ptr.shape[0] - 1, o_part.shape[1:]
    out = torch.empty(batch, n_heads, head_dim, device=o_part.device, dtype=out_dtype)
    _combine_jit[(batch, n_heads)](
        o_part, lse_part, merge_ptr, merge_slots, out, o_part.stride(0), o_part.stride(1), lse_part.stride(0),
        out.stride(0), out.stride(1), head_dim, BLOCK_D=max(16, _pow2(head_dim)), MAX_PARTS=max(2, _pow2(max_parts)),
        num_warps=4)
    return out


# ---------------------------------------------------------------------------- the PyTorch version


def _decode_torch(q, k_cache, v_cache, block_tables, item_info, item_seqs, scale, direct, n_slots):
    """The kernel's work item by item, in PyTorch (fp32 math): the CPU path, and a readable spec."""
    batch, n_heads, head_dim = q.shape
    n_kv, page = k_cache.shape[1], k_cache.shape[2]
    group = n_heads // n_kv
    rows_out = batch if direct else n_slots
    o = torch.empty(rows_out, n_heads, head_dim, device=q.device, dtype=q.dtype if direct else torch.float32)
    lse = torch.empty(rows_out, n_heads, device=q.device, dtype=torch.float32)
    for row, t0, t1, slot0, n in item_info.tolist():
        tok = torch.arange(t0, t1, device=q.device)
        pages = block_tables[row, tok // page].long()
        k = k_cache[pages, :, tok % page].float()  # [T, Hkv, D]
        v = v_cache[pages, :, tok % page].float()
        members = item_seqs[slot0:slot0 + n].long()
        qq = q[members].float().view(n, n_kv, group, head_dim)
        s = torch.einsum("nhgd,thd->nhgt", qq, k) * scale
        m = s.amax(-1, keepdim=True)
        p = torch.exp(s - m)
        total = p.sum(-1, keepdim=True)
        out = (torch.einsum("nhgt,thd->nhgd", p, v) / total).reshape(n, n_heads, head_dim)
        dst = members if direct else torch.arange(slot0, slot0 + n, device=q.device)
        o[dst] = out.to(o.dtype)
        lse[dst] = ((m + torch.log(total)) * LOG2E).reshape(n, n_heads)
    return o, lse


def _combine_torch(o_part, lse_part, merge_ptr, merge_slots, out_dtype):
    batch = merge_ptr.shape[0] - 1
    out = torch.empty(batch, *o_part.shape[1:], device=o_part.device, dtype=out_dtype)
    ptr = merge_ptr.tolist()
    for b in range(batch):
        slots = merge_slots[ptr[b]:ptr[b + 1]].long()
        lse = lse_part[slots]  # [parts, H]
        w = torch.exp2(lse - lse.amax(0, keepdim=True))
        out[b] = ((o_part[slots] * w[..., None]).sum(0) / w.sum(0)[..., None]).to(out_dtype)
    return out


# ---------------------------------------------------------------------------- the ops


def _define_ops():
    """torch.library ops (one dispatch each, so rooflight costs them with the formulas below);
    defined once per process even if this file is imported under two names."""
    ns = torch.ops.rooflight_kernels
    if hasattr(ns, "paged_decode"):
        return ns.paged_decode, ns.paged_decode_combine

    @torch.library.custom_op("rooflight_kernels::paged_decode", mutates_args=())
    def paged_decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                        item_info: torch.Tensor, item_seqs: torch.Tensor, launches: list[int], config: list[int],
                        scale: float, direct: bool, n_slots: int, kv_tokens: int, kv_pages: int,
                        attended_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        groups = [tuple(launches[i:i + 3]) for i in range(0, len(launches), 3)]
        if q.device.type == "cuda" or interpreting():
            if triton is None:
                raise RuntimeError("the paged decode kernel needs Triton (pip install triton)")
            return _launch_decode(q, k_cache, v_cache, block_tables, item_info, item_seqs, groups, scale, direct,
                                  n_slots, Config(*config))
        return _decode_torch(q, k_cache, v_cache, block_tables, item_info, item_seqs, scale, direct, n_slots)

    @paged_decode_op.register_fake
    def _(q, k_cache, v_cache, block_tables, item_info, item_seqs, launches, config, scale, direct, n_slots,
          kv_tokens, kv_pages, attended_tokens):
        rows = q.shape[0] if direct else n_slots
        return (q.new_empty(rows, q.shape[1], q.shape[2], dtype=q.dtype if direct else torch.float32),
                q.new_empty(rows, q.shape[1], dtype=torch.float32))

    @torch.library.custom_op("rooflight_kernels::paged_decode_combine", mutates_args=())
    def combine_op(o_part: torch.Tensor, lse_part: torch.Tensor, merge_ptr: torch.Tensor, merge_slots: torch.Tensor,
                   max_parts: int, out_dtype: torch.dtype) -> torch.Tensor:
        if o_part.device.type == "cuda" or interpreting():
            return _launch_combine(o_part, lse_part, merge_ptr, merge_slots, max_parts, out_dtype)
        return _combine_torch(o_part, lse_part, merge_ptr, merge_slots, out_dtype)

    @combine_op.register_fake
    def _(o_part, lse_part, merge_ptr, merge_slots, max_parts, out_dtype):
        return o_part.new_empty(merge_ptr.shape[0] - 1, o_part.shape[1], o_part.shape[2], dtype=out_dtype)

    return ns.paged_decode, ns.paged_decode_combine


_paged_decode_op, _combine_op = _define_ops()


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 the_plan: Plan, *, scale: float | None = None, config: Config = Config()) -> torch.Tensor:
    """Attention of each sequence's new token over its paged KV cache: [B, Hq, D]."""
    if q.ndim != 3 or k_cache.ndim != 4 or k_cache.shape != v_cache.shape:
        raise ValueError("q: [B, Hq, D]; k_cache, v_cache: [num_blocks, Hkv, page, D]")
    if k_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("the head dimension of q and of the caches must be contiguous")
    if k_cache.shape[2] != the_plan.page_size:
        raise ValueError(f"the plan was made for {the_plan.page_size}-token blocks, the cache has {k_cache.shape[2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    launches = [x for group in the_plan.launches for x in group]
    o, lse = _paged_decode_op(q, k_cache, v_cache, block_tables, the_plan.item_info, the_plan.item_seqs, launches,
                              [config.tile_n, config.num_warps, config.num_stages], scale, the_plan.direct,
                              the_plan.n_slots, the_plan.kv_tokens, the_plan.kv_pages, the_plan.attended_tokens)
    if the_plan.direct:
        return o
    return _combine_op(o, lse, the_plan.merge_ptr, the_plan.merge_slots, the_plan.max_parts, q.dtype)


def paged_decode_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                        the_plan: Plan, *, scale: float | None = None, config: Config = Config()) -> torch.Tensor:
    """The same kernels launched directly, without the torch.library op's dispatch (benchmarks)."""
    if triton is None or (q.device.type != "cuda" and not INTERPRET):
        raise RuntimeError("the Triton kernels run on a CUDA GPU, or on the CPU in a process started with "
                           "TRITON_INTERPRET=1 (Triton installed); paged_decode() has a PyTorch path for the CPU")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    o, lse = _launch_decode(q, k_cache, v_cache, block_tables, the_plan.item_info, the_plan.item_seqs,
                            the_plan.launches, scale, the_plan.direct, the_plan.n_slots, config)
    if the_plan.direct:
        return o
    return _launch_combine(o, lse, the_plan.merge_ptr, the_plan.merge_slots, the_plan.max_parts, q.dtype)


# ---------------------------------------------------------------------------- cost formulas


def paged_decode_cost(call: OpCall) -> OpCost:
    # (q [B, Hq, D], k_cache [N, Hkv, P, D], v_cache [N, Hkv, P, Dv], block_tables [B, M], item_info [I, 5],
    #  item_seqs [S], launches, config, scale, direct, n_slots, kv_tokens, kv_pages, attended_tokens)
    #  -> (out [B or S, Hq, Dv], lse [B or S, Hq])
    q, kc, vc, bt, info, seqs = (call.arg(i) for i in range(6))
    kv_tokens, kv_pages, attended = (int(call.arg(i, name)) for i, name in
                                     ((11, "kv_tokens"), (12, "kv_pages"), (13, "attended_tokens")))
    hq, d = q.shape[-2], q.shape[-1]
    hkv, dv = kc.shape[1], vc.shape[-1]
    kv_bytes = kv_tokens * hkv * (d * kc.itemsize + dv * vc.itemsize)  # each token row read once per step
    reads = q.bytes + kv_bytes + kv_pages * bt.itemsize + info.bytes + seqs.bytes
    writes = sum(t.bytes for t in call.outputs)
    pairs = attended * hq  # useful (query head, cache token) pairs: padding rows of a tile not counted
    flops = {q.matrix_class(): 2 * pairs * (d + dv), MathClass.FP32: 5 * pairs}
    group = hq // max(hkv, 1)
    kind = "MHA" if group == 1 else ("MQA" if hkv == 1 else f"GQA {group}:1")
    direct = bool(call.arg(9, "direct"))
    note = (f"paged decode attention (Triton), {kind}: {kv_tokens} KV token rows per head read once, "
            f"{'direct output' if direct else 'partials merged by paged_decode_combine'}")
    return OpCost(flops, reads, writes, note=note)


def combine_cost(call: OpCall) -> OpCost:
    # (o_part [S, Hq, D] fp32, lse_part [S, Hq] fp32, merge_ptr [B + 1], merge_slots [S], max_parts, out_dtype)
    #  -> out [B, Hq, D]: per (slot, head) a weight exp2(lse - max) and D multiply-adds
    o_part, lse_part, ptr, slots = (call.arg(i) for i in range(4))
    n_slots, hq, d = o_part.shape
    flops = {MathClass.FP32: n_slots * hq * (2 * d + 3)}
    reads = o_part.bytes + lse_part.bytes + ptr.bytes + slots.bytes
    return OpCost(flops, reads, call.out.bytes, note=f"merge of {n_slots} partial outputs by log-sum-exp")


for _key, _formula in (("rooflight_kernels::paged_decode", paged_decode_cost),
                       ("rooflight_kernels::paged_decode_combine", combine_cost)):
    if lookup(_key) is None:
        rooflight.register_cost(_key)(_formula)


# ---------------------------------------------------------------------------- building a cache


@dataclass(frozen=True)
class PagedCache:
    k_cache: torch.Tensor  # [num_blocks, Hkv, P, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [B, max_blocks] int32
    seq_lens: torch.Tensor  # [B] int32

    @property
    def page_size(self) -> int:
        return int(self.k_cache.shape[2])

    def referenced_blocks(self) -> set[int]:
        """The distinct physical blocks the sequences use (a shared block once)."""
        used = set()
        for row, n in zip(self.block_tables.tolist(), self.seq_lens.tolist()):
            used.update(row[:math.ceil(n / self.page_size)])
        return used

    def gather(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence b's keys and values in order: [Hkv, seq_len, D] each."""
        n = int(self.seq_lens[b])
        tok = torch.arange(n, device=self.k_cache.device)
        pages = self.block_tables[b, tok // self.page_size].long()
        k = self.k_cache[pages, :, tok % self.page_size]  # [n, Hkv, D]
        v = self.v_cache[pages, :, tok % self.page_size]
        return k.transpose(0, 1), v.transpose(0, 1)


def build_cache(batch: int, context: int, *, n_kv_heads: int, head_dim: int, page_size: int = 16,
                prefix: int = 0, samples: int = 1, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.bfloat16, seed: int = 0, lens: Sequence[int] | None = None) -> PagedCache:
    """A paged cache of `batch` sequences of `context` tokens (or `lens`), in physical blocks
    placed in random order.  With samples > 1, consecutive groups of `samples` sequences come
    from one prompt: they share the blocks holding its first `prefix` tokens (whole blocks; the
    prompt's last partial block is copied into each sequence, as copy-on-write does when a
    sequence first writes to it)."""
    if batch % samples:
        raise ValueError(f"batch {batch} is not a whole number of prompts of {samples} samples")
    lens = list(lens) if lens is not None else [context] * batch
    if prefix > min(lens):
        raise ValueError(f"prefix {prefix} is longer than a sequence ({min(lens)} tokens)")
    gen = torch.Generator().manual_seed(seed)
    shared_blocks = prefix // page_size if samples > 1 else 0
    need = [math.ceil(n / page_size) for n in lens]
    n_blocks = sum(need) - (batch - batch // samples) * shared_blocks
    perm = torch.randperm(n_blocks, generator=gen).tolist()
    next_block = iter(perm)
    max_blocks = max(need)
    table = torch.zeros(batch, max_blocks, dtype=torch.int32)
    for p in range(batch // samples):
        common = [next(next_block) for _ in range(shared_blocks)]
        for s in range(samples):
            b = p * samples + s
            own = [next(next_block) for _ in range(need[b] - shared_blocks)]
            table[b, :need[b]] = torch.tensor(common + own, dtype=torch.int32)
    shape = (n_blocks, n_kv_heads, page_size, head_dim)
    values = torch.Generator(device=device).manual_seed(seed)  # drawn where they live: GBs on a GPU in ms
    k = torch.randn(shape, generator=values, device=device, dtype=dtype)
    v = torch.randn(shape, generator=values, device=device, dtype=dtype)
    return PagedCache(k, v, table.to(device), torch.tensor(lens, dtype=torch.int32, device=device))


def reference(q: torch.Tensor, cache: PagedCache, scale: float | None = None) -> torch.Tensor:
    """Each sequence's attention gathered token by token from its block table, in float64."""
    batch, n_heads, head_dim = q.shape
    n_kv = cache.k_cache.shape[1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty(batch, n_heads, head_dim, dtype=torch.float64, device=q.device)
    for b in range(batch):
        k, v = (t.double() for t in cache.gather(b))  # [Hkv, n, D]
        qq = q[b].double().view(n_kv, n_heads // n_kv, head_dim)
        p = torch.softmax(qq @ k.transpose(-1, -2) * scale, dim=-1)  # [Hkv, G, n]
        out[b] = (p @ v).reshape(n_heads, head_dim)
    return out


__all__ = ["Config", "PagedCache", "Plan", "build_cache", "combine_cost", "interpreting", "num_sms", "paged_decode",
           "paged_decode_cost", "paged_decode_triton", "plan", "reference"]
