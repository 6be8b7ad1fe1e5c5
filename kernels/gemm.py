"""GEMM and GEMV: LLM-shaped linear layers placed on the roofline, M = 1 ... 8192 tokens.

`y = x @ W.T` with x: [M, K] (M tokens) and W: [N, K], the layer `nn.Linear(K, N)`.  Shapes are
named `KxN` (in x out features): "4096x4096" (a 7B attention projection), "4096x11008" (a
Llama-2-7B MLP up/gate projection), "8192x28672" (a 70B MLP projection); any "KxN" works.

One workload per precision, each swept over M (the default sweep crosses the ridge):

    linear_bf16, linear_fp16   tensor cores, fp32 accumulate
    linear_fp32                fp32 with matmul precision "highest" (no TF32) inside the run
    linear_tf32                fp32 tensors with set_float32_matmul_precision("high") inside the
                               run (restored after): TF32 tensor cores
    linear_fp8                 torch._scaled_mm, e4m3 x e4m3 -> bf16 with per-tensor scales (the
                               inputs are quantized when the workload is built: this is the GEMM
                               alone; kernels/quant.py times W8A8 with its activation quantization)

The roofline in closed form.  FLOPs = 2MNK; the minimum traffic reads x and W once and writes y
once: bytes = a(MK + NK) + o·MN (a, o: input and output bytes per element), so the intensity is
2 / (a/M + a/N + o/K) FLOP/B: about 2/a at M = 1 (a GEMV streams the weights), growing with M
until it crosses the ridge r = peak / bandwidth at

    M* = r·a·N·K / (2NK − r(a·K + o·N))                      (`crossing_m`)

On an H100 SXM (datasheet, 3.35 TB/s; dense peaks), M* for 4096x4096 / 4096x11008 / 8192x28672:

    bf16, fp16   989.4 TFLOP/s   r = 295 FLOP/B   M* = 345 / 328 / 310
    tf32         494.7           r = 148          M* = 345 / 328 / 310 (half the peak, twice the bytes)
    fp32 (no TF32) 67            r = 20           M* = 41 / 41 / 40
    fp8          1979            r = 591          M* = 377 / 356 / 322 (one byte in, bf16 out)

so the default sweep's decode-sized products (M <= 256) are memory-bound and its prefill-sized
ones (M >= 1024) compute-bound, in every precision but fp32.

Each Run carries a float64 reference computed from the very inputs the kernel reads (the fp8
ones dequantized), on the same device, so the check measures the kernel's arithmetic (rounding
of the output, accumulation order, TF32's 10-bit inputs), not input quantization.

On a CPU everything runs (torch 2.13 has CPU `_scaled_mm` for e4m3) but the sweep up to 8192 is
slow there: `--sweep m=1,16,64,256` or `--count-only --device meta` (no data, any size).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

import rooflight
from rooflight.errors import UsageError

M_SWEEP = (1, 16, 64, 256, 1024, 4096, 8192)
SHAPES = ("4096x4096", "4096x11008", "8192x28672")  # in x out features
PRECISIONS = ("bf16", "fp16", "fp32", "tf32", "fp8")

# Largest relative error ‖y − y64‖ / ‖y64‖ that passes, against the float64 product of the same
# inputs.  bf16/fp16/fp8 outputs are rounded to 8/11/8 significant bits (≈1.1e-3 / 1.4e-4 rms
# relative); TF32 rounds the inputs to 11 bits (≈5e-4 per product); fp32 accumulates over K.
TOLERANCE = {"bf16": 1e-2, "fp16": 5e-3, "fp32": 1e-4, "tf32": 5e-3, "fp8": 1e-2}

# (bytes per input element, bytes per output element)
ELEMENT_BYTES = {"bf16": (2, 2), "fp16": (2, 2), "fp32": (4, 4), "tf32": (4, 4), "fp8": (1, 2)}

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


def parse_shape(shape: str) -> tuple[int, int]:
    """'4096x11008' -> (K, N) = (4096, 11008): in features x out features."""
    try:
        k, n = (int(s) for s in str(shape).lower().split("x"))
    except ValueError:
        raise UsageError(f"shape {shape!r}: write IN x OUT features, e.g. 4096x11008") from None
    if k < 1 or n < 1:
        raise UsageError(f"shape {shape!r}: both sizes must be positive")
    return k, n


def crossing_m(shape: str, ridge_flop_per_byte: float, precision: str = "bf16") -> float:
    """The M at which the layer's intensity 2MNK / (a(MK + NK) + o·MN) reaches the ridge
    (inf when it never does: the ridge is above the layer's largest intensity)."""
    k, n = parse_shape(shape)
    a, o = ELEMENT_BYTES[precision]
    r = ridge_flop_per_byte
    denom = 2 * n * k - r * (a * k + o * n)
    return r * a * n * k / denom if denom > 0 else math.inf


def require_fp8(device: str | torch.device) -> None:
    """fp8 tensor cores start at compute capability 8.9 (Ada, Hopper): refuse older GPUs."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise UsageError(f"fp8 matmuls (torch._scaled_mm) need compute capability 8.9 or newer (Ada, Hopper); "
                         f"{name} is {cap[0]}.{cap[1]}: leave out the fp8 workloads (-w) on this GPU")


def with_matmul_precision(fn: Callable, precision: str) -> Callable:
    """fn run with torch.set_float32_matmul_precision(precision), the previous setting restored."""

    def run(*args, **kwargs):
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(precision)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_float32_matmul_precision(previous)

    run.__name__ = run.__qualname__ = f"{getattr(fn, '__name__', 'fn')}_{precision}"
    return run


def fp8_quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3 quantization: (t / scale as e4m3, scale) with scale = amax / 448 (float32)."""
    scale = (t.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def scaled_mm(x8: torch.Tensor, w8_t: torch.Tensor, scale_x: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    # x8: [M, K] e4m3 row-major @ w8_t: [K, N] e4m3 column-major (W [N, K] transposed) -> bf16 [M, N]
    return torch._scaled_mm(x8, w8_t, scale_a=scale_x, scale_b=scale_w, out_dtype=torch.bfloat16)


def linear(m: int, shape: str = "4096x4096", precision: str = "bf16", *, seed: int = 0,
           device: str | torch.device = "cpu") -> rooflight.Run:
    """The Run of one linear layer: x [m, K] @ W.T, W [N, K], in `precision`, with its reference."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if m < 1:
        raise UsageError(f"m = {m}: a linear layer needs at least one token")
    k, n = parse_shape(shape)
    torch.manual_seed(seed)
    # unit-variance activations, weights scaled by 1/sqrt(K): outputs of unit variance, far from
    # fp16's overflow at any K
    x = torch.randn(m, k, device=device, dtype=torch.float32)
    w = torch.randn(n, k, device=device, dtype=torch.float32) / math.sqrt(k)
    meta = torch.device(device).type == "meta"
    tol = TOLERANCE[precision]

    if precision == "fp8":
        require_fp8(device)
        x8, sx = fp8_quantize(x)
        w8, sw = fp8_quantize(w)
        w8_t = w8.t()  # column-major [K, N], as _scaled_mm wants its second operand

        def reference():
            return (x8.double() * sx.double()) @ (w8.double() * sw.double()).T

        return rooflight.Run(scaled_mm, (x8, w8_t, sx, sw), reference=None if meta else reference, tolerance=tol)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    x, w = x.to(dtype), w.to(dtype)
    fn: Callable = F.linear
    if precision in ("fp32", "tf32"):
        fn = with_matmul_precision(F.linear, "high" if precision == "tf32" else "highest")

    def reference():
        return x.double() @ w.double().T

    return rooflight.Run(fn, (x, w), reference=None if meta else reference, tolerance=tol)


# ---------------------------------------------------------------------------- workloads


@rooflight.workload(sweep={"m": M_SWEEP})
def linear_bf16(m: int = 1, shape: str = "4096x4096", seed: int = 0, device="cpu"):
    """bf16 linear layer x @ W.T on tensor cores (fp32 accumulate), over M tokens."""
    return linear(m, shape, "bf16", seed=seed, device=device)


@rooflight.workload(sweep={"m": M_SWEEP})
def linear_fp16(m: int = 1, shape: str = "4096x4096", seed: int = 0, device="cpu"):
    """fp16 linear layer x @ W.T on tensor cores, over M tokens."""
    return linear(m, shape, "fp16", seed=seed, device=device)


@rooflight.workload(sweep={"m": M_SWEEP})
def linear_fp32(m: int = 1, shape: str = "4096x4096", seed: int = 0, device="cpu"):
    """fp32 linear layer without TF32 (matmul precision 'highest'), over M tokens."""
    return linear(m, shape, "fp32", seed=seed, device=device)


@rooflight.workload(sweep={"m": M_SWEEP})
def linear_tf32(m: int = 1, shape: str = "4096x4096", seed: int = 0, device="cpu"):
    """fp32 linear layer on TF32 tensor cores (matmul precision 'high' inside the run), over M tokens."""
    return linear(m, shape, "tf32", seed=seed, device=device)


@rooflight.workload(sweep={"m": M_SWEEP})
def linear_fp8(m: int = 1, shape: str = "4096x4096", seed: int = 0, device="cpu"):
    """fp8 (e4m3) linear layer through torch._scaled_mm with per-tensor scales, bf16 out, over M tokens."""
    return linear(m, shape, "fp8", seed=seed, device=device)
