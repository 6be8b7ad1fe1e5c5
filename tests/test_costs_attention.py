"""Exact FLOPs and bytes of attention: F.scaled_dot_product_attention counted as the fused GPU
kernel it predicts (on CPU, meta and fake tensors alike), the math backend counted op by op, and
flex attention counted from the blocks its BlockMask visits.

Shapes: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv].  A fused kernel does
2*D + 2*Dv tensor FLOPs (QK^T and PV) and 5 fp32 softmax FLOPs per (query, key) pair it visits,
reads q, k, v (and a mask) once and writes the output once.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.flop_counter import FlopCounterMode

from rooflight.capture import count
from rooflight.costs import OpCall, Settings, TensorMeta, lookup
from rooflight.costs.attention import block_mask_pairs, predict_sdpa_backend
from rooflight.errors import CountError

bf16 = torch.bfloat16
sdpa = F.scaled_dot_product_attention


def qkv(b, hq, sq, d, hkv=None, sk=None, dtype=bf16, device="cpu"):
    hkv, sk = hkv or hq, sk or sq
    return (torch.randn(b, hq, sq, d, device=device).to(dtype),
            torch.randn(b, hkv, sk, d, device=device).to(dtype),
            torch.randn(b, hkv, sk, d, device=device).to(dtype))


def the_sdpa(prof):
    """The one SDPA record: the call is counted as a whole, nothing under it."""
    assert [o.op for o in prof.ops] == ["aten::scaled_dot_product_attention"], [o.op for o in prof.ops]
    return prof.ops[0]


def count_sdpa(device, *args, **kwargs):
    if device == "fake":
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            return count(sdpa, *fake, **kwargs)
    return count(sdpa, *[a.to(device) if isinstance(a, torch.Tensor) else a for a in args], **kwargs)


DEVICES = ["cpu", "meta", "fake"]


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 cases here assume plain fp32 matmuls; restore whatever was set."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(old)


# ---------------------------------------------------------------------------- SDPA, fused


@pytest.mark.parametrize("device", DEVICES)
def test_non_causal(device):
    rec = the_sdpa(count_sdpa(device, *qkv(2, 4, 256, 64)))
    # B2 H4 S256 D64 bf16: tensor 4*B*H*Sq*Sk*D = 4*2*4*256*256*64 = 134_217_728 (bf16_tensor);
    # softmax 5*B*H*Sq*Sk = 5*2*4*256*256 = 2_621_440 (fp32);
    # read q, k, v 3 * 2*4*256*64*2 = 3 * 262_144 = 786_432; write the output 262_144
    assert dict(rec.flops) == {"bf16_tensor": 134_217_728, "fp32": 2_621_440}
    assert (rec.bytes_read, rec.bytes_written) == (786_432, 262_144)
    # the record says which fused kernel it assumed, and that it is a prediction
    assert re.match(r"(cudnn|flash|efficient) attention \(fused\), MHA", rec.note) and "predicted" in rec.note


@pytest.mark.parametrize("backend,device", [("FLASH_ATTENTION", "cpu"), ("FLASH_ATTENTION", "meta"),
                                            ("FLASH_ATTENTION", "fake"), ("EFFICIENT_ATTENTION", "meta"),
                                            ("CUDNN_ATTENTION", "meta")])
def test_the_note_names_the_backend_predicted(backend, device):
    # with one backend enabled (sdpa_kernel), that is the kernel predicted, and named; the count
    # is the same for every fused backend
    with sdpa_kernel([getattr(SDPBackend, backend)]):
        rec = the_sdpa(count_sdpa(device, *qkv(2, 4, 256, 64)))
    name = backend.split("_")[0].lower()
    assert rec.note.startswith(f"{name} attention (fused), MHA; counted as the GPU's {name} kernel (predicted")
    assert dict(rec.flops) == {"bf16_tensor": 134_217_728, "fp32": 2_621_440}


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_causal_2048_is_136_of_256_tiles(device):
    rec = the_sdpa(count_sdpa(device, *qkv(1, 1, 2048, 64), is_causal=True))
    # 2048 tokens in 128x128 tiles: 16 query tiles; query tile i visits key tiles 0..i:
    # 16*17/2 = 136 of 16*16 = 256 tiles, each 128*128 pairs: 136*16_384 = 2_228_224 pairs;
    # tensor 4*pairs*D = 4*2_228_224*64 = 570_425_344 = 136/256 = 53.1% of the full
    # 4*2048*2048*64 = 1_073_741_824 (an H100's counters read 53%); softmax 5*pairs = 11_141_120
    assert dict(rec.flops) == {"bf16_tensor": 570_425_344, "fp32": 11_141_120}
    assert rec.flops["bf16_tensor"] / (4 * 2048 * 2048 * 64) == 136 / 256
    # causality saves work, not traffic: q, k, v 3*2048*64*2 = 786_432 read, 262_144 written
    assert (rec.bytes_read, rec.bytes_written) == (786_432, 262_144)
    assert "causal (upper-left): 53.1%" in rec.note


def test_causal_with_fewer_queries_than_keys():
    rec = the_sdpa(count_sdpa("cpu", *qkv(1, 2, 300, 64, sk=512), is_causal=True))
    # is_causal is upper-left: query i sees keys 0..i.  Query tiles of 128 rows:
    #   rows   0..127 see keys <= 127: 1 key tile  -> 128 * 128 = 16_384 pairs
    #   rows 128..255 see keys <= 255: 2 key tiles -> 128 * 256 = 32_768
    #   rows 256..299 see keys <= 299: 3 key tiles ->  44 * 384 = 16_896
    # 66_048 pairs per head (useful ones: 1 + 2 + ... + 300 = 45_150), 2 heads: 132_096;
    # tensor 4*132_096*64 = 33_816_576, softmax 5*132_096 = 660_480
    pairs = 2 * (128 * 128 + 128 * 256 + 44 * 384)
    assert pairs == 132_096
    assert dict(rec.flops) == {"bf16_tensor": 4 * pairs * 64, "fp32": 5 * pairs}
    # read q 2*300*64*2 = 76_800 + k, v 2 * 2*512*64*2 = 262_144 -> 338_944; write 76_800
    assert (rec.bytes_read, rec.bytes_written) == (338_944, 76_800)


def test_causal_lower_right_bias_for_a_chunk_at_the_end_of_the_cache():
    rec = the_sdpa(count(sdpa, *qkv(1, 1, 256, 64, sk=512), attn_mask=causal_lower_right(256, 512)))
    # lower-right: query i sees keys 0..i+256.  Query tile 0 (rows 0..127) sees keys <= 383:
    # 3 key tiles, 128*384 = 49_152 pairs; tile 1 sees all 4: 128*512 = 65_536; 114_688 pairs
    # = 87.5% of 256*512; tensor 4*114_688*64 = 29_360_128, softmax 5*114_688 = 573_440
    assert dict(rec.flops) == {"bf16_tensor": 29_360_128, "fp32": 573_440}
    assert "causal (lower-right): 87.5%" in rec.note


@pytest.mark.parametrize("device", DEVICES)
def test_gqa_reads_the_kv_heads(device):
    rec = the_sdpa(count_sdpa(device, *qkv(1, 8, 256, 64, hkv=2), enable_gqa=True))
    # 8 query heads share 2 KV heads: the work is that of 8 heads, 4*1*8*256*256*64 = 134_217_728,
    # softmax 5*8*256*256 = 2_621_440; read q 8*256*64*2 = 262_144 + k, v 2 * 2*256*64*2 = 131_072
    # (the KV heads' bytes, not 8 heads' worth) -> 393_216; write 262_144
    assert dict(rec.flops) == {"bf16_tensor": 134_217_728, "fp32": 2_621_440}
    assert (rec.bytes_read, rec.bytes_written) == (393_216, 262_144)
    assert "GQA 4:1" in rec.note


def test_mqa_reads_one_kv_head():
    rec = the_sdpa(count_sdpa("cpu", *qkv(1, 8, 256, 64, hkv=1), enable_gqa=True))
    # read q 262_144 + k, v 2 * 256*64*2 = 65_536 -> 327_680
    assert (rec.bytes_read, rec.bytes_written) == (327_680, 262_144)
    assert rec.flops["bf16_tensor"] == 134_217_728
    assert "MQA" in rec.note


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_boolean_mask_does_full_work_and_is_read_once(device):
    q, k, v = qkv(2, 4, 256, 64, device=device)
    mask = torch.ones(1, 1, 256, 256, dtype=torch.bool, device=device).tril()
    prof = count(sdpa, q, k, v, attn_mask=mask)
    (where,) = [o for o in prof.ops if o.short_op == "where"]
    rec = prof.ops[-1]
    assert rec.op == "aten::scaled_dot_product_attention"
    # a GPU's fused kernels take an additive mask: torch first converts the bool one with
    # where(mask, 0, -inf): read 256*256 bools 65_536 + two bf16 scalars 4 -> 65_540, write
    # [1,1,256,256] bf16 131_072
    assert (where.bytes_read, where.bytes_written) == (65_540, 131_072)
    # a dense mask saves no work: every score is computed, 134_217_728 + 2_621_440 as non-causal;
    # the [1,1,256,256] mask broadcast over B and H is read once: 786_432 + 131_072 = 917_504;
    # flash takes no mask: the efficient kernel is predicted
    assert dict(rec.flops) == {"bf16_tensor": 134_217_728, "fp32": 2_621_440}
    assert (rec.bytes_read, rec.bytes_written) == (917_504, 262_144)
    assert rec.note.startswith("cudnn attention (fused)")


def test_additive_mask_expanded_over_heads_counts_its_distinct_elements():
    q, k, v = qkv(2, 4, 256, 64)
    bias = torch.randn(2, 1, 256, 256).to(bf16).expand(2, 4, 256, 256)  # stride 0 over heads
    rec = the_sdpa(count(sdpa, q, k, v, attn_mask=bias))
    # the bias holds 2*256*256 bf16 = 262_144 bytes whatever its expanded shape;
    # read 786_432 + 262_144 = 1_048_576
    assert rec.bytes_read == 1_048_576


def test_causal_non_square_is_not_a_flash_kernel():
    # torch's flash backend refuses is_causal with Sq != Sk (check_flash_causal_non_square_seqlens)
    q = TensorMeta.contiguous((1, 2, 300, 64), "bfloat16", "cuda:0")
    k = v = TensorMeta.contiguous((1, 2, 512, 64), "bfloat16", "cuda:0")
    s = Settings(sdpa_backends=("flash", "efficient", "math", "cudnn"))
    kw = dict(has_mask=False, dropout_p=0.0, enable_gqa=False, settings=s)
    assert predict_sdpa_backend(q, k, v, is_causal=True, **kw) == "efficient"
    assert predict_sdpa_backend(q, k, v, is_causal=False, **kw) == "flash"
    assert predict_sdpa_backend(q, q, q, is_causal=True, **kw) == "flash"


def test_fp32_attention_keeps_both_its_matmul_and_softmax_flops():
    # fp32 without TF32: the products and the softmax share the fp32 class, so they add:
    # 4*1*2*128*128*32 = 4_194_304 + 5*2*128*128 = 163_840 -> 4_358_144
    rec = the_sdpa(count(sdpa, *qkv(1, 2, 128, 32, dtype=torch.float32)))
    assert dict(rec.flops) == {"fp32": 4_358_144}


# ---------------------------------------------------------------------------- SDPA, math backend


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_math_backend_is_counted_op_by_op_with_the_score_matrix(device):
    q, k, v = qkv(1, 2, 256, 64, dtype=torch.float32, device=device)
    with sdpa_kernel([SDPBackend.MATH]):
        prof = count(sdpa, q, k, v)
    assert "aten::scaled_dot_product_attention" not in [o.op for o in prof.ops]
    bmm = [o for o in prof.ops if o.short_op == "bmm"]
    (softmax,) = [o for o in prof.ops if "softmax" in o.short_op]
    # scores = q @ k^T: [2,256,64] @ [2,64,256]: 2*2*256*256*64 = 16_777_216 FLOPs, writing the
    # score matrix 2*256*256*4 = 524_288 bytes; softmax reads it and writes it (5 FLOPs each);
    # out = P @ v: the same FLOPs, reading the 524_288-byte matrix and v 2*256*64*4 = 131_072
    scores = 2 * 256 * 256 * 4
    assert [b.total_flops for b in bmm] == [16_777_216, 16_777_216]
    assert bmm[0].bytes_written == scores
    assert (softmax.bytes_read, softmax.bytes_written, softmax.total_flops) == (scores, scores, 5 * 2 * 256 * 256)
    assert bmm[1].bytes_read == scores + 131_072
    assert prof.uncounted() == {}
    # vs the fused kernel: the same tensor work, but the score matrix goes through memory 4 times
    fused = the_sdpa(count(sdpa, q, k, v))
    assert prof.total_bytes - fused.bytes >= 4 * scores


# ---------------------------------------------------------------------------- flex attention


WINDOW, S_FLEX, BLOCK = 256, 1024, 128


def sliding_window(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)


def window_blocks(s: int, window: int, block: int) -> int:
    """Blocks a causal sliding window touches, from the window's definition alone: block (i, j)
    holds pairs q in [i*block, i*block + block), kv in [j*block, j*block + block); it is visited
    if any pair satisfies 0 <= q - kv < window, i.e. the largest q - kv (i-j)*block + block-1 is
    >= 0 and the smallest (i-j)*block - (block-1) is < window."""
    n = math.ceil(s / block)
    return sum(1 for i in range(n) for j in range(n)
               if (i - j) * block + block - 1 >= 0 and (i - j) * block - (block - 1) < window)


@pytest.fixture(scope="module")
def window_mask():
    return create_block_mask(sliding_window, None, None, S_FLEX, S_FLEX, device="cpu")


def test_flex_sliding_window_counts_the_blocks_visited(window_mask):
    q, k, v = qkv(1, 2, S_FLEX, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        prof = count(flex_attention, q, k, v, block_mask=window_mask)
    (rec,) = prof.ops
    assert rec.op == "higher_order::flex_attention"
    # window 256 in 128x128 blocks over 1024 tokens: query block i visits key blocks i-2..i:
    # 1 + 2 + 3*6 = 21 of 64 blocks, 21*128*128 = 344_064 pairs per head, 688_128 for 2 heads;
    # tensor 2*pairs*(D + Dv) = 2*688_128*128 = 176_160_768, softmax 5*688_128 = 3_440_640
    blocks = window_blocks(S_FLEX, WINDOW, BLOCK)
    assert blocks == 21
    pairs = 2 * blocks * BLOCK * BLOCK
    assert dict(rec.flops) == {"bf16_tensor": 4 * pairs * 64, "fp32": 5 * pairs}
    assert rec.flops["bf16_tensor"] == 176_160_768
    # read q, k, v 3 * 2*1024*64*2 = 786_432 + the block mask's int32 tables
    # kv_num_blocks [1,1,8], kv_indices [1,1,8,8], and the same two for full blocks:
    # (8 + 64 + 8 + 64)*4 = 576 -> 787_008; write 2*1024*64*2 = 262_144
    assert (rec.bytes_read, rec.bytes_written) == (787_008, 262_144)
    assert "block-sparse: 32.8%" in rec.note


def test_flex_block_mask_on_meta_or_fake_is_a_count_error(window_mask):
    meta_mask = create_block_mask(sliding_window, None, None, S_FLEX, S_FLEX, device="meta")
    with pytest.raises(CountError, match="create_block_mask\\(\\.\\.\\., device='cpu'\\)"):
        block_mask_pairs(meta_mask.as_tuple(), S_FLEX, S_FLEX, 1, 2)
    with FakeTensorMode():
        fake_mask = create_block_mask(sliding_window, None, None, 256, 256, device="cpu")
        q = torch.empty(1, 2, 256, 64, dtype=bf16)
        with pytest.raises(CountError) as err:
            count(flex_attention, q, q, q, block_mask=fake_mask)
    assert "\n" not in str(err.value) and "real tensors" in str(err.value)


# ---------------------------------------------------------------------------- against FlopCounterMode


def _flop_counter(fn, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as fc:
        fn(*args, **kwargs)
    return fc.get_total_flops()


def test_sdpa_against_flop_counter_mode_on_meta():
    # FlopCounterMode on CPU tensors misses SDPA altogether (the CPU call reaches
    # _scaled_dot_product_flash_attention_for_cpu, which it has no formula for): compare on meta
    q, k, v = qkv(1, 1, 2048, 64, device="meta")
    full = 4 * 2048 * 2048 * 64  # 1_073_741_824
    # non-causal: equal
    assert _flop_counter(sdpa, q, k, v) == full
    assert the_sdpa(count(sdpa, q, k, v)).flops["bf16_tensor"] == full
    # causal: deliberately more exact.  FlopCounterMode counts the full matrix; we count the
    # 136 of 256 tiles a tiled kernel visits (53.1%, as an H100's tensor counters read)
    assert _flop_counter(sdpa, q, k, v, is_causal=True) == full
    assert the_sdpa(count(sdpa, q, k, v, is_causal=True)).flops["bf16_tensor"] == full * 136 // 256


def test_flex_block_sparse_against_the_dense_count(window_mask):
    # FlopCounterMode cannot run eager flex attention here at all; what it counts for the same
    # shapes as dense attention is the full matrix.  Ours: the 21 of 64 blocks the window visits
    q, k, v = qkv(1, 2, S_FLEX, 64)
    dense = _flop_counter(sdpa, *(t.to("meta") for t in (q, k, v)))
    assert dense == 4 * 2 * S_FLEX * S_FLEX * 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (rec,) = count(flex_attention, q, k, v, block_mask=window_mask).ops
    assert rec.flops["bf16_tensor"] == dense * 21 // 64


# ---------------------------------------------------------------------------- the aten ops a GPU reaches


def _gpu(*shape, dtype="bfloat16"):
    return TensorMeta.contiguous(shape, dtype, "cuda:0")


def _aten_cost(name: str, args: tuple, outputs: tuple, kwargs=None):
    op = getattr(torch.ops.aten, name).default
    names = tuple(a.name for a in op._schema.arguments if not a.kwarg_only)
    return lookup(op)(OpCall(f"aten::{name}.default", args, kwargs or {}, outputs, arg_names=names))


@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn"])
def test_sdpa_backward_formulas(backend):
    q = k = v = out = grad = _gpu(1, 2, 256, 64)
    lse, seed, bias = _gpu(1, 2, 256, dtype="float32"), _gpu(2, dtype="int64"), _gpu(1, 1, 256, 256)
    args = {
        "flash": (grad, q, k, v, out, lse, None, None, 256, 256, 0.0, False, seed, seed),
        "efficient": (grad, q, k, v, bias, out, lse, seed, seed, 0.0, [True] * 4, False),
        "cudnn": (grad, q, k, v, out, lse, seed, seed, None, None, None, 256, 256, 0.0, False),
    }[backend]
    c = _aten_cost(f"_scaled_dot_product_{backend}_attention_backward", args, (q, k, v))
    # 2*256*256 = 131_072 pairs; recompute QK^T (2*D), dV, dP (2*Dv each), dQ, dK (2*D each):
    # 2*131_072*(3*64 + 2*64) = 83_886_080 bf16_tensor (2.5x the forward's 33_554_432);
    # softmax 2*5*131_072 = 1_310_720 fp32
    assert dict(c.flops) == {"bf16_tensor": 83_886_080, "fp32": 1_310_720}
    # read q, k, v, out, grad_out 5*65_536 = 327_680 + lse 2*256*4 = 2_048 -> 329_728 (efficient:
    # + its [1,1,256,256] bf16 bias 131_072 -> 460_800); write dq, dk, dv 3*65_536 = 196_608
    assert (c.bytes_read, c.bytes_written) == (460_800 if backend == "efficient" else 329_728, 196_608)


def test_sdpa_flash_forward_op_called_directly():
    q = _gpu(1, 2, 2048, 64)
    lse = _gpu(1, 2, 2048, dtype="float32")
    c = _aten_cost("_scaled_dot_product_flash_attention", (q, q, q, 0.0, True), (q, lse))
    # causal: 136/256 tiles of 2048^2, 2 heads: 2*2_228_224 = 4_456_448 pairs; 4*pairs*64 = 1_140_850_688;
    # read q, k, v 3*2*2048*64*2 = 3*524_288; write the output 524_288 and the fp32 logsumexp
    # 2*2048*4 = 16_384
    assert dict(c.flops) == {"bf16_tensor": 1_140_850_688, "fp32": 5 * 4_456_448}
    assert (c.bytes_read, c.bytes_written) == (3 * 524_288, 524_288 + 16_384)


def test_varlen_or_windowed_flash_forward_is_not_counted_as_dense():
    q, cum = _gpu(512, 8, 64), _gpu(5, dtype="int32")  # 4 sequences packed into 512 tokens
    with pytest.raises(CountError, match="cum_seq_q"):
        _aten_cost("_flash_attention_forward", (q, q, q, cum, cum, 256, 256, 0.0, True, False), (q,))
    qd = _gpu(1, 2048, 8, 64)  # dense [B, S, H, D] with a 256-token window
    with pytest.raises(CountError, match="window"):
        _aten_cost("_flash_attention_forward", (qd, qd, qd, None, None, 2048, 2048, 0.0, True, False), (qd,),
                   kwargs={"window_size_left": 255, "window_size_right": 0})
