"""PyTorch's fused inference fast paths (nn.TransformerEncoderLayer, nn.MultiheadAttention in eval
without gradients: one aten op each, rooflight.costs.fastpath), costed as the kernels they launch.
The capture's function mode turns the fast path off on the CPU (a mode active: has_torch_function),
so the CPU tests call the ops directly; on a GPU the model runs it as a user's would."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rooflight.capture import count

# B = 2 sequences of T = 16, E = 64, H = 4 heads (D = 16), F = 256; rows = B * T = 32; fp32 (4 B)
B, T, E, H, F = 2, 16, 64, 4, 256


def _layer() -> nn.TransformerEncoderLayer:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(d_model=E, nhead=H, dim_feedforward=F, batch_first=True).eval()


def _fast_layer(layer: nn.TransformerEncoderLayer):
    a = layer.self_attn

    def run(x):
        return torch._transformer_encoder_layer_fwd(
            x, E, H, a.in_proj_weight, a.in_proj_bias, a.out_proj.weight, a.out_proj.bias, False, False,
            layer.norm1.eps, layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias,
            layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias, None, None)
    return run


def test_the_encoder_layers_fast_path_costs_the_kernels_it_launches():
    layer, x = _layer(), torch.randn(B, T, E)
    with torch.no_grad():
        prof = count(_fast_layer(layer), x)
    op, = prof.ops
    assert op.short_op == "_transformer_encoder_layer_fwd" and not prof.uncounted()
    # QKV GEMM 2*32*192*64 = 786,432 + bias 32*192 = 6,144; attention 4*B*H*T*T*D = 131,072 + 5 per
    # (query, key) pair 5*2,048 = 10,240; out GEMM 2*32*64*64 = 262,144 + 2,048; two residual adds
    # 2*2,048; two layer norms 2*8*2,048 = 32,768; linear1 2*32*256*64 = 1,048,576 + 8,192; relu
    # 8,192; linear2 1,048,576 + 2,048: 3,350,528, all fp32 (no TF32 by default)
    assert dict(op.flops) == {"fp32": 3_350_528}
    # reads: QKV (2,048 + 12,288 + 192)*4 = 58,112; attention q, k, v 3*2,048*4 = 24,576; out GEMM
    # (2,048 + 4,096 + 64)*4 = 24,832; adds 2*16,384; norms 2*(2,048 + 128)*4 = 17,408; linear1
    # (2,048 + 16,384 + 256)*4 = 74,752; relu 32,768; linear2 (8,192 + 16,384 + 64)*4 = 98,560
    assert op.bytes_read == 363_776
    # writes: QKV 24,576; attention 8,192; out 8,192; adds 2*8,192; norms 2*(8,192 + 2*32*4) = 16,896;
    # linear1 32,768; relu 32,768; linear2 8,192
    assert op.bytes_written == 147_968
    # the same matrix and vector work as the layer's decomposition, which the capture sees when the
    # fast path is off (its bytes differ: the decomposition's clones and separate QKV bias add)
    with torch.no_grad():
        slow = count(lambda x: layer(x), x)
    assert sum(o.total_flops for o in slow.ops) == 3_350_528


@pytest.mark.parametrize("need_weights", [False, True])
def test_the_multi_head_attention_fast_path_costs_its_projections_and_attention(need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    x = torch.randn(B, T, E)
    with torch.no_grad():
        prof = count(lambda x: torch._native_multi_head_attention(
            x, x, x, E, H, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias, None,
            need_weights, True, None), x)
    op, = prof.ops
    assert not prof.uncounted()
    proj = 786_432 + 6_144 + 262_144 + 2_048  # the QKV and out GEMMs with their biases
    if not need_weights:  # the fused attention: 131,072 + 10,240
        assert dict(op.flops) == {"fp32": proj + 141_312}
        assert (op.bytes_read, op.bytes_written) == (58_112 + 24_576 + 24_832, 24_576 + 8_192 + 8_192)
    else:
        # materialized: QK^T 2*2,048*16 = 65,536, softmax 5*2,048, PV 65,536, the weights averaged
        # over the heads 2,048; reads q+k 16,384, scores 8,192, scores+v 16,384, scores 8,192 for the
        # mean; writes scores 8,192, softmax 8,192, PV 8,192, the [2, 16, 16] mean 2,048
        assert dict(op.flops) == {"fp32": proj + 65_536 + 10_240 + 65_536 + 2_048}
        assert op.bytes_read == 58_112 + 16_384 + 8_192 + 16_384 + 8_192 + 24_832
        assert op.bytes_written == 24_576 + 8_192 + 8_192 + 8_192 + 2_048 + 8_192


@pytest.mark.gpu
def test_an_encoder_on_the_gpu_takes_the_fast_path_and_is_counted():
    layer = _layer()
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).cuda().eval()
    x = torch.randn(B, T, E, device="cuda")
    with torch.no_grad():
        prof = count(lambda x: enc(x), x)
    assert [o.short_op for o in prof.ops if o.total_flops] == ["_transformer_encoder_layer_fwd"] * 2
    assert not prof.uncounted() and sum(o.total_flops for o in prof.ops) == 2 * 3_350_528
