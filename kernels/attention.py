"""Prefill attention: a materializing implementation against SDPA's fused backends.

    rooflight profile kernels/attention.py                       # both workloads, default sweeps
    rooflight profile kernels/attention.py --sweep seq=512,4096 --param kv_heads=8
    rooflight profile kernels/attention.py --sweep backend=flash,efficient,cudnn --param seq=8192

`naive` computes softmax(q @ kᵀ / √d) @ v the textbook way, writing the [B, H, S, S] score
matrix and its softmax to memory (and, for GQA/MQA, first copying each KV head out to its query
heads).  `sdpa` runs F.scaled_dot_product_attention with one backend forced through
torch.nn.attention.sdpa_kernel: "flash" (FlashAttention-2), "efficient" (the memory-efficient
kernel from xformers), "cudnn", or "math" (torch's own materializing decomposition).  A fused
backend reads q, k and v once and writes the output once, so the bytes stop growing with S² and
the work turns compute-bound: FlashAttention's cut, in bytes and in time.

Shapes: q [B, Hq, S, D], k and v [B, Hkv, S, D]; MHA has Hkv = Hq, GQA 1 < Hkv < Hq, MQA Hkv = 1.

Devices: a CUDA GPU runs every backend the inputs qualify for (one that does not is an error
that says why, from torch's own checks).  A CPU has only flash and math; there "efficient" and
"cudnn" are errors, while the meta device counts them (--count-only --device meta).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import rooflight
from rooflight.errors import UsageError

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


# ---------------------------------------------------------------------------- shared helpers


def make_qkv(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, *, device, dtype,
             q_len: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh random q [B, Hq, q_len or S, D], k and v [B, Hkv, S, D]."""
    if heads % kv_heads:
        raise UsageError(f"heads={heads} is not a multiple of kv_heads={kv_heads}")
    torch.manual_seed(seed)
    q = torch.randn(batch, heads, q_len or seq, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch, kv_heads, seq, head_dim, device=device, dtype=dtype)
    v = torch.randn(batch, kv_heads, seq, head_dim, device=device, dtype=dtype)
    return q, k, v


def tolerance(dtype: torch.dtype) -> float | None:
    """Relative error allowed against float64: 1e-2 for bf16/fp16, rooflight's default otherwise."""
    return 1e-2 if dtype in (torch.bfloat16, torch.float16) else None


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        allowed=None, scale: float | None = None, chunk_bytes: int = 1 << 29) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v in float64, on q's device, a chunk of query rows at a time
    (the chunk's float64 scores stay under chunk_bytes).  GQA/MQA without copying K/V: q's heads are
    grouped onto their KV head.  `allowed(rows, cols) -> bool [len(rows), len(cols)]` masks
    (True = attend); `causal` keeps key j <= query i (upper-left, as SDPA's is_causal)."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty(b, hq, sq, v.shape[-1], dtype=torch.float64, device=q.device)
    cols = torch.arange(sk, device=q.device)
    rows_per_chunk = max(1, chunk_bytes // (hq * sk * 8))
    for bi in range(b):
        kk, vv = k[bi].double(), v[bi].double()  # [Hkv, S, D]
        for r0 in range(0, sq, rows_per_chunk):
            rows = torch.arange(r0, min(r0 + rows_per_chunk, sq), device=q.device)
            qq = q[bi, :, rows].double().view(hkv, g * len(rows), d)
            s = (qq @ kk.transpose(-1, -2)).view(hkv, g, len(rows), sk) * scale
            keep = torch.ones(len(rows), sk, dtype=torch.bool, device=q.device)
            if causal:
                keep &= cols[None, :] <= rows[:, None]
            if allowed is not None:
                keep &= allowed(rows, cols)
            s = s.masked_fill(~keep, float("-inf"))
            p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with no key attends to nothing
            out[bi, :, rows] = (p.view(hkv, g * len(rows), sk) @ vv).view(hq, len(rows), -1)
    return out


def ensure_fits(nbytes: float, device, what: str) -> None:
    """A clear error, before allocating, when a point cannot fit the device's free memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    elif dev.type == "cpu":
        try:
            import os

            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
    else:
        return
    if nbytes > 0.9 * free:
        raise UsageError(f"{what} needs about {nbytes / 2**30:.1f} GiB and {dev.type} has {free / 2**30:.1f} GiB "
                         "free: choose a smaller size (or count it with --count-only --device meta)")


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------- implementations


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """The textbook form: scores = q kᵀ/√d in memory, masked, softmaxed, times v.
    mask: bool [S, S], True where a key is hidden (the causal upper triangle)."""
    g = q.shape[1] // k.shape[1]
    if g > 1:  # GQA/MQA done naively: copy each KV head out to its query heads
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, S, S]
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def check_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """Refuse, with torch's reasons, a backend that cannot run these inputs on this device."""
    if backend not in BACKENDS:
        raise UsageError(f"backend={backend!r}: use one of {', '.join(BACKENDS)}")
    dev = q.device.type
    if backend == "math" or dev == "meta":
        return
    if dev == "cpu":
        if backend != "flash":
            raise UsageError(f"the {backend} SDPA backend exists only on CUDA GPUs: on the CPU use backend=flash "
                             "or backend=math, or count it on the meta device (--count-only --device meta)")
        return
    gqa = q.shape[1] != k.shape[1]
    params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, causal, gqa)
    can = {"flash": torch.backends.cuda.can_use_flash_attention,
           "efficient": torch.backends.cuda.can_use_efficient_attention,
           "cudnn": getattr(torch.backends.cuda, "can_use_cudnn_attention", None)}[backend]
    if can is None:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = can(params, True)
    if not ok:
        why = "; ".join(str(w.message).strip() for w in caught) or "torch gave no reason"
        raise UsageError(f"the {backend} SDPA backend cannot run these inputs "
                         f"({'GQA ' if gqa else ''}{q.dtype}, head_dim {q.shape[-1]}): {why}")


# ---------------------------------------------------------------------------- workloads


@rooflight.workload(sweep={"seq": [512, 2048, 8192]})
def naive(seq: int = 2048, batch: int = 1, heads: int = 32, kv_heads: int = 32, head_dim: int = 128,
          causal: bool = True, device="cpu", dtype=torch.bfloat16):
    """Materialized attention: the [B, H, S, S] scores and their softmax go through memory."""
    ensure_fits(batch * heads * seq * (seq * _elem(dtype) * 3 + head_dim * 16) + (seq * seq if causal else 0), device,
                f"naive attention at seq={seq}")
    q, k, v = make_qkv(batch, seq, heads, kv_heads, head_dim, device=device, dtype=dtype)
    mask = torch.ones(seq, seq, dtype=torch.bool, device=device).triu(1) if causal else None
    return rooflight.Run(naive_attention, (q, k, v, mask), tolerance=tolerance(dtype),
                         reference=lambda: reference_attention(q, k, v, causal=causal))


@rooflight.workload(sweep={"seq": [512, 2048, 8192, 16384]})
def sdpa(seq: int = 2048, batch: int = 1, heads: int = 32, kv_heads: int = 32, head_dim: int = 128,
         causal: bool = True, backend: str = "flash", device="cpu", dtype=torch.bfloat16):
    """F.scaled_dot_product_attention with one backend forced: flash, efficient, cudnn or math."""
    if backend == "math":
        ensure_fits(batch * heads * seq * seq * 4 * 3, device, f"math-backend attention at seq={seq}")
    q, k, v = make_qkv(batch, seq, heads, kv_heads, head_dim, device=device, dtype=dtype)
    check_backend(backend, q, k, v, causal)
    gqa = kv_heads != heads
    chosen = BACKENDS[backend]

    def attention(q, k, v):
        with sdpa_kernel(chosen):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    return rooflight.Run(attention, (q, k, v), tolerance=tolerance(dtype),
                         reference=lambda: reference_attention(q, k, v, causal=causal))
