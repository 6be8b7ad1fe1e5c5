"""On a real GPU (marked; skipped without one): the classifier's labels against the calibrated
roofs, and counts on CUDA equal to counts off the GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rooflight import count
from rooflight.calibrate import calibrate
from rooflight.roofline import from_spec, merge
from rooflight.classify import Label, breakdown
from rooflight.hardware import load_database
from rooflight.timing import profile

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ceilings():
    db = load_database()
    spec = db.get(torch.cuda.get_device_name())
    return merge(calibrate("cuda").to_ceilings(), from_spec(spec))


def _verdict(prof, ceilings, op: str):
    d = breakdown(prof, ceilings)
    ops = [o for o in prof.ops if o.short_op == op]
    assert ops, [o.short_op for o in prof.ops]
    return d.verdicts[ops[0].index], d


def test_large_bf16_gemm_is_compute_bound_near_the_calibrated_roof(ceilings):
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    prof = profile(torch.mm, a, b, warmup=3, repeats=10)
    v, _ = _verdict(prof, ceilings, "mm")
    assert v.label is Label.COMPUTE, v.evidence
    assert v.attained >= 0.6, v.evidence


def test_large_elementwise_op_is_memory_bound_near_the_calibrated_roof(ceilings):
    x = torch.randn(1 << 28, device="cuda")  # 1 GiB of fp32: far beyond L2
    prof = profile(torch.mul, x, 2.0, warmup=3, repeats=10)
    v, _ = _verdict(prof, ceilings, "mul")
    assert v.label is Label.MEMORY, v.evidence
    assert v.attained >= 0.7, v.evidence


def test_tiny_op_in_a_loop_is_overhead_bound(ceilings):
    x = torch.zeros(1, device="cuda")

    def loop():
        for _ in range(200):
            x.add_(1)

    prof = profile(loop, warmup=2, repeats=5)
    v, d = _verdict(prof, ceilings, "add_")
    assert v.label is Label.OVERHEAD, v.evidence
    assert d.region("").headline is Label.OVERHEAD


def test_pageable_host_to_device_copy_is_communication_bound(ceilings):
    host = torch.randn(1 << 26)  # 256 MiB, pageable
    dev = torch.empty_like(host, device="cuda")
    prof = profile(lambda: dev.copy_(host), warmup=2, repeats=5)
    v, _ = _verdict(prof, ceilings, "copy_")
    assert v.label is Label.COMMUNICATION, v.evidence


def test_counts_on_cuda_equal_counts_off_the_gpu():
    from llama import build, decode_one_token, prefill

    totals = {}
    for dev in ("cuda", "meta"):
        m = build("tiny", batch=2, device=dev)
        toks = torch.zeros(2, 128, dtype=torch.long, device=dev)
        p, d = count(prefill, m, toks), count(decode_one_token, m, toks.narrow(1, 0, 1), 128)
        x = torch.randn(64, 4096, device=dev, dtype=torch.bfloat16)
        w = torch.ones(4096, device=dev, dtype=torch.bfloat16)
        r = count(F.rms_norm, x, (4096,), w, 1e-6)
        q = torch.randn(2, 16, 512, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(2, 4, 512, 128, device=dev, dtype=torch.bfloat16)
        mask = torch.ones(512, 512, dtype=torch.bool, device=dev).tril()
        s1 = count(lambda: F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True))
        s2 = count(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask))
        totals[dev] = [(x.flops_by_class(), x.total_bytes) for x in (p, d, r, s1, s2)]
    assert totals["cuda"] == totals["meta"]
