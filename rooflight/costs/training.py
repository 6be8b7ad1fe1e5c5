"""What a training step runs besides the forward's ops: the loss, the backward of views and
slices, optimizers (the `_foreach_*` family and the fused Adam/AdamW/SGD kernels).

The bytes model holds (costs/model.py): an op reads its tensor inputs once and writes its outputs
once.  In-place ops (`_foreach_add_`, `_fused_adamw_`) return nothing: what they write is the
tensors they update, each written once.  Per-element FLOPs follow the elementwise table of
costs/pointwise.py.
"""

from __future__ import annotations

import math

from .model import OpCall, OpCost, TensorMeta
from .pointwise import FLOPS_PER_ELEMENT, vector_class
from .registry import aten, register_cost, register_generic

# ------------------------------------------------------------------ the loss


@register_cost(aten.nll_loss_forward)
def nll_loss_forward(call: OpCall) -> OpCost:
    # self: [N, C] log-probabilities, target: [N]: gathers one element per row (-x[i, t_i]), sums
    # them (reduction) -> output, total_weight.  Reads N elements of self, not N*C.
    x, target, weight = call.arg(0), call.arg(1), call.arg(2, "weight")
    n = target.numel
    reads = target.bytes + n * x.itemsize + (n * weight.itemsize if isinstance(weight, TensorMeta) else 0)
    writes = sum(o.bytes for o in call.outputs)
    return OpCost({vector_class(x): 2 * n}, reads, writes, note="nll_loss: one element of each row")


@register_cost(aten.nll_loss_backward)
def nll_loss_backward(call: OpCall) -> OpCost:
    # grad_input: [N, C] zeros with -grad (* weight) scattered at each row's target: writes N*C
    grad, x, target = call.arg(0), call.arg(1), call.arg(2)
    n = target.numel
    return OpCost({vector_class(x): n}, grad.bytes + target.bytes, call.out.bytes,
                  note="nll_loss backward: a zero-filled gradient, one element of each row set")


# ------------------------------------------------------------------ backward of views and slices

_VIEW_BACKWARDS = frozenset({"slice_backward", "select_backward", "diagonal_backward", "unfold_backward",
                             "as_strided_backward", "narrow_backward"})


def _is_view_backward(op) -> bool:
    return op.__name__.split(".")[0] in _VIEW_BACKWARDS


@register_generic("view backward", _is_view_backward)
def view_backward(call: OpCall) -> OpCost:
    # grad_input: the input's full size, zeros except the viewed part, which gets grad_output:
    # reads grad_output once, writes the whole grad_input once (the fill and the copy fused)
    grad = call.arg(0)
    return OpCost({}, grad.bytes, call.out.bytes, note="view backward: zero-filled gradient, the view's part copied")


# ------------------------------------------------------------------ norm backwards


@register_cost(aten._fused_rms_norm_backward)
def fused_rms_norm_backward(call: OpCall) -> OpCost:
    # x_hat = x * rstd; dx = rstd * (g*w - x_hat * mean(g*w*x_hat)): 7 per element; dw = sum over
    # rows of g * x_hat: 2 per element (when asked for, output_mask[1]); reads g, x, rstd, w once
    grad, x, _, rstd, w = (call.arg(i) for i in range(5))
    mask = call.arg(5, "output_mask", (True, True)) or (True, True)
    per = (7 if mask[0] else 0) + (2 if len(mask) > 1 and mask[1] and isinstance(w, TensorMeta) else 0)
    reads = sum(t.bytes for t in (grad, x, rstd, w) if isinstance(t, TensorMeta))
    return OpCost({vector_class(x): per * x.numel}, reads, sum(o.bytes for o in call.outputs),
                  note="fused RMSNorm backward")


# ------------------------------------------------------------------ the _foreach_* family

_FOREACH_STEPS = {  # per element, as their single-tensor ops (pointwise table) count them
    "add": 1, "sub": 1, "mul": 1, "div": 1, "sqrt": 1, "rsqrt": 1, "neg": 1, "abs": 1, "exp": 1, "log": 1,
    "reciprocal": 1, "sign": 1, "maximum": 1, "minimum": 1, "clamp_min": 1, "clamp_max": 1, "copy": 0,
    "zero": 0, "addcmul": 3, "addcdiv": 3, "lerp": 3, "pow": 1, "norm": 2, "max": 1, "sigmoid": 3, "tanh": 1,
}


def _is_foreach(op) -> bool:
    return op.__name__.startswith("_foreach_")


def _lists(call: OpCall) -> list[list[TensorMeta]]:
    return [list(a) for a in call.args if isinstance(a, (list, tuple)) and any(isinstance(t, TensorMeta) for t in a)]


@register_generic("foreach", _is_foreach)
def foreach(call: OpCall) -> OpCost:
    """`_foreach_X` / `_foreach_X_` over lists of tensors: X's elementwise cost on every element of
    the first list.  Reads every tensor argument; writes the outputs, or (in-place) the first list."""
    name = call.op.split("::")[-1].split(".")[0][len("_foreach_"):]
    inplace = name.endswith("_")
    base = name.rstrip("_")
    per = _FOREACH_STEPS.get(base, FLOPS_PER_ELEMENT.get(base, 1))
    lists = _lists(call)
    first = lists[0] if lists else []
    if base in ("zero",):  # writes only
        return OpCost({}, 0.0, sum(t.bytes for t in first), note="foreach zero: writes the list")
    flops = _per_element(first, per)
    reads = sum(t.bytes for t in call.tensor_inputs())
    if base == "copy":  # _foreach_copy_(self, src): reads src, writes self
        reads = sum(t.bytes for lst in lists[1:] for t in lst)
    writes = sum(t.bytes for t in first) if inplace else sum(o.bytes for o in call.outputs)
    if base == "norm":
        writes = sum(o.bytes for o in call.outputs)
    return OpCost(flops, reads, writes, note=f"foreach {base}: {per:g} per element over {len(first)} tensors")


# ------------------------------------------------------------------ fused optimizers

# Per element of a parameter (the per-tensor bias corrections are scalars):
#   Adam/AdamW   m = b1*m + (1-b1)*g (3); v = b2*v + (1-b2)*g*g (4); denom = sqrt(v)/sqrt(bc2) + eps (3);
#                p = p - lr/bc1 * m / denom (3); decay p *= 1 - lr*wd (AdamW) or g += wd*p (Adam) (2): 15
#   SGD          buf = mu*buf + (1-damp)*g (3), p -= lr*buf (2), weight decay g += wd*p (2): 7
ADAM_FLOPS_PER_ELEMENT = 15
SGD_FLOPS_PER_ELEMENT = 7


def _per_element(tensors, per: float) -> dict:
    """`per` FLOPs on every element of every tensor, on each one's vector class."""
    flops: dict = {}
    for t in tensors:
        c = vector_class(t)
        flops[c] = flops.get(c, 0.0) + per * t.numel
    return flops


def _fused_step(params: list, grads: list, states: list, per: float, note: str) -> OpCost:
    """One kernel over every parameter: reads p, g and the states once, writes p and the states
    once: the minimum an optimizer step can move."""
    return OpCost(_per_element(params, per), sum(t.bytes for t in params + grads + states),
                  sum(t.bytes for t in params + states), note=note)


@register_cost(aten._fused_adam_, aten._fused_adamw_)
def fused_adam(call: OpCall) -> OpCost:
    # (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, ..., amsgrad, ...)
    params, grads, m, v, vmax = (list(call.arg(i) or ()) for i in range(5))
    states = m + v + (vmax if call.arg(11, "amsgrad", False) else [])
    return _fused_step(params, grads, states, ADAM_FLOPS_PER_ELEMENT,
                       f"fused Adam over {len(params)} parameters: each of p, g, m, v read once, p, m, v written once")


@register_cost(aten._fused_sgd_)
def fused_sgd(call: OpCall) -> OpCost:
    # (params, grads, momentum_buffers, ...)
    params, grads, bufs = (list(call.arg(i) or ()) for i in range(3))
    return _fused_step(params, grads, bufs, SGD_FLOPS_PER_ELEMENT, f"fused SGD over {len(params)} parameters")


# ------------------------------------------------------------------ mixed precision: GradScaler


@register_cost(aten._amp_foreach_non_finite_check_and_unscale_)
def amp_unscale(call: OpCall) -> OpCost:
    # GradScaler.unscale_ (and .step without it): (grads, found_inf, inv_scale), in place.  One
    # multi-tensor kernel over every gradient: test it finite (1) and multiply it by inv_scale (1);
    # reads each gradient and the two scalars once, writes each gradient back (and found_inf)
    grads = list(call.arg(0) or ())
    found, inv = call.arg(1), call.arg(2)
    scalars = [t for t in (found, inv) if isinstance(t, TensorMeta)]
    return OpCost(_per_element(grads, 2), sum(t.bytes for t in grads + scalars),
                  sum(t.bytes for t in grads) + (found.bytes if isinstance(found, TensorMeta) else 0),
                  note=f"GradScaler unscale: {len(grads)} gradients tested finite and scaled, in place")


@register_cost(aten._amp_update_scale_)
def amp_update_scale(call: OpCall) -> OpCost:
    # GradScaler.update: (scale, growth_tracker, found_inf, growth_factor, backoff_factor,
    # growth_interval): one thread updates the scale and its growth counter from found_inf
    tensors = [t for t in (call.arg(0), call.arg(1), call.arg(2)) if isinstance(t, TensorMeta)]
    written = [t for t in (call.arg(0), call.arg(1)) if isinstance(t, TensorMeta)]
    return OpCost({vector_class(tensors[0]): 2}, sum(t.bytes for t in tensors), sum(t.bytes for t in written),
                  note="GradScaler update: the loss scale and its growth counter")


# ------------------------------------------------------------------ MoE routing


@register_cost(aten.histc)
def histc(call: OpCall) -> OpCost:
    # each element: scale into a bin (2), count it (1)
    x = call.arg(0)
    return OpCost({vector_class(x): 3 * x.numel}, x.bytes, call.out.bytes, note="histc: bin and count each element")


@register_cost(aten.bincount)
def bincount(call: OpCall) -> OpCost:
    x, w = call.arg(0), call.arg(1, "weights")
    reads = x.bytes + (w.bytes if isinstance(w, TensorMeta) else 0)
    return OpCost({vector_class(call.out): x.numel}, reads, call.out.bytes)


@register_cost(aten.isin)
def isin(call: OpCall) -> OpCost:
    # elements: [n] tested against test_elements: [m]: n*m comparisons (torch's loop for small m;
    # a sort-based path for large m does n*log2(m)): the smaller of the two
    e, t = call.arg(0), call.arg(1, "test_elements")
    n = e.numel if isinstance(e, TensorMeta) else 1
    m = t.numel if isinstance(t, TensorMeta) else 1
    per = min(m, max(1.0, math.log2(max(m, 2)) * 2)) if m > 16 else m
    reads = sum(x.bytes for x in (e, t) if isinstance(x, TensorMeta))
    return OpCost({vector_class(e if isinstance(e, TensorMeta) else call.out): per * n}, reads, call.out.bytes)


__all__ = ["ADAM_FLOPS_PER_ELEMENT", "SGD_FLOPS_PER_ELEMENT", "amp_unscale", "amp_update_scale", "bincount", "foreach", "fused_adam",
           "fused_rms_norm_backward", "fused_sgd",
           "histc", "isin", "nll_loss_backward", "nll_loss_forward", "view_backward"]
