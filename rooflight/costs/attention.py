"""Attention: scaled-dot-product attention in every backend, and flex attention.

Shapes (batch dims may be more than one; they multiply):

    q: [B, Hq, Sq, D]   k: [B, Hkv, Sk, D]   v: [B, Hkv, Sk, Dv]   out: [B, Hq, Sq, Dv]

A FUSED kernel (flash, memory-efficient, cuDNN, flex) never writes the score matrix: it reads
q, k, v (and a mask if one is given) once and writes the output once.  For GQA/MQA the k/v
tensors hold Hkv heads, so their bytes are the KV heads' bytes, not the query heads'.

Work is counted as the kernel does it:
- every query row of a tile meets every key column of each key tile it visits, so FLOPs are
  2·D + 2·Dv per (query, key) pair visited (QKᵀ and PV on tensor cores), and 5 fp32 vector
  FLOPs per pair for the online softmax (scale, max, subtract, exp, sum);
- a causal kernel skips the key tiles wholly above the diagonal and computes the diagonal
  tiles in full: with 128x128 tiles at 2048 tokens that is 136 of 256 tiles, 53.1% of the full
  formula (an H100's tensor counters read 53%, while torch.utils.flop_counter counts 100%);
- a block-sparse flex attention visits the blocks its BlockMask lists (partial and full);
- an explicit dense mask does not save work: the kernel computes every score and masks it.
A MATH (materializing) attention is not costed here: it decomposes into bmm, softmax and
friends, which the capture counts op by op, score matrix and all.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import CountError
from ..math_class import MathClass
from .model import OpCall, OpCost, Settings, TensorMeta
from .registry import aten, register_cost

SOFTMAX_FLOPS_PER_SCORE = 5
FUSED_BACKENDS = ("flash", "efficient", "cudnn", "flex", "cpu-flash", "overrideable")


def causal_pairs(sq: int, sk: int, variant: str, tile: tuple[int, int]) -> int:
    """(query, key) pairs a tiled causal kernel computes, per batch and head.

    variant "upper_left": query i sees keys 0..i (torch's is_causal=True);
    "lower_right": query i sees keys 0..i+(Sk-Sq) (CausalBias lower-right, decoding with a cache).
    A key tile is visited if any key in it is visible to the tile's last query row.
    """
    bm, bn = tile
    offset = sk - sq if variant == "lower_right" else 0
    pairs = 0
    for start in range(0, sq, bm):
        rows = min(bm, sq - start)
        last_visible = start + rows - 1 + offset  # highest key index any row of the tile sees
        if last_visible < 0:
            continue
        key_tiles = min(math.ceil((last_visible + 1) / bn), math.ceil(sk / bn))
        pairs += rows * min(sk, key_tiles * bn)
    return pairs


def useful_causal_pairs(sq: int, sk: int, variant: str) -> int:
    """The exact number of unmasked (query, key) pairs: what a perfect kernel would compute."""
    offset = sk - sq if variant == "lower_right" else 0
    return sum(min(max(i + offset + 1, 0), sk) for i in range(sq))


def attention_flops(pairs: float, d: int, dv: int, matrix_class: MathClass) -> dict[MathClass, float]:
    """FLOPs of a fused attention forward over `pairs` (query, key) scores: QK^T and PV, 2·D + 2·Dv
    per pair on the matrix class (plain fp32 without TF32, which is also the softmax's class: the
    two add, never replace each other), and the softmax's SOFTMAX_FLOPS_PER_SCORE per score."""
    flops = {matrix_class: 2 * pairs * (d + dv)}
    flops[MathClass.FP32] = flops.get(MathClass.FP32, 0) + SOFTMAX_FLOPS_PER_SCORE * pairs
    return flops


def attention_cost(
    q: TensorMeta, k: TensorMeta, v: TensorMeta, out: TensorMeta | None = None, *,
    backend: str, causal: str | None = None, mask: TensorMeta | None = None,
    settings: Settings = Settings(), need_lse: bool = False, pairs_per_head: float | None = None,
    extra_read: float = 0.0, note: str = "",
) -> OpCost:
    """The cost of one fused attention forward.  `pairs_per_head` overrides the pair count
    (block-sparse masks); otherwise it follows from `causal`."""
    batch = math.prod(q.shape[:-3])
    hq, sq, d = q.shape[-3], q.shape[-2], q.shape[-1]
    sk, dv = k.shape[-2], v.shape[-1]
    if pairs_per_head is None:
        if causal:
            pairs_per_head = causal_pairs(sq, sk, causal, settings.attention_tile)
            full = sq * sk
            note_c = (f"causal ({causal.replace('_', '-')}): {pairs_per_head / full:.1%} of the full "
                      f"score matrix in {settings.attention_tile[0]}x{settings.attention_tile[1]} tiles")
            note = "; ".join(x for x in (note, note_c) if x)
        else:
            pairs_per_head = sq * sk
    pairs = batch * hq * pairs_per_head
    flops = attention_flops(pairs, d, dv, q.matrix_class(settings.allow_tf32_matmul))
    if out is None:
        out = TensorMeta.contiguous((*q.shape[:-1], dv), q.dtype, q.device)
    reads = q.bytes + k.bytes + v.bytes + (mask.bytes if mask is not None else 0) + extra_read
    writes = out.bytes + (batch * hq * sq * 4 if need_lse else 0)
    hkv = k.shape[-3]
    kind = "MHA" if hkv == hq else ("MQA" if hkv == 1 else f"GQA {hq // max(hkv, 1)}:1")
    note = "; ".join(x for x in (f"{backend} attention (fused), {kind}", note) if x)
    return OpCost(flops, reads, writes, note=note)


def attention_backward_cost(q: TensorMeta, k: TensorMeta, v: TensorMeta, out: TensorMeta, grad_out: TensorMeta,
                            *, backend: str, causal: str | None, settings: Settings,
                            mask: TensorMeta | None = None) -> OpCost:
    """FlashAttention-2 style backward: recompute S = QKᵀ (2·D per pair), then dV = PᵀdO (2·Dv),
    dP = dO·Vᵀ (2·Dv), dQ = dS·K (2·D), dK = dSᵀQ (2·D): 2·(3·D + 2·Dv) per pair, 2.5x the
    forward's when D == Dv; the softmax's vector work twice the forward's."""
    batch, hq, sq, d = math.prod(q.shape[:-3]), q.shape[-3], q.shape[-2], q.shape[-1]
    sk, dv = k.shape[-2], v.shape[-1]
    per_head = causal_pairs(sq, sk, causal, settings.attention_tile) if causal else sq * sk
    pairs = batch * hq * per_head
    flops = {q.matrix_class(settings.allow_tf32_matmul): 2 * pairs * (3 * d + 2 * dv)}
    flops[MathClass.FP32] = flops.get(MathClass.FP32, 0) + 2 * SOFTMAX_FLOPS_PER_SCORE * pairs
    reads = (q.bytes + k.bytes + v.bytes + out.bytes + grad_out.bytes + batch * hq * sq * 4  # + lse
             + (mask.bytes if mask is not None else 0))
    writes = q.bytes + k.bytes + v.bytes  # dq, dk, dv
    return OpCost(flops, reads, writes, note=f"{backend} attention backward (fused)")


# ------------------------------------------------------------------ which backend runs on a GPU

def predict_sdpa_backend(q: TensorMeta, k: TensorMeta, v: TensorMeta, *, has_mask: bool, dropout_p: float,
                         enable_gqa: bool, settings: Settings, is_causal: bool = False) -> str:
    """The backend torch would pick on an sm80+ NVIDIA GPU, from the enabled backends in their
    priority order.  Only fused-or-math changes the count; the name is reported."""
    d, dv = q.shape[-1], v.shape[-1]
    half = q.dtype in ("float16", "bfloat16")
    # torch's flash refuses is_causal with Sq != Sk (FlashAttention-2 aligns causal lower-right,
    # SDPA's is_causal is upper-left): check_flash_causal_non_square_seqlens in sdp_utils.cpp
    square = not is_causal or q.shape[-2] == k.shape[-2]
    for backend in settings.sdpa_backends:
        # torch 2.11 on an H100 ran cuDNN for every fp16/bf16 case tried: causal or not, masked,
        # GQA with enable_gqa, decode (Sq = 1), head dims 64-256 (benchmarks/results/gpu_facts.json)
        if backend == "cudnn" and half and d == dv and d % 8 == 0 and d <= 256 and dropout_p == 0:
            return "cudnn"
        if backend == "flash" and half and d == dv and d % 8 == 0 and d <= 256 and not has_mask and square:
            return "flash"
        if backend == "efficient" and q.dtype in ("float16", "bfloat16", "float32") and d % 4 == 0 \
                and dv % 4 == 0 and not enable_gqa:
            return "efficient"
        if backend == "math":
            return "math"
    raise CountError("no scaled-dot-product attention backend is enabled for these inputs "
                     f"(enabled: {', '.join(settings.sdpa_backends) or 'none'}); enable one with "
                     "torch.nn.attention.sdpa_kernel")


# ------------------------------------------------------------------ SDPA aten ops (called directly)

def _causal(flag: Any) -> str | None:
    return "upper_left" if flag else None


@register_cost(aten._scaled_dot_product_flash_attention)
def sdpa_flash(call: OpCall) -> OpCost:
    # (query, key, value, dropout_p, is_causal, return_debug_mask, scale) -> (out, lse, ...)
    q, k, v = call.arg(0), call.arg(1), call.arg(2)
    return attention_cost(q, k, v, call.out, backend="flash", causal=_causal(call.arg(4, "is_causal")),
                          settings=call.settings, need_lse=True)


def _sdpa_with_bias(call: OpCall, backend: str) -> OpCost:
    """The efficient and cuDNN ops share their leading arguments:
    (query, key, value, attn_bias, compute_log_sumexp, dropout_p, is_causal, ...)."""
    q, k, v, bias = call.arg(0), call.arg(1), call.arg(2), call.arg(3, "attn_bias")
    return attention_cost(q, k, v, call.out, backend=backend, causal=_causal(call.arg(6, "is_causal")),
                          mask=bias if isinstance(bias, TensorMeta) else None, settings=call.settings,
                          need_lse=bool(call.arg(4, "compute_log_sumexp")))


@register_cost(aten._scaled_dot_product_efficient_attention)
def sdpa_efficient(call: OpCall) -> OpCost:
    # (query, key, value, attn_bias, compute_log_sumexp, dropout_p, is_causal, scale)
    return _sdpa_with_bias(call, "efficient")


@register_cost(aten._scaled_dot_product_cudnn_attention)
def sdpa_cudnn(call: OpCall) -> OpCost:
    # (query, key, value, attn_bias, compute_log_sumexp, dropout_p, is_causal, return_debug_mask, scale)
    return _sdpa_with_bias(call, "cudnn")


@register_cost(aten._scaled_dot_product_flash_attention_for_cpu)
def sdpa_cpu(call: OpCall) -> OpCost:
    # (query, key, value, dropout_p, is_causal, *, attn_mask, scale)
    q, k, v = call.arg(0), call.arg(1), call.arg(2)
    mask = call.arg(5, "attn_mask")
    return attention_cost(q, k, v, call.out, backend="cpu-flash", causal=_causal(call.arg(4, "is_causal")),
                          mask=mask if isinstance(mask, TensorMeta) else None, settings=call.settings)


@register_cost(aten._flash_attention_forward)
def flash_forward(call: OpCall) -> OpCost:
    # varlen-capable: (query [T, H, D], key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p,
    # is_causal, return_debug_mask, *, scale, window_size_left, window_size_right, ...); dense
    # calls have batch-first [B, S, H, D].  The pairs of a packed varlen batch depend on the values
    # in cum_seq_q/cum_seq_k, and a window's on its band: not counted (rather than counted as a
    # dense square), so the record says so.
    q, k, v = call.arg(0), call.arg(1), call.arg(2)
    if q.ndim != 4 or isinstance(call.arg(3, "cum_seq_q"), TensorMeta):
        raise CountError("varlen flash attention: its work depends on the sequence lengths in cum_seq_q/cum_seq_k")
    if any((call.kwargs.get(w) if call.kwargs.get(w) is not None else -1) >= 0
           for w in ("window_size_left", "window_size_right")):
        raise CountError("flash attention with a window: use flex attention with a block mask to count it")
    qh, kh, vh = (_bshd_to_bhsd(t) for t in (q, k, v))
    return attention_cost(qh, kh, vh, _bshd_to_bhsd(call.out), backend="flash",
                          causal=_causal(call.arg(8, "is_causal")), settings=call.settings, need_lse=True)


def _bshd_to_bhsd(t: TensorMeta) -> TensorMeta:
    if t.ndim != 4:
        return t
    b, s, h, d = t.shape
    sb, ss, sh, sd = t.stride
    return TensorMeta((b, h, s, d), (sb, sh, ss, sd), t.dtype, t.device, t.storage_offset, t.storage_numel)


@register_cost(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def sdpa_cpu_backward(call: OpCall) -> OpCost:
    # (grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, *, attn_mask, scale): the
    # CPU's flash kernel's backward, counted as a fused GPU backward is (the forward was counted as
    # the GPU's fused kernel too)
    grad_out, q, k, v, out = (call.arg(i) for i in range(5))
    mask = call.arg(8, "attn_mask")
    return attention_backward_cost(q, k, v, out, grad_out, backend="flash",
                                   causal=_causal(call.arg(7, "is_causal")), settings=call.settings,
                                   mask=mask if isinstance(mask, TensorMeta) else None)


@register_cost(aten._scaled_dot_product_flash_attention_backward, aten._scaled_dot_product_efficient_attention_backward,
               aten._scaled_dot_product_cudnn_attention_backward)
def sdpa_backward(call: OpCall) -> OpCost:
    # flash:     (grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k,
    #             dropout_p, is_causal, ...)
    # efficient: (grad_out_, query, key, value, attn_bias, out, logsumexp, philox_seed, philox_offset,
    #             dropout_p, grad_input_mask, is_causal)
    # cudnn:     (grad_out, query, key, value, out, logsumexp, philox_seed, philox_offset, attn_bias,
    #             cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal)
    name = call.op.split("::")[-1]
    backend = "flash" if "flash" in name else ("cudnn" if "cudnn" in name else "efficient")
    out_i, bias_i, causal_i = {"flash": (4, None, 11), "efficient": (5, 4, 11), "cudnn": (4, 8, 14)}[backend]
    grad_out, q, k, v = (call.arg(i) for i in range(4))
    out = call.arg(out_i, "out")
    bias = call.arg(bias_i, "attn_bias") if bias_i is not None else None
    return attention_backward_cost(q, k, v, out, grad_out, backend=backend,
                                   causal=_causal(call.arg(causal_i, "is_causal")), settings=call.settings,
                                   mask=bias if isinstance(bias, TensorMeta) else None)


# ------------------------------------------------------------------ flex attention

def block_mask_pairs(block_tuple: Sequence[Any], sq: int, sk: int, batch: int, heads: int) -> tuple[float, str]:
    """Pairs computed per (batch, head) on average, from a BlockMask tuple (as flex's HOP gets it):
    the partial blocks and the full blocks each query-block row visits."""
    import torch

    kv_num, kv_idx = block_tuple[2], block_tuple[3]
    full_num, full_idx = block_tuple[4], block_tuple[5]
    bq, bk = int(block_tuple[-3]), int(block_tuple[-2])
    for t in (kv_num, kv_idx, full_num, full_idx):
        if isinstance(t, torch.Tensor) and (t.device.type == "meta" or _is_fake(t)):
            raise CountError("flex attention's block mask is on the meta device (or fake): which blocks "
                             "it computes is data. Build the BlockMask on real tensors, e.g. "
                             "create_block_mask(..., device='cpu'), and count again")

    def visited_cols(num: Any, idx: Any) -> Any:
        if num is None:
            return None
        num, idx = num.to("cpu", torch.int64), idx.to("cpu", torch.int64)
        n_kv_blocks = idx.shape[-1]
        cols = torch.clamp(sk - torch.arange(n_kv_blocks) * bk, min=0, max=bk)  # width of each kv block
        take = torch.arange(idx.shape[-1]) < num.unsqueeze(-1)  # the first num entries are valid
        widths = cols[idx.clamp(max=n_kv_blocks - 1)] * take
        return widths.sum(-1)  # [Bm, Hm, n_q_blocks]

    total = visited_cols(kv_num, kv_idx)
    full = visited_cols(full_num, full_idx)
    if full is not None:
        total = total + full
    n_q_blocks = total.shape[-1]
    rows = torch.clamp(sq - torch.arange(n_q_blocks) * bq, min=0, max=bq)
    per_mask_head = (total * rows).sum(-1).to(torch.float64)  # [Bm, Hm]
    # a mask broadcast over batch or heads (size 1) applies to each of them
    mean_pairs = float(per_mask_head.mean())
    density = mean_pairs / (sq * sk)
    return mean_pairs, f"block-sparse: {density:.1%} of the score matrix in {bq}x{bk} blocks"


def _is_fake(t: Any) -> bool:
    try:
        from torch._subclasses.fake_tensor import FakeTensor

        return isinstance(t, FakeTensor)
    except ImportError:  # pragma: no cover
        return False


def flex_attention_cost(q: TensorMeta, k: TensorMeta, v: TensorMeta, out: TensorMeta | None,
                        block_tuple: Sequence[Any], settings: Settings) -> OpCost:
    batch, heads = math.prod(q.shape[:-3]), q.shape[-3]
    pairs, note = block_mask_pairs(block_tuple, q.shape[-2], k.shape[-2], batch, heads)
    import torch

    mask_bytes = sum(t.numel() * t.element_size() for t in block_tuple[2:6] if isinstance(t, torch.Tensor))
    return attention_cost(q, k, v, out, backend="flex", pairs_per_head=pairs, settings=settings,
                          extra_read=mask_bytes, note=note)
