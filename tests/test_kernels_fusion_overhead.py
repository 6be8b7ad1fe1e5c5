"""kernels/fusion.py, kernels/overhead.py and the workloads of kernels/llama.py: each variant against
its float64 reference, the bytes fusion saves in closed form, the compiled code running inside a
capture, the decode step's modes, and a 7B counted on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rooflight
from rooflight.errors import NoGPUError, UsageError
from rooflight.workloads import Workload, build, check_run, load_model_file
from tests.kernel_checks import counted

import fusion

import llama

import overhead

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"


def workloads(name: str) -> dict[str, Workload]:
    return {w.name: w for w in load_model_file(KERNELS / name)}


def make(w: Workload, device: str = "cpu", **params) -> rooflight.Run:
    return build(w, {**w.params, **params}, device=device, dtype=None)


# ---------------------------------------------------------------------------- fusion

SMALL = {"rmsnorm_chain": {"tokens": 64, "dim": 256}, "swiglu_chain": {"tokens": 64, "intermediate": 384},
         "add_rmsnorm_chain": {"tokens": 64, "dim": 256}}


def test_fusion_declares_three_chains_swept_over_the_variant():
    ws = workloads("fusion.py")
    assert list(ws) == ["rmsnorm_chain", "swiglu_chain", "add_rmsnorm_chain"]
    for w in ws.values():
        assert w.sweep == {"variant": ("eager", "compiled")} and w.params["backend"] == "inductor"


@pytest.mark.parametrize("chain", list(SMALL))
@pytest.mark.parametrize("variant", fusion.VARIANTS)
def test_each_chain_matches_its_float64_reference_on_cpu(chain, variant):
    # aot_eager: the compiled path (custom op, torch.compile, set_stance) without inductor's
    # C++ compile, which takes ~20 s cold on a CPU; the GPU test runs inductor
    run = make(workloads("fusion.py")[chain], variant=variant, backend="aot_eager", seed=11, **SMALL[chain])
    err, tol = check_run(run)
    assert err <= tol, (chain, variant, err)


T, D, I = 64, 256, 384  # rows, RMSNorm width, SwiGLU width (bf16: 2 bytes, fp32 intermediates 4)


@pytest.mark.parametrize("chain, kernels, eager_bytes, fused_bytes, fused_flops", [
    # upcast 6TD, square 8TD, mean 4TD+4T, +eps 8T, rsqrt 8T, scale 8TD+4T, downcast 6TD, weight 4TD+2D
    ("rmsnorm_chain", 8, 36 * T * D + 24 * T + 2 * D, 4 * T * D + 2 * D, 4 * T * D),  # 591,872 -> 66,048
    # silu 4TI, product 6TI
    ("swiglu_chain", 2, 10 * T * I, 6 * T * I, 5 * T * I),  # 245,760 -> 147,456
    # the add 6TD, then RMSNorm of the sum; fused: read x, residual, w, write y and the sum
    ("add_rmsnorm_chain", 9, 42 * T * D + 24 * T + 2 * D, 8 * T * D + 2 * D, 5 * T * D),  # 690,176 -> 131,584
])
def test_the_compiled_chain_is_one_op_that_moves_the_fused_bytes(chain, kernels, eager_bytes, fused_bytes,
                                                                  fused_flops):
    w = workloads("fusion.py")[chain]
    eager = counted(make(w, variant="eager", device="meta", **SMALL[chain]))
    fused = counted(make(w, variant="compiled", device="meta", **SMALL[chain]))
    assert len([o for o in eager.ops if o.bytes]) == kernels
    assert sum(o.bytes for o in eager.ops) == eager_bytes
    [op] = fused.ops
    assert op.op == f"rooflight_kernels::{chain.removesuffix('_chain')}.default"
    assert op.bytes == fused_bytes and dict(op.flops) == {"fp32": fused_flops}


def test_real_sizes_count_on_meta():
    w = workloads("fusion.py")["rmsnorm_chain"]
    [op] = counted(make(w, variant="compiled", device="meta")).ops
    assert op.bytes == 4 * 4096 * 4096 + 2 * 4096  # read x and w, write y: 67,117,056
    eager = counted(make(w, variant="eager", device="meta"))
    assert sum(o.bytes for o in eager.ops) / op.bytes == pytest.approx(9.0, rel=0.01)


def test_the_compiled_code_runs_inside_a_capture_that_forces_eager():
    compiles = []

    @torch._dynamo.register_backend(name="rooflight_test_backend")
    def backend(gm, example_inputs):
        compiles.append(len(example_inputs))
        return gm.forward

    try:
        x = torch.randn(3, 40, dtype=torch.bfloat16)  # a shape no other test compiled
        y = fusion.fused("swiglu", "rooflight_test_backend")
        prof = rooflight.count(y, x, x)
        assert compiles, "the compiled function did not run under the capture"
        assert [o.short_op for o in prof.ops] == ["swiglu"]
    finally:  # unregister (private registry: tolerate its layout changing)
        registry = torch._dynamo.backends.registry
        for table in ("_COMPILER_FNS", "_BACKENDS"):
            getattr(registry, table, {}).pop("rooflight_test_backend", None)


def test_loading_the_model_file_twice_reuses_the_ops():
    first, second = workloads("fusion.py"), workloads("fusion.py")
    for ws in (first, second):
        err, tol = check_run(make(ws["swiglu_chain"], variant="compiled", backend="aot_eager", **SMALL["swiglu_chain"]))
        assert err <= tol


# ---------------------------------------------------------------------------- overhead


def test_overhead_declares_only_its_decode_step():
    ws = workloads("overhead.py")
    assert list(ws) == ["decode_step"]  # llama.py's own workloads do not leak in through the import
    w = ws["decode_step"]
    assert w.params == {"mode": "eager", "config": "small", "batch": 1, "context": 256, "seed": 0}
    assert w.sweep == {"mode": overhead.default_modes()}
    assert overhead.default_modes() == (("eager",) if not torch.cuda.is_available() else
                                        overhead.MODES if overhead.RUN_TAKES_OPTIONS else ("eager", "reduce_overhead"))


def test_the_eager_decode_step_matches_its_float64_reference_on_cpu():
    run = make(workloads("overhead.py")["decode_step"], config="tiny", context=64, seed=4)
    err, tol = check_run(run)
    assert err <= tol


def test_every_mode_counts_the_same_eager_kernels_on_meta():
    w = workloads("overhead.py")["decode_step"]
    modes = [m for m in overhead.MODES if m != "cuda_graph" or overhead.RUN_TAKES_OPTIONS]
    counts = {}
    for mode in modes:
        prof = counted(make(w, device="meta", mode=mode))
        counts[mode] = ([o.op for o in prof.ops], sum(o.bytes for o in prof.ops))
    assert all(c == counts["eager"] for c in counts.values())
    # batch 1: the step reads every weight once; `small` has 122M bf16 parameters (245 MB)
    params = llama.LlamaConfig.from_name("small").params
    assert 2 * params - 2 * 32000 * 1024 < counts["eager"][1] < 2.1 * params  # embedding: one row, not the table


def test_cuda_graph_mode_asks_the_runner_for_a_graph_replay():
    w = workloads("overhead.py")["decode_step"]
    if overhead.RUN_TAKES_OPTIONS:
        assert make(w, device="meta", mode="cuda_graph").options == {"cuda_graph": True}
    else:
        with pytest.raises(UsageError, match="--cuda-graph"):
            make(w, device="meta", mode="cuda_graph")


@pytest.mark.parametrize("mode", overhead.GPU_MODES)
def test_gpu_modes_refuse_the_cpu(mode):
    with pytest.raises(NoGPUError, match="mode=eager"):
        make(workloads("overhead.py")["decode_step"], device="cpu", mode=mode)


# ---------------------------------------------------------------------------- llama workloads


def test_llama_declares_prefill_and_decode():
    ws = workloads("llama.py")
    assert list(ws) == ["prefill", "decode"]
    assert ws["prefill"].params == {"config": "tiny", "batch": 1, "prompt": 128, "seed": 0}
    assert ws["decode"].params == {"config": "tiny", "batch": 1, "context": 512, "seed": 0}
    assert ws["prefill"].sweep == {"prompt": (128, 512, 2048)} and ws["decode"].sweep == {"batch": (1, 8, 64)}


@pytest.mark.parametrize("name, params", [("prefill", {"prompt": 48, "batch": 2}),
                                          ("decode", {"context": 48, "batch": 3})])
def test_llama_matches_its_float64_copy_on_cpu(name, params):
    err, tol = check_run(make(workloads("llama.py")[name], seed=9, **params))
    assert err <= tol, err


def test_reference_copy_is_float64_and_leaves_the_model_alone():
    model = llama.build("tiny", batch=1, max_seq=8)
    ref = llama.reference_copy(model)
    assert {p.dtype for p in ref.parameters()} == {torch.float64}
    assert ref.layers[0].attention.cache.k.dtype == torch.float64
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert llama.reference_copy(model, torch.float32).output.weight.dtype == torch.float32


def _tensor_flops(prof, op: str) -> float:
    return sum(v for o in prof.ops if o.short_op == op for k, v in o.flops.items() if k.endswith("_tensor"))


def test_a_7b_counts_on_meta_with_the_closed_form_flops_and_bytes():
    # llama-2-7b, 32 layers: per token 4 x 4096^2 (q, k, v, o) + 3 x 4096 x 11008 (MLP) weights;
    # the LM head (4096 x 32000) runs on the last position only
    ws = workloads("llama.py")
    per_token = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # 6,476,005,376 weights
    head = 4096 * 32000
    prefill = counted(make(ws["prefill"], device="meta", config="llama-2-7b", prompt=128))
    assert _tensor_flops(prefill, "mm") == 2 * 128 * per_token + 2 * head  # 1,658,119,520,256
    # causal attention over 128 positions is one 128x128 tile, which the kernel computes whole:
    # QK^T and PV, 4 * S^2 * D per head, 32 heads, 32 layers
    assert _tensor_flops(prefill, "scaled_dot_product_attention") == 32 * 32 * 4 * 128 * 128 * 128
    decode = counted(make(ws["decode"], device="meta", config="llama-2-7b", batch=1, context=512))
    weights = 2 * (per_token + head)  # bf16: 13.2 GB
    kv = 32 * 2 * 512 * 4096 * 2  # keys and values of 512 positions, bf16: 268 MB
    assert weights + kv < sum(o.bytes for o in decode.ops) < 1.02 * (weights + kv)


def test_the_runner_counts_a_7b_on_meta_as_the_cli_does():
    # `rooflight profile kernels/llama.py --param config=llama-2-7b --device meta --count-only --no-sweep`
    from rooflight.runner import Options, profile_workloads

    path = KERNELS / "llama.py"
    results = profile_workloads(path, load_model_file(path), Options(device="meta", count_only=True),
                                params={"config": "llama-2-7b"}, default_sweep=False)
    assert [(r.workload, r.label) for r in results] == [("prefill", "config=llama-2-7b"),
                                                         ("decode", "config=llama-2-7b")]
    for r in results:
        assert r.profile.mode == "count" and r.check is None and not r.profile.uncounted()
        assert r.profile.params["config"] == "llama-2-7b"


# ---------------------------------------------------------------------------- on the GPU


@pytest.mark.gpu
@pytest.mark.parametrize("chain", list(SMALL))
def test_gpu_inductor_fuses_each_chain_into_one_kernel_that_beats_eager(chain):
    w = workloads("fusion.py")[chain]
    times = {}
    for variant in fusion.VARIANTS:
        run = make(w, device="cuda", variant=variant)
        err, tol = check_run(run)
        assert err <= tol, (chain, variant, err)
        prof = rooflight.profile(run.fn, *run.args, warmup=3, repeats=10)
        if variant == "compiled":
            [t] = prof.timing.ops
            assert t.kernels == 1, f"{chain}: inductor ran {t.kernels} kernels for the fused op"
        times[variant] = prof.timing.region("").busy_seconds
    assert times["compiled"] < times["eager"], times


@pytest.mark.gpu
def test_gpu_a_cuda_graph_removes_the_idle_time_of_the_eager_step():
    run = make(workloads("overhead.py")["decode_step"], device="cuda")
    err, tol = check_run(run)
    assert err <= tol
    eager = rooflight.profile(run.fn, *run.args, warmup=3, repeats=10)
    graph = rooflight.profile(run.fn, *run.args, warmup=3, repeats=10, cuda_graph=True)
    idle = {name: p.timing.region("").idle_seconds / p.timing.region("").wall_seconds
            for name, p in (("eager", eager), ("graph", graph))}
    a = rooflight.analyze(eager)
    assert str(a.diagnosis.headline) == "overhead-bound", a.diagnosis.region("")
    assert idle["graph"] < 0.5 * idle["eager"], idle
    assert graph.timing.region("").wall_seconds < eager.timing.region("").wall_seconds


@pytest.mark.gpu
def test_gpu_reduce_overhead_is_correct_and_faster_than_eager():
    w = workloads("overhead.py")["decode_step"]
    walls = {}
    for mode in ("eager", "reduce_overhead"):
        run = make(w, device="cuda", mode=mode)
        for _ in range(3):  # compile, record the graph, replay
            run()
        err, tol = check_run(run)
        assert err <= tol, (mode, err)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            run()
        end.record()
        torch.cuda.synchronize()
        walls[mode] = start.elapsed_time(end) / 20
    assert walls["reduce_overhead"] < walls["eager"], walls


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["prefill", "decode"])
@pytest.mark.parametrize("config", ["tiny", "small"])
def test_gpu_llama_matches_its_reference(name, config):
    err, tol = check_run(make(workloads("llama.py")[name], device="cuda", config=config))
    assert err <= tol, err
