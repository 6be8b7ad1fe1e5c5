"""kernels/attention.py and kernels/sparse_attention.py: every variant against float64 on fresh
random inputs (CPU at small sizes; every SDPA backend on a GPU), and the counts: the materialized
score matrix against the fused kernels' q + k + v + out, and the blocks each sparse pattern visits.

Shapes: q [B, Hq, S, D], k and v [B, Hkv, S, D].  A fused kernel does 2·D + 2·D tensor FLOPs per
(query, key) pair in the blocks it visits; bf16 is 2 bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attention as attn
import sparse_attention as sparse
from rooflight.errors import UsageError
from rooflight.workloads import load_model_file
from tests.kernel_checks import checked, counted

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
SMALL = dict(batch=1, heads=4, head_dim=32)


# ---------------------------------------------------------------------------- model files


def test_model_files_declare_the_workloads_with_default_sweeps():
    prefill = {w.name: w for w in load_model_file(KERNELS / "attention.py")}
    assert list(prefill) == ["naive", "sdpa"]
    assert prefill["sdpa"].sweep == {"seq": [512, 2048, 8192, 16384]}
    assert prefill["sdpa"].params["backend"] == "flash"
    patterns = [w.name for w in load_model_file(KERNELS / "sparse_attention.py")]
    assert patterns == ["dense", "local", "atrous", "local_strided", "random_local_global"]


# ---------------------------------------------------------------------------- prefill


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("causal", [True, False])
def test_naive_and_sdpa_match_float64_on_cpu(kv_heads, causal):
    for run in (attn.naive(seq=96, kv_heads=kv_heads, causal=causal, **SMALL),
                attn.sdpa(seq=96, kv_heads=kv_heads, causal=causal, backend="flash", **SMALL),
                attn.sdpa(seq=96, kv_heads=kv_heads, causal=causal, backend="math", **SMALL)):
        checked(run)


def test_flash_cuts_the_bytes_to_q_k_v_and_out():
    b, h, s, d = 1, 4, 256, 32
    fused = counted(attn.sdpa(seq=s, batch=b, heads=h, kv_heads=h, head_dim=d, causal=False))
    (op,) = fused.ops
    # q, k, v read and out written once: 4 x 1·4·256·32 x 2 B = 262,144 B
    assert op.bytes == 4 * b * h * s * d * 2 == 262_144
    # 4·D FLOPs per pair on tensor cores: 4 x 32 x 4·256² = 33,554,432
    assert op.flops["bf16_tensor"] == 4 * d * b * h * s * s
    naive = counted(attn.naive(seq=s, batch=b, heads=h, kv_heads=h, head_dim=d, causal=False))
    scores = b * h * s * s * 2  # the [1, 4, 256, 256] bf16 score matrix: 524,288 B
    # q@kᵀ writes it, the scale reads and writes it, softmax reads and writes it, @v reads it
    assert sum(o.bytes for o in naive.ops) == 6 * scores + op.bytes
    assert sum(o.bytes for o in naive.ops) > 12 * op.bytes


def test_gqa_reads_each_kv_head_once_in_sdpa_and_copies_it_in_naive():
    b, hq, hkv, s, d = 1, 8, 2, 128, 32
    (op,) = counted(attn.sdpa(seq=s, batch=b, heads=hq, kv_heads=hkv, head_dim=d, causal=False)).ops
    # q and out: 2 x 8 heads; k and v: 2 x 2 heads; x 128 x 32 x 2 B
    assert op.bytes == (2 * hq + 2 * hkv) * s * d * 2
    naive = counted(attn.naive(seq=s, batch=b, heads=hq, kv_heads=hkv, head_dim=d, causal=False))
    copies = [o for o in naive.ops if o.bytes_written == hq * s * d * 2 and o.flops == {}]
    assert len(copies) == 2  # repeat_interleave of k and of v, 4x the KV bytes each


def test_gpu_only_backends_are_a_clear_error_on_cpu_and_count_on_meta():
    for backend in ("efficient", "cudnn"):
        with pytest.raises(UsageError, match="only on CUDA GPUs"):
            attn.sdpa(seq=64, kv_heads=4, backend=backend, **SMALL)
        run = attn.sdpa(seq=64, kv_heads=4, backend=backend, device="meta", **SMALL)
        (op,) = counted(run).ops
        assert op.note.startswith(f"{backend} attention (fused)")
    with pytest.raises(UsageError, match="use one of"):
        attn.sdpa(seq=64, kv_heads=4, backend="xformers", **SMALL)


def test_a_point_that_cannot_fit_is_refused_before_allocating():
    with pytest.raises(UsageError, match="GiB"):
        attn.naive(seq=1 << 20, batch=1, heads=64, kv_heads=64, head_dim=16)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn", "math"])
@pytest.mark.parametrize("kv_heads", [8, 2], ids=["MHA", "GQA"])
def test_every_backend_on_the_gpu_matches_float64_or_says_why_not(backend, kv_heads):
    try:
        run = attn.sdpa(seq=1024, batch=2, heads=8, kv_heads=kv_heads, head_dim=128, causal=True, backend=backend,
                        device="cuda")
    except UsageError as err:
        assert backend in str(err)  # e.g. a backend without GQA support: torch's reason is in the message
        return
    checked(run)
    ops = counted(run).ops
    fused = [o.op for o in ops if "attention" in o.op]
    if backend == "math":  # decomposed: the score matrix goes through bmm and softmax
        assert not fused and any("bmm" in o.op for o in ops)
    else:  # the aten op that ran, e.g. aten::_scaled_dot_product_cudnn_attention.default
        assert len(fused) == 1 and backend in fused[0]


@pytest.mark.gpu
def test_naive_on_the_gpu_matches_float64():
    checked(attn.naive(seq=2048, batch=1, heads=8, kv_heads=2, head_dim=128, device="cuda"))


# ---------------------------------------------------------------------------- sparse patterns

S, BLOCK = 512, 32
SPARSE = dict(seq=S, batch=1, heads=2, head_dim=32, block=BLOCK)


def visited_blocks(allowed, s=S, block=BLOCK, causal=True) -> int:
    """Blocks of the score matrix holding at least one (i, j) the pattern keeps: brute force."""
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    keep = allowed(i, j) & ((j <= i) if causal else True)
    n = s // block
    return int(keep.view(n, block, n, block).any(dim=(1, 3)).sum())


def flex_pairs(prof) -> float:
    """(query, key) pairs the flex kernels visit, from their tensor FLOPs (4·D per pair, B·H = 2)."""
    return sum(o.flops.get("bf16_tensor", 0) for o in prof.ops if "flex" in o.op) / (4 * 32 * 2)


@pytest.mark.parametrize("name, params", [
    ("dense", {}), ("local", {"window": 64}), ("atrous", {"dilation": 4}),
    ("atrous", {"dilation": 4, "layout": "direct"}), ("local_strided", {"window": 64, "stride": 8}),
    ("local_strided", {"window": 64, "stride": 8, "layout": "direct"}),
    ("random_local_global", {"random_blocks": 2}), ("local", {"window": 48, "causal": False}),
    ("local_strided", {"window": 40, "stride": 4, "causal": False}),
], ids=lambda x: x if isinstance(x, str) else ",".join(f"{k}={v}" for k, v in x.items()))
def test_sparse_patterns_match_dense_float64_with_the_same_mask(name, params):
    checked(getattr(sparse, name)(**SPARSE, **params))


def test_sparse_patterns_count_the_blocks_they_visit():
    n = S // BLOCK  # 16 blocks a side
    dense = flex_pairs(counted(sparse.dense(**SPARSE)))
    assert dense == n * (n + 1) // 2 * BLOCK * BLOCK  # the causal triangle's 136 blocks, diagonal ones in full
    local = flex_pairs(counted(sparse.local(**SPARSE, window=64)))
    assert local == visited_blocks(lambda i, j: i - j < 64) * BLOCK * BLOCK
    assert local == (16 + 15 + 14) * BLOCK * BLOCK  # the diagonal blocks and the 2 below each


def test_atrous_costs_a_dilation_th_permuted_and_nothing_saved_direct():
    n, dil = S // BLOCK, 4
    direct = flex_pairs(counted(sparse.atrous(**SPARSE, dilation=dil, layout="direct")))
    # every causal block holds some pair a multiple of 4 apart: the whole triangle, 136 blocks
    assert direct == visited_blocks(lambda i, j: (i - j) % dil == 0) * BLOCK * BLOCK == 136 * BLOCK * BLOCK
    permuted = counted(sparse.atrous(**SPARSE, dilation=dil))
    m = n // dil  # each residue class is 128 tokens = 4 blocks: a causal triangle of 10 blocks, 4 of them
    assert flex_pairs(permuted) == dil * m * (m + 1) // 2 * BLOCK * BLOCK == 40 * BLOCK * BLOCK
    assert [o.op for o in permuted.ops].count("aten::clone.default") == 4  # q, k, v in; out back


def test_local_strided_counts_the_band_and_the_strided_blocks():
    window, stride = 64, 8
    span = S // stride  # 64 tokens per residue class
    band = visited_blocks(lambda i, j: i - j < window)
    # in the permuted order: same class, outside the band, causal within the class
    strided = visited_blocks(lambda i, j: (i // span == j // span) & ((i % span - j % span).abs() * stride >= window)
                             & (j % span <= i % span))
    prof = counted(sparse.local_strided(**SPARSE, window=window, stride=stride))
    assert flex_pairs(prof) == (band + strided) * BLOCK * BLOCK
    direct = flex_pairs(counted(sparse.local_strided(**SPARSE, window=window, stride=stride, layout="direct")))
    assert flex_pairs(prof) < direct


def test_random_local_global_visits_its_block_table():
    table = sparse.block_pattern(S // BLOCK, local_blocks=3, global_blocks=1, random_blocks=2, causal=True, seed=0)
    assert bool(table.diagonal().all()) and bool(table[:, 0].all())  # local includes itself; block 0 is global
    assert not bool(table.triu(1).any())  # causal
    prof = counted(sparse.random_local_global(**SPARSE, local_blocks=3, global_blocks=1, random_blocks=2))
    assert flex_pairs(prof) == int(table.sum()) * BLOCK * BLOCK


def test_permuted_layout_needs_a_divisible_sequence():
    with pytest.raises(UsageError, match="multiple"):
        sparse.atrous(**{**SPARSE, "seq": 500}, dilation=3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["dense", "local", "atrous", "local_strided", "random_local_global"])
def test_compiled_flex_patterns_match_float64_on_the_gpu(name):
    checked(getattr(sparse, name)(seq=2048, batch=1, heads=4, head_dim=64, device="cuda"))
