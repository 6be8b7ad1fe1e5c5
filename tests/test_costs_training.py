"""What real models run besides inference: the loss, backward passes, optimizers, mixture-of-experts
routing and grouped GEMMs, each held to a closed form with the arithmetic in a comment; and a model
zoo of Hugging Face configs (random weights, no downloads) counted on the CPU and on meta."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from rooflight.capture import count
from rooflight.errors import CountError

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed (test extra)")


def ops_named(prof, name):
    return [o for o in prof.ops if o.short_op == name]


def flops_by_class(prof) -> dict[tuple[str, str], float]:
    """FLOPs by (phase, math class)."""
    out: dict[tuple[str, str], float] = {}
    for o in prof.ops:
        for cls, v in o.flops.items():
            out[(o.phase, cls)] = out.get((o.phase, cls), 0) + v
    return out


# the small Llama the training tests build: 2 layers, 128 wide, MLP 256, 4 heads, vocabulary 512
SMALL_LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   vocab_size=512)


def _small_llama_config(kv_heads: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(**SMALL_LLAMA, num_key_value_heads=kv_heads, **kw)


def training_step(make, device: str, shape: tuple[int, int], dtype: torch.dtype | None = None):
    """One forward, next-token loss and backward of the causal LM `make()` builds on `device`, counted."""
    torch.manual_seed(0)
    with torch.device(device):
        model = make() if dtype is None else make().to(dtype)
        ids = torch.randint(0, model.config.vocab_size, shape)
    return count(lambda: model(input_ids=ids, labels=ids).loss.backward())


# ---------------------------------------------------------------------------- the loss and view backwards


def test_cross_entropy_reads_one_element_per_row():
    logits = torch.randn(8, 100, requires_grad=True)
    target = torch.randint(0, 100, (8,))
    prof = count(lambda: F.cross_entropy(logits, target).backward())
    fwd, = ops_named(prof, "nll_loss_forward")
    # target 8 x int64 = 64 B, and one fp32 element of each of the 8 rows = 32 B; -x and the sum: 2 x 8
    assert fwd.bytes_read == 64 + 32 and fwd.total_flops == 16
    bwd, = ops_named(prof, "nll_loss_backward")
    # writes the whole [8, 100] fp32 gradient once (3200 B); reads grad_output (4 B) and target (64 B)
    assert bwd.bytes_written == 3200 and bwd.bytes_read == 4 + 64
    assert not prof.uncounted()


def test_slice_backward_reads_the_grad_and_writes_the_input_once():
    x = torch.randn(16, 32, requires_grad=True)
    g = torch.randn(16, 8)  # a real gradient (sum()'s would be one expanded scalar: 4 bytes by rule 2)
    prof = count(lambda: x[:, 4:12].backward(g))
    sb, = ops_named(prof, "slice_backward")
    # grad_output [16, 8] fp32 = 512 B read; grad_input [16, 32] fp32 = 2048 B written
    assert (sb.bytes_read, sb.bytes_written, sb.total_flops) == (512, 2048, 0)


def test_linear_backward_is_twice_the_forward():
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(16, 64, requires_grad=True)
    prof = count(lambda: lin(x).sum().backward())
    fwd = sum(o.total_flops for o in prof.ops if o.short_op == "mm" and o.phase == "forward")
    bwd = sum(o.total_flops for o in prof.ops if o.short_op == "mm" and o.phase == "backward")
    # forward 2*16*64*32 = 65,536; backward dX (2*16*32*64) + dW (2*32*16*64) = 131,072
    assert fwd == 65_536 and bwd == 131_072 == 2 * fwd


def test_sdpa_backward_is_two_and_a_half_forwards():
    # q, k, v: [1, 2, 64, 32]: P = 2 heads x 64 x 64 = 8192 scores.  Forward: QK^T and PV, 2P(D + Dv) =
    # 2*8192*64 = 1,048,576.  Backward (FlashAttention-2 recomputes S): 2P(3D + 2Dv) = 2*8192*160 =
    # 2,621,440 = 2.5x the forward's matrix FLOPs (D == Dv)
    q, k, v = (torch.randn(1, 2, 64, 32, requires_grad=True) for _ in range(3))
    prof = count(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    fwd = [o for o in prof.ops if "scaled_dot_product" in o.op and o.phase == "forward"]
    bwd = [o for o in prof.ops if "attention" in o.op and "backward" in o.op]
    assert len(fwd) == 1 and len(bwd) == 1
    tensor_f = 2 * 8192 * (32 + 32)
    tensor_b = 2 * 8192 * (3 * 32 + 2 * 32)
    assert tensor_b == 2.5 * tensor_f
    # on fp32 the matrix work and the softmax share the fp32 class: matrix = total - softmax (5 per score fwd, 10 bwd)
    assert fwd[0].total_flops == tensor_f + 5 * 8192 and bwd[0].total_flops == tensor_b + 10 * 8192


def test_fused_rms_norm_backward():
    from rooflight.costs import OpCall, TensorMeta, lookup

    x = TensorMeta.contiguous((4, 64), "float32")
    rstd = TensorMeta.contiguous((4, 1), "float32")
    w = TensorMeta.contiguous((64,), "float32")
    call = OpCall("aten::_fused_rms_norm_backward.default", (x, x, [64], rstd, w, [True, True]), {}, (x, w))
    cost = lookup(call.op)(call)
    # 7 per element for dx + 2 for dw over 256 elements = 2304; reads g, x (1 KB each), rstd 16 B,
    # w 256 B; writes dx 1 KB and dw 256 B
    assert cost.total_flops == 2304 and cost.bytes_read == 1024 + 1024 + 16 + 256
    assert cost.bytes_written == 1024 + 256


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_rms_norm_trained_off_the_gpu_counts_the_gpus_fused_backward(device):
    # counted off the GPU, F.rms_norm is the GPU's fused kernel; its backward must be the GPU's
    # fused backward too, not the backward of the six ops that computed it here
    torch.manual_seed(0)
    x = torch.randn(4, 128, 1024, dtype=torch.bfloat16).to(device).requires_grad_()
    w = torch.randn(1024, dtype=torch.bfloat16).to(device).requires_grad_()
    prof = count(lambda: F.rms_norm(x, (1024,), w, 1e-6).sum().backward())
    bwd = [o for o in prof.ops if o.phase == "backward" and (o.total_flops or o.bytes)]
    assert [o.short_op for o in bwd] == ["_fused_rms_norm_backward"]
    # 9 per element (7 for dx, 2 for dw) over 4*128*1024 = 524,288 elements = 4,718,592; reads the
    # gradient (the sum's scalar expanded: its 2 bytes), x (1 MiB), rstd (512 rows x 4 B) and w
    # (2 KiB); writes dx (1 MiB) and dw (2 KiB)
    assert bwd[0].total_flops == 4_718_592
    assert bwd[0].bytes_read == 2 + 1_048_576 + 2048 + 2048 and bwd[0].bytes_written == 1_048_576 + 2048
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    if device == "cpu":  # the gradients are the true ones, as without rooflight
        gx, gw = x.grad, w.grad
        x.grad = w.grad = None
        F.rms_norm(x, (1024,), w, 1e-6).sum().backward()
        assert torch.equal(gx, x.grad) and torch.equal(gw, w.grad)


def test_attention_trained_on_the_cpu_counts_the_gpus_fused_backward_and_trains_true():
    """Falcon's multi-query attention with a float mask, fp32, on the CPU: the forward is counted
    as the GPU's efficient kernel, and so must its backward be (it was the CPU math path's four
    bmm and softmax backward, with the scores materialized), with the true gradients.
    q [2, 4, 64, 32], k and v [2, 1, 64, 32] (broadcast over the heads, as Falcon passes them), mask [2, 1, 64, 64]: P = 2*4*64*64 =
    32,768 scores; the backward's matrix work 2P(3D + 2Dv) = 2*32768*160 = 10,485,760."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 64, 32, requires_grad=True)
    k, v = (torch.randn(2, 1, 64, 32, requires_grad=True) for _ in range(2))
    mask = torch.randn(2, 1, 64, 64)

    def step():
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).square().sum().backward()

    prof = count(step)
    bwd = [o for o in prof.ops if o.phase == "backward" and "attention" in o.op]
    assert [o.short_op for o in bwd] == ["_scaled_dot_product_efficient_attention_backward"]
    assert not [o for o in prof.ops if o.phase == "backward" and o.short_op in ("bmm", "_softmax_backward_data")]
    assert "predicted" in bwd[0].note and bwd[0].total_flops >= 10_485_760
    got = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    step()
    for mine, true in zip(got, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(mine, true)


def test_attention_whose_keys_and_values_need_no_gradient_is_counted():
    """LoRA on q_proj and v_proj only, the rest frozen: the attention's q wants a gradient and its
    k (from a frozen k_proj over frozen embeddings) does not.  The CPU's true backward gives k no
    gradient (None); counting it raised AttributeError from inside the capture.  The GPU's fused
    backward kernel still runs once and writes dq, dk and dv; q [1, 2, 16, 32]: P = 2*16*16 = 512
    scores, its matrix work 2P(3D + 2Dv) = 2*512*160 = 163,840."""
    torch.manual_seed(0)
    q = torch.randn(1, 2, 16, 32, requires_grad=True)
    k, v = torch.randn(1, 2, 16, 32), torch.randn(1, 2, 16, 32, requires_grad=True)

    def step():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    prof = count(step)
    (bwd,) = [o for o in prof.ops if o.phase == "backward" and "attention" in o.op]
    assert bwd.counted and bwd.total_flops >= 163_840
    assert [t.shape for t in bwd.outputs] == [(1, 2, 16, 32)] * 2  # dq and dv: k has none
    assert k.grad is None and q.grad is not None and v.grad is not None


@needs_transformers
def test_a_training_loop_counted_on_the_cpu_trains_as_it_does_without_rooflight():
    """Three AdamW steps of a Llama with fused attention (4 heads, 4 KV heads, fp32) and a model
    with nn.RMSNorm: the losses counted under rooflight are the losses without it."""
    from transformers import LlamaForCausalLM

    cfg = _small_llama_config(4)

    def losses(under: bool) -> list[float]:
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        norm = torch.nn.RMSNorm(128)
        opt = torch.optim.AdamW([*model.parameters(), *norm.parameters()], lr=1e-2)
        ids = torch.randint(0, 512, (2, 32))
        out = []

        def step():
            loss = model(input_ids=ids, labels=ids).loss + norm(model.model.embed_tokens(ids)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(loss.item())

        for _ in range(3):
            if under:
                prof = count(step)
                names = [o.short_op for o in prof.ops if o.phase == "backward"]
                assert "_scaled_dot_product_efficient_attention_backward" in names and "_fused_rms_norm_backward" in names
            else:
                step()
        return out

    assert losses(True) == pytest.approx(losses(False), rel=1e-6)


@needs_transformers
def test_a_bf16_training_step_on_meta_counts_the_gpus_fused_attention_backward():
    # GPT-2 of 2 layers, 4 heads of D = 64, 2 sequences of 256 tokens, bf16.  A GPU runs a fused
    # attention forward and its fused backward; on meta the value is computed by the math
    # decomposition, whose own backward (fp32 bmm over [8, 256, 256] scores, a softmax backward) is
    # not what the GPU runs and must not be counted
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=512, n_positions=256, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)

    meta, cpu = (training_step(lambda: GPT2LMHeadModel(cfg), d, (2, 256), torch.bfloat16) for d in ("meta", "cpu"))
    bwd = [o for o in meta.ops if o.phase == "backward" and "attention" in o.short_op]
    assert len(bwd) == 2 and all(o.short_op.endswith("_attention_backward") and o.dtype == "bfloat16" for o in bwd)
    assert not [o for o in meta.ops if o.phase == "backward" and o.short_op in ("bmm", "_softmax_backward_data")]
    # causal over 256 tokens in 128 x 128 tiles: 128*128 + 128*256 = 49,152 pairs per sequence and
    # head, x 2 x 4 = 393,216; FlashAttention-2's backward 2P(3D + 2Dv) = 2*393,216*320 = 251,658,240
    assert [o.flops["bf16_tensor"] for o in bwd] == [251_658_240] * 2
    # class by class the same FLOPs as on the CPU, where the CPU's own flash kernel and its backward ran
    assert flops_by_class(meta) == flops_by_class(cpu)


@pytest.mark.gpu
@needs_transformers
def test_a_bf16_training_step_counted_on_meta_predicts_the_gpus_own_capture():
    # a GQA Llama (16 query heads, 4 KV heads) of 2 layers, 2 x 1024 tokens, bf16: counted on meta
    # (no GPU needed) and captured on the GPU, where the real cuDNN/flash kernels and their
    # backwards run, the FLOPs agree class by class, forward and backward, and the attention
    # backwards exactly
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=2, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=4096)

    meta, gpu = (training_step(lambda: LlamaForCausalLM(cfg), d, (2, 1024), torch.bfloat16) for d in ("meta", "cuda"))
    assert flops_by_class(meta) == flops_by_class(gpu) and flops_by_class(gpu)[("backward", "bf16_tensor")] > 0
    attention = [[(sum(o.flops.values()), o.bytes) for o in p.ops if o.phase == "backward" and "attention" in o.short_op]
                 for p in (meta, gpu)]
    assert len(attention[0]) == 2 and attention[0] == attention[1]
    # the rest of the backward differs only by where the kernels' gradients need a copy to be viewed
    bwd = [sum(o.bytes for o in p.ops if o.phase == "backward") for p in (meta, gpu)]
    assert bwd[0] == pytest.approx(bwd[1], rel=0.03)


# ---------------------------------------------------------------------------- optimizers


def _adamw_step(**kw):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-3, **kw)
    opt.step()  # the states exist from here on
    return count(opt.step), sum(p.numel() for p in params)


def test_fused_adamw_moves_each_parameter_gradient_and_state_once():
    prof, n = _adamw_step(fused=True)
    fused, = ops_named(prof, "_fused_adamw_")
    # P = 64*32 + 32 = 2080 fp32 elements: reads p, g, m, v (4 x 4 x P), writes p, m, v (3 x 4 x P)
    assert n == 2080
    assert fused.bytes_read == 4 * 4 * n and fused.bytes_written == 3 * 4 * n
    assert fused.total_flops == 15 * n  # the 15 steps per element of costs/training.py
    assert not prof.uncounted()


def test_single_tensor_and_foreach_adamw_count_the_elementwise_ops_they_run():
    fused, n = _adamw_step(fused=True)
    loop, _ = _adamw_step(foreach=False)
    each, _ = _adamw_step(foreach=True)
    assert not loop.uncounted() and not each.uncounted()
    minimum = 7 * 4 * n  # the fused kernel's 7 reads and writes of 4-byte elements
    assert fused.total_bytes == pytest.approx(minimum, abs=64)  # + the step counters
    # both run the same elementwise ops (lerp, mul, addcmul, sqrt, div, add, addcdiv ...): each reads
    # and writes its own operands, so both land well above the fused minimum and near each other
    for p in (loop, each):
        assert 2 * minimum < p.total_bytes < 5 * minimum
    assert abs(each.total_bytes - loop.total_bytes) / loop.total_bytes < 0.35


def test_a_grad_scaler_step_counts_its_unscale_and_scale_update():
    # torch.amp.GradScaler over a Linear(64, 32): P = 64*32 + 32 = 2080 fp32 gradient elements
    model = torch.nn.Linear(64, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(8, 64)

    def step():
        scaler.scale(model(x).square().mean()).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()

    prof = count(step)
    assert not prof.uncounted()
    unscale, = ops_named(prof, "_amp_foreach_non_finite_check_and_unscale_")
    # each gradient tested and scaled (2 FLOPs an element); reads the gradients, found_inf and
    # inv_scale (4 B each), writes the gradients and found_inf
    assert unscale.total_flops == 2 * 2080
    assert unscale.bytes_read == 4 * 2080 + 4 + 4 and unscale.bytes_written == 4 * 2080 + 4
    update, = ops_named(prof, "_amp_update_scale_")
    # reads the scale (fp32), its growth tracker (int32) and found_inf; writes the first two
    assert update.bytes_read == 12 and update.bytes_written == 8
    # in no module, after the backward and outside the optimizer's step: gradients' work, not the forward's
    assert unscale.phase == update.phase == "after backward"
    assert {o.phase for o in prof.ops if o.short_op == "addmm"} == {"forward"}


def test_clipping_between_backward_and_the_optimizer_step_is_phase_after_backward():
    model = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 16)

    def step():
        loss = model(x).square().mean()  # the loss, in no module: forward
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    prof = count(step)
    phases = {o.short_op: o.phase for o in prof.ops}
    assert phases["mean"] == "forward" and phases["_foreach_norm"] == "after backward"
    assert phases["_foreach_mul_"] == "after backward"  # the clip's scale of the gradients
    assert {o.phase for o in prof.ops if o.short_op == "add_"} <= {"optimizer", "backward"}
    # the groups name it so: "(after backward) _foreach_norm"
    from rooflight.groups import group_ops
    assert any(g.name.startswith("(after backward) _foreach_norm") for g in group_ops(prof))


# ---------------------------------------------------------------------------- convolution backward


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_depthwise_conv1d_backward_does_the_forwards_work_twice(device):
    # Mamba's causal conv1d: x [2, 8, 32] fp32, weight [8, 1, 4] (groups = 8), bias [8], padding 3
    # -> out [2, 8, 35].  Forward: 2 * N * C_out * L_out * (C_in/groups) * k = 2*2*8*35*1*4 = 4,480.
    # Backward: grad_input and grad_weight each the forward's 4,480 (torch.utils.flop_counter
    # counts grad_input as if the convolution were dense, groups x too many: 40,320 in all), and
    # grad_bias one add per grad_out element, 2*8*35 = 560
    x = torch.randn(2, 8, 32, device=device, requires_grad=True)
    w = torch.randn(8, 1, 4, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    prof = count(lambda: F.conv1d(x, w, b, padding=3, groups=8).sum().backward())
    assert not prof.uncounted()
    fwd, = ops_named(prof, "convolution")
    bwd, = ops_named(prof, "convolution_backward")
    # depthwise (one group per channel): no channel reduction for a tensor core, so the CUDA cores
    # in fp32, with the bias's 2*8*35 = 560 adds (TF32 would apply to a dense fp32 convolution)
    assert fwd.flops == {"fp32": 4480 + 560} and "depthwise" in fwd.note
    assert bwd.flops == {"fp32": 2 * 4480 + 560} and "depthwise" in bwd.note
    # reads grad_out (an expanded scalar from .sum(): 4 B), the weight (8*4*4 = 128 B) and the input
    # (2*8*32*4 = 2,048 B); writes grad_input 2,048 B, grad_weight 128 B, grad_bias 32 B
    assert (bwd.bytes_read, bwd.bytes_written) == (4 + 128 + 2048, 2048 + 128 + 32)


def test_conv2d_backward_matches_the_flop_counter_and_follows_the_output_mask():
    # dense conv2d: x [2, 3, 16, 16], w [6, 3, 3, 3], padding 1 -> [2, 6, 16, 16]; forward
    # 2*2*6*256*3*9 = 165,888; the flop counter agrees on dense convolutions: backward 2x that
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    step = lambda: F.conv2d(x, w, padding=1).square().sum().backward()  # noqa: E731
    with FlopCounterMode(display=False) as fc:
        step()
    bwd, = ops_named(count(step), "convolution_backward")
    assert bwd.total_flops == fc.get_flop_counts()["Global"][torch.ops.aten.convolution_backward] == 331_776
    # the input needs no gradient: only grad_weight (and no bias): the forward's work once, and the
    # weight is not read; reads grad_out 2*6*256*4 = 12,288 B and x 6,144 B, writes grad_w 648 B
    x.requires_grad_(False)
    bwd, = ops_named(count(step), "convolution_backward")
    assert bwd.flops == {"tf32_tensor": 165_888}
    assert (bwd.bytes_read, bwd.bytes_written) == (12_288 + 6_144, 648)


# ---------------------------------------------------------------------------- mixture-of-experts


def test_grouped_gemm_counts_the_tokens_each_expert_got():
    torch.manual_seed(0)
    a = torch.randn(16, 32, dtype=torch.bfloat16)  # 16 routed tokens, K = 32
    b = torch.randn(4, 32, 16, dtype=torch.bfloat16)  # 4 experts, N = 16
    offs = torch.tensor([3, 3, 10, 16], dtype=torch.int32)  # expert 1 got no token
    prof = count(lambda: torch._grouped_mm(a, b, offs))
    g, = ops_named(prof, "_grouped_mm")
    # sum over experts 2 * rows_e * K * N = 2 * 16 * 32 * 16 = 16,384 (3 + 0 + 7 + 6 = 16 rows)
    assert g.flops == {"bf16_tensor": 16_384.0}
    # reads the 16 rows (16*32*2 = 1024 B) and the 3 experts that got rows (3 * 32*16*2 = 3072 B)
    assert g.bytes_read == 1024 + 3072 and g.bytes_written == 16 * 16 * 2
    assert "0-7 over 4 experts" in g.note
    meta = count(lambda: torch._grouped_mm(a.to("meta"), b.to("meta"), offs.to("meta")))
    gm, = ops_named(meta, "_grouped_mm")
    assert gm.total_flops == 16_384 and gm.bytes_read == 1024 + 4096 and "balanced" in gm.note


def test_routing_ops_are_counted():
    x = torch.randn(4, 64)
    prof = count(lambda: (torch.topk(x, 8, dim=-1), torch.histc(x, bins=8), torch.bincount(torch.arange(10)),
                          torch.floor_divide(torch.arange(10), 3), torch.sort(x, dim=-1)))
    assert not prof.uncounted()
    topk, = ops_named(prof, "topk")
    # a pass with a k-heap: (1 + log2 8) = 4 comparisons per element x 256 = 1024; reads 1 KB; writes
    # values 4x8 fp32 (128 B) and indices 4x8 int64 (256 B)
    assert topk.total_flops == 1024 and topk.bytes_read == 1024 and topk.bytes_written == 384
    srt, = ops_named(prof, "sort")
    assert srt.total_flops == 256 * math.log2(64)  # n log2 n along the 64-long rows


def test_sampling_is_counted():
    # generate(do_sample=True) draws the next token with multinomial over the [2, 512] fp32
    # probabilities: a running sum over each row, 1 per element = 1,024; reads 4 KB, writes one
    # int64 index per row (16 B)
    probs = torch.softmax(torch.randn(2, 512), -1)
    draw, = ops_named(count(lambda: torch.multinomial(probs, 1)), "multinomial")
    assert draw.counted and (draw.total_flops, draw.bytes_read, draw.bytes_written) == (1024, 4096, 16)


# ---------------------------------------------------------------------------- the model zoo


def _linear_flops(prof) -> float:
    return sum(o.total_flops for o in prof.ops if o.short_op in ("mm", "addmm", "_grouped_mm"))


def _zoo():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, MixtralConfig

    small = dict(SMALL_LLAMA, num_key_value_heads=2)
    yield "llama", LlamaConfig(**small)
    yield "mistral (sliding window)", MistralConfig(**small, sliding_window=16)
    yield "mixtral (grouped_mm)", MixtralConfig(**small, num_local_experts=4, num_experts_per_tok=2)
    mx = MixtralConfig(**small, num_local_experts=4, num_experts_per_tok=2)
    mx._experts_implementation = "eager"
    yield "mixtral (eager experts)", mx
    yield "gpt-2", GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=512, n_positions=256)
    try:
        from transformers import Qwen2MoeConfig
    except ImportError:  # pragma: no cover  (older transformers)
        return
    yield "qwen2-moe", Qwen2MoeConfig(**small, moe_intermediate_size=64, shared_expert_intermediate_size=128,
                                      num_experts=8, num_experts_per_tok=2)


def _closed_form(name, cfg, tokens) -> float:
    """Linear FLOPs of a forward over `tokens` tokens: 2 x tokens x (the layers' matrices + the LM head)."""
    if name == "gpt-2":
        h = cfg.n_embd
        # qkv 3h^2, proj h^2, MLP 8h^2 (Conv1D: addmm), the tied LM head h*V; plus the biases' adds in
        # the GEMM epilogues: 3h + h + 4h + h = 9h per token and layer
        return 2 * tokens * (cfg.n_layer * 12 * h * h + h * cfg.vocab_size) + tokens * cfg.n_layer * 9 * h
    h, i = cfg.hidden_size, cfg.intermediate_size
    hd = h // cfg.num_attention_heads
    attn = h * cfg.num_attention_heads * hd + 2 * h * cfg.num_key_value_heads * hd + cfg.num_attention_heads * hd * h
    mlp = 3 * h * i
    if "mixtral" in name:  # top-2 of the experts per token, and the router
        mlp = cfg.num_experts_per_tok * 3 * h * i + h * cfg.num_local_experts
    bias = 0
    if name == "qwen2-moe":
        # top-2 experts of moe_intermediate, a shared expert (shared_expert_intermediate) with its
        # 1-wide gate, the router; q, k and v carry biases: (Hq + 2 Hkv) x D adds per token and layer
        mlp = (cfg.num_experts_per_tok * 3 * h * cfg.moe_intermediate_size + 3 * h * cfg.shared_expert_intermediate_size
               + h * cfg.num_experts + h)
        bias = tokens * cfg.num_hidden_layers * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd
    return 2 * tokens * (cfg.num_hidden_layers * (attn + mlp) + h * cfg.vocab_size) + bias


@needs_transformers
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_model_zoo_prefill_and_decode_are_counted_exactly(device):
    from transformers import AutoModelForCausalLM

    for name, cfg in _zoo():
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).eval()  # grouped_mm wants bf16
            ids = torch.randint(0, 512, (2, 16))
            nxt = torch.randint(0, 512, (2, 1))
        if device == "meta" and "eager" in name:
            # the eager expert loop picks each expert's tokens with torch.where: a data-dependent
            # shape, which meta tensors do not have; rooflight says so (count it on the CPU instead)
            with torch.no_grad(), pytest.raises(CountError, match="data-dependent"):
                count(lambda: model(ids, use_cache=True))
            continue
        with torch.no_grad():
            prefill = count(lambda: model(ids, use_cache=True))
            cache = model(ids, use_cache=True).past_key_values
            decode = count(lambda: model(nxt, past_key_values=cache, use_cache=True))
        for phase, prof, tokens in (("prefill", prefill, 32), ("decode", decode, 2)):
            assert not prof.uncounted(), (name, device, phase, prof.uncounted())
            # the linear FLOPs: 2 x tokens x every matrix a token passes through (closed form above);
            # routed experts on meta are counted as balanced, which is exact for the top-k total
            assert _linear_flops(prof) == pytest.approx(_closed_form(name, cfg, tokens), rel=1e-9), (name, device, phase)


def _more_families():
    """Hugging Face families beyond the zoo's (each skipped where this transformers lacks it), as
    (name, config, MoE layers, the routed experts' intermediate size)."""
    import transformers as T

    small = dict(SMALL_LLAMA, num_key_value_heads=2)
    dense = {"Phi3Config": dict(small, pad_token_id=0), "Qwen2Config": small, "Gemma3TextConfig": dict(small, head_dim=32),
             "CohereConfig": small, "Starcoder2Config": small,
             "FalconConfig": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512),
             "GPTNeoXConfig": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                   vocab_size=512),
             "BloomConfig": dict(hidden_size=128, n_layer=2, n_head=4, vocab_size=512),
             "OPTConfig": dict(hidden_size=128, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4, vocab_size=512,
                               word_embed_proj_dim=128),
             "MambaConfig": dict(hidden_size=128, num_hidden_layers=2, vocab_size=512, state_size=8)}
    for name, kw in dense.items():
        if hasattr(T, name):
            yield name, getattr(T, name)(**kw), 0, 0
    if hasattr(T, "OlmoeConfig"):  # every layer routed, experts of intermediate_size
        yield "OlmoeConfig", T.OlmoeConfig(**small, num_experts=4, num_experts_per_tok=2), 2, 256
    if hasattr(T, "Qwen3MoeConfig"):
        yield "Qwen3MoeConfig", T.Qwen3MoeConfig(**small, head_dim=32, moe_intermediate_size=64, num_experts=4,
                                                 num_experts_per_tok=2), 2, 64
    if hasattr(T, "DeepseekV3Config"):  # multi-head latent attention; layer 0 dense, layer 1 routed + 1 shared
        yield "DeepseekV3Config", T.DeepseekV3Config(
            hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=512, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
            first_k_dense_replace=1, q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16,
            v_head_dim=32, n_group=1, topk_group=1), 1, 64


@needs_transformers
def test_more_hf_families_count_their_matrix_work_as_the_flop_counter_does():
    """Thirteen more families' bf16 prefills (2 x 16 tokens) on the CPU: nothing uncounted; the
    FLOPs of every mm / addmm / bmm / baddbmm (DeepSeek's router in fp32 among them) equal
    torch.utils.flop_counter's for those ops exactly, less our epilogues (the biases' adds); the routed
    experts' grouped GEMMs, which the flop counter does not count, are 2 x tokens x top-k x 3
    matrices of h x intermediate per routed layer; Mamba's depthwise causal conv1d is CUDA-core work."""
    import warnings

    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    aten = torch.ops.aten
    seen = 0
    for name, cfg, routed, inter in _more_families():
        seen += 1
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # frozen: the flop counter's module tracker hooks every input that wants a gradient, and
            # fails on one of Mamba's (transformers 5.25) that has none; the FLOPs are the same
            model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).eval().requires_grad_(False)
        ids = torch.randint(1, 512, (2, 16))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with FlopCounterMode(display=False) as fc:
                model(ids)
            prof = count(lambda: model(ids))
        assert not prof.uncounted(), (name, prof.uncounted())
        theirs = fc.get_flop_counts()["Global"]
        mats = ("mm", "addmm", "bmm", "baddbmm")
        # the flop counter's are the products alone: ours less the bias's one add per output element
        mine = sum(o.total_flops - (o.outputs[0].numel if o.short_op in ("addmm", "baddbmm") else 0)
                   for o in prof.ops if o.short_op in mats)
        if name == "FalconConfig" and aten.bmm in theirs:
            # its multi-query attention took SDPA's math path on the CPU (transformers <= 5.24's mask),
            # whose two bmm the flop counter sees (4*2*4*16*16*32 = 262,144 per layer); ours is the one
            # SDPA op, same FLOPs.  Where it takes the CPU's flash kernel the flop counter sees neither.
            mine += sum(o.flops["bf16_tensor"] for o in ops_named(prof, "scaled_dot_product_attention"))
        assert mine == sum(theirs.get(getattr(aten, m), 0) for m in mats), name
        grouped = sum(o.total_flops for o in prof.ops if o.short_op == "_grouped_mm")
        assert grouped == 2 * 32 * 2 * 3 * cfg.hidden_size * inter * routed, name  # top-2 of the experts
        if name == "MambaConfig":
            # x [2, 256, 16] (expand 2 x 128 channels), weight [256, 1, 4], bias, padding 3 -> [2, 256, 19]:
            # 2*2*256*19*4 = 77,824 multiply-add FLOPs and 2*256*19 = 9,728 bias adds, in each of 2 layers
            convs = ops_named(prof, "convolution")
            assert len(convs) == 2 and all(c.flops == {"fp32": 77_824 + 9_728} for c in convs)
            assert all("depthwise" in c.note for c in convs)
    assert seen >= 10


@needs_transformers
def test_a_training_step_counts_the_same_on_meta_as_on_the_cpu():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = _small_llama_config(2)

    def totals(device):
        prof = training_step(lambda: LlamaForCausalLM(cfg), device, (2, 32))
        backward = sum(o.total_flops for o in prof.ops if o.short_op == "mm" and o.phase == "backward")
        return prof.total_flops, prof.total_bytes, backward, prof.uncounted()

    cpu, meta = totals("cpu"), totals("meta")
    assert cpu == meta and not cpu[3]
    # 4 KV heads of 4 (no GQA): fp32 attention is the GPU's efficient kernel, forward and backward,
    # on the CPU (whose own kernel runs it) as on meta
    mha = LlamaConfig(**{**cfg.to_dict(), "num_key_value_heads": 4})
    on = {d: training_step(lambda: LlamaForCausalLM(mha), d, (2, 32)) for d in ("cpu", "meta")}
    assert on["cpu"].total_flops == on["meta"].total_flops and on["cpu"].total_bytes == on["meta"].total_bytes
    assert [o.short_op for o in on["cpu"].ops if "attention" in o.op] == [
        o.short_op for o in on["meta"].ops if "attention" in o.op] == (
        ["scaled_dot_product_attention"] * 2 + ["_scaled_dot_product_efficient_attention_backward"] * 2)
    # the backward's matmuls: twice the forward's linear FLOPs except the first layer's input
    # gradient... here simply: 2 x the linear forward (dX and dW for every linear; the embedding's
    # input needs no gradient, the LM head's dX flows on)
    assert cpu[2] == pytest.approx(2 * _closed_form("llama", cfg, 64), rel=1e-9)


def test_uncounted_matrix_work_makes_the_headline_a_stated_lower_bound():
    from rooflight import api
    from rooflight.profile_data import OpRecord, Profile

    ops = (OpRecord(0, "aten::mm.default", flops={"bf16_tensor": 2e9}, bytes_read=1e6, bytes_written=1e6),
           OpRecord(1, "mylib::grouped_mm", counted=False, note="no cost formula"))
    a = api.analyze(Profile(ops), "h100", calibrated=False)
    assert a.notes[0].startswith("the intensity, FLOPs and bytes are lower bounds") and "grouped_mm" in a.notes[0]
    # an uncounted op that is no matrix work and (count-only) holds no measured time: just listed
    ops2 = (ops[0], OpRecord(1, "aten::isin.Tensor_Tensor", counted=False))
    b = api.analyze(Profile(ops2), "h100", calibrated=False)
    assert not any("lower bounds" in n for n in b.notes) and any("isin" in n for n in b.notes)


@needs_transformers
def test_a_training_step_reports_model_flops_and_optimizer_traffic():
    from transformers import LlamaForCausalLM

    from rooflight import api

    cfg = _small_llama_config(2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 512, (2, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    step()  # the optimizer's states exist from here on
    prof = api.count(step)
    t = api.analyze(prof, "h100", calibrated=False).training
    # attention: HF's mask sends SDPA down the math path here, whose QK^T and PV are bmm's
    # (2 layers x 2 bmm x 2*B2*H4*S32*S32*D32 = 2,097,152), or a fused SDPA op
    attention = sum(o.total_flops for o in prof.ops if o.phase == "forward"
                    and ("scaled_dot_product" in o.op or o.short_op in ("bmm", "baddbmm")))
    # model FLOPs: 3 x the forward's matrix work = 3 x (linear layers' 2 x 64 tokens x matrices + attention)
    assert t.model_flops == pytest.approx(3 * (_closed_form("llama", cfg, 64) + attention), rel=1e-9)
    assert t.executed_flops > t.model_flops and t.steps == 1 and t.mfu != t.mfu  # no timing: no MFU
    params = sum(p.numel() for p in model.parameters())
    assert t.parameters == params
    # fused AdamW on fp32: reads p, g, m, v and writes p, m, v: 7 x 4 = 28 B per parameter, plus the
    # step counters' _foreach_add_ (a 4-byte scalar per parameter tensor, read and written)
    n_tensors = len(list(model.parameters()))
    assert t.optimizer_bytes == 28 * params + 8 * n_tensors
    # its states: m and v in fp32, 8 B per parameter (rooflight llm --train's 12 adds the fp32 master
    # copy that mixed precision keeps; this model trains in fp32, its parameters are the master)
    assert t.state_bytes == 8 * params


@needs_transformers
def test_a_mixture_of_experts_training_step_counts_its_experts_in_model_flops():
    """Mixtral's experts run as _grouped_mm: it was not matrix work to the training facts, so model
    FLOPs held the attention and the router alone (a 4-expert Mixtral script read 1.75e7, executed
    3.26x).  Model FLOPs: 3 x (2 x 64 tokens x (attention's matrices + 2 of the 4 experts' 3 h x i
    + the router) per layer + the LM head) + attention's scores."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from rooflight import api

    cfg = MixtralConfig(**dict(SMALL_LLAMA, num_key_value_heads=2), num_local_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    model = MixtralForCausalLM(cfg)
    ids = torch.randint(0, 512, (2, 32))
    prof = api.count(lambda: model(input_ids=ids, labels=ids).loss.backward())
    t = api.analyze(prof, "h100", calibrated=False).training
    attention = sum(o.total_flops for o in prof.ops if o.phase == "forward"
                    and ("scaled_dot_product" in o.op or o.short_op in ("bmm", "baddbmm")))
    assert t.model_flops == pytest.approx(3 * (_closed_form("mixtral", cfg, 64) + attention), rel=1e-9)
    assert 1.0 <= t.executed_flops / t.model_flops < 1.1
    # the backward's matrix work is twice the forward's (every weight trains): no frozen-weights clause
    assert t.backward_matrix_flops == pytest.approx(2 * t.model_flops / 3, rel=0.02)


def test_a_frozen_base_with_an_adapter_says_its_backward_skips_weight_gradients():
    # adapter fine-tuning: a frozen Linear(128, 128) plus a trainable low-rank pair a: 128 -> 8,
    # b: 8 -> 128, on 64 rows of an input that needs no gradient
    from rooflight import api
    from rooflight.analysis import training_text

    torch.manual_seed(0)
    base, a, b = torch.nn.Linear(128, 128, bias=False), torch.nn.Linear(128, 8, bias=False), torch.nn.Linear(8, 128, bias=False)
    base.weight.requires_grad_(False)
    x = torch.randn(64, 128)
    prof = count(lambda: (base(x) + b(a(x))).sum().backward())
    t = api.analyze(prof, "h100", calibrated=False).training
    # forward: 2*64*128*128 + 2*64*128*8 + 2*64*8*128 = 2,097,152 + 131,072 + 131,072 = 2,359,296
    assert t.model_flops == 3 * 2_359_296
    # backward: base nothing (no dW: frozen; no dX: x needs none); b its dW and dX (131,072 each);
    # a its dW (131,072): 393,216 = 0.17x the forward
    assert t.backward_matrix_flops == 393_216
    assert ("the backward's matrix work is 0.17x the forward's, not 2x: gradients nothing needs are not "
            "computed (a frozen weight's, as in adapter fine-tuning; a first layer's input's") in training_text(t)
    # everything trained: dX and dW of each layer, 2x; no such clause
    base.weight.requires_grad_(True)
    x.requires_grad_()
    full = api.analyze(count(lambda: (base(x) + b(a(x))).sum().backward()), "h100", calibrated=False).training
    assert full.backward_matrix_flops == 2 * 2_359_296 and "not 2x" not in training_text(full)


def test_mfu_says_its_step_time_is_a_mean():
    """Beside the per-step line's median, MFU's step time is the steps' mean (work over time)."""
    from rooflight.analysis import TrainingFacts, training_text

    t = TrainingFacts(3, 1.2e9, 1.6e9, "fp32", 42.6e-3, 0.153, 2.77e8, 1000)
    assert "MFU 15.3% of the fp32 roof at 42.6 ms a step (mean of 3)" in training_text(t)
    one = TrainingFacts(1, 1.2e9, 1.6e9, "fp32", 42.6e-3, 0.153, 2.77e8, 1000)
    assert "at 42.6 ms a step;" in training_text(one) or training_text(one).endswith("at 42.6 ms a step")


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_small_cnn_training_step_is_counted_through(device):
    # conv, batch norm, max pool, group norm, avg pool: forward and backward all have formulas
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GroupNorm(2, 8),
                            torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 10)).to(device)
    x, y = torch.randn(4, 3, 16, 16, device=device), torch.randint(0, 10, (4,), device=device)
    prof = count(lambda: F.cross_entropy(m(x), y).backward())
    assert not prof.uncounted()
    # max pool 2x2 of [4, 8, 16, 16] fp32 -> [4, 8, 8, 8]: 2,048 outputs x 4 compares = 8,192;
    # reads 32 KiB, writes the output (8 KiB) and its int64 indices (16 KiB)
    mp, = ops_named(prof, "max_pool2d_with_indices")
    assert mp.flops == {"fp32": 8192} and (mp.bytes_read, mp.bytes_written) == (32768, 8192 + 16384)
    # its backward adds each of the 2,048 gradients at its index: reads grad_out and the indices, writes 32 KiB
    mpb, = ops_named(prof, "max_pool2d_with_indices_backward")
    assert mpb.flops == {"fp32": 2048} and (mpb.bytes_read, mpb.bytes_written) == (8192 + 16384, 32768)
    # avg pool 2x2 of [4, 8, 8, 8] -> [4, 8, 4, 4]: 512 outputs x 4 adds; its backward the same 2,048
    ap, apb = ops_named(prof, "avg_pool2d")[0], ops_named(prof, "avg_pool2d_backward")[0]
    assert ap.flops == apb.flops == {"fp32": 2048} and apb.bytes_written == 4 * 8 * 8 * 8 * 4
    bn, = ops_named(prof, "native_batch_norm_backward")
    assert bn.flops == {"fp32": 12 * 4 * 8 * 16 * 16}  # 12 per input element (see norm_backward)


# ---------------------------------------------------------------------------- activation checkpointing, autocast


class _Block(torch.nn.Module):
    """RMSNorm, a fused QKV projection, causal GQA attention (4 query heads, 1 KV head, D = 64), an
    output projection and the residual; 256 wide."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.RMSNorm(256)
        self.qkv = torch.nn.Linear(256, 256 + 2 * 64, bias=False)
        self.o = torch.nn.Linear(256, 256, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).split([256, 64, 64], -1)
        q, k, v = (t.view(b, s, -1, 64).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return x + self.o(a.transpose(1, 2).reshape(b, s, 256))


class _Stack(torch.nn.Module):
    def __init__(self, checkpointed: bool, reentrant: bool):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block(), _Block()])
        self.checkpointed, self.reentrant = checkpointed, reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        for layer in self.layers:
            x = checkpoint(layer, x, use_reentrant=self.reentrant) if self.checkpointed else layer(x)
        return x


def _phase_flops(prof) -> dict[tuple[str, str, str, str], float]:
    """FLOPs by (phase, module, op, math class), the recomputation left out."""
    out: dict[tuple[str, str, str, str], float] = {}
    for o in prof.ops:
        for cls, v in o.flops.items():
            if o.phase != "recompute":
                key = (o.phase, o.module, o.short_op, cls)
                out[key] = out.get(key, 0) + v
    return out


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_a_checkpointed_forward_is_recomputed_as_it_ran(device, reentrant):
    # Autograd runs backward with no torch-function mode, so a checkpoint's recomputation once ran
    # without the capture's: off the GPU it counted the CPU's own kernels, or torch refused the
    # recomputed tensors ("different metadata").  Now it runs as the forward did (the GPU's fused
    # RMSNorm and SDPA), in the forward's modules, as its own phase
    def run(checkpointed):
        torch.manual_seed(0)
        with torch.device(device):
            model = _Stack(checkpointed, reentrant).to(torch.bfloat16)
            x = torch.randn(2, 128, 256, dtype=torch.bfloat16, requires_grad=True)
        prof = count(lambda: model(x).float().square().mean().backward())
        return prof, model, x

    (plain, m0, x0), (ck, m1, x1) = run(False), run(True)
    # the forward and the backward are the plain run's, module by module, op by op, class by class
    assert _phase_flops(ck) == _phase_flops(plain) and not ck.uncounted()
    rec = [o for o in ck.ops if o.phase == "recompute" and (o.total_flops or o.bytes)]
    fwd = {(o.module, o.short_op): o.total_flops for o in ck.ops if o.phase == "forward"}
    # each recomputed op is one the forward ran, in the same module, with the same FLOPs
    assert all(fwd[(o.module, o.short_op)] == o.total_flops for o in rec)
    assert {o.module for o in rec} <= {f"layers.{i}{s}" for i in (0, 1) for s in ("", ".norm", ".qkv", ".o")}
    mm = sum(o.total_flops for o in rec if o.short_op == "mm")
    # 2 x 128 = 256 tokens; per block QKV 2 x 256 x 256 x 384 = 50,331,648 and the output projection
    # 2 x 256 x 256 x 256 = 33,554,432.  The reentrant kind reruns each block whole: 2 x 83,886,080.
    # The non-reentrant kind stops once every tensor the backward saved is back: the output
    # projection's product is saved by no one (its input is, for dW), so only QKV: 2 x 50,331,648
    assert mm == (167_772_160 if reentrant else 100_663_296)
    assert [o.short_op for o in rec if o.short_op != "mm"].count("scaled_dot_product_attention") == 2
    assert [o.short_op for o in rec].count("_fused_rms_norm") == 2
    if device == "cpu":  # the gradients are those of the plain run
        for a, b in zip([x0, *m0.parameters()], [x1, *m1.parameters()]):
            torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_forward_counted_on_meta_predicts_the_gpus_own_capture(reentrant):
    # the blocks above in bf16 over 2 x 1024 tokens: counted on meta, captured on the GPU (where
    # the function mode is set aside and the real kernels run, the recomputation's too), the FLOPs
    # agree phase by phase and class by class
    def run(device):
        torch.manual_seed(0)
        with torch.device(device):
            model = _Stack(True, reentrant).to(torch.bfloat16)
            x = torch.randn(2, 1024, 256, dtype=torch.bfloat16, requires_grad=True)
        return count(lambda: model(x).float().square().mean().backward())

    meta, gpu = run("meta"), run("cuda")
    assert flops_by_class(meta) == flops_by_class(gpu) and flops_by_class(gpu)[("recompute", "bf16_tensor")] > 0
    # op by op the same FLOPs (the attention is SDPA's composite on meta, the kernel the GPU chose there)
    rec = [[("attention" in o.op, o.flops) for o in p.ops if o.phase == "recompute" and o.total_flops]
           for p in (meta, gpu)]
    assert rec[0] == rec[1] and [a for a, _ in rec[0]].count(True) == 2


@needs_transformers
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_a_checkpointed_hf_llama_trains_and_counts_its_recomputation(kv_heads, reentrant):
    # HF's gradient_checkpointing_enable() on a Llama of 2 layers, 128 wide, 4 heads (MHA: the
    # GPU's fused SDPA; GQA of 2 KV heads, which crashed the capture before), fp32, 2 x 32 tokens;
    # on the CPU (on meta HF's packed-sequence check reads a tensor's value)
    from transformers import LlamaForCausalLM

    from rooflight import api
    from rooflight.analysis import training_text

    cfg = _small_llama_config(kv_heads, use_cache=False)

    def run(checkpointed, under):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        model.train()
        if checkpointed:  # (gradient_checkpointing_enable is activation_checkpointing_enable from 5.2x on)
            kind = {"use_reentrant": reentrant}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kind)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kind)
        ids = torch.randint(0, 512, (2, 32))
        losses = []

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            losses.append(loss.item())
        prof = count(step) if under else step()
        return prof, losses, [p.grad for p in model.parameters()]

    plain, _, _ = run(False, True)
    ck, losses, grads = run(True, True)
    _, true_losses, true_grads = run(True, False)
    assert losses == pytest.approx(true_losses, rel=1e-6)
    for a, b in zip(grads, true_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert _phase_flops(ck) == _phase_flops(plain) and not ck.uncounted()
    rec = [o for o in ck.ops if o.phase == "recompute" and (o.total_flops or o.bytes)]
    assert rec and all(o.module.startswith("model.layers.") for o in rec)
    attention = [o.short_op for o in ck.ops if o.phase == "forward" and o.module.endswith("self_attn")
                 and o.short_op in ("scaled_dot_product_attention", "bmm", "_safe_softmax")]
    assert [o.short_op for o in rec if o.short_op in set(attention)] == attention
    if kv_heads == 4:
        assert attention == ["scaled_dot_product_attention"] * 2  # the GPU's fused kernel, recomputed as such
    # per layer, 64 tokens: q and o 2 x 64 x 128 x 128 = 2,097,152 each, k and v (2 or 4 KV heads of
    # 32) 2 x 64 x 128 x 32 x kv, gate, up and down 2 x 64 x 128 x 256 = 4,194,304 each.  Reentrant:
    # both layers whole.  Non-reentrant stops at the last saved tensor: down_proj's product is saved
    # by no one (its input is, for dW), so down_proj is not rerun
    kv = 2 * 2 * 64 * 128 * 32 * kv_heads
    layer = 2 * 2_097_152 + kv + 3 * 4_194_304
    mm = sum(o.total_flops for o in rec if o.short_op == "mm")
    assert mm == 2 * (layer if reentrant else layer - 4_194_304)
    t = api.analyze(ck, "h100", calibrated=False).training
    assert t.recompute_flops == sum(o.total_flops for o in rec) > 0
    assert t.model_flops == api.analyze(plain, "h100", calibrated=False).training.model_flops
    assert "the forward run again by activation checkpointing" in training_text(t)


@needs_transformers
def test_an_autocast_training_step_counts_bf16_matmuls_as_the_flop_counter_does():
    # CPU bf16 autocast over a GQA Llama (2 layers, 128 wide, MLP 256, vocabulary 512), 2 x 32 tokens
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaForCausalLM

    cfg = _small_llama_config(2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 512, (2, 32))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()

    prof = count(step)
    assert not prof.uncounted()
    mms = [o for o in prof.ops if o.short_op == "mm"]
    assert {o.dtype for o in mms} == {"bfloat16"} and {c for o in mms for c in o.flops} == {"bf16_tensor"}
    # 3 x the forward's linear work (dX and dW for each): 3 x 2 x 64 x (2 x 147,456 + 128 x 512) = 138,412,032
    total = sum(o.total_flops for o in mms)
    assert total == 3 * _closed_form("llama", cfg, 64) == 138_412_032
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    assert total == counter.get_flop_counts()["Global"][torch.ops.aten.mm]
