"""Exact FLOPs and bytes of the matrix products and convolutions, counted through
`rooflight.capture.count` on real CPU tensors (and on meta tensors where the op has a meta
kernel), against closed forms written here with their arithmetic.

FLOPs count a multiply-add as 2.  Bytes follow the bytes model in rooflight/costs/model.py:
each input read once (a broadcast operand once), each output written once.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rooflight.capture import count
from rooflight.costs import OpCall, TensorMeta, lookup

bf16, fp16, fp32, fp64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
DEVICES = ["cpu", "meta"]


def only(prof, name: str):
    """The one record of aten op `name` ("mm"); every other record in the profile costs nothing."""
    recs = [o for o in prof.ops if o.short_op == name]
    assert len(recs) == 1, [o.op for o in prof.ops]
    rest = [o for o in prof.ops if o is not recs[0]]
    assert all(o.counted and o.total_flops == 0 and o.bytes == 0 for o in rest), [(o.op, o.bytes) for o in rest]
    assert prof.uncounted() == {}
    return recs[0]


def flops(rec) -> dict[str, float]:
    return dict(rec.flops)


@contextlib.contextmanager
def fp32_matmul_precision(p: str):
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(p)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def rand(*shape, dtype=fp32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


# ---------------------------------------------------------------------------- mm


MM_CASES = [
    # mm [64,128] @ [128,256] bf16: 2*64*256*128 = 4_194_304 FLOPs (bf16_tensor);
    # read 64*128*2 + 128*256*2 = 81_920, write 64*256*2 = 32_768
    (64, 128, 256, bf16, "bf16_tensor", 4_194_304, 81_920, 32_768),
    # mm [1,4096] @ [4096,32] fp16 (a decode GEMV): 2*1*32*4096 = 262_144 (fp16_tensor);
    # read (1*4096 + 4096*32)*2 = 270_336, write 1*32*2 = 64
    (1, 4096, 32, fp16, "fp16_tensor", 262_144, 270_336, 64),
    # mm [17,33] @ [33,9] fp64: 2*17*9*33 = 10_098 (fp64_tensor);
    # read (17*33 + 33*9)*8 = (561 + 297)*8 = 6_864, write 17*9*8 = 1_224
    (17, 33, 9, fp64, "fp64_tensor", 10_098, 6_864, 1_224),
    # mm [32,64] @ [64,48] fp32, float32_matmul_precision 'highest' (no TF32): 2*32*48*64 = 196_608
    # on the plain fp32 class; read (32*64 + 64*48)*4 = 20_480, write 32*48*4 = 6_144
    (32, 64, 48, fp32, "fp32", 196_608, 20_480, 6_144),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,k,n,dtype,cls,want_flops,want_read,want_written", MM_CASES)
def test_mm(device, m, k, n, dtype, cls, want_flops, want_read, want_written):
    with fp32_matmul_precision("highest"):
        a, b = rand(m, k, dtype=dtype, device=device), rand(k, n, dtype=dtype, device=device)
        rec = only(count(torch.mm, a, b), "mm")
    assert flops(rec) == {cls: want_flops}
    assert (rec.bytes_read, rec.bytes_written) == (want_read, want_written)


def test_fp32_mm_with_tf32_allowed_runs_on_tf32_tensor_cores():
    # same [32,64] @ [64,48] fp32 product; set_float32_matmul_precision('high') lets cuBLAS use
    # TF32: 196_608 FLOPs on tf32_tensor, bytes unchanged (fp32 storage)
    a, b = rand(32, 64), rand(64, 48)
    with fp32_matmul_precision("high"):
        rec = only(count(torch.mm, a, b), "mm")
    assert flops(rec) == {"tf32_tensor": 196_608}
    assert (rec.bytes_read, rec.bytes_written) == (20_480, 6_144)
    assert torch.get_float32_matmul_precision() == "highest"  # restored for the other tests


# ---------------------------------------------------------------------------- addmm, bmm, baddbmm


@pytest.mark.parametrize("device", DEVICES)
def test_addmm_bias_is_read_once_and_its_add_is_vector_work(device):
    bias, a, b = rand(256, dtype=bf16, device=device), rand(64, 128, dtype=bf16, device=device), \
        rand(128, 256, dtype=bf16, device=device)
    rec = only(count(torch.addmm, bias, a, b), "addmm")
    # [256] + [64,128] @ [128,256] bf16: 2*64*256*128 = 4_194_304 bf16_tensor FLOPs; the bias add
    # in the epilogue, on the fp32 accumulator: 64*256 = 16_384 fp32 FLOPs;
    # read 81_920 (as mm) + the broadcast bias once 256*2 = 512 -> 82_432; write 64*256*2 = 32_768
    assert flops(rec) == {"bf16_tensor": 4_194_304, "fp32": 16_384}
    assert (rec.bytes_read, rec.bytes_written) == (82_432, 32_768)


def test_addmm_with_a_full_bias_and_with_beta_zero():
    a, b = rand(64, 128, dtype=bf16), rand(128, 256, dtype=bf16)
    full = only(count(torch.addmm, rand(64, 256, dtype=bf16), a, b), "addmm")
    # a [64,256] bias: read 81_920 + 64*256*2 = 114_688
    assert full.bytes_read == 114_688
    zero = only(count(torch.addmm, rand(64, 256, dtype=bf16), a, b, beta=0), "addmm")
    # beta=0: the bias is neither read nor added: the plain mm's 4_194_304 FLOPs, 81_920 bytes read
    assert flops(zero) == {"bf16_tensor": 4_194_304}
    assert zero.bytes_read == 81_920


@pytest.mark.parametrize("device", DEVICES)
def test_bmm(device):
    rec = only(count(torch.bmm, rand(8, 32, 64, dtype=fp16, device=device), rand(8, 64, 16, dtype=fp16, device=device)),
               "bmm")
    # [8,32,64] @ [8,64,16] fp16: 2*8*32*16*64 = 524_288 fp16_tensor;
    # read (8*32*64 + 8*64*16)*2 = (16_384 + 8_192)*2 = 49_152, write 8*32*16*2 = 8_192
    assert flops(rec) == {"fp16_tensor": 524_288}
    assert (rec.bytes_read, rec.bytes_written) == (49_152, 8_192)


@pytest.mark.parametrize("device", DEVICES)
def test_baddbmm_with_a_broadcast_self(device):
    base = rand(1, 1, 16, dtype=bf16, device=device)
    rec = only(count(torch.baddbmm, base, rand(4, 8, 32, dtype=bf16, device=device),
                     rand(4, 32, 16, dtype=bf16, device=device)), "baddbmm")
    # [1,1,16] + [4,8,32] @ [4,32,16] bf16: 2*4*8*16*32 = 32_768 bf16_tensor, the add 4*8*16 = 512 fp32;
    # read (4*8*32 + 4*32*16)*2 + 16*2 = (1_024 + 2_048)*2 + 32 = 6_176, write 4*8*16*2 = 1_024
    assert flops(rec) == {"bf16_tensor": 32_768, "fp32": 512}
    assert (rec.bytes_read, rec.bytes_written) == (6_176, 1_024)


# ---------------------------------------------------------------------------- composites


@pytest.mark.parametrize("device", DEVICES)
def test_linear_on_3d_input_is_views_plus_one_addmm(device):
    x, w, b = rand(2, 3, 128, dtype=bf16, device=device), rand(256, 128, dtype=bf16, device=device), \
        rand(256, dtype=bf16, device=device)
    prof = count(F.linear, x, w, b)
    rec = only(prof, "addmm")
    # x [2,3,128] -> view [6,128]; w [256,128] -> t [128,256] (views, free);
    # addmm: 2*6*256*128 = 393_216 bf16_tensor + bias add 6*256 = 1_536 fp32;
    # read (6*128 + 128*256 + 256)*2 = (768 + 32_768 + 256)*2 = 67_584, write 6*256*2 = 3_072
    assert flops(rec) == {"bf16_tensor": 393_216, "fp32": 1_536}
    assert (rec.bytes_read, rec.bytes_written) == (67_584, 3_072)
    assert (prof.total_flops, prof.total_bytes) == (393_216 + 1_536, 67_584 + 3_072)


def test_linear_without_bias_is_one_mm():
    rec = only(count(F.linear, rand(2, 3, 128, dtype=bf16), rand(256, 128, dtype=bf16)), "mm")
    # 2*6*256*128 = 393_216; read (6*128 + 128*256)*2 = 67_072, write 3_072
    assert flops(rec) == {"bf16_tensor": 393_216}
    assert (rec.bytes_read, rec.bytes_written) == (67_072, 3_072)


def test_matmul_2d_3d_and_batched():
    with fp32_matmul_precision("highest"):
        two = only(count(torch.matmul, rand(8, 16), rand(16, 4)), "mm")
        folded = only(count(torch.matmul, rand(4, 3, 5), rand(5, 6)), "mm")
        batched = only(count(torch.matmul, rand(4, 3, 5), rand(4, 5, 6)), "bmm")
    # [8,16] @ [16,4]: 2*8*4*16 = 1_024; read (128 + 64)*4 = 768, write 32*4 = 128
    assert (two.total_flops, two.bytes_read, two.bytes_written) == (1_024, 768, 128)
    # [4,3,5] @ [5,6]: the batch folds into M = 12: 2*12*6*5 = 720; read (60 + 30)*4 = 360, write 72*4 = 288
    assert (folded.total_flops, folded.bytes_read, folded.bytes_written) == (720, 360, 288)
    # [4,3,5] @ [4,5,6]: bmm 2*4*3*6*5 = 720; read (60 + 120)*4 = 720, write 288
    assert (batched.total_flops, batched.bytes_read, batched.bytes_written) == (720, 720, 288)


def test_matmul_with_a_broadcast_batch_materializes_the_expanded_operand():
    with fp32_matmul_precision("highest"):
        prof = count(torch.matmul, rand(4, 2, 3, 5), rand(1, 2, 5, 6))
    clone = [o for o in prof.ops if o.short_op == "clone"]
    bmm = [o for o in prof.ops if o.short_op == "bmm"]
    # eager matmul expands b [1,2,5,6] to [4,2,5,6] and makes it contiguous: the clone reads the
    # 60 distinct elements once (the stride-0 batch dim counts once) and writes 4*60: 240 / 960 bytes
    assert [(c.bytes_read, c.bytes_written) for c in clone] == [(240, 960)]
    # then bmm [8,3,5] @ [8,5,6]: 2*8*3*6*5 = 1_440; read (120 + 240)*4 = 1_440, write 8*3*6*4 = 576
    assert [(b.total_flops, b.bytes_read, b.bytes_written) for b in bmm] == [(1_440, 1_440, 576)]


def test_einsum_batched_product_is_one_bmm():
    with fp32_matmul_precision("highest"):
        prof = count(torch.einsum, "bik,bkj->bij", rand(4, 3, 5), rand(4, 5, 6))
    rec = only(prof, "bmm")
    # 2*4*3*6*5 = 720 FLOPs; read (4*3*5 + 4*5*6)*4 = 720, write 4*3*6*4 = 288; the rest are views
    assert (rec.total_flops, rec.bytes_read, rec.bytes_written) == (720, 720, 288)


@pytest.mark.parametrize("device", DEVICES)
def test_einsum_that_needs_a_permute_copies_one_operand(device):
    q, k = rand(2, 4, 8, 16, device=device), rand(2, 8, 4, 16, device=device)
    with fp32_matmul_precision("highest"):
        prof = count(torch.einsum, "bhqd,bkhd->bhqk", q, k)
    (clone,) = [o for o in prof.ops if o.short_op == "clone"]
    (bmm,) = [o for o in prof.ops if o.short_op == "bmm"]
    # k [2,8,4,16] permuted to [b,h,d,k] is not a batched-matrix layout: one copy of its
    # 2*8*4*16 = 1_024 elements, 4_096 bytes read and 4_096 written
    assert (clone.bytes_read, clone.bytes_written) == (4_096, 4_096)
    # then bmm [8,8,16] @ [8,16,8]: 2*8*8*8*16 = 16_384; read (1_024 + 1_024)*4 = 8_192, write 8*8*8*4 = 2_048
    assert (bmm.total_flops, bmm.bytes_read, bmm.bytes_written) == (16_384, 8_192, 2_048)
    assert (prof.total_flops, prof.total_bytes) == (16_384, 4_096 + 4_096 + 8_192 + 2_048)


# ---------------------------------------------------------------------------- convolution


def test_conv2d_with_groups_and_bias():
    x, w, b = rand(2, 4, 9, 9), rand(8, 2, 3, 3), rand(8)
    # x [2,4,9,9] * w [8, 4/2, 3,3], padding 1 -> out [2,8,9,9]:
    # 2 * N*C_out*H_out*W_out * (C_in/groups)*k_h*k_w = 2*2*8*81*2*9 = 46_656 (TF32 for convs by
    # default: torch.backends.cudnn.allow_tf32); bias add 2*8*81 = 1_296 fp32;
    # read x 2*4*81*4 = 2_592 + w 8*2*9*4 = 576 + bias 8*4 = 32 -> 3_200; write 2*8*81*4 = 5_184
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=True):
        rec = only(count(F.conv2d, x, w, b, groups=2, padding=1), "convolution")
    assert flops(rec) == {"tf32_tensor": 46_656, "fp32": 1_296}
    assert (rec.bytes_read, rec.bytes_written) == (3_200, 5_184)
    # without TF32 the product and the bias add share the fp32 class: 46_656 + 1_296 = 47_952
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=False):
        rec = only(count(F.conv2d, x, w, b, groups=2, padding=1), "convolution")
    assert flops(rec) == {"fp32": 47_952}


def test_conv_transpose2d():
    x, w, b = rand(2, 8, 5, 5), rand(8, 3, 3, 3), rand(3)
    # x [2,8,5,5], w [C_in=8, C_out/groups=3, 3,3], stride 2 -> out [2,3,11,11]; the work counted over
    # the input positions: 2*N*H_in*W_in*C_in*(C_out/groups)*k_h*k_w = 2*2*25*8*3*9 = 21_600;
    # bias add 2*3*121 = 726; read 2*8*25*4 + 8*3*9*4 + 3*4 = 1_600 + 864 + 12 = 2_476; write 726*4 = 2_904
    with torch.backends.cudnn.flags(enabled=False, allow_tf32=True):
        rec = only(count(F.conv_transpose2d, x, w, b, stride=2), "convolution")
    assert flops(rec) == {"tf32_tensor": 21_600, "fp32": 726}
    assert (rec.bytes_read, rec.bytes_written) == (2_476, 2_904)


# ---------------------------------------------------------------------------- quantized products


def test_weight_int8pack_mm_reads_the_weight_as_one_byte_per_element():
    x, w, scales = rand(4, 64, dtype=bf16), torch.randint(-128, 127, (32, 64), dtype=torch.int8), rand(32, dtype=bf16)
    rec = only(count(torch._weight_int8pack_mm, x, w, scales), "_weight_int8pack_mm")
    # x [4,64] bf16 @ int8 w [32,64]^T * scales [32] -> [4,32] bf16: 2*4*32*64 = 16_384 FLOPs, fp32 on
    # the vector units (the kernel widens both operands; an H200's tensor pipes count 0 for it);
    # read x 4*64*2 = 512 + w 32*64*1 = 2_048 + scales 32*2 = 64 -> 2_624; write 4*32*2 = 256
    assert flops(rec) == {"fp32": 16_384}
    assert (rec.bytes_read, rec.bytes_written) == (2_624, 256)


def test_weight_int4pack_mm_for_cpu_reads_half_a_byte_per_weight():
    n, k, group = 32, 128, 32
    w = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(w, 8)  # uint8 [N, K/2]
    scales_zeros = rand(k // group, n, 2, dtype=bf16)
    x = rand(4, k, dtype=bf16)
    rec = only(count(torch.ops.aten._weight_int4pack_mm_for_cpu, x, packed, group, scales_zeros),
               "_weight_int4pack_mm_for_cpu")
    # x [4,128] bf16 @ int4 w [32,128] -> [4,32]: 2*4*32*128 = 32_768 bf16_tensor;
    # read x 4*128*2 = 1_024 + packed w 32*128/2 = 2_048 + scales/zeros 4*32*2*2 = 512 -> 3_584;
    # write 4*32*2 = 256
    assert packed.numel() * packed.element_size() == 2_048
    assert flops(rec) == {"bf16_tensor": 32_768}
    assert (rec.bytes_read, rec.bytes_written) == (3_584, 256)


def test_scaled_mm_fp8_on_cpu():
    a = rand(16, 32).to(torch.float8_e4m3fn)
    b = rand(64, 32).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
    one = torch.tensor(1.0)
    rec = only(count(torch._scaled_mm, a, b, one, one, bias=rand(64, dtype=bf16), out_dtype=bf16), "_scaled_mm")
    # fp8 [16,32] @ fp8 [32,64]: 2*16*64*32 = 65_536 fp8_tensor; bias add 16*64 = 1_024 fp32;
    # read a 512 + b 2_048 + two fp32 scales 8 + bias 64*2 = 128 -> 2_696; write 16*64*2 = 2_048
    assert flops(rec) == {"fp8_tensor": 65_536, "fp32": 1_024}
    assert (rec.bytes_read, rec.bytes_written) == (2_696, 2_048)


def test_scaled_mm_formula_is_a_pure_function_of_shapes():
    # the same product described for a GPU, with no tensor at all: the registered formula on an OpCall
    fp8 = "float8_e4m3fn"
    a = TensorMeta.contiguous((16, 32), fp8, "cuda:0")
    b = TensorMeta((32, 64), (1, 32), fp8, "cuda:0", 0, 2_048)  # column-major
    s = TensorMeta.contiguous((), "float32", "cuda:0")
    out = TensorMeta.contiguous((16, 64), "bfloat16", "cuda:0")
    formula = lookup(torch.ops.aten._scaled_mm.default)
    cost = formula(OpCall("aten::_scaled_mm.default", (a, b, s, s), {"out_dtype": bf16}, (out,)))
    # 65_536 fp8_tensor FLOPs; read 512 + 2_048 + 4 + 4 = 2_568; write 2_048
    assert dict(cost.flops) == {"fp8_tensor": 65_536}
    assert (cost.bytes_read, cost.bytes_written) == (2_568, 2_048)


# ---------------------------------------------------------------------------- against FlopCounterMode


def _flop_counter(fn, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as fc:
        fn(*args, **kwargs)
    return fc.get_total_flops()


def _tensor_flops(prof) -> float:
    return sum(v for k, v in prof.flops_by_class().items() if k.endswith("_tensor"))


FLOP_COUNTER_CASES = {
    "mm": (torch.mm, (rand(64, 128, dtype=bf16), rand(128, 256, dtype=bf16)), {}),
    "addmm": (torch.addmm, (rand(256, dtype=bf16), rand(64, 128, dtype=bf16), rand(128, 256, dtype=bf16)), {}),
    "bmm": (torch.bmm, (rand(8, 32, 64, dtype=fp16), rand(8, 64, 16, dtype=fp16)), {}),
    "baddbmm": (torch.baddbmm,
                (rand(4, 8, 16, dtype=bf16), rand(4, 8, 32, dtype=bf16), rand(4, 32, 16, dtype=bf16)), {}),
    "linear": (F.linear, (rand(2, 3, 128, dtype=bf16), rand(256, 128, dtype=bf16), rand(256, dtype=bf16)), {}),
    "conv2d": (F.conv2d, (rand(2, 4, 9, 9, dtype=bf16), rand(8, 2, 3, 3, dtype=bf16), rand(8, dtype=bf16)),
               {"groups": 2, "padding": 1}),
    "conv_transpose2d": (F.conv_transpose2d, (rand(2, 8, 5, 5, dtype=bf16), rand(8, 3, 3, 3, dtype=bf16)),
                         {"stride": 2}),
}


@pytest.mark.parametrize("name", sorted(FLOP_COUNTER_CASES))
def test_tensor_flops_equal_flop_counter_mode(name):
    # FlopCounterMode counts the products only (no bias adds): our tensor-class FLOPs match it
    # exactly; our bias adds are extra, on the fp32 vector class
    fn, args, kwargs = FLOP_COUNTER_CASES[name]
    theirs = _flop_counter(fn, *args, **kwargs)
    assert theirs > 0
    assert _tensor_flops(count(fn, *args, **kwargs)) == theirs
