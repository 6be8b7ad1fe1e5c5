"""Function-level cost rules: calls costed as the kernel a GPU runs for them, whatever device
counts them.

Most costs are per aten op (the registry).  Three calls are costed above the dispatcher, because
the aten ops they reach depend on the device and off the GPU they are not what a GPU runs:

- `F.scaled_dot_product_attention`: a CPU runs its own flash kernel, meta the math path; a GPU
  picks a backend (`predict_sdpa_backend`).  `plan_sdpa` says which backend a GPU would pick for
  the call (and whether torch first turns a boolean mask into an additive one, one elementwise
  kernel), `sdpa_cost` what that kernel costs.  A "math" plan is not costed here: its bmm,
  softmax, ... are recorded op by op as they would run.
- `F.rms_norm`: one fused kernel on CUDA (aten._fused_rms_norm), six ops elsewhere:
  `rms_norm_cost` costs it as the fused kernel.
- flex attention's higher-order op: costed from its BlockMask (costs.attention.flex_attention_cost).

Off the device (meta or fake tensors) the first two also have their backward costed as the GPU's
fused backward kernel (`sdpa_backward`, `rms_norm_backward`): autograd's backward of what computed
them there (the math decomposition, six RMSNorm ops) is not what a GPU runs.

rooflight.capture intercepts the calls and runs them; what they cost is decided here.  Pure
functions of tensor metadata and settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from .attention import attention_backward_cost, attention_cost, flex_attention_cost, predict_sdpa_backend
from .model import OpCall, OpCost, Settings, TensorMeta
from .pointwise import fused_rms_norm, softmax, softmax_backward
from .training import fused_rms_norm_backward

SDPA = "aten::scaled_dot_product_attention"
FUSED_RMS_NORM = "aten::_fused_rms_norm.default"
FUSED_RMS_NORM_BACKWARD = "aten::_fused_rms_norm_backward.default"
FLEX = "higher_order::flex_attention"


@dataclass(frozen=True)
class SdpaPlan:
    """What a GPU would run for one scaled_dot_product_attention call."""

    backend: str  # "cudnn", "flash", "efficient" (fused) or "math" (the decomposition)
    causal: str | None  # "upper_left", "lower_right" (a CausalBias), or None
    convert_bool_mask: bool  # torch first makes a boolean mask additive: where(mask, 0, -inf)
    settings: Settings  # with the SDPA backends enabled at the call


def plan_sdpa(q: TensorMeta, k: TensorMeta, v: TensorMeta, *, mask: TensorMeta | None, is_causal: bool,
              causal_variant: str | None, dropout_p: float, enable_gqa: bool, settings: Settings) -> SdpaPlan:
    """The backend a GPU picks for the call.  causal_variant: "upper_left"/"lower_right" when the
    mask is a CausalBias (then `mask` is None)."""
    causal = causal_variant or ("upper_left" if is_causal else None)
    backend = predict_sdpa_backend(q, k, v, has_mask=mask is not None, dropout_p=dropout_p, enable_gqa=enable_gqa,
                                   settings=settings, is_causal=is_causal)
    # only a fused kernel needs the boolean mask made additive first
    convert = mask is not None and mask.dtype == "bool" and backend != "math"
    return SdpaPlan(backend, causal, convert, settings)


def sdpa_cost(plan: SdpaPlan, q: TensorMeta, k: TensorMeta, v: TensorMeta, out: TensorMeta, *,
              mask: TensorMeta | None, need_lse: bool) -> OpCost:
    """The fused kernel's cost (a math plan runs op by op instead and is never costed here)."""
    return attention_cost(q, k, v, out, backend=plan.backend, causal=plan.causal, mask=mask,
                          settings=plan.settings, need_lse=need_lse)


def sdpa_backward(plan: SdpaPlan, q: TensorMeta, k: TensorMeta, v: TensorMeta, out: TensorMeta,
                  grad_out: TensorMeta, *, mask: TensorMeta | None) -> tuple[str, list[TensorMeta], OpCost]:
    """(op, inputs, cost) of the fused backward kernel of a call planned as `plan` (not "math"):
    reads dO, Q, K, V, O and the fp32 log-sum-exp per query row, writes dQ, dK, dV."""
    lse = TensorMeta.contiguous(q.shape[:-1], "float32", q.device)
    op = f"aten::_scaled_dot_product_{plan.backend}_attention_backward.default"
    cost = attention_backward_cost(q, k, v, out, grad_out, backend=plan.backend, causal=plan.causal,
                                   settings=plan.settings, mask=mask)
    return op, [grad_out, q, k, v, out, lse] + ([mask] if mask is not None else []), cost


def rms_norm_cost(x: TensorMeta, normalized_shape: Sequence[int], weight: TensorMeta | None, out: TensorMeta,
                  settings: Settings) -> tuple[list[TensorMeta], list[TensorMeta], OpCost]:
    """(inputs, outputs, cost) of F.rms_norm as the GPU's fused kernel: y and the fp32 rstd per row."""
    rstd = TensorMeta.contiguous((*x.shape[:x.ndim - len(normalized_shape)], 1), "float32", x.device)
    call = OpCall(FUSED_RMS_NORM, (x, list(normalized_shape), weight), {}, (out, rstd), settings,
                  arg_names=("input", "normalized_shape", "weight", "eps"))
    return [t for t in (x, weight) if t is not None], [out, rstd], fused_rms_norm(call)


def rms_norm_backward(grad_out: TensorMeta, x: TensorMeta, normalized_shape: Sequence[int],
                      weight: TensorMeta | None, grads: Sequence[TensorMeta],
                      settings: Settings) -> tuple[list[TensorMeta], OpCost]:
    """(inputs, cost) of the GPU's fused RMSNorm backward (aten._fused_rms_norm_backward), writing
    `grads`: dx, and dw when there is a weight."""
    rstd = TensorMeta.contiguous((*x.shape[:x.ndim - len(normalized_shape)], 1), "float32", x.device)
    call = OpCall(FUSED_RMS_NORM_BACKWARD, (grad_out, x, list(normalized_shape), rstd, weight,
                                            [True, weight is not None]), {}, tuple(grads), settings,
                  arg_names=("grad_out", "input", "normalized_shape", "rstd", "weight", "output_mask"))
    return [t for t in (grad_out, x, rstd, weight) if t is not None], fused_rms_norm_backward(call)


def softmax_half_to_float(x: TensorMeta, out: TensorMeta, dim: int, settings: Settings,
                          log: bool = False) -> tuple[str, OpCost]:
    """(op, cost) of softmax (log_softmax) of float16 into float32 as a GPU runs it: one kernel
    (_softmax with half_to_float) reading fp16 and writing fp32, where the CPU, with no such
    kernel, casts to fp32 first."""
    op = "aten::_log_softmax.default" if log else "aten::_softmax.default"
    call = OpCall(op, (x, dim, True), {}, (out,), settings, arg_names=("self", "dim", "half_to_float"))
    return op, softmax(call)


def softmax_half_to_float_backward(grad_out: TensorMeta, out: TensorMeta, grad_in: TensorMeta, dim: int,
                                   settings: Settings, log: bool = False) -> tuple[str, OpCost]:
    """(op, cost) of that kernel's backward on a GPU: reads dy and y in fp32, writes dx in fp16."""
    op = "aten::_log_softmax_backward_data.default" if log else "aten::_softmax_backward_data.default"
    call = OpCall(op, (grad_out, out, dim, "float16"), {}, (grad_in,), settings,
                  arg_names=("grad_output", "output", "dim", "input_dtype"))
    return op, softmax_backward(call)


def flex_cost(q: TensorMeta, k: TensorMeta, v: TensorMeta, out: TensorMeta, block_mask, settings: Settings) -> OpCost:
    """Flex attention counted by the blocks its BlockMask visits."""
    return flex_attention_cost(q, k, v, out, block_mask, settings)


def with_backends(settings: Settings, backends: tuple[str, ...]) -> Settings:
    return dataclasses.replace(settings, sdpa_backends=backends)


__all__ = ["FLEX", "FUSED_RMS_NORM", "SDPA", "SdpaPlan", "flex_cost", "plan_sdpa", "rms_norm_cost", "sdpa_cost",
           "softmax_half_to_float", "softmax_half_to_float_backward",
           "with_backends"]
