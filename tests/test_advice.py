"""Advice on constructed profiles: each seed technique fires where it should and not where it
should not (batch size, precision, attention layout, context length, attained fraction), op
kinds from names and context (a materialized attention counted on the meta device), the rule
table's integrity, deduplication and `top`."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from llama import build, decode_one_token
from rooflight.advice import FUSION_MIN_OPS, RULES, Advice, Rule, _attention_facts, advise
from rooflight.groups import (Kind, chain_passes, expert_loops, fusible_chains, gathered_weights, kind_of,
                              materialized_attention, op_kinds)
from rooflight.capture import count
from rooflight.roofline import Ceilings, from_spec
from rooflight.classify import Label, breakdown, floors
from rooflight.costs.model import TensorMeta
from rooflight.hardware import load_database
from rooflight.profile_data import OpRecord, OpTiming, Profile, RegionTiming, Timing
from rooflight.regions import region
from rooflight.units import fmt_bytes

H100 = from_spec(load_database().get("h100"))  # datasheet: 3.35 TB/s, 989.4 TFLOP/s bf16: ridge 295
A100 = from_spec(load_database().get("a100-80gb-sxm"))  # 2.039 TB/s, 312 TFLOP/s bf16, no FP8
CALIBRATED = Ceilings("H100 (calibrated, test)", memory_bytes_per_s=3.0e12,
                      flops_per_s={"bf16_tensor": 787e12, "fp16_tensor": 757e12, "tf32_tensor": 378e12,
                                   "fp32": 51.5e12, "fp8_tensor": 1417e12},
                      link_bytes_per_s={"pcie": 25e9, "peer": 400e9}, launch_overhead_s=11.9e-6,
                      graph_launch_overhead_s=2e-6, source="calibrated")

_CLASS = {"bfloat16": "bf16_tensor", "float16": "fp16_tensor", "float32": "fp32"}


def T(shape: tuple[int, ...], dtype: str = "bfloat16") -> TensorMeta:
    return TensorMeta.contiguous(shape, dtype, "cuda:0")


def mm(index: int, m: int, n: int, k: int, dtype: str = "bfloat16", region_: str = "decode",
       module: str = "layers.0.feed_forward.w1") -> OpRecord:
    # x [M, K] @ w [K, N] -> [M, N]: 2·M·N·K FLOPs; reads x and w, writes the output
    x, w, out = T((m, k), dtype), T((k, n), dtype), T((m, n), dtype)
    return OpRecord(index, "aten::mm.default", module=module, module_type="Linear", region=region_, inputs=(x, w),
                    outputs=(out,), flops={_CLASS[dtype]: 2 * m * n * k}, bytes_read=x.bytes + w.bytes,
                    bytes_written=out.bytes)


def sdpa(index: int, b: int, hq: int, hkv: int, sq: int, sk: int, d: int = 128, region_: str = "decode") -> OpRecord:
    # q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D]: 4·D FLOPs per (query, key) pair on tensor cores, 5 fp32
    q, k, v, out = T((b, hq, sq, d)), T((b, hkv, sk, d)), T((b, hkv, sk, d)), T((b, hq, sq, d))
    pairs = b * hq * sq * sk
    kind = "MHA" if hq == hkv else f"GQA {hq // hkv}:1"
    return OpRecord(index, "aten::scaled_dot_product_attention", module="layers.0.attention",
                    module_type="Attention", region=region_, inputs=(q, k, v), outputs=(out,),
                    flops={"bf16_tensor": 4 * pairs * d, "fp32": 5 * pairs},
                    bytes_read=q.bytes + k.bytes + v.bytes, bytes_written=out.bytes,
                    note=f"flash attention (fused), {kind}")


def pointwise(index: int, name: str, numel: int, region_: str = "decode", inputs: int = 2) -> OpRecord:
    # bf16 elementwise: reads `inputs` tensors, writes one, fp32 math
    return OpRecord(index, f"aten::{name}.Tensor", module="layers.0", module_type="Block", region=region_,
                    inputs=tuple(T((numel,)) for _ in range(inputs)), outputs=(T((numel,)),),
                    flops={"fp32": numel}, bytes_read=2 * numel * inputs, bytes_written=2 * numel)


def timed(ops: list[OpRecord], ceilings: Ceilings, attained: float | dict[int, float] = 0.8, *,
          seconds: dict[int, float] | None = None, regions: tuple[RegionTiming, ...] = (),
          cpu_seconds: float = math.nan) -> Profile:
    """A profile whose ops ran at `attained` of their dominant roof (or took `seconds`)."""
    seconds = dict(seconds or {})
    for o in ops:
        if o.index not in seconds:
            a = attained[o.index] if isinstance(attained, dict) else attained
            seconds[o.index] = floors(o, ceilings).max_s / a
    rows = tuple(OpTiming(i, s, s, s, cpu_seconds=cpu_seconds, kernels=1) for i, s in seconds.items())
    return Profile(ops=tuple(ops), mode="timed", regions=tuple(dict.fromkeys(o.region for o in ops if o.region)),
                   timing=Timing("cuda", "test GPU", 10, 3, ops=rows, regions=regions))


def advice_for(prof: Profile, ceilings: Ceilings, top: int = 5) -> dict[str, Advice]:
    return {a.rule: a for a in advise(prof, breakdown(prof, ceilings), ceilings, top=top)}


# ---------------------------------------------------------------------------- kinds


def test_kind_of_by_name_link_and_cost():
    assert kind_of(mm(0, 1, 8, 8)) is Kind.MATMUL
    assert kind_of(sdpa(0, 1, 8, 8, 1, 64)) is Kind.ATTENTION
    assert kind_of(pointwise(0, "add", 64)) is Kind.ELEMENTWISE
    assert kind_of(OpRecord(0, "aten::_softmax.default", flops={"fp32": 5})) is Kind.SOFTMAX
    assert kind_of(OpRecord(0, "aten::native_layer_norm.default", flops={"fp32": 5})) is Kind.NORM
    assert kind_of(OpRecord(0, "aten::embedding.default", bytes_read=64)) is Kind.EMBEDDING
    assert kind_of(OpRecord(0, "aten::_to_copy.default", bytes_read=64, bytes_written=32)) is Kind.COPY
    assert kind_of(OpRecord(0, "aten::_to_copy.default", comm_bytes=64, link="pcie")) is Kind.TRANSFER
    assert kind_of(OpRecord(0, "_c10d_functional::all_reduce", comm_bytes=64, link="peer")) is Kind.COLLECTIVE
    assert kind_of(OpRecord(0, "aten::view.default")) is Kind.OTHER
    assert kind_of(OpRecord(0, "aten::_weight_int4pack_mm.default", flops={"bf16_tensor": 1})) is Kind.MATMUL


def test_decomposed_rmsnorm_ops_are_norm():
    model = build("tiny", device="meta", max_seq=64)
    prof = count(lambda: decode_one_token(model, torch.zeros(1, 1, dtype=torch.long, device="meta"), 8))
    kinds = op_kinds(prof)
    norm_ops = [o for o in prof.ops if o.module_type == "RMSNorm" and o.short_op in ("pow", "mean", "rsqrt")]
    assert norm_ops and all(kinds[o.index] is Kind.NORM for o in norm_ops)


class NaiveAttention(nn.Module):
    def forward(self, q, k, v):
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, Sq, Sk] in memory
        return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def naive_attention_profile(b: int = 4, h: int = 16, s: int = 1024, d: int = 64) -> Profile:
    q = torch.empty(b, h, s, d, dtype=torch.bfloat16, device="meta")
    return count(NaiveAttention(), q, q, q)


def test_materialized_attention_is_found_between_its_two_bmms():
    prof = naive_attention_profile()
    groups = materialized_attention(prof)
    assert len(groups) == 1
    names = [prof.ops[i].short_op for i in groups[0]]
    assert names[0] == "bmm" and names[-1] == "bmm" and "_softmax" in names
    kinds = op_kinds(prof)
    assert all(kinds[i] is Kind.ATTENTION for i in groups[0])


def test_sdpa_math_backend_is_a_materialized_attention_too():
    q = torch.empty(2, 8, 256, 64, dtype=torch.bfloat16, device="meta")

    def attend():
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)

    assert len(materialized_attention(count(attend))) == 1


# ---------------------------------------------------------------------------- matmuls


def test_decode_gemv_at_batch_1_gets_batching_and_weight_only_quantization():
    # x [1, 8192] @ w [8192, 8192] bf16: 134 MB of weights for 134 MFLOP: ~1 FLOP/B; H100 ridge 989.4 / 3.35 = 295
    prof = timed([mm(0, 1, 8192, 8192)], H100, 0.85)
    adv = advice_for(prof, H100)
    assert {"batch-more", "weight-only-quant"} <= set(adv)
    assert "w8a8-fp8" not in adv  # M = 1: activations are too few to be worth quantizing
    assert "at M=1 this bfloat16 GEMM does 1 FLOP/B; the bf16_tensor ridge of H100 SXM is 295 FLOP/B" \
        in adv["batch-more"].effect
    wo = adv["weight-only-quant"]
    assert "as INT4 up to 4.0x" in wo.effect and "as INT8 up to 2.0x" in wo.effect
    assert wo.seed.startswith("002") and wo.ops == (0,) and wo.label is Label.MEMORY
    assert "memory-bound at 85%" in wo.evidence


def test_a_mixture_of_experts_decode_is_told_its_rows_per_expert():
    # a Mixtral-8x7B-shaped expert GEMM at decode: 8 tokens, top-2 -> 16 rows, 2 per expert, over
    # w [8, 4096, 14336] bf16 (940 MB, every expert got rows).  Each expert's GEMM has M = 2: its
    # ridge on the H100 (989.4 / 3.35 = 295.3 FLOP/B) is M = r*2*N*K / (2*N*K - r*(2*K + 2*N)) = 325.5 rows
    from rooflight.costs import lookup
    from rooflight.costs.model import OpCall

    e, k, n = 8, 4096, 14336
    a, w, out = T((16, k)), T((e, k, n)), T((16, n))
    c = lookup(torch.ops.aten._grouped_mm.default)(OpCall("aten::_grouped_mm.default", (a, w), {}, (out,),
                                                        values={"offs": [2, 4, 6, 8, 10, 12, 14, 16]}))
    gmm = OpRecord(0, "aten::_grouped_mm.default", module="layers.0.mlp.experts", region="decode", inputs=(a, w),
                   outputs=(out,), flops=c.flops, bytes_read=c.bytes_read, bytes_written=c.bytes_written)
    assert gmm.total_flops == 2 * 16 * k * n  # 1,879,048,192
    adv = advice_for(timed([gmm], H100, 0.85), H100)
    more = adv["batch-more"].effect
    assert more.startswith("at M=2 rows per expert (8 experts) this bfloat16 GEMM does 2 FLOP/B")
    assert "The weights (940 MB per op)" in more and "up to M≈326 rows cost about the same time" in more


def _copied_experts(transposed: bool = False):
    # batched_mm experts: 16 tokens, top-2 -> S = 32 routed rows over E = 4 experts' [256, 64] fp32
    # matrices (65,536 B each); each row copies its expert's matrix (w[ids]) and multiplies it by
    # its token's [64] vector
    torch.manual_seed(0)
    w = torch.randn(4, 64, 256) if transposed else torch.randn(4, 256, 64)
    x, ids = torch.randn(32, 64), torch.randint(0, 4, (32,))

    def experts():
        if transposed:  # x [S, 1, 64] @ w[ids] [S, 64, 256]
            return torch.bmm(x.unsqueeze(1), w[ids]).squeeze(1)
        return torch.bmm(w[ids], x.unsqueeze(-1)).squeeze(-1)  # w[ids] [S, 256, 64] @ x [S, 64, 1]

    return count(experts)


@pytest.mark.parametrize("transposed", [False, True])
def test_experts_copied_per_routed_token_are_told_to_run_as_a_grouped_gemm(transposed):
    # now: the index reads each of the 4 matrices once (262,144 B) and the 32 ids (256 B), writes
    # 32 copies (2,097,152 B); the bmm reads the copies (2,097,152 B) and x (8,192 B), writes
    # [32, 256] fp32 (32,768 B): 4,497,664 B.  A grouped GEMM reads the 4 matrices in place
    # (262,144 B), x and writes the output: 303,104 B, 14.8x less
    prof = _copied_experts(transposed)
    first = {o.short_op: o.index for o in reversed(prof.ops)}
    assert gathered_weights(prof) == [(first["index"], first["bmm"])]
    adv = advice_for(timed(list(prof.ops), CALIBRATED, 0.8), CALIBRATED)
    assert sum(o.bytes for o in prof.ops) == 4_497_664
    shape = "[64,256]" if transposed else "[256,64]"
    assert adv["grouped-experts"].effect.startswith(
        f"each of the 1 expert matmuls copies 32 of 4 {shape} float32 expert matrices (one per routed token) and "
        f"reads the copies again: {fmt_bytes(4_497_664)} per matmul; a grouped GEMM reads each expert's matrix once "
        f"(at most 4 of them), ~{fmt_bytes(303_104)}: ~15x less traffic, up to 14.8x")
    assert "experts_implementation" in adv["grouped-experts"].recommendation
    # the GEMM advice that assumes weights read once waits for the grouped GEMM
    assert not {"batch-more", "weight-only-quant", "w8a8-fp8"} & set(adv)


def test_a_gather_of_rows_or_a_bmm_of_activations_is_not_copied_experts():
    torch.manual_seed(0)
    table, ids = torch.randn(1000, 64), torch.randint(0, 1000, (32,))
    q, k = torch.randn(8, 16, 64), torch.randn(8, 64, 16)

    def other():
        rows = table[ids]  # an embedding lookup: rows, not matrices
        return torch.bmm(q, k), rows.sum()

    assert gathered_weights(count(other)) == []


def _tiny_mixtral(impl: str):
    # Mixtral, hidden 64, intermediate 128, 4 experts, top-2, 2 layers, fp32, with the experts
    # Hugging Face runs as `impl`
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, vocab_size=256, experts_implementation=impl)
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(cfg).eval()


def test_a_hugging_face_mixtral_with_batched_mm_experts_is_told_to_use_grouped_mm():
    # Mixtral, hidden 64, intermediate 128, 4 experts, top-2, 2 layers; 2 sequences x 8 tokens =
    # 16 tokens -> S = 32 copies of gate_up_proj's [256, 64] fp32 matrices per layer: the same
    # closed form as above (4,497,664 B now, 303,104 B grouped); down_proj's [64, 128] pair too.
    # The default experts (grouped_mm where torch has it) copy nothing
    ids = torch.randint(0, 256, (2, 8))
    copied = _tiny_mixtral("batched_mm")
    with torch.no_grad():
        prof = count(lambda: copied(ids))
    pairs = gathered_weights(prof)
    by = {o.index: o for o in prof.ops}
    assert [(by[g].inputs[0].shape, by[m].short_op) for g, m in pairs] == [((4, 256, 64), "bmm"), ((4, 64, 128), "bmm")] * 2
    assert {by[g].bytes + by[m].bytes for g, m in pairs if by[g].inputs[0].shape == (4, 256, 64)} == {4_497_664}
    effect = advice_for(timed(list(prof.ops), CALIBRATED, 0.8), CALIBRATED)["grouped-experts"].effect
    assert "copies 32 of 4 " in effect and f"~{fmt_bytes(303_104)}" in effect
    grouped = _tiny_mixtral("grouped_mm")
    with torch.no_grad():
        prof = count(lambda: grouped(ids))
    assert gathered_weights(prof) == [] and any(o.short_op == "_grouped_mm" for o in prof.ops)


def test_experts_run_one_at_a_time_are_told_to_run_as_a_grouped_gemm():
    # Hugging Face's eager experts: for each expert hit, nonzero (a host sync), gather its tokens,
    # gate_up_proj[e] and down_proj[e] matmuls, the activation, the weighting, an index_add_.  Mixtral,
    # 4 experts top-2, 2 layers, 16 tokens: every expert is hit, so each layer's call runs 8 expert
    # matmuls; its host syncs: 2 for the routing's aminmax, 4 per expert (the loop's .item() and
    # the sizes of its gather and scatter) = 18.  The grouped_mm model runs no such loop
    def profile(impl: str):
        m = _tiny_mixtral(impl)
        with torch.no_grad():
            return count(lambda: m(torch.randint(0, 256, (2, 8))))

    prof = profile("eager")
    loops = expert_loops(prof)
    by = {o.index: o for o in prof.ops}
    assert len(loops) == 2 and {by[u[0]].module for u in loops} == {"model.layers.0.mlp.experts",
                                                                  "model.layers.1.mlp.experts"}
    assert [sum(by[i].short_op == "mm" for i in u) for u in loops] == [8, 8]
    assert [sum(by[i].short_op == "_local_scalar_dense" for i in u) for u in loops] == [18, 18]
    adv = advice_for(timed(list(prof.ops), CALIBRATED, 0.8), CALIBRATED)
    effect = adv["grouped-experts"].effect
    assert effect.startswith("the experts run one at a time: ") and "(8 expert matmuls, 18 of them reads back to the " \
        "host" in effect and "x2 calls" in effect
    # what the other op rules would say of the loop's time is about work the grouped GEMM removes
    assert not {"at-memory-roof", "below-own-roof", "launch-bound"} & {
        a.rule for a in adv.values() if set(a.ops) & set(loops[0])}
    assert expert_loops(profile("grouped_mm")) == []


MIXTRAL_GENERATE = """
import sys, torch
from transformers import MixtralConfig, MixtralForCausalLM
cfg = MixtralConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=16,
                    num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, vocab_size=512,
                    experts_implementation=sys.argv[1])
torch.manual_seed(0)
model = MixtralForCausalLM(cfg).eval()
ids = torch.randint(0, 512, (8, 8))
with torch.no_grad():
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                   pad_token_id=0)
"""


@pytest.mark.parametrize("impl", ["batched_mm", "grouped_mm"])
def test_copied_experts_hold_back_the_batching_advice(tmp_path, impl):
    # a decode at batch 8 (16 routed rows a step over 8 experts): with copied experts a step copies
    # 16 matrices of each weight, so its time grows with the batch and "more sequences at about the
    # same step time" is untrue; with a grouped GEMM it holds, and the batching advice is given
    pytest.importorskip("transformers")
    import subprocess
    import sys

    from rooflight.api import analyze, load

    (tmp_path / "mixtral_generate.py").write_text(MIXTRAL_GENERATE)
    r = subprocess.run([sys.executable, "-m", "rooflight", "profile", "mixtral_generate.py", "--count-only",
                        "--format", "json", "-o", "out", "--", impl], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    rules = {a.rule for a in analyze(load(tmp_path / "out" / "mixtral_generate.json"), "h100").advice}
    if impl == "batched_mm":
        assert "grouped-experts" in rules and not {"continuous-batching", "paged-kv", "batch-more"} & rules
    else:
        assert {"continuous-batching", "paged-kv", "batch-more"} <= rules and "grouped-experts" not in rules


def test_decode_gemm_at_batch_256_compute_bound_gets_w8a8_not_int4():
    # A100: x [256, 8192] @ w [8192, 8192]: 34.4 GFLOP / 312 TFLOP/s = 110 µs > 142.6 MB / 2.039 TB/s = 70 µs
    prof = timed([mm(0, 256, 8192, 8192)], A100, 0.8)
    d = breakdown(prof, A100)
    assert d.verdicts[0].label is Label.COMPUTE
    adv = advice_for(prof, A100)
    assert "w8a8-fp8" in adv
    assert "weight-only-quant" not in adv and "batch-more" not in adv
    assert "INT8 (SmoothQuant" in adv["w8a8-fp8"].effect  # the A100 has no FP8 tensor cores: INT8 at 624 TOPS
    assert "(2.0x)" in adv["w8a8-fp8"].effect


def test_large_batch_on_hopper_gets_fp8():
    # H100: M = 1024 rows is past the ridge: compute-bound; FP8 1979 vs bf16 989.4 TFLOP/s
    prof = timed([mm(0, 1024, 8192, 8192, region_="prefill")], H100, 0.75)
    adv = advice_for(prof, H100)
    assert "FP8 (torch._scaled_mm)" in adv["w8a8-fp8"].effect and "weight-only-quant" not in adv


def test_memory_bound_at_batch_32_gets_both_quantizations_but_not_when_already_int4():
    prof = timed([mm(0, 32, 8192, 8192)], H100, 0.85)
    assert {"weight-only-quant", "w8a8-fp8", "batch-more"} <= set(advice_for(prof, H100))
    # the same matmul with packed INT4 weights: nothing more to gain from weight-only quantization
    x, w, out = T((32, 8192)), T((8192, 4096), "uint8"), T((32, 8192))
    q4 = OpRecord(0, "aten::_weight_int4pack_mm.default", module="w1", module_type="Linear", region="decode",
                  inputs=(x, w), outputs=(out,), flops={"bf16_tensor": 2 * 32 * 8192 * 8192},
                  bytes_read=x.bytes + w.bytes, bytes_written=out.bytes)
    adv = advice_for(timed([q4], H100, 0.85), H100)
    assert "weight-only-quant" not in adv and "w8a8-fp8" not in adv


def test_fp32_compute_bound_matmul_gets_tensor_cores():
    # 4096³ fp32 without TF32: 137 GFLOP / 51.5 TFLOP/s = 2.67 ms
    prof = timed([mm(0, 4096, 4096, 4096, dtype="float32", region_="train")], CALIBRATED, 0.9)
    adv = advice_for(prof, CALIBRATED)
    assert "tensor-cores" in adv
    effect = adv["tensor-cores"].effect
    assert "fp32 roof at 51.5 TFLOP/s" in effect
    assert "TF32" in effect and "up to 7.3x" in effect  # 378 / 51.5
    assert "bf16" in effect and "up to 15.3x" in effect  # 787 / 51.5
    assert "TF32" in adv["tensor-cores"].recommendation
    assert "w8a8-fp8" not in adv  # tensor cores first: 8-bit is for 16-bit GEMMs


def test_bf16_compute_bound_matmul_does_not_get_tensor_cores():
    prof = timed([mm(0, 4096, 4096, 4096, region_="prefill")], CALIBRATED, 0.9)
    assert "tensor-cores" not in advice_for(prof, CALIBRATED)


# ---------------------------------------------------------------------------- attention


def test_materialized_attention_gets_flash_attention():
    prof = naive_attention_profile()
    tp = timed(list(prof.ops), CALIBRATED, 0.7)
    adv = advice_for(tp, CALIBRATED)
    fa = adv["flash-attention"]
    assert fa.kind == "attention" and set(fa.ops) == set(materialized_attention(prof)[0])
    # scores [4, 16, 1024, 1024] bf16 = 128 MB, written and read several times (scale, cast, softmax, cast)
    assert "[4,16,1024,1024] score matrix" in fa.effect
    assert fa.seed.startswith("000 FlashAttention")


def test_fused_attention_does_not_get_flash_attention():
    adv = advice_for(timed([sdpa(0, 8, 32, 8, 2048, 2048, region_="prefill")], H100, 0.6), H100)
    assert "flash-attention" not in adv


def test_mha_decode_attention_gets_gqa_and_kv_quantization():
    # batch 8, 32 heads, 4096 cached keys, MHA: K/V = 2 x 8·32·4096·128·2 B = 1.07 GB
    prof = timed([sdpa(0, 8, 32, 32, 1, 4096)], H100, 0.8)
    adv = advice_for(prof, H100)
    assert {"gqa-mqa", "kv-cache-quant"} <= set(adv)
    assert "GQA 4:1 reads 4x less of them: ~4.0x faster" in adv["gqa-mqa"].effect
    assert "8-bit: ~2.0x" in adv["kv-cache-quant"].effect and "4-bit: ~4.0x" in adv["kv-cache-quant"].effect


def test_gqa_decode_attention_gets_kv_quantization_only():
    adv = advice_for(timed([sdpa(0, 8, 32, 8, 1, 4096)], H100, 0.8), H100)
    assert "kv-cache-quant" in adv and "gqa-mqa" not in adv


def test_prefill_attention_gets_neither_gqa_nor_kv_quantization():
    adv = advice_for(timed([sdpa(0, 1, 32, 32, 512, 512, region_="prefill")], H100, {0: 0.8}), H100)
    assert "gqa-mqa" not in adv and "kv-cache-quant" not in adv


def test_long_context_small_batch_decode_below_the_roof_gets_flash_decoding():
    # batch 1 x 32 heads = 32 blocks over 32768 keys, at 35% of bandwidth
    adv = advice_for(timed([sdpa(0, 1, 32, 8, 1, 32768)], H100, 0.35), H100)
    assert "flash-decoding" in adv
    assert "32 (batch, head) blocks over 32768 keys" in adv["flash-decoding"].effect
    assert "up to 2.9x" in adv["flash-decoding"].effect  # 1 / 0.35


@pytest.mark.parametrize("case", ["near the roof", "short context", "large batch", "no timing"])
def test_flash_decoding_needs_all_of_its_conditions(case):
    b, sk, attained = 1, 32768, 0.35
    if case == "near the roof":
        attained = 0.8
    elif case == "short context":
        sk = 1024
    elif case == "large batch":
        b = 16  # 16 x 32 = 512 blocks
    op = sdpa(0, b, 32, 8, 1, sk)
    prof = timed([op], H100, attained) if case != "no timing" else Profile(ops=(op,))
    assert "flash-decoding" not in advice_for(prof, H100)


def test_long_prefill_compute_bound_attention_gets_sparse_attention():
    adv = advice_for(timed([sdpa(0, 1, 32, 8, 16384, 16384, region_="prefill")], H100, 0.6), H100)
    assert "sparse-attention" in adv and "up to ~16x less attention work" in adv["sparse-attention"].effect


# ---------------------------------------------------------------------------- chains, overhead, kernels


def test_chain_of_memory_bound_elementwise_ops_gets_fusion():
    n = 1 << 24  # 16 M elements, 32 MB per bf16 tensor
    ops = [pointwise(i, name, n) for i, name in enumerate(["add", "mul", "sub", "mul", "add"])]
    adv = advice_for(timed(ops, CALIBRATED, 0.8), CALIBRATED)
    fuse = adv["fuse-elementwise"]
    assert fuse.ops == (0, 1, 2, 3, 4) and fuse.label is Label.MEMORY
    # 5 ops x 96 MB = 480 MB; fused: the first op's two inputs (64 MB) + the last op's output (32 MB) = 96 MB
    assert "each chain of 5 kernels (add, mul, sub, mul, add) moves 503 MB" in fuse.effect
    assert "~101 MB: ~5.0x less traffic and 4 fewer launches" in fuse.effect


def test_a_captured_chains_fused_traffic_reads_every_tensor_made_outside_it_once():
    # x, z: [1024, 1024] fp32 (4 MB each), w: [1024] (4 KB); the chain reads x in its first op and
    # again in its second, w once, z in its fifth: fused, one kernel reads x, w and z once (4 MiB + 4 KiB
    # + 4 MiB) and writes the result (4 MiB): 12 MiB + 4 KiB.  What the capture records of which op
    # made each input says so; the first op's reads alone (x, w) would leave z out (8 MiB + 4 KiB)
    x, z, w = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.randn(1024)

    def chain():
        a = x * w
        b = (a + x).relu()
        return (b * 2.0 - z).abs()

    prof = count(chain)
    assert [o.short_op for o in prof.ops] == ["mul", "add", "relu", "mul", "sub", "abs"]
    assert [o.sources for o in prof.ops] == [(-1, -2), (0, -1), (1,), (2,), (3, -3), (4,)]
    fuse = advice_for(timed(list(prof.ops), CALIBRATED, 0.8), CALIBRATED)["fuse-elementwise"]
    mb = 1024 * 1024 * 4
    assert f"fused, it reads its inputs and writes its output once, ~{fmt_bytes(3 * mb + 4096)}" in fuse.effect


def test_an_optimizer_step_is_told_to_use_a_fused_optimizer_not_to_fuse_a_chain():
    # a training step's last backward ops, then an unfused AdamW: per tensor mul_, add_, lerp_ ...
    # The run of ops crosses from backward to optimizer: two runs, not one kernel's work; the
    # optimizer's gets the fused optimizer, without the "reads its inputs once" figure that holds
    # only for a chain where each op feeds the next
    from dataclasses import replace as _replace

    n = 1 << 22
    back = [_replace(pointwise(i, "mul", n, region_="step 2"), phase="backward") for i in range(FUSION_MIN_OPS)]
    opt = [_replace(pointwise(FUSION_MIN_OPS + i, name, n, region_="step 2"), phase="optimizer")
           for i, name in enumerate(["mul_", "add_", "lerp_", "addcmul_", "sqrt", "div", "addcdiv_"] * 4)]
    kinds = op_kinds(Profile(ops=tuple(back + opt)))
    chains = fusible_chains(Profile(ops=tuple(back + opt)), kinds, set(), FUSION_MIN_OPS)
    assert chains == [tuple(range(FUSION_MIN_OPS)), tuple(range(FUSION_MIN_OPS, FUSION_MIN_OPS + 28))]
    adv = advice_for(timed(opt, CALIBRATED, 0.5), CALIBRATED)
    assert "fuse-elementwise" not in adv
    fused = adv["fused-optimizer"]
    assert "fused=True" in fused.recommendation
    assert fused.effect.startswith("the optimizer step runs 28 ops, one tensor at a time (mul_, add_, lerp_, ")
    assert "less traffic" not in fused.effect
    # a fused step (HF Trainer's default adamw_torch_fused): per step the step counts' _foreach_add_
    # and one _fused_adamw_, over 2 steps a run of 4 ops; already fused, so no advice to fuse it
    done = [_replace(pointwise(i, name, n, region_="step 2"), phase="optimizer")
            for i, name in enumerate(["_foreach_add_", "_fused_adamw_"] * 2)]
    adv = advice_for(timed(done, CALIBRATED, 0.5), CALIBRATED)
    assert "fused-optimizer" not in adv and "fuse-elementwise" not in adv


def test_fused_optimizer_advice_speaks_for_the_whole_step_not_its_heaviest_tensor():
    # An unfused AdamW over parameters of 4 shapes: each tensor's 7-op update is one chain (the
    # step count's .item() between tensors, a host read, cuts the run), grouped by shape: 4 groups.
    # Six big matmuls of distinct shapes outweigh each group, so none is among the 5 heaviest, but
    # the step as a whole is: the advice names the whole step (28 ops, 4 x 7; all their bytes).
    from dataclasses import replace as _replace

    ops: list[OpRecord] = [mm(i, 4096, 4096 + 256 * i, 4096, region_="step 2") for i in range(6)]
    sizes = [1 << 21, 1 << 22, 3 << 21, 1 << 23]  # elements per parameter
    for n in sizes:
        i = len(ops)
        ops += [_replace(pointwise(i + j, name, n, region_="step 2"), phase="optimizer")
                for j, name in enumerate(["mul_", "add_", "lerp_", "addcmul_", "sqrt", "div", "addcdiv_"])]
        scalar = T((), "float32")
        ops.append(OpRecord(len(ops), "aten::_local_scalar_dense", region="step 2", phase="optimizer",
                            inputs=(scalar,), outputs=(), bytes_read=4, note="device to host"))
    prof = timed(ops, CALIBRATED, 0.5)
    diag = breakdown(prof, CALIBRATED)
    chain_s = {n: sum(diag.verdicts[o.index].weight_s for o in ops if o.phase == "optimizer"
                      and o.inputs[0].numel == n) for n in sizes}
    mm_s = sorted(diag.verdicts[i].weight_s for i in range(6))
    assert max(chain_s.values()) < mm_s[0] and sum(chain_s.values()) > mm_s[-1]  # as the test means
    fused = advice_for(prof, CALIBRATED)["fused-optimizer"]
    # bf16 elementwise, 2 inputs and 1 output: 6 B an element, 7 ops: 42 B x (2 + 4 + 6 + 8) Mi elements
    assert fused.effect.startswith("the optimizer step runs 28 ops, one tensor at a time (mul_, add_, lerp_, ")
    assert f"moving {fmt_bytes(42 * sum(sizes))}" in fused.effect
    assert len(fused.ops) == 28 and fused.seconds == pytest.approx(sum(chain_s.values()))
    assert f"{fused.share:.0%} of the run" in fused.effect
    # one parameter's group alone, in a small profile: the rule still fires (one of the heaviest)
    alone = advice_for(timed(ops[6:14], CALIBRATED, 0.5), CALIBRATED)["fused-optimizer"]
    assert alone.effect.startswith("the optimizer step runs 7 ops") and len(alone.ops) == 7


def test_a_global_reduction_cuts_a_chain_into_passes():
    # clip_grad_norm_ as captured: the norms of 3 gradients (fp32, 2 MB each: [512, 1024]), reduced
    # to one total norm, a clip coefficient, then every gradient scaled by it.  A fused kernel
    # cannot scale a gradient before the whole norm is known: it makes 2 passes over them
    grads = [torch.randn(512, 1024, requires_grad=True) for _ in range(3)]
    for g in grads:
        g.grad = torch.randn_like(g)
    ops = count(lambda: torch.nn.utils.clip_grad_norm_(grads, 1.0)).ops
    kinds = op_kinds(Profile(ops=ops))
    [chain] = fusible_chains(Profile(ops=ops), kinds, set(), FUSION_MIN_OPS)
    passes = chain_passes([o for o in ops if o.index in chain])
    assert len(passes) == 2 and passes[0][-1].short_op == "_foreach_norm"
    assert passes[1][-1].short_op == "_foreach_mul_"
    nbytes = 3 * 512 * 1024 * 4  # the three gradients: 6 MiB
    # memory-bound: read 6 MiB for the norms, then read and write 6 MiB to scale; fused, both
    # passes remain (~18.9 MB, the chain's own traffic): no traffic to save, so no fusion advice
    adv = advice_for(timed(list(ops), CALIBRATED, 0.8), CALIBRATED)
    assert "fuse-elementwise" not in adv
    # overhead-bound (each kernel 20 us, far above its ~6 us of traffic): the launches are the gain
    prof = timed(list(ops), CALIBRATED, seconds={o.index: 20e-6 for o in ops})
    fuse = advice_for(prof, CALIBRATED)["fuse-elementwise"]
    n = len(chain)
    assert f"each chain of {n} kernels (_foreach_norm, " in fuse.effect
    assert ("fused, it still makes 2 passes over memory (a global reduction, _foreach_norm, must finish before the "
            "ops after it use its result)") in fuse.effect
    assert f"~18.9 MB: about the same traffic; the gain is {n - 2} fewer launches per chain" in fuse.effect
    assert sum(o.bytes for o in passes[0]) >= nbytes and passes[1][-1].bytes_written == nbytes
    # a row-wise reduction (RMSNorm's mean over the last dim) is one kernel's work: no cut
    x, w = torch.randn(64, 4096), torch.randn(4096)
    rms = count(lambda: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w).ops
    assert len(chain_passes(list(rms))) == 1
    # nor is a loss's global mean at a chain's end: nothing after it reads the data again
    loss = count(lambda: ((x - 1.0) ** 2).mean()).ops
    assert len(chain_passes(list(loss))) == 1


def test_too_short_a_chain_is_not_fused():
    n = 1 << 24
    ops = [pointwise(i, "add", n) for i in range(FUSION_MIN_OPS - 1)]
    ops.append(mm(FUSION_MIN_OPS - 1, 1, 8192, 8192))  # a matmul breaks the run
    ops += [pointwise(FUSION_MIN_OPS + i, "mul", n) for i in range(FUSION_MIN_OPS - 1)]
    assert "fuse-elementwise" not in advice_for(timed(ops, CALIBRATED, 0.8), CALIBRATED, top=10)


def test_overhead_bound_region_gets_cuda_graphs():
    # 300 tiny kernels of 3 µs (0.9 ms) in a 2.5 ms decode step: the GPU idles 1.6 ms
    ops = [pointwise(i, "add", 1024) for i in range(300)]
    seconds = {i: 3e-6 for i in range(300)}
    regions = (RegionTiming("", 2.5e-3, 0.9e-3), RegionTiming("decode", 2.5e-3, 0.9e-3))
    prof = timed(ops, CALIBRATED, seconds=seconds, regions=regions)
    adv = advice_for(prof, CALIBRATED)
    graphs = adv["cuda-graphs"]
    assert graphs.kind == "region" and graphs.region == "decode" and graphs.label is Label.OVERHEAD
    assert graphs.seconds == pytest.approx(2.5e-3) and graphs.share == pytest.approx(1.0)
    assert "100% of decode's 2.50 ms is overhead-bound" in graphs.effect
    assert "300 of 300 kernels launch-bound" in graphs.effect
    # the graph removes the 1.6 ms of gaps, the kernels' 0.9 ms stay (300 x 2 µs of graph launches fit in it)
    assert "keeps its kernels' 900 µs: up to 2.8x" in graphs.effect
    assert "2.00 µs per op inside a graph vs 11.9 µs eager" in graphs.effect
    assert "reduce-overhead" in graphs.recommendation
    assert "host-pipelining" in adv  # 64% of the step is GPU idle
    assert graphs.evidence.startswith("decode: 100% of time overhead-bound (GPU idle 64%)")


def test_a_busy_region_does_not_get_cuda_graphs():
    prof = timed([mm(0, 1, 8192, 8192)], H100, 0.85)
    adv = advice_for(prof, H100)
    assert "cuda-graphs" not in adv and "host-pipelining" not in adv


def test_kernel_far_below_its_roof_gets_told_so_with_its_layout():
    x = TensorMeta((8192, 8192), (1, 8192), "bfloat16", "cuda:0", 0, 8192 * 8192)  # a transposed view
    cp = OpRecord(0, "aten::clone.default", region="prefill", inputs=(x,), outputs=(T((8192, 8192)),),
                  bytes_read=x.bytes, bytes_written=x.bytes)
    adv = advice_for(timed([cp], CALIBRATED, 0.2), CALIBRATED)
    below = adv["below-own-roof"]
    assert "reaches 20% of its memory roof" in below.effect and "up to 5.0x" in below.effect
    assert "[8192,8192] (strides 1,8192) is not contiguous" in below.effect


def test_an_uncounted_op_is_not_told_it_runs_below_its_roof():
    # an op with no formula: no bytes, no FLOPs, a floor of 0, "0% of its roof" -- its roof is
    # unknown, not far above it (nn.TransformerEncoderLayer's fast path before it had a formula)
    op = OpRecord(0, "aten::_some_fused_layer.default", region="prefill", inputs=(T((8192, 8192)),),
                  outputs=(T((8192, 8192)),), counted=False, note="no cost formula")
    prof = timed([op], CALIBRATED, seconds={0: 1e-3})
    assert "below-own-roof" not in advice_for(prof, CALIBRATED)


def test_a_matrix_products_transposed_operand_is_not_called_a_layout_problem():
    # an HF MoE's expert weights reach _grouped_mm as transposed views, [8, 256, 256] with strides
    # (65536, 1, 256): a GEMM reads a column-major operand natively, so no "not contiguous" there;
    # a matrix sliced out of a wider one (strides (512, 2)) still is one
    from rooflight.advice import _strided

    w = TensorMeta((8, 256, 256), (65536, 1, 256), "bfloat16", "cuda:0", 0, 8 * 256 * 256)
    a = T((16, 256))
    gmm = OpRecord(0, "aten::_grouped_mm.default", inputs=(a, w), outputs=(T((16, 256)),))
    assert _strided(gmm) == ()
    sliced = TensorMeta((256, 256), (512, 2), "bfloat16", "cuda:0", 0, 256 * 512)
    assert _strided(OpRecord(1, "aten::mm.default", inputs=(a, sliced), outputs=(T((16, 256)),))) != ()
    # elementwise ops stream only contiguous inputs: the transpose still counts there
    assert _strided(OpRecord(2, "aten::clone.default", inputs=(w,), outputs=(T((8, 256, 256)),))) != ()
    # attention reads [B, H, S, D] as a view of the [B, S, H, D] projection (head dim dense)
    q = TensorMeta((1, 8, 32, 32), (16384, 64, 512, 1), "bfloat16", "cuda:0", 0, 8 * 32 * 64)
    sdpa_op = OpRecord(3, "aten::_scaled_dot_product_flash_attention.default", inputs=(q, q, q),
                       outputs=(T((1, 8, 32, 32)),))
    assert _strided(sdpa_op) == ()


# ---------------------------------------------------------------------------- transfers


def test_pcie_host_to_device_copy_gets_offload_advice():
    # 1 GB host -> device in 78 ms = 12.8 GB/s: 20% of the H100's 64 GB/s each way
    src, dst = TensorMeta.contiguous((1 << 29,), "bfloat16", "cpu"), T((1 << 29,))
    copy = OpRecord(0, "aten::_to_copy.default", region="decode", inputs=(src,), outputs=(dst,),
                    bytes_written=dst.bytes, comm_bytes=dst.bytes, link="pcie", note="host to device")
    prof = timed([copy], H100, seconds={0: dst.bytes / 12.8e9})
    adv = advice_for(prof, H100)
    pcie = adv["pcie-transfer"]
    assert pcie.label is Label.COMMUNICATION and pcie.kind == "transfer"
    assert "pinned memory" in pcie.recommendation and "side stream" in pcie.recommendation
    assert "1.07 GB host to device per copy" in pcie.effect and "20% of 64.0 GB/s each way" in pcie.effect
    assert "pageable" in pcie.effect
    assert "host-sync" not in adv


def test_item_in_the_loop_is_a_host_sync():
    item = OpRecord(0, "aten::_local_scalar_dense.default", region="decode", inputs=(T((), "int64"),),
                    bytes_read=8, comm_bytes=8, link="pcie", note="device to host (.item() synchronizes)")
    adv = advice_for(timed([item], H100, seconds={0: 20e-6}), H100)
    assert "host-sync" in adv and "pcie-transfer" not in adv
    assert ".item()" in adv["host-sync"].recommendation


def test_collective_gets_overlap_or_repartition():
    # all_reduce of a [16, 8192] bf16 activation across 8 ranks: 2·(7/8)·256 KB = 459 KB sent per rank
    ar = OpRecord(0, "_c10d_functional::all_reduce.default", region="decode", inputs=(T((16, 8192)),),
                  outputs=(T((16, 8192)),), bytes_read=262144, bytes_written=262144, comm_bytes=458752,
                  link="peer", note="all_reduce over 8 ranks")
    adv = advice_for(timed([ar], H100, 0.5), H100)
    col = adv["collective-overlap"]
    assert col.label is Label.COMMUNICATION and col.kind == "collective"
    assert "Overlap" in col.recommendation and "re-partition" in col.recommendation
    assert "459 KB per call over the peer link" in col.effect and "50% of 450 GB/s each way" in col.effect
    # 459 KB a message is under the 1 MB where NCCL's bus bandwidth plateaus: latency-bound, bucket them
    assert "the link's latency, not its bandwidth, sets the time: bucket them" in col.effect
    assert "pipeline parallelism across nodes" in col.recommendation and "ZeRO-1/2 before ZeRO-3" in col.recommendation


# ---------------------------------------------------------------------------- regions and whole profiles


def test_decode_region_memory_bound_at_small_batch_gets_continuous_batching_and_paged_kv():
    model = build("tiny", device="meta", max_seq=1024)  # batch 1, a static cache of 1024 positions

    def step():
        with region("decode"):
            decode_one_token(model, torch.zeros(1, 1, dtype=torch.long, device="meta"), 255)

    prof = timed(list(count(step).ops), H100, 0.8)
    adv = advice_for(prof, H100)
    assert adv["continuous-batching"].region == "decode"
    assert "runs at batch 1" in adv["continuous-batching"].effect
    # the cache holds 1024 positions per sequence and this step reads 256
    assert "reserves 1024 positions per sequence and this step uses 256 (25%)" in adv["paged-kv"].effect
    assert "~4x the sequences fit" in adv["paged-kv"].effect


def test_a_materialized_decode_attention_makes_its_region_a_decode_at_its_batch():
    # a hand-written attention (softmax(q k^T) v) of one new token per sequence, batch 4, over 512
    # cached keys, after a [4, 4096] x [4096, 4096] projection: a step of a region named "step",
    # recognised as a decode at batch 4 by its attention's shape as a fused one would be
    torch.manual_seed(0)
    x, w = torch.randn(4, 4096), torch.randn(4096, 4096)
    k, v = torch.randn(4, 8, 512, 64), torch.randn(4, 8, 512, 64)

    def step():
        with region("step"):
            q = (x @ w).view(4, 8, 1, 512)[..., :64]
            scores = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
            return scores @ v

    prof = count(step)
    assert materialized_attention(prof)
    adv = advice_for(timed(list(prof.ops), H100, 0.8), H100)
    assert adv["continuous-batching"].region == "step" and "runs at batch 4" in adv["continuous-batching"].effect


def _long_forward(region_: str) -> list[OpRecord]:
    # a 4096-token forward: a [4096, 4096] x [4096, 4096] GEMM (M far above the ridge) and a GQA
    # attention over 4096 queries and keys, both compute-bound on the H100
    return [mm(0, 4096, 4096, 4096, region_=region_), sdpa(1, 1, 32, 8, 4096, 4096, region_=region_)]


def test_an_inference_prefill_gets_prefix_caching_and_a_training_steps_forward_does_not():
    adv = advice_for(timed(_long_forward("prefill"), H100, 0.8), H100)
    assert adv["prefix-caching"].region == "prefill"
    # the same forward in a training step (its backward ran in the step) is no prefill to cache
    step = _long_forward("step 2") + [replace(mm(2, 4096, 4096, 4096, region_="step 2"), phase="backward")]
    assert "prefix-caching" not in advice_for(timed(step, H100, 0.8), H100)


def test_prefix_caching_is_for_a_decoders_prompt_not_an_encoders_forward():
    # the long forward of _long_forward in a script's step (region "step 2", no "prefill" in its name):
    # causal attention is a decoder's prompt; bidirectional attention (BERT, ViT, nn.TransformerEncoder)
    # has no KV cache to reuse; a padded batch's mask is a prompt when the same steps decode
    mmul, att = _long_forward("step 2")
    causal = replace(att, note=att.note + "; causal (upper-left): 50.4% of the full score matrix")
    assert "prefix-caching" in advice_for(timed([mmul, causal], H100, 0.8), H100)
    assert "prefix-caching" not in advice_for(timed([mmul, att], H100, 0.8), H100)
    mask = T((1, 1, 4096, 4096), "bool")
    masked = replace(att, inputs=(*att.inputs, mask))
    assert "prefix-caching" not in advice_for(timed([mmul, masked], H100, 0.8), H100)
    step = sdpa(2, 1, 32, 8, 1, 4097, region_="step 3")
    assert "prefix-caching" in advice_for(timed([mmul, masked, step], H100, 0.8), H100)


def test_a_training_steps_small_batch_matmul_gets_no_weight_only_quantization():
    # the GEMV of test_decode_gemv_at_batch_1... gets it at inference; a training step updates its weights
    inference = advice_for(timed([mm(0, 1, 8192, 8192)], H100, 0.85), H100)
    step = [mm(0, 1, 8192, 8192, region_="step 2"),
            replace(mm(1, 1, 8192, 8192, region_="step 2"), phase="backward")]
    training = advice_for(timed(step, H100, 0.85), H100)
    assert "weight-only-quant" in inference and "weight-only-quant" not in training
    assert "batch-more" in training  # more rows per weight read still helps


def test_an_attention_backwards_shapes_are_read_past_its_output_gradient():
    # (grad_out, q, k, v, out, lse) of a GQA backward: 32 query heads over 512 queries, 8 KV heads
    q, k, go = T((1, 32, 512, 128)), T((1, 8, 512, 128)), T((1, 32, 512, 128))
    bwd = OpRecord(0, "aten::_scaled_dot_product_flash_attention_backward.default", inputs=(go, q, k, k, go),
                   outputs=(q, k, k), note="flash attention backward (fused)")
    facts = _attention_facts(bwd)
    assert (facts["hq"], facts["hkv"], facts["sq"], facts["sk"]) == (32, 8, 512, 512)
    assert facts["kv_bytes"] == 2 * k.bytes and facts["fused"]


def test_count_only_profile_gets_advice_from_predicted_labels():
    model = build("llama-2-7b", device="meta", max_seq=4096)
    prof = count(lambda: decode_one_token(model, torch.zeros(1, 1, dtype=torch.long, device="meta"), 100))
    adv = advice_for(prof, H100)
    assert {"batch-more", "weight-only-quant"} <= set(adv)
    assert "at-memory-roof" not in adv and "below-own-roof" not in adv  # these need measured time


def test_advice_is_deduplicated_and_merges_the_ops():
    ops = [mm(0, 1, 8192, 8192), mm(1, 1, 8192, 8192), mm(2, 1, 28672, 8192, module="w3")]
    adv = advise(timed(ops, H100, 0.85), breakdown(timed(ops, H100, 0.85), H100), H100)
    ids = [a.rule for a in adv]
    assert len(ids) == len(set(ids))
    wo = next(a for a in adv if a.rule == "weight-only-quant")
    assert sorted(wo.ops) == [0, 1, 2]
    assert wo.share == pytest.approx(1.0)
    assert list(adv) == sorted(adv, key=lambda a: -a.seconds)


def test_top_limits_the_op_groups_considered():
    n = 1 << 20  # a 3 x 6 MB chain, lighter than the 134 MB GEMV
    ops = [mm(0, 1, 8192, 8192)] + [pointwise(i, name, n) for i, name in enumerate(["add", "mul", "sub"], start=1)]
    prof = timed(ops, CALIBRATED, 0.8)
    assert "fuse-elementwise" in advice_for(prof, CALIBRATED, top=2)
    assert "fuse-elementwise" not in advice_for(prof, CALIBRATED, top=1)  # the GEMV is heavier


# ---------------------------------------------------------------------------- the table itself


def test_rule_table_covers_the_seed_techniques():
    ids = {r.id for r in RULES}
    assert {"batch-more", "continuous-batching", "weight-only-quant", "w8a8-fp8", "flash-attention", "gqa-mqa",
            "kv-cache-quant", "paged-kv", "flash-decoding", "fuse-elementwise", "cuda-graphs", "tensor-cores",
            "pcie-transfer", "collective-overlap"} <= ids
    assert len(ids) == len(RULES)
    for r in RULES:
        assert isinstance(r, Rule) and r.labels and r.recommendation and r.scope in ("op", "region")
        assert r.seed[:3] in ("000", "001", "002", "003"), r.id
        low, high = r.attained
        assert 0 <= low < high


def test_gpu_only_techniques_are_not_offered_for_cpu_timings():
    cpu = Ceilings("laptop CPU", memory_bytes_per_s=50e9, flops_per_s={"fp32": 1e12}, device_kind="cpu")
    ops = [pointwise(i, "add", 1024) for i in range(50)]
    rows = tuple(OpTiming(i, 20e-6, 20e-6, 20e-6, cpu_seconds=20e-6, kernels=1) for i in range(50))
    prof = Profile(ops=tuple(ops), mode="timed", regions=("decode",),
                   timing=Timing("cpu", "laptop", 3, 1, ops=rows,
                                 regions=(RegionTiming("", 3e-3, 1e-3), RegionTiming("decode", 3e-3, 1e-3))))
    adv = advice_for(prof, cpu)
    assert "cuda-graphs" not in adv and "host-pipelining" not in adv
    assert "fuse-elementwise" in adv  # fusion helps a CPU too
    assert next(r for r in RULES if r.id == "cuda-graphs").devices == frozenset({"cuda"})
    # short ops alone (no chain): dispatch-bound on a CPU, no CUDA graph offered
    alone = [mm(0, 64, 64, 64), pointwise(1, "add", 16), mm(2, 64, 64, 64)]
    rows = tuple(OpTiming(i, s, s, s, cpu_seconds=s, kernels=1) for i, s in enumerate((5e-6, 20e-6, 5e-6)))
    prof = Profile(ops=tuple(alone), mode="timed", regions=("decode",),
                   timing=Timing("cpu", "laptop", 3, 1, ops=rows, regions=(RegionTiming("", 40e-6, 30e-6),)))
    adv = advice_for(prof, cpu)
    # the two 64^3 matmuls, 5 µs each where their floors are 0.5 µs (the 50 GB/s memory roof: 24 KB)
    assert "launch-bound" not in adv and adv["dispatch-bound"].effect == (
        "2 calls of ~5.00 µs each, 10.0 µs (25% of the run), of which the floors explain 10%: fewer, larger ops "
        "remove most of it")
