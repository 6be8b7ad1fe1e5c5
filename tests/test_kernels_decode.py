"""kernels/decode_attention.py and the paged kernel (kernels/paged_attention.py): correctness
against float64 on fresh random inputs (the PyTorch path on CPU; the Triton kernel through
Triton's interpreter when Triton is installed, and on a GPU), the plan (which items read which
blocks), and the counts: GQA's K/V bytes fall by the group size; the paged kernel's bytes are
the K/V of the blocks referenced, a shared (copy-on-write) block once, plus q, the block-table
entries, the plan and the outputs.

Shapes: q [B, Hq, D]; caches [blocks, Hkv, P, D]; bf16 is 2 bytes, int32 and fp32 4.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rooflight
import decode_attention as dec
import paged_attention as pa
from rooflight.errors import UsageError
from rooflight.workloads import load_model_file
from tests.kernel_checks import checked, counted

ROOT = Path(__file__).resolve().parent.parent
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (pip install triton)")


def _interpreter_works() -> bool:
    """Triton older than 3.7 beside numpy 2.4+ cannot interpret loops over run-time bounds (triton#9171)."""
    import re
    from importlib.metadata import version

    def major_minor(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", v)[:2])

    return HAS_TRITON and not (major_minor(version("triton")) < (3, 7) and major_minor(version("numpy")) >= (2, 4))


INTERPRETER = _interpreter_works()
needs_interpreter = pytest.mark.skipif(not INTERPRETER, reason="needs Triton >= 3.7 with numpy >= 2.4 (triton#9171), "
                                       "or Triton installed at all")


def paged_setup(batch, context, heads, kv_heads, head_dim, page=16, *, lens=None, prefix=0, samples=1, share=True,
                splits="auto", device="cpu"):
    cache = pa.build_cache(batch, context, n_kv_heads=kv_heads, head_dim=head_dim, page_size=page, prefix=prefix,
                           samples=samples, device=device, lens=lens)
    torch.manual_seed(1)
    q = torch.randn(batch, heads, head_dim, device=device, dtype=torch.bfloat16)
    plan = pa.plan(cache.block_tables, cache.seq_lens, page_size=page, n_heads=heads, n_kv_heads=kv_heads,
                   share_prefix=share, splits=splits, sms=132)
    return q, cache, plan


def rel_err(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------- the model file


def test_model_file_declares_the_decode_workloads():
    found = {w.name: w for w in load_model_file(ROOT / "kernels" / "decode_attention.py")}
    assert list(found) == ["decode", "paged", "paged_shared", "flash_decoding"]
    assert found["decode"].sweep == {"kv_heads": [32, 8, 1], "batch": [1, 16, 64]}
    assert found["flash_decoding"].sweep == {"splits": [1, "auto"]}


# ---------------------------------------------------------------------------- contiguous cache

SMALL = dict(batch=2, context=128, heads=8, head_dim=32)


@pytest.mark.parametrize("kv_heads", [8, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("impl", ["sdpa", "naive"])
def test_decode_matches_float64(kv_heads, impl):
    checked(dec.decode(kv_heads=kv_heads, impl=impl, **SMALL))


def test_gqa_decode_kv_bytes_fall_by_the_group_size_and_intensity_rises():
    ops = {h: counted(dec.decode(kv_heads=h, **SMALL)).ops for h in (8, 2, 1)}
    qo = 2 * 2 * 8 * 32 * 2  # q and out: 2 x [2, 8, 1, 32] bf16 = 2,048 B
    for h, (op,) in ops.items():
        # k and v: 2 x [2, h, 128, 32] bf16 = 32,768·h B: 262,144 (MHA), 65,536 (GQA 4:1), 32,768 (MQA)
        assert op.bytes == qo + 2 * 2 * h * 128 * 32 * 2
        assert op.total_flops == ops[8][0].total_flops  # the same work whatever the KV heads
    intensity = [ops[h][0].intensity for h in (8, 2, 1)]
    assert intensity[0] < intensity[1] < intensity[2]


def test_naive_decode_copies_the_kv_heads_out_to_the_query_heads():
    sdpa_bytes = sum(o.bytes for o in counted(dec.decode(kv_heads=2, **SMALL)).ops)
    naive = counted(dec.decode(kv_heads=2, impl="naive", **SMALL)).ops
    assert sum(o.bytes for o in naive) > 4 * sdpa_bytes


@pytest.mark.parametrize("splits", [1, 4, "auto"])
def test_split_kv_with_torch_ops_matches_float64(splits):
    checked(dec.flash_decoding(batch=2, context=1024, heads=8, kv_heads=2, head_dim=32, impl="torch", splits=splits))


def test_auto_splits_fill_the_gpu_twice_over():
    # one sequence, 8 KV heads: 8 programs; 2 x 132 SMs wants 33 splits -> 32 (a power of 2 dividing the context)
    assert dec._choose_splits("auto", 1, 8, 32768, "cpu") == 32
    assert dec._choose_splits("auto", 64, 8, 4096, "cpu") == 1  # 512 programs already
    assert dec._choose_splits(3, 1, 8, 4096, "cpu") == 3


# ---------------------------------------------------------------------------- the plan


def test_plan_reads_a_shared_prefix_once_for_all_its_sequences():
    # 2 prompts x 2 samples, 64 tokens each, the first 40 from the prompt: its 2 whole 16-token
    # blocks are shared, the 8 tokens of its partial block were copied into each sample's own block
    q, cache, plan = paged_setup(4, 64, 4, 2, 16, prefix=40, samples=2)
    rows = cache.block_tables.tolist()
    assert rows[0][:2] == rows[1][:2] and rows[0][2:] != rows[1][2:] and rows[0][:2] != rows[2][:2]
    assert plan.shared_tokens == 2 * 32
    assert sorted(plan.item_info.tolist()) == sorted([
        [0, 0, 32, 0, 2], [2, 0, 32, 2, 2],  # the prefixes: read once, through the first member's table
        [0, 32, 64, 4, 1], [1, 32, 64, 5, 1], [2, 32, 64, 6, 1], [3, 32, 64, 7, 1]])  # each sample's own tokens
    assert plan.kv_tokens == len(cache.referenced_blocks()) * 16 == 192  # 12 distinct blocks
    assert not plan.direct and plan.max_parts == 2
    unshared = pa.plan(cache.block_tables, cache.seq_lens, page_size=16, n_heads=4, n_kv_heads=2, share_prefix=False)
    assert unshared.kv_tokens == 4 * 64 and unshared.direct


def test_plan_splits_long_sequences_and_keeps_large_batches_whole():
    _, _, plan = paged_setup(1, 32768, 32, 8, 16)
    # 8 programs for 132 SMs: ceil(264 / 8) = 33 pieces of 32768 tokens, rounded to the 64-token tile
    assert plan.split_tokens == 1024 and plan.n_items == 32 and plan.max_parts == 32
    _, _, plan = paged_setup(64, 512, 32, 8, 16)
    assert plan.split_tokens == 0 and plan.direct and plan.n_items == 64  # 512 programs: no split
    _, _, plan = paged_setup(2, 1000, 8, 2, 16, splits=3)
    assert [tuple(r[1:3]) for r in plan.item_info.tolist()[:3]] == [(0, 384), (384, 768), (768, 1000)]


def test_plan_caps_the_query_rows_of_one_program():
    # MQA with 32 query heads: 128 rows hold 4 sequences, so 8 samples read their prefix in 2 items
    _, cache, plan = paged_setup(8, 64, 32, 1, 16, prefix=48, samples=8)
    prefix_items = [r for r in plan.item_info.tolist() if r[4] > 1]
    assert [r[4] for r in prefix_items] == [4, 4]
    assert plan.launches == ((0, plan.n_items, 4),)


def test_plan_handles_ragged_and_unaligned_lengths():
    lens = [1, 15, 16, 17, 100]
    q, cache, plan = paged_setup(5, 100, 8, 2, 16, lens=lens, splits=1)
    assert plan.kv_tokens == sum(lens) and plan.kv_pages == 1 + 1 + 1 + 2 + 7 and plan.direct
    out = pa.paged_decode(q, cache.k_cache, cache.v_cache, cache.block_tables, plan)
    assert rel_err(out, pa.reference(q, cache)) < 1e-2


# ---------------------------------------------------------------------------- the paged op on CPU

CASES = {  # name: (batch, context, heads, kv_heads, head_dim, page, extra)
    "GQA": (4, 200, 8, 2, 32, 16, {}),
    "MQA": (3, 150, 8, 1, 32, 16, {}),
    "MHA": (2, 100, 4, 4, 64, 32, {}),
    "shared": (6, 130, 8, 2, 32, 16, {"prefix": 70, "samples": 3}),
    "split": (1, 1000, 8, 2, 32, 16, {"splits": 4}),
    "d48": (2, 77, 6, 2, 48, 8, {"splits": 2}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_paged_op_matches_float64(name):
    b, ctx, hq, hkv, d, page, extra = CASES[name]
    q, cache, plan = paged_setup(b, ctx, hq, hkv, d, page, **extra)
    out = pa.paged_decode(q, cache.k_cache, cache.v_cache, cache.block_tables, plan)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, pa.reference(q, cache)) < 1e-2


def test_paged_cost_is_the_referenced_blocks_once_plus_q_out_and_tables():
    q, cache, plan = paged_setup(4, 64, 4, 2, 16, prefix=40, samples=2)
    ops = rooflight.count(pa.paged_decode, q, cache.k_cache, cache.v_cache, cache.block_tables, plan).ops
    assert [o.op for o in ops] == ["rooflight_kernels::paged_decode.default",
                                   "rooflight_kernels::paged_decode_combine.default"]
    kernel, merge = ops
    kv = 12 * 16 * 2 * (16 + 16) * 2  # 12 distinct blocks x 16 tokens x 2 kv heads x (K + V) x 16 x 2 B = 24,576
    q_bytes = 4 * 4 * 16 * 2  # 512
    tables = 12 * 4 + 6 * 5 * 4 + 8 * 4  # block-table entries used, item_info [6, 5], item_seqs [8]: 200
    assert kernel.bytes_read == kv + q_bytes + tables == 25_288
    assert kernel.bytes_written == 8 * 4 * 16 * 4 + 8 * 4 * 4  # 8 partial outputs and lse, fp32: 2,176
    # useful pairs: 4 sequences x 64 tokens x 4 query heads = 1,024; 2·(16 + 16) tensor FLOPs each
    assert dict(kernel.flops) == {"bf16_tensor": 1024 * 64, "fp32": 5 * 1024}
    assert merge.bytes_read == 2176 + 5 * 4 + 8 * 4  # partials, merge_ptr [5], merge_slots [8]
    assert merge.bytes_written == q_bytes
    unshared = pa.plan(cache.block_tables, cache.seq_lens, page_size=16, n_heads=4, n_kv_heads=2, share_prefix=False)
    (direct,) = rooflight.count(pa.paged_decode, q, cache.k_cache, cache.v_cache, cache.block_tables, unshared).ops
    # every sequence reads its 4 blocks: 16 blocks, 4 of them twice
    assert direct.bytes_read == 16 * 16 * 2 * 64 + q_bytes + 16 * 4 + 4 * 5 * 4 + 4 * 4
    assert direct.bytes_written == q_bytes + 4 * 4 * 4  # the output in bf16 and the lse


def test_paged_gqa_kv_bytes_fall_by_the_group_size():
    reads = {}
    for hkv in (8, 2, 1):
        q, cache, plan = paged_setup(4, 256, 8, hkv, 32, splits=1)
        (op,) = rooflight.count(pa.paged_decode, q, cache.k_cache, cache.v_cache, cache.block_tables, plan).ops
        reads[hkv] = op.bytes_read - q.numel() * 2 - plan.kv_pages * 4 - plan.item_info.numel() * 4 - 4 * 4
    assert reads[8] == 4 * 256 * 8 * 32 * 2 * 2 and reads[8] == 4 * reads[2] == 8 * reads[1]


def test_workloads_run_and_share_cuts_the_bytes():
    small = dict(context=256, heads=8, kv_heads=2, head_dim=32)
    checked(dec.paged(batch=4, **small))
    checked(dec.flash_decoding(batch=1, splits="auto", **small))
    by_share = {}
    for share in (False, True):
        run = dec.paged_shared(batch=8, samples=4, prefix=192, share=share, **small)
        checked(run)
        by_share[share] = sum(o.bytes_read for o in counted(run).ops)
    # 2 prompts x 3 other samples x 192 shared tokens x 2 kv heads x (K + V) 64 B, less the partials' extra traffic
    saved = 2 * 3 * 192 * 2 * 64
    assert by_share[False] - by_share[True] > 0.9 * saved


def test_paged_on_meta_says_to_count_on_real_tensors():
    with pytest.raises(UsageError, match="real tensors"):
        dec.paged(batch=2, context=64, heads=4, kv_heads=2, head_dim=16, device="meta")


# ---------------------------------------------------------------------------- the Triton kernel on CPU

INTERPRETED = r"""
import torch
import paged_attention as pa
assert pa.interpreting()
cases = [(4, 100, 8, 2, 64, 16, {}), (6, 130, 8, 8, 32, 16, {"prefix": 64, "samples": 3}),
         (8, 64, 32, 1, 16, 16, {"prefix": 48, "samples": 8}), (2, 77, 6, 2, 48, 8, {"splits": 2}),
         (3, 200, 4, 2, 32, 32, {"splits": "auto"})]
for b, ctx, hq, hkv, d, page, extra in cases:
    splits = extra.pop("splits", 1)
    cache = pa.build_cache(b, ctx, n_kv_heads=hkv, head_dim=d, page_size=page, **extra)
    q = torch.randn(b, hq, d).to(torch.bfloat16)
    plan = pa.plan(cache.block_tables, cache.seq_lens, page_size=page, n_heads=hq, n_kv_heads=hkv, splits=splits,
                   sms=4)
    out = pa.paged_decode(q, cache.k_cache, cache.v_cache, cache.block_tables, plan)
    ref = pa.reference(q, cache)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    # the interpreter rounds fp32 -> bf16 toward zero: twice the usual bf16 error, still < 1e-2
    assert err < 1e-2, (b, ctx, hq, hkv, d, page, extra, err)
print("ok")
"""


def _interpreter_env():
    path = os.pathsep.join([str(ROOT), str(ROOT / "kernels"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}


@needs_interpreter
def test_triton_kernel_matches_float64_in_the_interpreter():
    done = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, env=_interpreter_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_benchmark_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "paged_decode.json"
    env = {**_interpreter_env(), "TRITON_INTERPRET": "1" if INTERPRETER else "0"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paged_decode.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["interpreter"] == INTERPRETER
    assert result["checks"] and all(c["ok"] for c in result["checks"])
    assert {"device", "torch", "triton", "date"} <= set(result)


def _compile_for_hopper(kernel, types: dict, constexprs: dict, num_warps: int, num_stages: int):
    """Triton's ahead-of-time path: TTGIR and PTX for sm_90, no GPU needed (ptxas ships with Triton)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)  # as torch's tensors and strides are
               if n.endswith("_ptr") or n.startswith("stride")}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


@needs_triton
@pytest.mark.skipif(pa.INTERPRET, reason="the interpreter replaces the compiler")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_decode_kernel_compiles_for_hopper_with_16_byte_pipelined_loads():
    import re

    bf16 = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr")}
    ints = {n: "*i32" for n in ("bt_ptr", "info_ptr", "seqs_ptr")}
    for direct, block_m in ((True, 16), (False, 32)):
        types = {**bf16, **ints, "o_ptr": "*bf16" if direct else "*fp32", "lse_ptr": "*fp32", "scale_log2": "fp32"}
        consts = dict(HEAD_DIM=128, GROUP=4, BLOCK_M=block_m, BLOCK_D=128, PAGE=16, TILE_N=64, DIRECT=direct,
                      UPCAST=False)
        compiled = _compile_for_hopper(pa._decode_jit, types, consts, num_warps=4, num_stages=3)
        ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
        assert re.search(r"cp\.async\.cg\.shared\.global \[[^\]]*\], \[[^\]]*\], 0x10", ptx)  # 16-byte copies
        # K and V double-buffered: the block ids are prefetched a tile ahead, so the pipeliner can
        # keep the next tile's loads in flight while this one is computed
        assert re.findall(r"ttg.local_alloc : \(\) -> !ttg.memdesc<(\d+)x64x128xbf16", ttgir) == ["2", "2"]
        assert "mma.sync" in ptx
    combine = _compile_for_hopper(pa._combine_jit, {"o_ptr": "*fp32", "lse_ptr": "*fp32", "ptr_ptr": "*i32",
                                                     "slots_ptr": "*i32", "out_ptr": "*bf16"},
                                  dict(HEAD_DIM=128, BLOCK_D=128, MAX_PARTS=32), num_warps=4, num_stages=1)
    assert "ld.global" in combine.asm["ptx"]


# ---------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES) + ["large"])
def test_triton_kernel_matches_float64_on_the_gpu(name):
    b, ctx, hq, hkv, d, page, extra = CASES.get(name, (16, 4096, 32, 8, 128, 16, {"prefix": 3000, "samples": 4}))
    q, cache, plan = paged_setup(b, ctx, hq, hkv, d, page, device="cuda", **extra)
    ref = pa.reference(q, cache)
    for out in (pa.paged_decode(q, cache.k_cache, cache.v_cache, cache.block_tables, plan),
                pa.paged_decode_triton(q, cache.k_cache, cache.v_cache, cache.block_tables, plan)):
        assert rel_err(out, ref) < 1e-2


@pytest.mark.gpu
def test_paged_counts_agree_on_the_gpu_and_the_cpu():
    q, cache, plan = paged_setup(8, 512, 8, 2, 64, prefix=300, samples=4)
    cpu = rooflight.count(pa.paged_decode, q, cache.k_cache, cache.v_cache, cache.block_tables, plan).ops
    g = dict(device="cuda")
    gpu = rooflight.count(pa.paged_decode, q.to(**g), cache.k_cache.to(**g), cache.v_cache.to(**g),
                          cache.block_tables.to(**g), plan.to("cuda")).ops
    assert [(o.op, o.bytes, o.total_flops) for o in cpu] == [(o.op, o.bytes, o.total_flops) for o in gpu]


@pytest.mark.gpu
@pytest.mark.parametrize("workload", ["decode", "paged", "paged_shared", "flash_decoding"])
def test_decode_workloads_match_float64_on_the_gpu(workload):
    small = dict(context=2048, heads=32, kv_heads=8, head_dim=128)
    extra = {"paged_shared": dict(batch=16, samples=4, prefix=1500)}.get(workload, dict(batch=4))
    checked(getattr(dec, workload)(device="cuda", **small, **extra))
