"""Matrix products and convolution: 2 FLOPs per multiply-add, on the tensor class of the dtype.

`linear`, `matmul` and `einsum` are composite: by the time the dispatcher sees them they are
views plus the products below, so their cost is the sum of what they decompose into.
"""

from __future__ import annotations

import math

from ..math_class import MathClass
from .model import OpCall, OpCost, TensorMeta
from .pointwise import vector_class
from .registry import aten, register_cost


def _read(*tensors: TensorMeta | None) -> float:
    return sum(t.bytes for t in tensors if isinstance(t, TensorMeta))


def _epilogue(out: TensorMeta, bias: TensorMeta | None, beta: float = 1.0) -> dict:
    """A bias/`beta*self` add in the GEMM epilogue: one vector FLOP per output element, done on
    the fp32 accumulator (cuBLAS computes half-precision GEMMs in fp32), so on the class that
    pointwise ops of the output's dtype use (fp32 for bf16/fp16/fp32, fp64 for float64)."""
    if not isinstance(bias, TensorMeta) or beta == 0:
        return {}
    return {vector_class(out): out.numel}


@register_cost(aten.mm)
def mm(call: OpCall) -> OpCost:
    # a: [M, K] @ b: [K, N] -> out: [M, N];  2*M*N*K FLOPs
    a, b = call.arg(0), call.arg(1)
    m, k = a.shape
    n = b.shape[1]
    cls = a.matrix_class(call.settings.allow_tf32_matmul)
    return OpCost({cls: 2 * m * n * k}, _read(a, b), call.out.bytes)


@register_cost(aten.addmm)
def addmm(call: OpCall) -> OpCost:
    # beta*bias + alpha*(a: [M, K] @ b: [K, N]);  bias broadcasts (a [N] bias is read once)
    bias, a, b = call.arg(0), call.arg(1), call.arg(2)
    beta = call.arg(3, "beta", 1)
    m, k = a.shape
    n = b.shape[1]
    cls = a.matrix_class(call.settings.allow_tf32_matmul)
    flops = {cls: 2 * m * n * k}
    for c, v in _epilogue(call.out, bias, beta).items():
        flops[c] = flops.get(c, 0) + v
    return OpCost(flops, _read(a, b) + (bias.bytes if beta != 0 else 0), call.out.bytes)


@register_cost(aten.bmm)
def bmm(call: OpCall) -> OpCost:
    # a: [B, M, K] @ b: [B, K, N] -> [B, M, N];  2*B*M*N*K
    a, b = call.arg(0), call.arg(1)
    bsz, m, k = a.shape
    n = b.shape[2]
    cls = a.matrix_class(call.settings.allow_tf32_matmul)
    return OpCost({cls: 2 * bsz * m * n * k}, _read(a, b), call.out.bytes)


@register_cost(aten.baddbmm)
def baddbmm(call: OpCall) -> OpCost:
    # beta*self: [B, M, N] + alpha*(a: [B, M, K] @ b: [B, K, N])
    base, a, b = call.arg(0), call.arg(1), call.arg(2)
    beta = call.arg(3, "beta", 1)
    bsz, m, k = a.shape
    n = b.shape[2]
    cls = a.matrix_class(call.settings.allow_tf32_matmul)
    flops = {cls: 2 * bsz * m * n * k}
    for c, v in _epilogue(call.out, base, beta).items():
        flops[c] = flops.get(c, 0) + v
    return OpCost(flops, _read(a, b) + (base.bytes if beta != 0 else 0), call.out.bytes)


@register_cost(aten._grouped_mm)
def grouped_mm(call: OpCall) -> OpCost:
    """One GEMM per group (mixture-of-experts): `_grouped_mm(a, b, offs)`.

    - a: [T, K] tokens sorted by expert, b: [E, K, N] -> [T, N]: expert e multiplies rows
      offs[e-1]:offs[e]; 2·Σ_e rows_e·K·N FLOPs; reads the rows used and the weights of the experts
      that got a row.  On real tensors the capture reads `offs` (the tokens each expert really
      got); on meta or fake ones every row is used and every expert gets its share (balanced
      routing), and the note says so;
    - a: [M, K_total], b: [K_total, N] with offs over K (the weight gradient): 2·M·K·N;
    - a: [E, M, K], b: [E, K, N]: a batched GEMM, 2·E·M·K·N.
    """
    a, b = call.arg(0), call.arg(1)
    offs = call.values.get("offs")
    cls = a.matrix_class(call.settings.allow_tf32_matmul)
    out = call.out
    if a.ndim == 2 and b.ndim == 3:
        e, k, n = b.shape
        if offs:
            counts = [hi - lo for lo, hi in zip((0, *offs[:-1]), offs)]
            rows, used = sum(counts), sum(1 for c in counts if c > 0)
            how = f"tokens per expert read from offs: {min(counts)}-{max(counts)} over {e} experts"
        else:
            rows, used = a.shape[0], e
            how = f"routing assumed balanced: every row used, all {e} experts get tokens (counted off-device)"
        w_bytes = b.bytes * used / e if e else 0.0
        return OpCost({cls: 2 * rows * k * n}, rows * k * a.itemsize + w_bytes, rows * n * out.itemsize,
                      note=f"grouped GEMM: {how}")
    if a.ndim == 2 and b.ndim == 2:  # groups over K
        m, k = a.shape
        n = b.shape[1]
        return OpCost({cls: 2 * m * k * n}, _read(a, b), out.bytes, note="grouped GEMM over K")
    bsz, m, k = a.shape[-3:] if a.ndim == 3 else (1, *a.shape[-2:])
    n = b.shape[-1]
    return OpCost({cls: 2 * bsz * m * k * n}, _read(a, b), out.bytes, note="grouped GEMM, batched")


@register_cost(aten._int_mm)
def int_mm(call: OpCall) -> OpCost:
    # int8 a: [M, K] @ int8 b: [K, N] -> int32 [M, N]
    a, b = call.arg(0), call.arg(1)
    m, k = a.shape
    n = b.shape[1]
    return OpCost({a.matrix_class(): 2 * m * n * k}, _read(a, b), call.out.bytes)


@register_cost(aten._scaled_mm)
def scaled_mm(call: OpCall) -> OpCost:
    # fp8 a: [M, K] @ fp8 b: [K, N], scaled by scale_a/scale_b (+bias) -> out_dtype [M, N]
    a, b = call.arg(0), call.arg(1)
    scale_a, scale_b = call.arg(2, "scale_a"), call.arg(3, "scale_b")
    bias = call.arg(4, "bias")
    m, k = a.shape
    n = b.shape[1]
    flops = {a.matrix_class(): 2 * m * n * k, **_epilogue(call.out, bias)}
    return OpCost(flops, _read(a, b, scale_a, scale_b, bias), call.out.bytes,
                  note="fp8 scaled matmul")


@register_cost(aten._weight_int8pack_mm)
def weight_int8pack_mm(call: OpCall) -> OpCost:
    # x: [M, K] (bf16/fp16) @ int8 w: [N, K]^T * scales: [N] -> [M, N]
    # The weight is read as int8 (1 byte per element), half of bf16's traffic.  PyTorch's kernel
    # (CUDA and CPU alike) widens both operands to fp32 and multiplies on the CUDA cores / vector
    # units, not the tensor cores: on an H200 Nsight Compute counts 0 tensor-pipe FLOPs for it
    # (benchmarks/results/counters_validation_part2.txt), so its FLOPs are fp32 vector FLOPs.
    x, w, scales = call.arg(0), call.arg(1), call.arg(2)
    m, k = x.shape
    n = w.shape[0]
    return OpCost({MathClass.FP32: 2 * m * n * k}, _read(x, w, scales), call.out.bytes,
                  note="weight-only int8: weights read as int8, math in fp32 on the vector units (no tensor cores)")


@register_cost(aten._weight_int4pack_mm, aten._weight_int4pack_mm_for_cpu)
def weight_int4pack_mm(call: OpCall) -> OpCost:
    # x: [M, K] @ packed int4 w (N*K/2 bytes in whatever packed layout) with per-group
    # scales_and_zeros -> [M, N]; N is the output's last dim.
    x, w = call.arg(0), call.arg(1)
    sz = call.arg(3, "qScaleAndZeros")
    m, k = x.shape
    n = call.out.shape[-1]
    return OpCost({x.matrix_class(): 2 * m * n * k}, _read(x, w, sz), call.out.bytes,
                  note="weight-only int4: weights read packed (half a byte each), math in the activation dtype")


def _conv_flops(x: TensorMeta, w: TensorMeta, out: TensorMeta, transposed: bool) -> float:
    """A convolution's FLOPs from its input, weight and output: 2 * N * C_out * prod(out_spatial)
    * (C_in/groups) * prod(kernel); a transposed convolution's the same work counted over the
    input positions (its weight is [C_in, C_out/groups, *kernel])."""
    kernel = math.prod(w.shape[2:])
    if transposed:
        return 2 * x.shape[0] * math.prod(x.shape[2:]) * w.shape[0] * w.shape[1] * kernel
    return 2 * out.shape[0] * math.prod(out.shape[2:]) * w.shape[0] * w.shape[1] * kernel


DEPTHWISE_NOTE = "depthwise (one group per channel): no channel reduction, so CUDA-core math, not tensor cores"


def _conv_class(x: TensorMeta, groups: object, allow_tf32: bool) -> tuple[MathClass, str]:
    """The class a convolution's multiply-adds run on, and a note: the tensor cores, except for a
    depthwise one (every input channel its own group), whose outputs are each a dot product over
    the kernel window alone, with no channel reduction to give a tensor core: PyTorch runs those
    with its own depthwise kernels (conv_depthwise2d_*) on the CUDA cores, accumulating in fp32 (on
    an H200, bf16 conv1d/conv2d forward and backward, Nsight Compute counted no tensor-pipe work)."""
    if isinstance(groups, int) and groups > 1 and len(x.shape) > 1 and groups == x.shape[1]:
        return vector_class(x), DEPTHWISE_NOTE
    return x.matrix_class(allow_tf32), ""


@register_cost(aten.convolution, aten._convolution)
def convolution(call: OpCall) -> OpCost:
    # input: [N, C_in, *in_spatial], weight: [C_out, C_in/groups, *kernel] (transposed:
    # [C_in, C_out/groups, *kernel]) -> out: [N, C_out, *out_spatial]
    # FLOPs = 2 * N * C_out * prod(out_spatial) * (C_in/groups) * prod(kernel); transposed
    # convolutions do the same work counted over the input positions.
    x, w, bias = call.arg(0), call.arg(1), call.arg(2)
    out = call.out
    cls, note = _conv_class(x, call.arg(8, "groups", 1), call.settings.allow_tf32_conv)
    total = {cls: _conv_flops(x, w, out, bool(call.arg(6, "transposed", False)))}
    for c, v in _epilogue(out, bias).items():  # fp32 conv without TF32: same class, so add
        total[c] = total.get(c, 0) + v
    return OpCost(total, _read(x, w, bias), out.bytes, note=note)


@register_cost(aten.convolution_backward)
def convolution_backward(call: OpCall) -> OpCost:
    # (grad_out, input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
    # groups, output_mask) -> (grad_input, grad_weight, grad_bias), each only where output_mask
    # asks.  grad_input is the convolution of grad_out with the weight (transposed), grad_weight
    # that of the input with grad_out: each does the forward's multiply-adds, 2 * N * C_out *
    # prod(out_spatial) * (C_in/groups) * prod(kernel) FLOPs (a transposed convolution's counted
    # over the input positions, as in the forward); grad_bias sums grad_out over all but its
    # channel dim (one add per element).  Reads grad_out, the weight for grad_input and the
    # input for grad_weight; writes the gradients it makes.
    gy, x, w = call.arg(0), call.arg(1), call.arg(2)
    mask = list(call.arg(10, "output_mask", (True, True, True)) or (True, True, True))
    forward = _conv_flops(x, w, gy, bool(call.arg(7, "transposed", False)))  # grad_out has the output's shape
    cls, note = _conv_class(x, call.arg(9, "groups", 1), call.settings.allow_tf32_conv)
    flops = {cls: forward * (int(bool(mask[0])) + int(bool(mask[1])))}
    if mask[2]:
        flops[vector_class(gy)] = flops.get(vector_class(gy), 0) + gy.numel
    read = gy.bytes + (w.bytes if mask[0] else 0) + (x.bytes if mask[1] else 0)
    written = sum(o.bytes for o in call.outputs if isinstance(o, TensorMeta))
    return OpCost(flops, read, written, note=note)
