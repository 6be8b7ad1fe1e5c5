"""PyTorch's fused inference fast paths: `nn.TransformerEncoderLayer` and `nn.MultiheadAttention`
in eval mode without gradients run as one aten op each (`_transformer_encoder_layer_fwd`,
`_native_multi_head_attention`) whose C++ launches the kernels of the layer one by one; the
capture sees the one op only.  Each is costed as the sum of the kernels it launches, by the same
rules as those kernels' own ops (a GEMM with its bias epilogue, the attention the GPU picks for
the call, layer norms, the in-place residual adds):

    encoder layer:  [norm] -> MHA -> add_ residual -> [norm] -> linear1 -> gelu / relu_ -> linear2
                    -> add_ residual -> [norm]  (the norms before or after, `norm_first`)
    MHA:            QKV projection (one GEMM when query, key and value are one tensor, its
                    fast path's case) -> attention -> output projection

Without `need_weights` the attention is F.scaled_dot_product_attention's (the fused kernel a GPU
picks, costs.functions.plan_sdpa); with it, the scores are materialized (QK^T, softmax, PV) and
the weights averaged over the heads, as the fast path computes them.  A nested-tensor input (a
padding mask turned into a nested tensor) has no dense shape: its formula fails and says so.
"""

from __future__ import annotations

from .functions import plan_sdpa, sdpa_cost
from .model import OpCall, OpCost, Settings, TensorMeta
from .pointwise import FLOPS_PER_ELEMENT, LAYER_NORM_FLOPS, SOFTMAX_FLOPS, with_row_stats, vector_class
from .registry import aten, register_cost


def _t(shape: tuple[int, ...], like: TensorMeta) -> TensorMeta:
    return TensorMeta.contiguous(shape, like.dtype, like.device)


def _linear(x: TensorMeta, rows: int, k: int, n: int, bias: bool, settings: Settings) -> OpCost:
    """x [rows, k] @ W^T [k, n] (+ bias): 2*rows*n*k on the matrix class, the bias one add an output."""
    it = x.itemsize
    gemm = OpCost({x.matrix_class(settings.allow_tf32_matmul): 2 * rows * n * k},
                  (rows * k + n * k + (n if bias else 0)) * it, rows * n * it)
    return gemm.plus(OpCost({vector_class(x): rows * n})) if bias else gemm  # (fp32: the same class)


def _elementwise(x: TensorMeta, numel: int, per: float, inputs: int) -> OpCost:
    """`inputs` tensors of `numel` elements read, one written, `per` FLOPs an element."""
    return OpCost({vector_class(x): per * numel}, inputs * numel * x.itemsize, numel * x.itemsize)


def _layer_norm(x: TensorMeta, rows: int, e: int) -> OpCost:
    # affine (weight and bias): reads x and both, writes y and the per-row mean and rstd, as
    # costs.pointwise.layer_norm counts native_layer_norm
    y, stat = _t((rows, e), x), _t((rows, 1), x)
    cost = OpCost({vector_class(x): (LAYER_NORM_FLOPS + 2) * rows * e}, (rows * e + 2 * e) * x.itemsize, 0.0)
    return with_row_stats(cost, y, [stat, stat])


def _materialized(x: TensorMeta, q: TensorMeta, k: TensorMeta, mask: TensorMeta | None, average: bool,
                  settings: Settings) -> OpCost:
    """QK^T, softmax, PV over [B, H, Tq, Tk] scores (and the mask added); with `average` the
    weights averaged over the heads too (need_weights)."""
    b, heads, tq, d = q.shape
    tk = k.shape[2]
    scores = b * heads * tq * tk
    it = x.itemsize
    cls = x.matrix_class(settings.allow_tf32_matmul)
    cost = OpCost({cls: 2 * scores * d}, (q.numel + k.numel) * it, scores * it)  # QK^T
    cost = cost.plus(_elementwise(x, scores, SOFTMAX_FLOPS, 1))
    cost = cost.plus(OpCost({cls: 2 * scores * d}, (scores + k.numel) * it, q.numel * it))  # PV
    if average:
        cost = cost.plus(OpCost({vector_class(x): scores}, scores * it, b * tq * tk * it))
    if mask is not None:
        cost = cost.plus(OpCost({vector_class(x): scores}, mask.bytes, 0.0))
    return cost


def _attention(x: TensorMeta, b: int, heads: int, tq: int, tk: int, e: int, mask: TensorMeta | None,
               need_weights: bool, settings: Settings) -> OpCost:
    d = e // heads
    q, k = _t((b, heads, tq, d), x), _t((b, heads, tk, d), x)
    if need_weights:
        return _materialized(x, q, k, mask, True, settings)
    plan = plan_sdpa(q, k, k, mask=mask, is_causal=False, causal_variant=None, dropout_p=0.0, enable_gqa=False,
                     settings=settings)
    if plan.backend == "math":  # as SDPA's decomposition runs: no weights to average
        return _materialized(x, q, k, mask, False, settings)
    return sdpa_cost(plan, q, k, k, q, mask=mask, need_lse=False)


def _mha(x: TensorMeta, kv: TensorMeta, heads: int, e: int, mask: TensorMeta | None, need_weights: bool,
         settings: Settings) -> OpCost:
    b, tq = x.shape[0], x.shape[1]
    tk = kv.shape[1]
    if x.shape == kv.shape:  # self-attention: one QKV GEMM over x
        proj = _linear(x, b * tq, e, 3 * e, True, settings)
    else:
        proj = _linear(x, b * tq, e, e, True, settings).plus(_linear(kv, b * tk, e, 2 * e, True, settings))
    att = _attention(x, b, heads, tq, tk, e, mask, need_weights, settings)
    return proj.plus(att).plus(_linear(x, b * tq, e, e, True, settings))


def _dense(t: object, what: str) -> TensorMeta:
    if not isinstance(t, TensorMeta) or t.ndim != 3:
        raise ValueError(f"{what} is not a dense [batch, length, embed] tensor (a nested tensor from a padding mask?)")
    return t


@register_cost(aten._native_multi_head_attention)
def native_multi_head_attention(call: OpCall) -> OpCost:
    # (query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias, mask,
    #  need_weights, average_attn_weights, mask_type) -> (out, weights)
    q, k = _dense(call.arg(0), "query"), _dense(call.arg(1), "key")
    e, heads = int(call.arg(3)), int(call.arg(4))
    mask = call.arg(9, "mask")
    need = bool(call.arg(10, "need_weights", True))
    cost = _mha(q, k, heads, e, mask if isinstance(mask, TensorMeta) else None, need, call.settings)
    how = "scores materialized (need_weights)" if need else "fused attention"
    return OpCost(cost.flops, cost.bytes_read, cost.bytes_written,
                  note=f"nn.MultiheadAttention fast path: QKV GEMM, {how}, output GEMM")


@register_cost(aten._transformer_encoder_layer_fwd)
def transformer_encoder_layer(call: OpCall) -> OpCost:
    # (src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu, norm_first,
    #  eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1, ffn_bias_1,
    #  ffn_weight_2, ffn_bias_2, mask, mask_type) -> out
    x = _dense(call.arg(0), "src")
    e, heads = int(call.arg(1)), int(call.arg(2))
    use_gelu = bool(call.arg(7))
    w1 = call.arg(14)
    f = w1.shape[0]  # ffn_weight_1: [dim_feedforward, embed]
    mask = call.arg(18, "mask")
    b, t = x.shape[0], x.shape[1]
    rows = b * t
    cost = _mha(x, x, heads, e, mask if isinstance(mask, TensorMeta) else None, False, call.settings)
    cost = cost.plus(_elementwise(x, rows * e, 1, 2))  # the residual add_
    cost = cost.plus(_layer_norm(x, rows, e)).plus(_layer_norm(x, rows, e))  # two norms, before or after
    cost = cost.plus(_linear(x, rows, e, f, True, call.settings))
    cost = cost.plus(_elementwise(x, rows * f, FLOPS_PER_ELEMENT["gelu"] if use_gelu else 1, 1))
    cost = cost.plus(_linear(x, rows, f, e, True, call.settings))
    cost = cost.plus(_elementwise(x, rows * e, 1, 2))  # the residual add_
    first = "norm first" if call.arg(8) else "norm after"
    return OpCost(cost.flops, cost.bytes_read, cost.bytes_written,
                  note=f"nn.TransformerEncoderLayer fast path ({first}): its attention as "
                       f"{cost.note or 'materialized'}, GEMMs, norms and residual adds, each kernel's traffic")


__all__ = ["native_multi_head_attention", "transformer_encoder_layer"]
