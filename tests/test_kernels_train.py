"""kernels/train.py: a Llama training step and a top-2 MoE layer, counted against closed forms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rooflight import api
from rooflight.errors import UsageError
from rooflight.workloads import build, load_model_file

KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def workload(name):
    return next(w for w in load_model_file(KERNELS / "train.py") if w.name == name)


def make(name, device="cpu", **params):
    w = workload(name)
    return build(w, {**w.params, **params}, device=device, dtype=None)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-foreach", "adamw-fused"])
def test_a_training_step_is_counted_whole(optimizer):
    run = make("train_step", optimizer=optimizer, seq=32)
    prof = api.count(run.fn, *run.args)
    assert not prof.uncounted()
    t = api.analyze(prof, "h100", calibrated=False).training
    # tiny: 2 layers of 256 wide, 8 heads / 2 KV heads, MLP 688, vocabulary 1024; 2 x 32 = 64 tokens.
    # linear: per layer wq 256x256 + wk, wv 256x64 each + wo 256x256 + 3 x 256x688 = 692,224; LM head 256x1024
    linear = 2 * 64 * (2 * 692_224 + 256 * 1024)
    assert t.model_flops > 3 * linear and t.model_flops < 3 * linear * 1.1  # + the causal attention
    if optimizer == "adamw-fused":
        # bf16 parameters and states: read p, g, m, v, write p, m, v: 7 x 2 B per parameter (+ step counters)
        assert t.optimizer_bytes_per_parameter == pytest.approx(14, abs=0.01)


def test_the_fused_optimizer_on_meta_is_a_clear_error():
    with pytest.raises(UsageError, match="adamw-foreach"):
        make("train_step", device="meta", optimizer="adamw-fused")


def test_moe_eager_and_grouped_do_the_same_expert_work():
    # 512 tokens x top-2 = 1024 routed rows; each does 3 GEMMs of 256 x 512: 2 x 1024 x 256 x 512 x 3
    expert = 2 * 1024 * 256 * 512 * 3
    for variant in ("eager", "grouped"):
        run = make("moe", variant=variant)
        prof = api.count(run.fn, *run.args)
        assert not prof.uncounted(), variant
        gemm = sum(o.total_flops for o in prof.ops if o.short_op in ("mm", "_grouped_mm"))
        router = 2 * 512 * 256 * 8
        assert gemm == pytest.approx(expert + router, rel=1e-9), variant
