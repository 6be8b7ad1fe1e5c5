"""Exact FLOPs and bytes of elementwise ops, reductions, softmax and the norms.

Elementwise math on half-precision tensors runs in fp32 ("opmath"), so its FLOPs are on the fp32
vector class whatever the storage dtype; the storage dtype shows in the bytes.  Bytes follow the
bytes model in rooflight/costs/model.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from rooflight.capture import count
from rooflight.costs import OpCall, TensorMeta, lookup

bf16 = torch.bfloat16


def only(prof, name: str):
    recs = [o for o in prof.ops if o.short_op == name]
    assert len(recs) == 1, [o.op for o in prof.ops]
    assert prof.uncounted() == {}
    return recs[0]


def cost(rec) -> tuple[dict, float, float]:
    return dict(rec.flops), rec.bytes_read, rec.bytes_written


def count_on(device, fn, *shapes_dtypes, **kwargs):
    """count(fn, *tensors) with tensors of the given (shape, dtype) made on `device`
    ("cpu", "meta", or "fake-cuda": FakeTensorMode tensors on a CUDA device no GPU needs)."""
    def make(dev):
        return [torch.randn(s, device=dev).to(d) if d.is_floating_point else torch.zeros(s, dtype=d, device=dev)
                for s, d in shapes_dtypes]
    if device == "fake-cuda":
        with FakeTensorMode():
            return count(fn, *make("cuda"), **kwargs)
    return count(fn, *make(device), **kwargs)


# ---------------------------------------------------------------------------- layer norm, softmax


@pytest.mark.parametrize("device", ["cpu", "meta", "fake-cuda"])
def test_layer_norm_affine(device):
    prof = count_on(device, lambda x, w, b: F.layer_norm(x, (64,), w, b),
                    ((4, 16, 64), bf16), ((64,), bf16), ((64,), bf16))
    rec = only(prof, "native_layer_norm")
    # x [4,16,64] bf16: 4096 elements in 64 rows; 8 FLOPs per element (mean 1, variance 3,
    # normalize 2, affine 2): 32_768 fp32; read x 4096*2 = 8_192 + weight, bias 2*64*2 = 256 -> 8_448;
    # write y 8_192 + mean and rstd per row in float32, 2*64*4 = 512 -> 8_704.  The CPU kernel
    # returns mean/rstd in bf16 and the meta one in float32: the GPU's float32 is counted on all.
    assert cost(rec) == ({"fp32": 32_768}, 8_448, 8_704)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_layer_norm_without_affine(device):
    rec = only(count_on(device, lambda x: F.layer_norm(x, (64,)), ((4, 16, 64), bf16)), "native_layer_norm")
    # 6 FLOPs per element: 24_576; read x 8_192; write 8_192 + 512 = 8_704
    assert cost(rec) == ({"fp32": 24_576}, 8_192, 8_704)


@pytest.mark.parametrize("fn,name", [(F.softmax, "_softmax"), (F.log_softmax, "_log_softmax")])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_softmax_and_log_softmax(device, fn, name):
    rec = only(count_on(device, lambda x: fn(x, dim=-1), ((4, 16, 64), bf16)), name)
    # 5 FLOPs per element (max, subtract, exp, sum, divide | log): 5*4096 = 20_480 fp32;
    # read 4096*2 = 8_192, write 8_192
    assert cost(rec) == ({"fp32": 20_480}, 8_192, 8_192)


# ---------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("device", ["cpu", "meta", "fake-cuda"])
def test_nn_rmsnorm_is_counted_as_the_fused_gpu_kernel(device):
    # On the CPU and meta devices F.rms_norm decomposes into _to_copy, pow, mean, add_, rsqrt, mul,
    # mul, _to_copy (about 165 KB of traffic here); a GPU runs one aten._fused_rms_norm kernel, and
    # that is what is counted, on every device.
    if device == "fake-cuda":
        # no_grad: a CPU-only torch aborts building autograd metadata for fake CUDA parameters
        with FakeTensorMode(), torch.no_grad():
            norm, x = nn.RMSNorm(64, device="cuda", dtype=bf16), torch.empty(4, 16, 64, dtype=bf16, device="cuda")
            prof = count(norm, x)
    else:
        norm, x = nn.RMSNorm(64, device=device, dtype=bf16), torch.randn(4, 16, 64, device=device).to(bf16)
        prof = count(norm, x)
    rec = only(prof, "_fused_rms_norm")
    assert len(prof.ops) == 1
    # x [4,16,64] bf16: 4096 elements in 64 rows; 4 FLOPs per element (square, accumulate, *rstd,
    # *weight): 16_384 fp32; read x 8_192 + weight 64*2 = 128 -> 8_320;
    # write y 8_192 + rstd per row in float32 64*4 = 256 -> 8_448
    assert cost(rec) == ({"fp32": 16_384}, 8_320, 8_448)


def test_fused_rms_norm_formula_without_weight():
    # aten._fused_rms_norm(x [4,64] bf16, [64], weight=None) -> y [4,64] bf16, rstd [4,1] float32:
    # 3 FLOPs per element, 768; read 4*64*2 = 512; write 512 + 4*4 = 528
    x = TensorMeta.contiguous((4, 64), "bfloat16", "cuda:0")
    rstd = TensorMeta.contiguous((4, 1), "float32", "cuda:0")
    call = OpCall("aten::_fused_rms_norm.default", (x, [64], None, 1e-6), {}, (x, rstd))
    c = lookup(torch.ops.aten._fused_rms_norm.default)(call)
    assert (dict(c.flops), c.bytes_read, c.bytes_written) == ({"fp32": 768}, 512, 528)


# ---------------------------------------------------------------------------- elementwise


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_add_with_broadcast_reads_the_broadcast_operand_once(device):
    rec = only(count_on(device, torch.add, ((64, 32), torch.float32), ((32,), torch.float32)), "add")
    # [64,32] + [32] fp32: 2_048 FLOPs; read 64*32*4 + 32*4 = 8_320, write 8_192
    assert cost(rec) == ({"fp32": 2_048}, 8_320, 8_192)


def test_add_of_an_expanded_view_counts_its_distinct_elements():
    a, b = torch.randn(64, 32), torch.randn(1, 32).expand(64, 32)  # stride (0, 1)
    rec = only(count(torch.add, a, b), "add")
    assert cost(rec) == ({"fp32": 2_048}, 8_320, 8_192)


def test_bf16_add_is_fp32_math_on_bf16_bytes():
    rec = only(count_on("cpu", torch.add, ((64, 32), bf16), ((64, 32), bf16)), "add")
    # 2_048 FLOPs on the fp32 class; read 2*64*32*2 = 8_192, write 4_096
    assert cost(rec) == ({"fp32": 2_048}, 8_192, 4_096)


def test_in_place_add_reads_and_writes_self():
    a, b = torch.randn(64, 32), torch.randn(32)
    rec = only(count(lambda a, b: a.add_(b), a, b), "add_")
    # self read and written back: read 8_192 + 128 = 8_320, write 8_192
    assert cost(rec) == ({"fp32": 2_048}, 8_320, 8_192)


def test_out_variant_writes_out_without_reading_it():
    a, b, out = torch.randn(64, 32), torch.randn(32), torch.empty(64, 32)
    rec = only(count(lambda a, b, out: torch.add(a, b, out=out), a, b, out), "add")
    assert rec.op == "aten::add.out"
    # out= is written, not read: read 8_192 + 128 = 8_320 (not + 8_192), write 8_192
    assert cost(rec) == ({"fp32": 2_048}, 8_320, 8_192)


def test_activations():
    x = torch.randn(8, 32).to(bf16)
    # silu: x * sigmoid(x) = 4 FLOPs per element: 4*256 = 1_024; read 512, write 512
    assert cost(only(count(F.silu, x), "silu")) == ({"fp32": 1_024}, 512, 512)
    # gelu, tanh form: 9 per element: 2_304
    assert dict(only(count(F.gelu, x, approximate="tanh"), "gelu").flops) == {"fp32": 2_304}


# ---------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_sum_over_a_dim(device):
    rec = only(count_on(device, lambda t: t.sum(dim=1), ((8, 32, 16), torch.float32)), "sum")
    # [8,32,16] summed over dim 1: one add per input element, 4_096; read 16_384, write 8*16*4 = 512
    assert cost(rec) == ({"fp32": 4_096}, 16_384, 512)


def test_torchs_own_all_true_check_is_a_reduction_like_all():
    # a VLM's generate() checks its image-token mask with torch._is_all_true (not tagged a reduction):
    # like mask.all(), one compare per element of the [4, 256] bool mask (1 B each), one bool out
    m = torch.ones(4, 256, dtype=torch.bool)
    assert cost(only(count(torch.ops.aten._is_all_true, m), "_is_all_true")) == ({"int32": 1_024}, 1_024, 1)
    assert cost(only(count(torch.ops.aten._is_any_true, m), "_is_any_true")) == ({"int32": 1_024}, 1_024, 1)
    assert cost(only(count(lambda m: m.all(), m), "all")) == ({"int32": 1_024}, 1_024, 1)


def test_polar_makes_complex_numbers_from_magnitudes_and_angles():
    # torch.polar(abs, angle) (Llama 4's rotary frequencies): cos, sin, two multiplies per element:
    # 4 * 128 = 512 FLOPs; reads two fp32 [8, 16] (1,024 B), writes complex64 (8 B each: 1,024 B)
    rec = only(count(torch.polar, torch.ones(8, 16), torch.zeros(8, 16)), "polar")
    assert cost(rec) == ({"fp32": 512}, 1_024, 1_024)


def test_interpolation_backward_spreads_each_gradient_over_its_neighbours():
    # F.interpolate of [1, 2, 4, 4] to 8 x 8: each of the 128 output gradients goes to the inputs it
    # was interpolated from, a multiply and an add each: 2 x 4 (bilinear) = 1,024 FLOPs; reads the
    # [1, 2, 8, 8] gradient (512 B), writes the [1, 2, 4, 4] one (128 B); trilinear 2 x 8 a gradient
    x = torch.randn(1, 2, 4, 4, requires_grad=True)

    def step(mode, x):
        y = F.interpolate(x, scale_factor=2, mode=mode)
        y.backward(torch.ones_like(y))

    back = only(count(lambda: step("bilinear", x)), "upsample_bilinear2d_backward")
    assert cost(back) == ({"fp32": 1_024}, 512, 128)
    x3 = torch.randn(1, 2, 4, 4, 4, requires_grad=True)  # 1,024 output gradients
    back = only(count(lambda: step("trilinear", x3)), "upsample_trilinear3d_backward")
    assert cost(back) == ({"fp32": 16 * 1_024}, 4_096, 512)


def test_weight_norm_and_its_backward():
    # nn.utils.parametrizations.weight_norm on a Conv1d(8, 16, 3): v [16, 8, 3] = 384 fp32 elements,
    # g [16, 1, 1]; forward 4 per element of v = 1,536, reads v and g (1,536 + 64 B), writes w (1,536 B)
    # and the 16 norms (64 B); backward 6 per element = 2,304, reads grad_w, v, g, norms
    # (1,536 + 1,536 + 64 + 64 B), writes grad_v and grad_g (1,536 + 64 B)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 16, 3, bias=False))
    x = torch.randn(1, 8, 10)
    prof = count(lambda: conv(x).sum().backward())
    assert prof.uncounted() == {}
    fwd, = [o for o in prof.ops if o.short_op == "_weight_norm_interface"]
    back, = [o for o in prof.ops if o.short_op == "_weight_norm_interface_backward"]
    assert cost(fwd) == ({"fp32": 1_536}, 1_600, 1_600)
    assert cost(back) == ({"fp32": 2_304}, 3_200, 1_600)


def test_in_place_views_move_nothing():
    x = torch.randn(4, 8)
    for fn in (lambda t: t.as_strided_((8, 4), (1, 8)), lambda t: t.t_(), lambda t: t.unsqueeze_(0)):
        prof = count(lambda: fn(x.clone()))
        assert prof.uncounted() == {} and [o.short_op for o in prof.ops if o.bytes] == ["clone"]


def test_var():
    rec = only(count_on("cpu", lambda t: t.var(dim=-1), ((8, 32, 16), torch.float32)), "var")
    # 3 per input element (subtract the mean, square, accumulate): 12_288; read 16_384, write 8*32*4 = 1_024
    assert cost(rec) == ({"fp32": 12_288}, 16_384, 1_024)


def test_equal_and_allclose_read_both_tensors():
    # they return a Python bool, not a tensor: never the zero cost of a metadata op
    a = torch.randn(64, 32)
    # equal: 1 compare per element, 2_048; read 2 * 8_192 = 16_384; nothing written
    assert cost(only(count(torch.equal, a, a.clone()), "equal")) == ({"fp32": 2_048}, 16_384, 0)
    # allclose: |a - b| <= atol + rtol*|b|: 6 per element, 12_288
    assert cost(only(count(torch.allclose, a, a), "allclose")) == ({"fp32": 12_288}, 16_384, 0)


UNTAGGED = {"softplus": F.softplus, "elu": F.elu, "leaky_relu": F.leaky_relu, "hardswish": F.hardswish,
            "mish": F.mish, "hardtanh": F.hardtanh, "logsigmoid": F.logsigmoid, "hardsigmoid": F.hardsigmoid,
            "glu": F.glu, "upsample": lambda t: F.interpolate(t[None, None], scale_factor=2),
            "mse": lambda t: F.mse_loss(t, torch.zeros_like(t)),
            "bce_logits": lambda t: F.binary_cross_entropy_with_logits(t, torch.zeros_like(t)),
            "smooth_l1": lambda t: F.smooth_l1_loss(t, torch.zeros_like(t))}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name", sorted(UNTAGGED))
def test_activations_and_losses_aten_does_not_tag_pointwise_are_counted_forward_and_backward(name, device):
    x = torch.randn(64, 64, device=device, requires_grad=True)
    prof = count(lambda: UNTAGGED[name](x).sum().backward())
    assert not prof.uncounted()


def test_a_loss_costs_its_input_elements_and_glu_its_halves():
    x = torch.randn(64, 64, requires_grad=True)
    prof = count(lambda: F.mse_loss(x, torch.zeros_like(x)).backward())
    # mse_loss over 4,096 elements: sub, square, accumulate = 12,288; reads x and the target
    # (2 x 16 KiB), writes one fp32 number; its backward 3 per element, writes the 16 KiB gradient
    (fwd,) = [o for o in prof.ops if o.short_op == "mse_loss"]
    (bwd,) = [o for o in prof.ops if o.short_op == "mse_loss_backward"]
    assert fwd.flops == {"fp32": 12_288} and (fwd.bytes_read, fwd.bytes_written) == (32_768, 4)
    assert bwd.flops == {"fp32": 12_288} and bwd.bytes_written == 16_384
    # glu halves the last dim: [64, 32] out, a * sigmoid(b) = 4 per output = 8,192
    (g,) = [o for o in count(lambda: F.glu(x.detach())).ops if o.short_op == "glu"]
    assert g.flops == {"fp32": 8_192} and (g.bytes_read, g.bytes_written) == (16_384, 8_192)
