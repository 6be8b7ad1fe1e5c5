"""Elementwise ops, activations, reductions, softmax and normalization.

FLOPs: one per arithmetic step of the op's definition, per output element (reductions: per
input element); a transcendental (exp, log, tanh, erf, sqrt, ...) counts as one step.  The
table below writes the steps out.  PyTorch's kernels compute half-precision elementwise math in
float32 ("opmath"), so these FLOPs are on the fp32 vector class (fp64 for float64 tensors,
int32 for integer and boolean tensors), whatever the storage dtype: the storage dtype shows up
in the bytes.

Bytes follow the bytes model in model.py: each tensor input read once (broadcast operands
once), each output written once.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..math_class import MathClass
from .model import OpCall, OpCost, TensorMeta
from .registry import aten, register_cost, register_generic


# op name -> FLOPs per output element.  Unlisted pointwise ops count 1.
FLOPS_PER_ELEMENT: dict[str, int] = {
    # data movement dressed as pointwise: no arithmetic
    "clone": 0, "positive": 0, "alias_copy": 0, "masked_fill": 1,
    # one step each: add, sub, mul, div, neg, abs, compare, select, exp, log, sqrt, tanh, erf ...
    # several steps:
    "addcmul": 3,   # self + value * t1 * t2
    "addcdiv": 3,   # self + value * t1 / t2
    "lerp": 3,      # start + weight * (end - start)
    "rsub": 2,      # other - alpha * self
    "sigmoid": 3,   # 1 / (1 + exp(-x)): neg, exp, add+reciprocal
    "silu": 4,      # x * sigmoid(x)
    "gelu": 5,      # erf form: 0.5 * x * (1 + erf(x / sqrt 2)); tanh form counted as 9 below
    "softplus": 3,  # log(1 + exp(x)) (with the beta scaling folded)
    "elu": 3, "celu": 3, "selu": 4,
    "mish": 6,      # x * tanh(softplus(x))
    "leaky_relu": 2, "hardtanh": 2, "hardsigmoid": 3, "relu6": 2,
    "logaddexp": 4, "logaddexp2": 4, "xlogy": 2, "hypot": 3, "logit": 3,
    "sigmoid_backward": 3,  # grad * y * (1 - y)
    "tanh_backward": 3,     # grad * (1 - y^2)
    "silu_backward": 7,
    "gelu_backward": 10,
    "threshold_backward": 1,
    "native_dropout_backward": 2,
    # activations' backwards not tagged pointwise in aten (registered below), per element
    "softplus_backward": 4,     # grad * sigmoid(beta x): exp, add, div, mul
    "elu_backward": 3,          # compare, exp or scale, mul
    "leaky_relu_backward": 2, "hardtanh_backward": 2, "hardsigmoid_backward": 2,  # compare(s), select
    "hardswish": 4,             # x * relu6(x + 3) / 6
    "hardswish_backward": 4,
    "mish_backward": 12,        # tanh(sp) + x * sigmoid(x) * (1 - tanh(sp)^2), sp = softplus(x)
    "log_sigmoid_forward": 4,   # -softplus(-x), with its buffer
    "log_sigmoid_backward": 4,
    "glu": 4,                   # a * sigmoid(b), per output element
    "glu_backward": 3,          # per input element: the two halves' gradients
    "mse_loss_backward": 3,     # 2 (x - y) grad / n
    "smooth_l1_loss_backward": 4,
    "binary_cross_entropy_with_logits_backward": 5,
}


def vector_class(t: TensorMeta) -> MathClass:
    """The class elementwise math on `t` runs on (PyTorch computes half types in fp32)."""
    if t.dtype in ("float64", "complex128"):
        return MathClass.FP64
    if t.vector_class is MathClass.INT32:
        return MathClass.INT32
    return MathClass.FP32


def _compute_tensor(call: OpCall) -> TensorMeta:
    """The tensor whose dtype the op computes in: the first floating input, else the output."""
    for t in call.tensor_inputs():
        if vector_class(t) is not MathClass.INT32:
            return t
    return call.outputs[0] if call.outputs else call.tensors()[0]


def _op_name(call: OpCall) -> str:
    name = call.op.split("::")[-1].split(".")[0]
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def elementwise_cost(call: OpCall, flops_per_element: float | None = None, note: str = "") -> OpCost:
    outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
    n = max((o.numel for o in outs), default=0)
    if flops_per_element is None:
        name = _op_name(call)
        flops_per_element = FLOPS_PER_ELEMENT.get(name, 1)
        if name == "gelu" and call.arg(1, "approximate", "none") == "tanh":
            flops_per_element = 9  # 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))
    reads = sum(t.bytes for t in call.tensor_inputs())
    writes = sum(o.bytes for o in outs)
    flops = {vector_class(_compute_tensor(call)): flops_per_element * n} if n else {}
    return OpCost(flops, reads, writes, note=note)


@register_generic("pointwise", lambda op: torch.Tag.pointwise in op.tags)
def pointwise(call: OpCall) -> OpCost:
    return elementwise_cost(call)


# ---------------------------------------------------------------- reductions

REDUCTION_FLOPS: dict[str, int] = {
    "sum": 1, "nansum": 1, "mean": 1, "prod": 1, "amax": 1, "amin": 1, "aminmax": 2,
    "max": 1, "min": 1, "argmax": 1, "argmin": 1, "all": 1, "any": 1, "count_nonzero": 1,
    "_is_all_true": 1, "_is_any_true": 1,  # torch's own checks (a VLM's image-token mask: mask.all())
    "var": 3, "std": 3, "var_mean": 3, "std_mean": 3,  # sub mean, square, accumulate
    "norm": 2, "linalg_vector_norm": 2,  # |x|^p, accumulate
    "logsumexp": 3,  # max, exp(x - max), accumulate
    "cumsum": 1, "cumprod": 1, "logcumsumexp": 3,
    "multinomial": 1,  # sampling (generate(do_sample=True)): a running sum over each row, then a search
    # elementwise losses (elementwise_loss)
    "mse_loss": 3,  # sub, square, accumulate
    "smooth_l1_loss": 5,  # sub, abs, compare, square-or-shift, accumulate
    "binary_cross_entropy_with_logits": 6,  # (1 - y) x + softplus(-x): ~5, accumulate
}


def reduction_cost(call: OpCall) -> OpCost:
    x = call.tensor_inputs()[0]
    per = REDUCTION_FLOPS.get(_op_name(call), 1)
    outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
    return OpCost({vector_class(x): per * x.numel}, sum(t.bytes for t in call.tensor_inputs()),
                  sum(o.bytes for o in outs))


@register_cost(aten.softplus_backward, aten.elu_backward, aten.leaky_relu_backward, aten.hardtanh_backward,
               aten.hardsigmoid_backward, aten.hardswish, aten.hardswish_backward, aten.mish_backward,
               aten.log_sigmoid_forward, aten.log_sigmoid_backward, aten.glu, aten.glu_backward,
               aten.mse_loss_backward, aten.smooth_l1_loss_backward)
def untagged_elementwise(call: OpCall) -> OpCost:
    return elementwise_cost(call)


@register_cost(aten.mse_loss, aten.smooth_l1_loss, aten.binary_cross_entropy_with_logits)
def elementwise_loss(call: OpCall) -> OpCost:
    # losses that reduce to one number (or keep the input's shape with reduction="none": the
    # same work), costed as reductions: per input element, REDUCTION_FLOPS
    return reduction_cost(call)


@register_cost(aten._is_all_true, aten._is_any_true)
def bool_reduction(call: OpCall) -> OpCost:
    # a bool tensor reduced to one bool (not tagged a reduction in torch's schema)
    return reduction_cost(call)


@register_generic("reduction", lambda op: torch.Tag.reduction in op.tags)
def reduction(call: OpCall) -> OpCost:
    return reduction_cost(call)


@register_cost(aten.polar)
def polar(call: OpCall) -> OpCost:
    # torch.polar(abs, angle) -> abs * (cos(angle) + i sin(angle)): cos, sin and two multiplies per
    # element (Llama 4's rotary frequencies as complex numbers); writes the complex output
    return elementwise_cost(call, 4)


@register_cost(aten.floor_divide, aten.floor_divide_, aten.remainder, aten.fmod)
def floor_divide(call: OpCall) -> OpCost:
    # divide, then floor (or the remainder's multiply-subtract): 2 per element
    return elementwise_cost(call, 2)


@register_cost(aten.equal, aten.allclose)
def equal(call: OpCall) -> OpCost:
    # equal(a, b) / allclose(a, b) -> bool: read both tensors; per element equal compares (1),
    # allclose tests |a - b| <= atol + rtol * |b| (sub, abs, abs, mul, add, compare: 6).  They
    # return no tensor, so without this entry the metadata rule would cost them zero.
    a = call.tensor_inputs()[0]
    per = 6 if _op_name(call) == "allclose" else 1
    return OpCost({vector_class(a): per * a.numel}, sum(t.bytes for t in call.tensor_inputs()), 0.0)


@register_cost(aten.max.dim, aten.min.dim, aten.cumsum, aten.cumsum_, aten.cumprod, aten.logcumsumexp,
               aten.sort, aten.topk, aten.argsort, aten.kthvalue, aten.median, aten.mode, aten.multinomial)
def ordered_reduction(call: OpCall) -> OpCost:
    name = _op_name(call)
    x = call.tensor_inputs()[0]
    if name in ("sort", "argsort", "topk", "kthvalue", "median", "mode"):
        # the dim is named in the schema (topk(self, k, dim), kthvalue(self, k, dim), sort(self, dim))
        pos = call.arg_names.index("dim") if "dim" in call.arg_names else 1
        dim = call.arg(pos, "dim", -1)
        dim_len = x.shape[dim] if x.ndim else 1
        outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
        if name == "topk":
            # selection of the k largest per row: one pass, each element against a k-heap (log2 k)
            k = int(call.arg(1, "k", 1))
            per = 1.0 + math.log2(max(k, 2))
            return OpCost({vector_class(x): per * x.numel}, x.bytes, sum(o.bytes for o in outs),
                          note="topk: a pass with a k-heap, 1 + log2 k comparisons per element")
        # comparisons of a sort along the dim: n log2 n per row
        per = max(1.0, math.log2(max(dim_len, 2)))
        return OpCost({vector_class(x): per * x.numel}, x.bytes, sum(o.bytes for o in outs),
                      note="sort: n log2 n comparisons")
    return reduction_cost(call)


# ---------------------------------------------------------------- softmax

SOFTMAX_FLOPS = 5  # per element: max, subtract, exp, sum, divide (log_softmax: log instead of divide)


@register_cost(aten._softmax, aten._log_softmax, aten._safe_softmax)
def softmax(call: OpCall) -> OpCost:
    return elementwise_cost(call, SOFTMAX_FLOPS)


@register_cost(aten._softmax_backward_data, aten._log_softmax_backward_data)
def softmax_backward(call: OpCall) -> OpCost:
    # grad_in = y * (grad - sum(grad * y)): multiply, sum, subtract, multiply
    return elementwise_cost(call, 4)


# ---------------------------------------------------------------- normalization

def with_row_stats(cost: OpCost, y: TensorMeta, stats: list[TensorMeta]) -> OpCost:
    """Writes of a norm: y, plus its per-row statistics (mean, rstd) in the accumulation dtype,
    float32 (float64 for double inputs), as the GPU kernel writes them whatever the device that
    counts: the CPU kernel returns them in the input's dtype, the meta/fake ones in float32."""
    acc_bytes = 8 if y.dtype in ("float64", "complex128") else 4
    return dataclasses.replace(cost, bytes_written=y.bytes + sum(t.numel for t in stats) * acc_bytes)


# per element: mean (1), variance (sub, square, add: 3), normalize (sub, mul: 2); the affine's
# weight and bias one each
LAYER_NORM_FLOPS = 6


@register_cost(aten.native_layer_norm)
def layer_norm(call: OpCall) -> OpCost:
    # input: [*, *normalized] -> y: [*, *normalized], mean and rstd: [*, 1, ...] per row
    weight, bias = call.arg(2, "weight"), call.arg(3, "bias")
    per = LAYER_NORM_FLOPS + (1 if weight is not None else 0) + (1 if bias is not None else 0)
    y, *stats = call.outputs
    return with_row_stats(elementwise_cost(call, per), y, stats)


@register_cost(aten.native_layer_norm_backward, aten.native_batch_norm_backward, aten.native_group_norm_backward)
def norm_backward(call: OpCall) -> OpCost:
    # per input element: x_hat = (x - mean) * rstd (2), grad * weight (1), the two row sums of
    # grad and grad * x_hat (2 + 2), the input gradient's combination (~4), grad_weight and
    # grad_bias accumulations (1) = 12; reads grad_out, the input, the statistics and the
    # weight, writes the gradients the output mask asks for
    return elementwise_cost(call, 12)


@register_cost(aten._fused_rms_norm)
def fused_rms_norm(call: OpCall) -> OpCost:
    # per element: square, accumulate, scale by rstd, scale by weight = 4; outputs y and rstd
    weight = call.arg(2, "weight")
    y, *stats = call.outputs
    return with_row_stats(elementwise_cost(call, 3 + (1 if weight is not None else 0)), y, stats)


@register_cost(aten._weight_norm_interface)
def weight_norm(call: OpCall) -> OpCost:
    # nn.utils.weight_norm (wav2vec2's positional convolution): w = g * v / ||v||, the norm over
    # every dim but `dim`: square and accumulate (2), divide and scale (2) per element of v; reads
    # v and g, writes w and the fp32 norms
    v = call.arg(0)
    return OpCost({vector_class(v): 4 * v.numel}, sum(t.bytes for t in call.tensor_inputs()),
                  sum(o.bytes for o in call.outputs if isinstance(o, TensorMeta)))


@register_cost(aten._weight_norm_interface_backward)
def weight_norm_backward(call: OpCall) -> OpCost:
    # (grad_w, v, g, norms, dim) -> (grad_v, grad_g): grad_g = sum(grad_w * v) / ||v|| (2 per
    # element), grad_v = g / ||v|| * (grad_w - v * grad_g / ||v||) (4 per element); reads its
    # inputs once, writes both gradients
    v = call.arg(1)
    return OpCost({vector_class(v): 6 * v.numel}, sum(t.bytes for t in call.tensor_inputs()),
                  sum(o.bytes for o in call.outputs if isinstance(o, TensorMeta)))


@register_cost(aten.native_group_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
               aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional)
def other_norms(call: OpCall) -> OpCost:
    return elementwise_cost(call, 8)


# ---------------------------------------------------------------- pooling

def _window(call: OpCall, pos: int = 1) -> int:
    """Elements in a pooling window: the product of kernel_size (argument `pos`)."""
    kernel = call.arg(pos, "kernel_size")
    if isinstance(kernel, int):
        kernel = [kernel]
    return math.prod(kernel) if kernel else 1


@register_cost(aten.max_pool2d_with_indices, aten.max_pool3d_with_indices, aten.avg_pool2d, aten.avg_pool3d)
def pool(call: OpCall) -> OpCost:
    # each output element compares (max) or adds (avg) the kernel window's elements: one FLOP per
    # window element; reads the input, writes the output (and max pooling's indices)
    outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
    x = call.arg(0)
    return OpCost({vector_class(x): outs[0].numel * _window(call)}, x.bytes, sum(o.bytes for o in outs))


@register_cost(aten.max_pool2d_with_indices_backward, aten.max_pool3d_with_indices_backward)
def max_pool_backward(call: OpCall) -> OpCost:
    # (grad_out, self, kernel_size, stride, padding, dilation, ceil_mode, indices): each grad_out
    # element is added at its index in a zeroed grad_input (one add each); reads grad_out and the
    # indices (the input's values are not needed), writes grad_input
    gy, indices = call.arg(0), call.arg(7, "indices")
    return OpCost({vector_class(gy): gy.numel}, gy.bytes + (indices.bytes if isinstance(indices, TensorMeta) else 0),
                  call.out.bytes)


@register_cost(aten.upsample_nearest1d_backward, aten.upsample_nearest2d_backward, aten.upsample_nearest3d_backward)
def upsample_nearest_backward(call: OpCall) -> OpCost:
    # each grad_out element is added to the input element it copied: one add each; reads grad_out,
    # writes grad_input
    gy = call.arg(0)
    return OpCost({vector_class(gy): gy.numel}, gy.bytes, call.out.bytes)


_INTERPOLATION_NEIGHBOURS = {"upsample_linear1d_backward": 2, "upsample_bilinear2d_backward": 4,
                             "upsample_trilinear3d_backward": 8, "upsample_bicubic2d_backward": 16}


@register_cost(aten.upsample_linear1d_backward, aten.upsample_bilinear2d_backward,
               aten.upsample_trilinear3d_backward, aten.upsample_bicubic2d_backward)
def upsample_interpolating_backward(call: OpCall) -> OpCost:
    # each grad_out element is spread over the input elements it was interpolated from (2 in 1-D,
    # 4 bilinear, 8 trilinear, 16 bicubic), a multiply and an add each; reads grad_out, writes
    # grad_input (a ViT-style model interpolating its position embeddings trains through it)
    gy = call.arg(0)
    per = 2 * _INTERPOLATION_NEIGHBOURS[_op_name(call)]
    return OpCost({vector_class(gy): per * gy.numel}, gy.bytes, call.out.bytes)


@register_cost(aten.avg_pool2d_backward, aten.avg_pool3d_backward)
def avg_pool_backward(call: OpCall) -> OpCost:
    # (grad_out, self, kernel_size, ...): each grad_out element, divided by the window, is added to
    # each input element of its window (one FLOP per window element); reads grad_out, writes grad_input
    gy = call.arg(0)
    return OpCost({vector_class(gy): gy.numel * _window(call, 2)}, gy.bytes, call.out.bytes)


# ---------------------------------------------------------------- dropout and random fills

@register_cost(aten.native_dropout)
def dropout(call: OpCall) -> OpCost:
    # draw, compare, scale: 3 per element; writes the output and the keep-mask
    return elementwise_cost(call, 3)


@register_cost(aten.bernoulli_, aten.uniform_, aten.normal_, aten.random_, aten.exponential_,
               aten.rand, aten.randn, aten.rand_like, aten.randn_like, aten.randint, aten.randint_like,
               aten.randperm, aten.bernoulli)
def random_fill(call: OpCall) -> OpCost:
    # generating a random number: counted as 2 steps; in-place fills write without reading
    outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
    n = sum(o.numel for o in outs)
    reads = 0.0
    if _op_name(call) == "bernoulli" and not call.op.split("::")[-1].split(".")[0].endswith("_"):
        reads = call.tensor_inputs()[0].bytes  # probabilities
    return OpCost({MathClass.FP32: 2 * n} if n else {}, reads, sum(o.bytes for o in outs))
