"""Decode attention over a KV cache: one new token per sequence against everything cached.

    rooflight profile kernels/decode_attention.py
    rooflight profile kernels/decode_attention.py -w decode --sweep context=512,4096,32768 --sweep batch=1,256
    rooflight profile kernels/decode_attention.py -w paged --sweep batch=1,16,64,256 --param context=8192

Decode reads the whole cache, 2·S·Hkv·D elements per sequence, to do 4·S·Hq·D FLOPs: about
Hq/Hkv FLOP per byte in bf16.  So it is memory-bound, and what moves it is the KV bytes:

- `decode`: a contiguous cache [B, Hkv, S, D] through SDPA (enable_gqa; the fused kernel reads
  each KV head once for its whole group of query heads) or `impl="naive"` (the KV heads copied
  out to every query head, then matmul, softmax, matmul).  MHA (kv_heads = heads), GQA and MQA
  (kv_heads = 1): the bytes fall, and the intensity rises, by the group size.
- `paged`: a paged cache (fixed-size blocks anywhere in memory, a block table per sequence, as
  vLLM's PagedAttention) read by our Triton kernel (kernels/paged_attention.py).
- `paged_shared`: `samples` sequences per prompt share the blocks of its first `prefix` tokens
  (copy-on-write).  share=True reads a shared block once per step for all of them; share=False
  is the same cache read sequence by sequence, as a kernel unaware of the sharing would.
- `flash_decoding`: long context at small batch.  One program per (sequence, KV head) leaves
  most of the GPU idle; splitting the KV sequence over programs and merging the partial results
  by their log-sum-exp (FlashDecoding) fills it.  splits=1 against splits="auto" (or a count);
  impl="torch" does the same split and merge with PyTorch ops on a contiguous cache.

The plan of the paged kernel (which items read which blocks) is made when the workload is built,
as a server makes it once per batch composition; the step itself is what is profiled.
"""

from __future__ import annotations

import math
import os

import paged_attention as pa  # a sibling: this file's folder is on sys.path while it is imported
import torch
import torch.nn.functional as F

import rooflight
from rooflight.errors import UsageError


# ---------------------------------------------------------------------------- helpers


def ensure_fits(nbytes: float, device, what: str) -> None:
    """A clear error, before allocating, when a point cannot fit the device's free memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    elif dev.type == "cpu" and hasattr(os, "sysconf"):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
        return
    if nbytes > 0.85 * free:
        raise UsageError(f"{what} needs about {nbytes / 2**30:.1f} GiB and {dev.type} has {free / 2**30:.1f} GiB "
                         "free: choose a smaller batch or context (or count it with --count-only --device meta)")


def _tolerance(dtype: torch.dtype) -> float | None:
    """Relative error allowed against float64: 1e-2 for bf16/fp16, rooflight's default otherwise."""
    return 1e-2 if dtype in (torch.bfloat16, torch.float16) else None


def _kv_bytes(batch: int, context: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * batch * context * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def reference_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     batch_per_chunk: int | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d) v in float64 for q [B, Hq, 1, D] over k, v [B, Hkv, S, D]: query heads
    grouped onto their KV head (no copies), a few sequences at a time (~1 GiB of float64 K)."""
    b, hq, _, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    step = batch_per_chunk or max(1, (1 << 30) // max(1, hkv * s * d * 8))
    out = torch.empty(b, hq, 1, d, dtype=torch.float64, device=q.device)
    for b0 in range(0, b, step):
        sl = slice(b0, min(b0 + step, b))
        qq = q[sl].double().view(-1, hkv, g, d)
        p = torch.softmax(qq @ k[sl].double().transpose(-1, -2) / math.sqrt(d), dim=-1)  # [b, Hkv, G, S]
        out[sl] = (p @ v[sl].double()).view(-1, hq, 1, d)
    return out


def naive_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """KV heads copied out to every query head, then matmul, softmax, matmul."""
    g = q.shape[1] // k.shape[1]
    if g > 1:
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, Hq, 1, S]
    return torch.softmax(scores, dim=-1) @ v


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])


def split_kv_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int) -> torch.Tensor:
    """FlashDecoding with PyTorch ops: each of `splits` KV chunks gives a partial output and its
    log-sum-exp; the partials are merged by weights softmax(lse) over the chunks.
    q [B, Hq, 1, D]; k, v [B, Hkv, S, D] with S a multiple of splits."""
    b, hq, _, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g, chunk = hq // hkv, s // splits
    kc = k.view(b, hkv, splits, chunk, d)
    vc = v.view(b, hkv, splits, chunk, d)
    qg = q.view(b, hkv, 1, g, d)
    scores = (qg @ kc.transpose(-1, -2)).float() * (1.0 / math.sqrt(d))  # [B, Hkv, splits, G, chunk]
    m = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - m)
    total = p.sum(-1, keepdim=True)
    partial = (p.to(v.dtype) @ vc).float() / total  # [B, Hkv, splits, G, D]
    w = torch.softmax(m + torch.log(total), dim=2)  # the merge: each chunk weighted by exp(lse)
    return (partial * w).sum(2).to(q.dtype).view(b, hq, 1, d)


def _choose_splits(splits, batch: int, kv_heads: int, context: int, device) -> int:
    """"auto": enough (sequence, KV head, split) programs to fill the GPU twice, as the paged plan."""
    if splits != "auto":
        return int(splits)
    want = math.ceil(2 * pa.num_sms(device) / (batch * kv_heads))
    n = 1
    while n * 2 <= want and context % (n * 2) == 0 and context // (n * 2) >= pa.MIN_SPLIT_TOKENS:
        n *= 2
    return n


def _contiguous_cache(batch, context, heads, kv_heads, head_dim, device, dtype):
    if heads % kv_heads:
        raise UsageError(f"heads={heads} is not a multiple of kv_heads={kv_heads}")
    ensure_fits(_kv_bytes(batch, context, kv_heads, head_dim, dtype) * 1.5, device,
                f"a {batch} x {context}-token KV cache")
    torch.manual_seed(0)
    q = torch.randn(batch, heads, 1, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=dtype)
    v = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=dtype)
    return q, k, v


def _paged_run(batch, context, heads, kv_heads, head_dim, page_size, device, dtype, *, prefix=0, samples=1,
               share=True, splits="auto"):
    if heads % kv_heads:
        raise UsageError(f"heads={heads} is not a multiple of kv_heads={kv_heads}")
    if torch.device(device).type == "meta":
        raise UsageError("the paged kernel's plan reads the block tables: count it on real tensors (--device cpu)")
    ensure_fits(_kv_bytes(batch, context, kv_heads, head_dim, dtype) * 1.5, device,
                f"a {batch} x {context}-token paged KV cache")
    cache = pa.build_cache(batch, context, n_kv_heads=kv_heads, head_dim=head_dim, page_size=page_size,
                           prefix=prefix, samples=samples, device=device, dtype=dtype)
    torch.manual_seed(1)
    q = torch.randn(batch, heads, head_dim, device=device, dtype=dtype)
    plan = pa.plan(cache.block_tables, cache.seq_lens, page_size=page_size, n_heads=heads, n_kv_heads=kv_heads,
                   share_prefix=share, splits=splits)

    def step(q, k_cache, v_cache, block_tables):
        return pa.paged_decode(q, k_cache, v_cache, block_tables, plan)

    return rooflight.Run(step, (q, cache.k_cache, cache.v_cache, cache.block_tables), tolerance=_tolerance(dtype),
                         reference=lambda: pa.reference(q, cache))


# ---------------------------------------------------------------------------- workloads


@rooflight.workload(sweep={"kv_heads": [32, 8, 1], "batch": [1, 16, 64]})
def decode(batch: int = 16, context: int = 4096, heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
           impl: str = "sdpa", device="cpu", dtype=torch.bfloat16):
    """One decode step over a contiguous KV cache: MHA, GQA or MQA by kv_heads; SDPA or naive."""
    q, k, v = _contiguous_cache(batch, context, heads, kv_heads, head_dim, device, dtype)
    fns = {"sdpa": sdpa_decode, "naive": naive_decode}
    if impl not in fns:
        raise UsageError(f"impl={impl!r}: use sdpa or naive")
    return rooflight.Run(fns[impl], (q, k, v), tolerance=_tolerance(dtype), reference=lambda: reference_decode(q, k, v))


@rooflight.workload(sweep={"batch": [8, 64, 256]})
def paged(batch: int = 64, context: int = 4096, heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
          page_size: int = 16, splits="auto", device="cpu", dtype=torch.bfloat16):
    """One decode step over a paged KV cache (block tables), with our Triton kernel."""
    return _paged_run(batch, context, heads, kv_heads, head_dim, page_size, device, dtype, splits=splits)


@rooflight.workload(sweep={"share": [False, True]})
def paged_shared(batch: int = 64, samples: int = 8, context: int = 4096, prefix: int = 3584, heads: int = 32,
                 kv_heads: int = 8, head_dim: int = 128, page_size: int = 16, share: bool = True, splits="auto",
                 device="cpu", dtype=torch.bfloat16):
    """Parallel samples of one prompt share its KV blocks: read once per step (share=True) or per sequence."""
    return _paged_run(batch, context, heads, kv_heads, head_dim, page_size, device, dtype, prefix=prefix,
                      samples=samples, share=share, splits=splits)


@rooflight.workload(sweep={"splits": [1, "auto"]})
def flash_decoding(batch: int = 1, context: int = 32768, heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
                   splits="auto", impl: str = "paged", page_size: int = 16, device="cpu", dtype=torch.bfloat16):
    """Long context, small batch: the KV sequence split over programs and merged by log-sum-exp."""
    if impl == "paged":
        return _paged_run(batch, context, heads, kv_heads, head_dim, page_size, device, dtype, splits=splits)
    if impl != "torch":
        raise UsageError(f"impl={impl!r}: use paged (the Triton kernel) or torch")
    q, k, v = _contiguous_cache(batch, context, heads, kv_heads, head_dim, device, dtype)
    n = _choose_splits(splits, batch, kv_heads, context, device)
    if context % n:
        raise UsageError(f"impl=torch splits the context evenly: {context} is not a multiple of splits={n}")
    return rooflight.Run(split_kv_decode, (q, k, v, n), tolerance=_tolerance(dtype),
                         reference=lambda: reference_decode(q, k, v))
