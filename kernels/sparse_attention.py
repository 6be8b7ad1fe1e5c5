"""Sparse attention patterns (seed 000) as block-sparse kernels: FlexAttention with block masks.

    rooflight profile kernels/sparse_attention.py
    rooflight profile kernels/sparse_attention.py -w atrous --sweep layout=direct,permuted

Each pattern is a BlockMask: flex attention skips the (128 x 128 by default) blocks of the score
matrix that the mask leaves empty, computes the full ones without masking and the partial ones
with it, and rooflight counts the blocks it visits (not the dense S²).  The patterns, with i a
query and j a key position (causal by default: j <= i as well):

- `local` (sliding window): |i - j| < window.  Work grows as S * window, not S².
- `atrous` (dilated): (i - j) % dilation == 0, each query sees S / dilation keys.  Written as a
  token mask, every block of the score matrix holds some of those pairs, so a block-sparse
  kernel saves nothing (layout="direct" shows it).  layout="permuted" (default) first reorders
  the tokens by i % dilation: the pattern becomes `dilation` dense diagonal blocks, 1/dilation
  of the work, for the price of three gathers in and one out.
- `local_strided` (seed's "sparse self attention", the Sparse Transformer's strided pattern):
  local OR strided (|i - j| < window, or (i - j) % stride == 0).  layout="permuted" runs the
  local band in token order and the strided part in the permuted order (without the pairs
  already in the band), then merges the two with their log-sum-exps: exact, and each part
  visits only its own blocks.
- `random_local_global` (DeepSpeed / BigBird): on the grid of `block`-token blocks, each query
  block sees `local_blocks` neighbouring key blocks, the first `global_blocks` key blocks (and
  global query blocks see everything), and `random_blocks` random earlier key blocks.
- `dense`: the same flex kernel with only the causal mask, the baseline for all of them.

On a GPU flex_attention is torch.compile'd (one fused Triton kernel per mask); on a CPU it runs
eagerly (PyTorch's unfused reference, for correctness).  Every variant is checked against dense
attention in float64 with the same boolean mask, built from the pattern's definition in token
order.  rooflight runs compiled code eagerly while it counts, and counts flex attention from
its BlockMask either way.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import rooflight
from rooflight.errors import UsageError

try:
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # torch < 2.9: return_lse instead
    AuxRequest = None


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, allowed=None,
                        chunk_bytes: int = 1 << 29) -> torch.Tensor:
    """Dense attention in float64 with the pattern's boolean mask, built in token order:
    `allowed(rows, cols) -> bool [len(rows), len(cols)]`, and j <= i when causal.  A chunk of
    query rows at a time, its float64 scores under chunk_bytes."""
    b, h, s, d = q.shape
    rows_per_chunk = max(1, chunk_bytes // (b * h * s * 8))
    out = torch.empty(b, h, s, d, dtype=torch.float64, device=q.device)
    kk, vv = k.double(), v.double()
    cols = torch.arange(s, device=q.device)
    for r0 in range(0, s, rows_per_chunk):
        rows = torch.arange(r0, min(r0 + rows_per_chunk, s), device=q.device)
        scores = q[:, :, rows].double() @ kk.transpose(-1, -2) / math.sqrt(d)
        keep = torch.ones(len(rows), s, dtype=torch.bool, device=q.device)
        if causal:
            keep &= cols[None, :] <= rows[:, None]
        if allowed is not None:
            keep &= allowed(rows, cols)
        p = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
        out[:, :, rows] = p @ vv
    return out


def ensure_fits(nbytes: float, device, what: str) -> None:
    """A clear error, before allocating, when a point cannot fit the CPU's free memory (eager
    flex attention materializes the scores)."""
    if torch.device(device).type != "cpu" or not hasattr(os, "sysconf"):
        return
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if nbytes > 0.9 * free:
        raise UsageError(f"{what} needs about {nbytes / 2**30:.1f} GiB and the CPU has {free / 2**30:.1f} GiB free: "
                         "choose a smaller seq (or run it on a GPU, where flex attention is compiled)")


SWEEP = {"seq": [2048, 8192]}
_compiled = None


# Every mask pattern (its mask_mod's code, the tensors it reads) and sequence length is one more
# compiled variant of flex_attention.  Dynamo's default limit (8 per function) is reached by a
# sweep of this file's five patterns, and past it the call silently runs flex_attention's
# unfused eager path (it materializes the scores: ~50x slower).  Each variant here is wanted.
RECOMPILE_LIMIT = 256


def _raise_recompile_limit() -> None:
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 8 * RECOMPILE_LIMIT)


def _flex(device: torch.device):
    """torch.compile(flex_attention) on a GPU (the fused block-sparse kernel); eager elsewhere."""
    global _compiled
    if device.type == "cuda":
        if _compiled is None:
            _raise_recompile_limit()
            _compiled = torch.compile(flex_attention, dynamic=False)
        return _compiled

    def eager(*args, **kwargs):
        with warnings.catch_warnings():  # "called without torch.compile": expected off the GPU
            warnings.simplefilter("ignore", UserWarning)
            return flex_attention(*args, **kwargs)

    return eager


def _with_lse(fx, q, k, v, block_mask):
    """(out, natural-log lse [B, H, S]) of flex attention."""
    if AuxRequest is not None:
        out, aux = fx(q, k, v, block_mask=block_mask, return_aux=AuxRequest(lse=True))
        return out, aux.lse
    return fx(q, k, v, block_mask=block_mask, return_lse=True)


def _inputs(batch, seq, heads, head_dim, device, dtype):
    if torch.device(device).type == "meta":
        raise UsageError("which blocks a sparse pattern visits is data (its BlockMask): count it on real tensors "
                         "(--device cpu), not on meta")
    torch.manual_seed(0)
    shape = (batch, heads, seq, head_dim)
    ensure_fits(batch * heads * seq * seq * 4 * 3, device, f"eager flex attention at seq={seq}")
    return tuple(torch.randn(shape, device=device, dtype=dtype) for _ in range(3))


def _block_mask(mask_mod, seq: int, block: int, device):
    return create_block_mask(mask_mod, None, None, seq, seq, device=device, BLOCK_SIZE=block)


def permute(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Reorder the sequence axis by position % groups: token i = t*groups + r goes to r*(S/groups) + t."""
    b, h, s, d = x.shape
    return x.view(b, h, s // groups, groups, d).transpose(2, 3).reshape(b, h, s, d)


def unpermute(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, h, s, *rest = x.shape
    return x.view(b, h, groups, s // groups, *rest).transpose(2, 3).reshape(b, h, s, *rest)


def _check_divisible(seq: int, groups: int, what: str) -> None:
    if seq % groups:
        raise UsageError(f"layout=permuted reorders tokens by position % {what}: seq={seq} must be a multiple of it")


def _run(fn, q, k, v, allowed, causal):
    tol = 1e-2 if q.dtype in (torch.bfloat16, torch.float16) else None
    return rooflight.Run(fn, (q, k, v), tolerance=tol,
                         reference=lambda: reference_attention(q, k, v, causal=causal, allowed=allowed))


# ---------------------------------------------------------------------------- workloads


@rooflight.workload(sweep=SWEEP)
def dense(seq: int = 4096, batch: int = 1, heads: int = 16, head_dim: int = 128, causal: bool = True,
          block: int = 128, device="cpu", dtype=torch.bfloat16):
    """Flex attention with only the causal mask: the baseline the sparse patterns cut down."""
    q, k, v = _inputs(batch, seq, heads, head_dim, device, dtype)
    fx = _flex(q.device)
    bm = _block_mask(lambda b, h, i, j: j <= i, seq, block, device) if causal else None
    return _run(lambda q, k, v: fx(q, k, v, block_mask=bm), q, k, v, None, causal)


@rooflight.workload(sweep=SWEEP)
def local(seq: int = 4096, batch: int = 1, heads: int = 16, head_dim: int = 128, causal: bool = True,
          window: int = 256, block: int = 128, device="cpu", dtype=torch.bfloat16):
    """Sliding window: each query sees the keys less than `window` positions away."""
    q, k, v = _inputs(batch, seq, heads, head_dim, device, dtype)
    fx = _flex(q.device)

    def near(i, j):
        return (i - j < window) & (j <= i) if causal else (i - j).abs() < window

    bm = _block_mask(lambda b, h, i, j: near(i, j), seq, block, device)
    return _run(lambda q, k, v: fx(q, k, v, block_mask=bm), q, k, v,
                lambda rows, cols: near(rows[:, None], cols[None, :]), causal)


@rooflight.workload(sweep=SWEEP)
def atrous(seq: int = 4096, batch: int = 1, heads: int = 16, head_dim: int = 128, causal: bool = True,
           dilation: int = 8, layout: str = "permuted", block: int = 128, device="cpu", dtype=torch.bfloat16):
    """Dilated: each query sees the keys a multiple of `dilation` away (1/dilation of them)."""
    q, k, v = _inputs(batch, seq, heads, head_dim, device, dtype)
    fx = _flex(q.device)

    def allowed(rows, cols):
        return (rows[:, None] - cols[None, :]) % dilation == 0

    if layout == "direct":
        bm = _block_mask(lambda b, h, i, j: ((i - j) % dilation == 0) & ((j <= i) if causal else True), seq, block,
                         device)
        return _run(lambda q, k, v: fx(q, k, v, block_mask=bm), q, k, v, allowed, causal)
    if layout != "permuted":
        raise UsageError(f"layout={layout!r}: use permuted or direct")
    _check_divisible(seq, dilation, "dilation")
    span = seq // dilation  # one residue class, contiguous after the permutation

    def same_class(b, h, i, j):
        same = i // span == j // span
        return same & (j <= i) if causal else same

    bm = _block_mask(same_class, seq, block, device)

    def run(q, k, v):
        out = fx(permute(q, dilation), permute(k, dilation), permute(v, dilation), block_mask=bm)
        return unpermute(out, dilation)

    return _run(run, q, k, v, allowed, causal)


@rooflight.workload(sweep=SWEEP)
def local_strided(seq: int = 4096, batch: int = 1, heads: int = 16, head_dim: int = 128, causal: bool = True,
                  window: int = 256, stride: int = 16, layout: str = "permuted", block: int = 128, device="cpu",
                  dtype=torch.bfloat16):
    """Local + strided ("sparse self attention"): the keys within `window`, and every `stride`-th beyond."""
    q, k, v = _inputs(batch, seq, heads, head_dim, device, dtype)
    fx = _flex(q.device)

    def near(i, j):
        return (i - j < window) & (j <= i) if causal else (i - j).abs() < window

    def allowed(rows, cols):
        i, j = rows[:, None], cols[None, :]
        return near(i, j) | ((i - j) % stride == 0)

    if layout == "direct":
        def pattern(b, h, i, j):
            hit = near(i, j) | ((i - j) % stride == 0)
            return hit & (j <= i) if causal else hit

        bm = _block_mask(pattern, seq, block, device)
        return _run(lambda q, k, v: fx(q, k, v, block_mask=bm), q, k, v, allowed, causal)
    if layout != "permuted":
        raise UsageError(f"layout={layout!r}: use permuted or direct")
    _check_divisible(seq, stride, "stride")
    span = seq // stride

    def far_same_class(b, h, i, j):  # in the permuted order: same residue class, outside the band
        ti, tj = i % span, j % span
        far = (ti - tj).abs() * stride >= window
        hit = (i // span == j // span) & far
        return hit & (tj <= ti) if causal else hit

    band = _block_mask(lambda b, h, i, j: near(i, j), seq, block, device)
    strided = _block_mask(far_same_class, seq, block, device)

    def run(q, k, v):
        o1, lse1 = _with_lse(fx, q, k, v, band)
        o2, lse2 = _with_lse(fx, permute(q, stride), permute(k, stride), permute(v, stride), strided)
        o2, lse2 = unpermute(o2, stride), unpermute(lse2.unsqueeze(-1), stride).squeeze(-1)
        m = torch.maximum(lse1, lse2)  # the band always holds the query itself: m is finite
        w1, w2 = torch.exp(lse1 - m).unsqueeze(-1), torch.exp(lse2 - m).unsqueeze(-1)
        return ((o1 * w1 + o2 * w2) / (w1 + w2)).to(q.dtype)

    return _run(run, q, k, v, allowed, causal)


def block_pattern(n_blocks: int, *, local_blocks: int, global_blocks: int, random_blocks: int, causal: bool,
                  seed: int = 0) -> torch.Tensor:
    """BigBird / DeepSpeed layout on the block grid: bool [n, n], True where query block qb sees key block kb."""
    qb, kb = torch.arange(n_blocks)[:, None], torch.arange(n_blocks)[None, :]
    if causal:
        table = (qb - kb >= 0) & (qb - kb < local_blocks)
    else:
        table = (qb - kb).abs() <= local_blocks // 2
    table |= (kb < global_blocks) | (qb < global_blocks)
    gen = torch.Generator().manual_seed(seed)
    for r in range(n_blocks):
        candidates = torch.nonzero(~table[r] & ((kb[0] <= r) if causal else True)).flatten()
        if len(candidates):
            pick = candidates[torch.randperm(len(candidates), generator=gen)[:random_blocks]]
            table[r, pick] = True
    if causal:
        table &= kb <= qb
    return table


@rooflight.workload(sweep=SWEEP)
def random_local_global(seq: int = 4096, batch: int = 1, heads: int = 16, head_dim: int = 128, causal: bool = True,
                        local_blocks: int = 3, global_blocks: int = 1, random_blocks: int = 2, seed: int = 0,
                        block: int = 128, device="cpu", dtype=torch.bfloat16):
    """DeepSpeed / BigBird: local, global and random key blocks for every query block."""
    q, k, v = _inputs(batch, seq, heads, head_dim, device, dtype)
    fx = _flex(q.device)
    table = block_pattern(math.ceil(seq / block), local_blocks=local_blocks, global_blocks=global_blocks,
                          random_blocks=random_blocks, causal=causal, seed=seed).to(q.device)

    def pattern(b, h, i, j):
        hit = table[i // block, j // block]
        return hit & (j <= i) if causal else hit

    bm = _block_mask(pattern, seq, block, device)
    return _run(lambda q, k, v: fx(q, k, v, block_mask=bm), q, k, v,
                lambda rows, cols: table[rows // block][:, cols // block], causal)
