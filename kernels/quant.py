"""Quantized linear layers (seed 002): weight-only INT8 and INT4 against bf16, and W8A8 FP8.

The seed's claims: at small batch a linear layer's time is weight loading, so storing weights in
INT8 / INT4 and widening them on chip (weight-only quantization, math still in bf16) speeds it
up; around batch 64-128 INT4 weight-only stops winning (the layer turns compute-bound and the
dequantization costs); for large batches quantize the activations too: W8A8, FP8 on Hopper.
These workloads measure that, one per scheme, each swept over batch = 1, 2, 4, ..., 256:

    bf16_baseline        F.linear in bf16
    int8_weight_only     torch._weight_int8pack_mm: int8 W [N, K], one bf16 scale per output row.
                         On CUDA this is a simple CUDA-core kernel (aten/src/ATen/native/cuda/
                         int8mm.cu casts x and the scales to fp32, one thread or warp per output,
                         then casts y back), not a tensor-core GEMM: rooflight's formula, which
                         puts its math on the bf16 tensor roof, is optimistic past small batch
    int4_weight_only     torch._weight_int4pack_mm (CUDA; tinygemm, packed by
                         _convert_weight_to_int4pack(w_uint8, 8)) or _weight_int4pack_mm_for_cpu
                         (CPU and meta): asymmetric 4-bit groups of 128 along K, a bf16 scale and
                         zero per group and output row (W = (q - 8) * scale + zero)
    w8a8_fp8             torch._scaled_mm e4m3 x e4m3 -> bf16, per-tensor scales; the timed
                         callable quantizes the activations too (dynamic: amax -> scale -> cast,
                         or static: a scale calibrated at build time), as a W8A8 layer must

What the roofline predicts, on an H100 SXM's datasheet (r = 295 FLOP/B on the bf16 roof), for
the default 4096x11008 layer: weight bytes per element are 2 (bf16), 1 (int8), ~0.53 (int4 with
its group scales), so the intensity at batch B is about 2B / (weight bytes per element), and the
matmul turns compute-bound at batch 88 for int4 (between 64 and 128: the seed's figure), 164 for
int8 (on the bf16 tensor roof its formula assumes) and 328 for bf16 (the fp8 matmul at 357, on its own 591 FLOP/B ridge).  Below its ridge each
quantized layer is bounded by fewer bytes than bf16; once compute-bound, it is bounded by the
same bf16 tensor-core roof as bf16 itself (weight-only math is bf16), so on the roofline its
advantage shrinks from ~3.8x (int4) at batch 1 to nothing at bf16's ridge.  How much of that a
real kernel keeps (tinygemm dequantizes on the fly, which is not free) is what timing the sweep
on the GPU shows.  `predicted_seconds` gives the roofline times; the tests hold these crossings.

Correctness: each Run's reference is the float64 product with the DEQUANTIZED weights (and, for
W8A8, the quantized activations), so the check measures the kernel, not the rounding to 4 or 8
bits.  The quantization error itself, the output of the quantized layer against the bf16
layer's (both in float64), is `quantization_error(scheme)`; for random normal weights it is
about 0.009 for int8 per-row, 0.10 for int4 in groups of 128 and 0.04 for fp8 per-tensor (the
tests pin these bounds).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import rooflight
from rooflight.errors import UsageError

BATCH_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCHEMES = ("bf16", "int8", "int4", "fp8")
GROUP_SIZE = 128
INNER_K_TILES = 8  # tinygemm's packing: K tiles of 16 per inner loop

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0

# relative error of the kernel against the float64 product of the very (dequantized) operands it
# reads: bf16 output rounding (~1.1e-3 rms) plus the kernel's own accumulation
TOLERANCE = {"bf16": 1e-2, "int8": 1e-2, "int4": 1e-2, "fp8": 1e-2}


def parse_shape(shape: str) -> tuple[int, int]:
    """'4096x11008' -> (K, N) = (4096, 11008): in features x out features."""
    try:
        k, n = (int(s) for s in str(shape).lower().split("x"))
    except ValueError:
        raise UsageError(f"shape {shape!r}: write IN x OUT features, e.g. 4096x11008") from None
    return k, n


# ---------------------------------------------------------------------------- quantizers


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: (q [N, K] int8, scale [N] bf16) with W ≈ q * scale."""
    scale = (w.float().abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
    q = (w.float() / scale.float()[:, None]).round().clamp(-128, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.double() * scale.double()[:, None]


def quantize_int4(w: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit groups along K: (q [N, K] int32 in 0..15, scales_and_zeros [K/G, N, 2] bf16)
    with W ≈ (q - 8) * scale + zero (tinygemm's convention; zero = min + 8 * scale)."""
    n, k = w.shape
    if k % group_size:
        raise UsageError(f"int4: K = {k} is not a multiple of the group size {group_size}")
    g = w.float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    q = ((g - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
    zero = lo + 8 * scale
    sz = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)  # [K/G, N, 2]
    return q, sz


def dequantize_int4(q: torch.Tensor, sz: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    n, k = q.shape
    s = sz.double().transpose(0, 1)  # [N, K/G, 2]
    g = q.double().reshape(n, k // group_size, group_size)
    return ((g - 8) * s[..., :1] + s[..., 1:]).reshape(n, k)


def pack_int4(q: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, object]:
    """The packed weight and the matmul op that reads it: tinygemm's layout on CUDA (two 4-bit
    values per byte along K, the even column in the high nibble, then tiled), the CPU kernel's
    on the CPU and on meta (whose packed size, N*K/2 bytes, is the same; the CUDA op has no meta
    kernel that runs on meta tensors in torch 2.13)."""
    if device.type == "cuda":
        u8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        return torch.ops.aten._convert_weight_to_int4pack(u8, INNER_K_TILES), torch.ops.aten._weight_int4pack_mm
    return (torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, INNER_K_TILES),
            torch.ops.aten._weight_int4pack_mm_for_cpu)


def quantize_fp8(t: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3: (t / scale clamped to ±448 as e4m3, scale); scale = amax / 448 unless given."""
    if scale is None:
        scale = (t.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def fp8_linear(x: torch.Tensor, w8_t: torch.Tensor, scale_w: torch.Tensor,
             scale_x: torch.Tensor | None = None) -> torch.Tensor:
    # quantize the activations (dynamic: scale from this x's amax; static: the calibrated one),
    # then x8 [M, K] row-major @ w8_t [K, N] column-major -> bf16 [M, N]
    x8, sx = quantize_fp8(x, scale_x)
    return torch._scaled_mm(x8, w8_t, scale_a=sx, scale_b=scale_w, out_dtype=torch.bfloat16)


# ---------------------------------------------------------------------------- the layer


def _require(scheme: str, device: torch.device) -> None:
    if device.type != "cuda":
        return
    cap = torch.cuda.get_device_capability(device)
    need = {"fp8": (8, 9), "int4": (8, 0)}.get(scheme)
    if need and cap < need:
        what = {"fp8": "fp8 matmuls (torch._scaled_mm)", "int4": "the int4 tinygemm kernel"}[scheme]
        raise UsageError(f"{what} need compute capability {need[0]}.{need[1]} or newer; "
                         f"{torch.cuda.get_device_name(device)} is {cap[0]}.{cap[1]}: leave this workload out (-w)")


def layer(batch: int, scheme: str = "bf16", shape: str = "4096x11008", *, group_size: int = GROUP_SIZE,
          activation_scale: str = "dynamic", seed: int = 0, device: str | torch.device = "cpu") -> rooflight.Run:
    """The Run of one quantized linear layer at `batch` tokens, with its dequantized reference."""
    if scheme not in SCHEMES:
        raise UsageError(f"scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if activation_scale not in ("dynamic", "static"):
        raise UsageError(f"activation_scale {activation_scale!r}: use dynamic or static")
    device = torch.device(device)
    _require(scheme, device)
    k, n = parse_shape(shape)
    torch.manual_seed(seed)
    w = torch.randn(n, k, device=device) / math.sqrt(k)  # unit-variance outputs
    x = torch.randn(batch, k, device=device).to(torch.bfloat16)
    meta = device.type == "meta"
    tol = TOLERANCE[scheme]

    if scheme == "bf16":
        wb = w.to(torch.bfloat16)
        return rooflight.Run(F.linear, (x, wb), reference=None if meta else (lambda: x.double() @ wb.double().T),
                             tolerance=tol)
    if scheme == "int8":
        q, scale = quantize_int8(w)
        ref = None if meta else (lambda: x.double() @ dequantize_int8(q, scale).T)
        return rooflight.Run(torch._weight_int8pack_mm, (x, q, scale), reference=ref, tolerance=tol)
    if scheme == "int4":
        q, sz = quantize_int4(w, group_size)
        packed, op = pack_int4(q, device)
        ref = None if meta else (lambda: x.double() @ dequantize_int4(q, sz, group_size).T)
        return rooflight.Run(op, (x, packed, group_size, sz), reference=ref, tolerance=tol)
    # fp8 W8A8
    w8, sw = quantize_fp8(w)
    w8_t = w8.t()  # column-major [K, N]
    sx = quantize_fp8(x)[1] if activation_scale == "static" else None

    def reference():
        x8, s = quantize_fp8(x, sx)
        return (x8.double() * s.double()) @ (w8.double() * sw.double()).T

    return rooflight.Run(fp8_linear, (x, w8_t, sw, sx), reference=None if meta else reference, tolerance=tol)


def quantization_error(scheme: str, shape: str = "4096x11008", batch: int = 16, *, group_size: int = GROUP_SIZE,
                       seed: int = 0) -> float:
    """‖y_q − y‖ / ‖y‖ in float64: the quantized layer (dequantized weights, and for fp8 the
    quantized activations) against the bf16 layer, on the CPU.  The error of the format, not of
    the kernel (which the Runs' references check)."""
    k, n = parse_shape(shape)
    torch.manual_seed(seed)
    w = (torch.randn(n, k) / math.sqrt(k)).to(torch.bfloat16).float()
    x = torch.randn(batch, k).to(torch.bfloat16)
    exact = x.double() @ w.double().T
    if scheme == "bf16":
        return 0.0
    if scheme == "int8":
        approx = x.double() @ dequantize_int8(*quantize_int8(w)).T
    elif scheme == "int4":
        approx = x.double() @ dequantize_int4(*quantize_int4(w, group_size), group_size).T
    elif scheme == "fp8":
        (x8, sx), (w8, sw) = quantize_fp8(x), quantize_fp8(w)
        approx = (x8.double() * sx.double()) @ (w8.double() * sw.double()).T
    else:
        raise UsageError(f"scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    return ((approx - exact).norm() / exact.norm()).item()


def predicted_seconds(scheme: str, batch: int, ceilings, shape: str = "4096x11008", *,
                      group_size: int = GROUP_SIZE) -> float:
    """The roofline time of the layer's matmul on `ceilings`: its largest floor, from the counts."""
    from rooflight.classify import floors

    run = layer(batch, scheme, shape, group_size=group_size, device="meta")
    prof = rooflight.count(run.fn, *run.args)
    return sum(floors(o, ceilings).max_s for o in prof.ops if o.counted)


# ---------------------------------------------------------------------------- workloads


@rooflight.workload(sweep={"batch": BATCH_SWEEP})
def bf16_baseline(batch: int = 1, shape: str = "4096x11008", seed: int = 0, device="cpu"):
    """bf16 linear layer, the baseline the quantized ones are held against."""
    return layer(batch, "bf16", shape, seed=seed, device=device)


@rooflight.workload(sweep={"batch": BATCH_SWEEP})
def int8_weight_only(batch: int = 1, shape: str = "4096x11008", seed: int = 0, device="cpu"):
    """Weight-only INT8 (torch._weight_int8pack_mm): int8 weights, per-row scales, bf16 math."""
    return layer(batch, "int8", shape, seed=seed, device=device)


@rooflight.workload(sweep={"batch": BATCH_SWEEP})
def int4_weight_only(batch: int = 1, shape: str = "4096x11008", group_size: int = GROUP_SIZE, seed: int = 0,
                     device="cpu"):
    """Weight-only INT4 (tinygemm _weight_int4pack_mm), groups of 128 along K, bf16 math."""
    return layer(batch, "int4", shape, group_size=group_size, seed=seed, device=device)


@rooflight.workload(sweep={"batch": BATCH_SWEEP})
def w8a8_fp8(batch: int = 1, shape: str = "4096x11008", activation_scale: str = "dynamic", seed: int = 0,
             device="cpu"):
    """W8A8 FP8 (torch._scaled_mm, e4m3): activations quantized in the run, per-tensor scales."""
    return layer(batch, "fp8", shape, activation_scale=activation_scale, seed=seed, device=device)
