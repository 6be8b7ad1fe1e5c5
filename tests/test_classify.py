"""The classifier on constructed ops and profiles: each label, each threshold from both sides, the
attained fraction and its bands, communication before memory, overhead by a short kernel and by
CPU dispatch, region idle time as overhead, the breakdown summing to the run's time, the sweep
test, and predictions without timing (a tiny Llama counted on the meta device)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from llama import build, decode_one_token, prefill
from rooflight.capture import count
from rooflight.roofline import Ceilings, from_spec
from rooflight.classify import (EXPLAINED_FRACTION, FAR_BELOW_ROOF, NEAR_ROOF, SCALING_OVERHEAD_EXPONENT,
                                SHORT_KERNEL_LAUNCH_MULTIPLE, SHORT_KERNEL_S, Label, band, breakdown, classify,
                                GRAPH_LAUNCH_S, floors, predict, scaling_test, summary)
from rooflight.costs.model import OpCost
from rooflight.errors import UsageError
from rooflight.hardware import load_database
from rooflight.profile_data import OpRecord, OpTiming, Profile, RegionTiming, Timing
from rooflight.regions import region

# The H100 SXM as a quick calibration saw it (measurement.md): 3.00 TB/s copy, 787 TFLOP/s bf16,
# 51.5 fp32, 11.9 µs per eager tiny op.  Round numbers keep the arithmetic in the comments exact.
GPU = Ceilings("H100 (calibrated, test)", memory_bytes_per_s=3.0e12,
               flops_per_s={"bf16_tensor": 787e12, "fp16_tensor": 757e12, "fp32": 51.5e12, "fp8_tensor": 1417e12},
               link_bytes_per_s={"pcie": 25e9, "peer": 400e9}, launch_overhead_s=11.9e-6, source="calibrated")
NO_LAUNCH = Ceilings("GPU without a measured launch overhead", memory_bytes_per_s=3.0e12,
                     flops_per_s={"bf16_tensor": 787e12, "fp32": 51.5e12})
CPU = Ceilings("laptop CPU", memory_bytes_per_s=50e9, flops_per_s={"fp32": 1e12}, device_kind="cpu")


def op(index: int = 0, name: str = "aten::add.Tensor", *, region_: str = "", **cost) -> OpRecord:
    return OpRecord(index, name, region=region_, **cost)


def timed(ops: list[OpRecord], seconds: dict[int, float], *, cpu_seconds: dict[int, float] | None = None,
          regions: tuple[RegionTiming, ...] = (), device_kind: str = "cuda") -> Profile:
    cpu_seconds = cpu_seconds or {}
    timings = tuple(OpTiming(i, s, s, s, cpu_seconds=cpu_seconds.get(i, math.nan), kernels=1 if s else 0)
                    for i, s in seconds.items())
    return Profile(ops=tuple(ops), mode="timed", regions=tuple(dict.fromkeys(o.region for o in ops if o.region)),
                   timing=Timing(device_kind, "test device", repeats=10, warmup=3, ops=timings, regions=regions))


# ---------------------------------------------------------------------------- floors and labels


def test_floors_sum_classes_and_name_the_dominant_roof():
    # 787e12 bf16 FLOPs at 787 TFLOP/s = 1 s; 51.5e9 fp32 FLOPs at 51.5 TFLOP/s = 1 ms: the compute
    # floor sums the classes, and the bf16 term dominates it
    f = floors(op(flops={"bf16_tensor": 787e12, "fp32": 51.5e9}, bytes_read=3e9), GPU)
    assert f.compute_s == pytest.approx(1.001)
    assert f.memory_s == pytest.approx(1e-3)  # 3 GB at 3 TB/s
    assert f.roof_class == "bf16_tensor" and f.dominant == "compute"


def test_memory_bound_near_the_roof_with_evidence():
    # 10 GB read + 5 GB written at 3 TB/s = 5 ms floor; measured 5.5 ms: 5 / 5.5 = 90.9%
    v = classify(op(flops={"fp32": 1e9}, bytes_read=10e9, bytes_written=5e9), 5.5e-3, GPU)
    assert v.label is Label.MEMORY and v.dominant == "memory"
    assert v.memory_floor_s == pytest.approx(5e-3)
    assert v.attained == pytest.approx(5 / 5.5)
    assert v.band == "near the roof"
    assert v.evidence.startswith("memory-bound at 91% of 3.00 TB/s (near the roof): 15.0 GB in 5.50 ms = 2.73 TB/s")
    assert "compute floor 19.4 µs" in v.evidence  # 1e9 / 51.5e12


def test_compute_bound_gemm():
    # 8192^3 bf16 GEMM: 2·8192³ = 1.0995e12 FLOPs / 787e12 = 1.397 ms; 3 x 8192² x 2 B = 403 MB / 3 TB/s = 134 µs
    n = 8192
    mm = op(name="aten::mm.default", flops={"bf16_tensor": 2 * n**3}, bytes_read=2 * n * n * 2, bytes_written=n * n * 2)
    v = classify(mm, 1.75e-3, GPU)
    assert v.label is Label.COMPUTE and v.roof_class == "bf16_tensor"
    assert v.compute_floor_s == pytest.approx(2 * n**3 / 787e12)
    assert v.attained == pytest.approx(2 * n**3 / 787e12 / 1.75e-3)  # 79.8%
    assert v.band == "near the roof"
    assert "compute-bound at 80% of the 787 TFLOP/s bf16_tensor roof (near the roof)" in v.evidence


@pytest.mark.parametrize("attained, expected", [
    (NEAR_ROOF, "near the roof"), (NEAR_ROOF - 1e-9, "below the roof"),
    (FAR_BELOW_ROOF, "below the roof"), (FAR_BELOW_ROOF - 1e-9, "far below the roof"),
    (1.0, "near the roof"), (math.nan, ""),
])
def test_bands(attained, expected):
    assert band(attained) == expected


@pytest.mark.parametrize("attained, expected", [(0.9, "near the roof"), (0.5, "below the roof"),
                                                (0.25, "far below the roof")])
def test_memory_bound_at_30_percent_is_not_memory_bound_at_90(attained, expected):
    # 3 GB at 3 TB/s = 1 ms floor; a long kernel (1/attained ms) stays memory-bound, only the band moves
    v = classify(op(bytes_read=3e9), 1e-3 / attained, GPU)
    assert v.label is Label.MEMORY and v.band == expected and expected in v.evidence
    assert v.attained == pytest.approx(attained)


def test_op_cost_is_accepted_too():
    v = classify(OpCost({"fp32": 1.0}, 3e9, 0.0), 2e-3, GPU)
    assert v.label is Label.MEMORY and v.attained == pytest.approx(0.5)


# ---------------------------------------------------------------------------- communication


def test_pcie_copy_is_communication_bound_before_memory():
    # host -> device 1 GB: PCIe floor 1e9 / 25e9 = 40 ms; the device side's write 1 GB / 3 TB/s = 0.33 ms
    copy = op(name="aten::_to_copy.default", bytes_written=1e9, comm_bytes=1e9, link="pcie", note="host to device")
    v = classify(copy, 50e-3, GPU)
    assert v.label is Label.COMMUNICATION and v.dominant == "communication"
    assert v.comm_floor_s == pytest.approx(40e-3) and v.attained == pytest.approx(0.8)
    assert "host<->device copy over PCIe" in v.evidence and "25.0 GB/s each way" in v.evidence


def test_comm_floor_below_memory_floor_is_not_communication():
    # 1 MB over the peer link = 2.5 µs; 300 MB of device traffic = 100 µs: memory dominates
    v = classify(op(name="_c10d_functional::all_reduce", bytes_read=200e6, bytes_written=100e6, comm_bytes=1e6,
                    link="peer"), 120e-6, GPU)
    assert v.label is Label.MEMORY
    assert v.comm_floor_s == pytest.approx(2.5e-6)


def test_tiny_collective_is_still_communication_and_says_latency():
    # 8 bytes over the peer link: 0.02 ns floor in a 20 µs call; the comm floor is still the largest floor
    v = classify(op(name="_c10d_functional::all_reduce", comm_bytes=8, link="peer", bytes_read=8), 20e-6, GPU)
    assert v.label is Label.COMMUNICATION and v.band == "far below the roof"
    assert "latency, not bandwidth" in v.evidence


def test_a_link_without_a_figure_gives_no_comm_floor():
    v = classify(op(comm_bytes=1e9, link="nvswitch", bytes_read=3e9), 1.1e-3, GPU)
    assert v.comm_floor_s == 0 and v.label is Label.MEMORY


# ---------------------------------------------------------------------------- overhead


def tiny(index: int = 0, region_: str = "") -> OpRecord:
    # a 1024-element fp32 add: 8 KB read, 4 KB written, 1024 FLOPs; floor 12288 / 3e12 = 4.1 ns
    return op(index, region_=region_, flops={"fp32": 1024}, bytes_read=8192, bytes_written=4096)


def test_overhead_bound_by_a_short_kernel():
    v = classify(tiny(), 3.1e-6, GPU)
    assert v.label is Label.OVERHEAD and v.band == ""
    assert v.evidence.startswith("overhead-bound: 3.10 µs kernel, floors explain 0.1%")
    assert "within 2x the 11.9 µs launch overhead" in v.evidence


def test_short_kernel_boundary_is_twice_the_launch_overhead():
    limit = SHORT_KERNEL_LAUNCH_MULTIPLE * GPU.launch_overhead_s  # 23.8 µs
    assert classify(tiny(), limit, GPU).label is Label.OVERHEAD
    # just longer: no longer short, and no CPU time to blame: the larger floor, far below its roof
    above = classify(tiny(), limit * 1.001, GPU)
    assert above.label is Label.MEMORY and above.band == "far below the roof"


def test_short_kernel_boundary_without_a_measured_launch_overhead():
    assert classify(tiny(), SHORT_KERNEL_S, NO_LAUNCH).label is Label.OVERHEAD
    v = classify(tiny(), SHORT_KERNEL_S * 1.01, NO_LAUNCH)
    assert v.label is Label.MEMORY
    assert "under 10.0 µs" in classify(tiny(), 5e-6, NO_LAUNCH).evidence


def test_explained_fraction_boundary():
    # a 10 µs kernel (short); its memory floor just under / at 20% of it
    t = 10e-6
    below = op(bytes_read=(EXPLAINED_FRACTION - 0.001) * t * 3e12)
    at = op(bytes_read=EXPLAINED_FRACTION * t * 3e12)
    assert classify(below, t, GPU).label is Label.OVERHEAD
    v = classify(at, t, GPU)
    assert v.label is Label.MEMORY and v.attained == pytest.approx(EXPLAINED_FRACTION)
    assert v.band == "far below the roof"


def test_overhead_bound_by_cpu_dispatch_longer_than_gpu_time():
    # a 100 µs kernel (not short) whose floors explain 5%: the host took 120 µs to issue it
    slow = op(bytes_read=0.05 * 100e-6 * 3e12)
    v = classify(slow, 100e-6, GPU, cpu_seconds=120e-6)
    assert v.label is Label.OVERHEAD and v.cpu_seconds == 120e-6
    assert "CPU dispatch 120 µs >= GPU time" in v.evidence
    # the host was quicker than the kernel: a poor kernel, not overhead
    assert classify(slow, 100e-6, GPU, cpu_seconds=90e-6).label is Label.MEMORY
    # dispatch longer than the kernel does not matter when the floors explain the time
    busy = op(bytes_read=0.5 * 100e-6 * 3e12)
    assert classify(busy, 100e-6, GPU, cpu_seconds=120e-6).label is Label.MEMORY


def test_a_cuda_graph_replay_pays_no_dispatch_and_its_own_launch_cost():
    # eager: a 15 µs kernel whose floors explain 5% is short against 11.9 µs per launch, and its
    # 40 µs of dispatch exceeds it; replayed from a CUDA graph neither holds (1 µs per kernel,
    # no dispatch per op): the same kernel is memory-bound, far below the roof
    slow = op(bytes_read=0.05 * 15e-6 * 3e12)
    eager = timed([slow], {0: 15e-6}, cpu_seconds={0: 40e-6})
    assert breakdown(eager, GPU).verdicts[0].label is Label.OVERHEAD
    graph = replace(eager, timing=replace(eager.timing, cuda_graph=True))
    cal = replace(GPU, graph_launch_overhead_s=1.0e-6)
    v = breakdown(graph, cal).verdicts[0]
    assert v.label is Label.MEMORY and v.band == "far below the roof" and math.isnan(v.cpu_seconds)
    # a 2 µs kernel of a tiny add in the graph is still short against twice its 1 µs launch
    small = timed([tiny()], {0: 2e-6})
    short = breakdown(replace(small, timing=replace(small.timing, cuda_graph=True)), cal).verdicts[0]
    assert short.label is Label.OVERHEAD and "within 2x the 1.00 µs launch overhead" in short.evidence
    # no graph figure calibrated: the default per-kernel cost of a replay stands in
    assert breakdown(graph, GPU).verdicts[0].label is Label.MEMORY
    assert GRAPH_LAUNCH_S == 1e-6


def test_an_op_that_launched_nothing_is_overhead_with_no_time():
    v = classify(op(name="aten::view.default"), 0.0, GPU, cpu_seconds=4e-6, kernels=0)
    assert v.label is Label.OVERHEAD and v.seconds == 0 and math.isnan(v.attained)
    assert "no kernel ran" in v.evidence and "4.00 µs" in v.evidence


def test_long_kernel_with_no_counted_cost_is_assumed_memory_bound():
    v = classify(op(name="aten::some_custom_op", counted=False), 500e-6, GPU)
    assert v.label is Label.MEMORY and v.dominant == "none" and "assumed" in v.evidence


def test_an_op_that_does_no_work_is_overhead_however_long():
    # counted, zero FLOPs and zero bytes (a view on a CPU run takes wall time all the same)
    v = classify(op(name="aten::view.default"), 50e-6, GPU)
    assert v.label is Label.OVERHEAD and "moves no bytes and does no FLOPs" in v.evidence


# ---------------------------------------------------------------------------- predictions


def test_predict_without_timing():
    n = 4096
    gemm = op(flops={"bf16_tensor": 2 * n**3}, bytes_read=2 * n * n * 2, bytes_written=n * n * 2)
    gemv = op(flops={"bf16_tensor": 2 * n * n}, bytes_read=(n * n + n) * 2, bytes_written=n * 2)
    p_gemm, p_gemv = predict(gemm, GPU), predict(gemv, GPU)
    assert p_gemm.label is Label.COMPUTE and p_gemv.label is Label.MEMORY
    assert math.isnan(p_gemm.attained) and math.isnan(p_gemm.seconds) and p_gemm.predicted
    assert p_gemm.weight_s == pytest.approx(2 * n**3 / 787e12)
    assert "predicted, no timing" in p_gemv.evidence
    assert "intensity 1 FLOP/B" in p_gemv.evidence  # 2n² / (2n² + 4n) = 0.9995
    copy = op(bytes_written=1e6, comm_bytes=1e6, link="pcie")
    assert predict(copy, GPU).label is Label.COMMUNICATION
    assert predict(op(name="aten::view.default"), GPU).label is Label.OVERHEAD


def test_predicted_breakdown_of_a_tiny_llama_on_meta():
    model = build("tiny", device="meta", max_seq=512)

    def step():
        with region("prefill"):
            prefill(model, torch.zeros(1, 256, dtype=torch.long, device="meta"))
        with region("decode"):
            decode_one_token(model, torch.zeros(1, 1, dtype=torch.long, device="meta"), 256)

    prof = count(step)
    h100 = from_spec(load_database().get("h100"))
    d = breakdown(prof, h100)
    assert not d.timed and d.region("decode").headline is Label.MEMORY
    assert all(v.predicted for v in d.verdicts.values())
    # the whole run weighs each op by its largest floor
    total = sum(v.max_floor_s for v in d.verdicts.values())
    assert d.region("").total_seconds == pytest.approx(total)
    assert d.region("prefill").total_seconds + d.region("decode").total_seconds == pytest.approx(total)
    assert "(predicted from counts on H100 SXM, no timing)" in summary(d, "decode")
    assert summary(d, "decode").startswith("decode: 100% of roofline time memory-bound")


# ---------------------------------------------------------------------------- regions and the run


def decode_profile() -> Profile:
    """decode: 7.8 ms memory-bound, 0.6 ms of short kernels + 0.9 ms GPU idle, 0.7 ms compute-bound."""
    n = 4096
    ops = [
        op(0, region_="decode", bytes_read=7.8e-3 * 0.9 * 3e12),  # 90% of 3 TB/s for 7.8 ms
        *[tiny(i, "decode") for i in range(1, 201)],  # 200 short kernels of 3 µs = 0.6 ms
        op(201, region_="decode", flops={"bf16_tensor": 0.8 * 0.7e-3 * 787e12}, bytes_read=2 * n * n),
        op(202, region_="prefill", flops={"bf16_tensor": 0.7 * 2e-3 * 787e12}, bytes_read=1e6),
    ]
    seconds = {0: 7.8e-3, **{i: 3e-6 for i in range(1, 201)}, 201: 0.7e-3, 202: 2e-3}
    busy_decode = 7.8e-3 + 0.6e-3 + 0.7e-3
    regions = (RegionTiming("", wall_seconds=busy_decode + 2e-3 + 1.0e-3, busy_seconds=busy_decode + 2e-3),
               RegionTiming("decode", wall_seconds=busy_decode + 0.9e-3, busy_seconds=busy_decode),
               RegionTiming("prefill", wall_seconds=2e-3, busy_seconds=2e-3))
    return timed(ops, seconds, regions=regions)


def test_region_breakdown_counts_idle_time_as_overhead():
    d = breakdown(decode_profile(), GPU)
    r = d.region("decode")
    assert r.seconds_by_label[Label.MEMORY] == pytest.approx(7.8e-3)
    assert r.seconds_by_label[Label.OVERHEAD] == pytest.approx(0.6e-3 + 0.9e-3)
    assert r.seconds_by_label[Label.COMPUTE] == pytest.approx(0.7e-3)
    assert r.idle_seconds == pytest.approx(0.9e-3)
    assert r.fraction(Label.MEMORY) == pytest.approx(0.78) and r.headline is Label.MEMORY
    text = summary(d, "decode")
    assert text.startswith("decode: 78% of time memory-bound, 15% overhead-bound (GPU idle 9%), 7% compute-bound; ")
    assert text.endswith(" ms")  # 10 ms, however the float rounds


def test_whole_run_breakdown_sums_to_the_run_time():
    d = breakdown(decode_profile(), GPU)
    whole = d.region("")
    wall = d.region("").wall_seconds
    assert whole.total_seconds == pytest.approx(wall)  # op time + GPU idle = the measured wall time
    assert sum(whole.fractions.values()) == pytest.approx(1.0)
    assert whole.total_seconds == pytest.approx(d.region("decode").total_seconds + d.region("prefill").total_seconds
                                                + 0.1e-3)  # the run's own idle beyond its regions'
    assert summary(d).startswith("whole run: ")


def test_an_idle_region_is_overhead_bound():
    # 1 ms of memory-bound work inside 4 ms of wall time: 75% of the region is the GPU waiting
    ops = [op(0, region_="sample", bytes_read=0.9e-3 * 3e12)]
    prof = timed(ops, {0: 1e-3}, regions=(RegionTiming("sample", 4e-3, 1e-3), RegionTiming("", 4e-3, 1e-3)))
    r = breakdown(prof, GPU).region("sample")
    assert r.headline is Label.OVERHEAD and r.fraction(Label.OVERHEAD) == pytest.approx(0.75)


def test_an_untimed_op_of_a_timed_profile_weighs_nothing():
    ops = [op(0, bytes_read=3e9), op(1, bytes_read=3e9)]
    d = breakdown(timed(ops, {0: 1.25e-3}), GPU)
    assert d.verdicts[1].seconds == 0 and "not timed" in d.verdicts[1].evidence
    assert d.region("").total_seconds == pytest.approx(1.25e-3)


def test_nested_regions_and_unknown_region():
    ops = [op(0, region_="decode/attn", bytes_read=3e9), op(1, region_="decode", bytes_read=3e9)]
    d = breakdown(timed(ops, {0: 1e-3, 1: 2e-3}), GPU)
    assert set(d.regions) == {"", "decode", "decode/attn"}
    assert d.region("decode").total_seconds == pytest.approx(3e-3)
    assert d.region("decode/attn").ops == (0,)
    with pytest.raises(UsageError, match="no region 'prefill'"):
        d.region("prefill")


def test_cpu_timings_against_cpu_ceilings_say_cpu():
    # 50 MB at 50 GB/s = 1 ms; 2 ms of wall time: memory-bound at 50%
    ops = [op(0, bytes_read=50e6), op(1, name="aten::view.default")]
    prof = timed(ops, {0: 2e-3, 1: 3e-6}, device_kind="cpu", regions=(RegionTiming("", 2.5e-3, 2.003e-3),))
    d = breakdown(prof, CPU)
    assert d.device_kind == "cpu"
    assert d.verdicts[0].evidence.startswith("CPU: memory-bound at 50% of 50.0 GB/s")
    assert d.verdicts[1].label is Label.OVERHEAD and d.verdicts[1].evidence.startswith("CPU: overhead-bound")
    assert summary(d).startswith("CPU timing: whole run: ")
    with pytest.raises(UsageError, match="CPU timings cannot be held against CUDA ceilings"):
        breakdown(prof, GPU)


# ---------------------------------------------------------------------------- the sweep test


def test_scaling_flat_time_is_overhead_bound():
    # 8x the work, 5% more time: launch overhead dominates
    a, overhead = scaling_test([1, 2, 4, 8], [10e-6, 10.1e-6, 10.3e-6, 10.5e-6])
    assert overhead and a == pytest.approx(0.0236, abs=1e-3)


def test_scaling_linear_time_is_not():
    a, overhead = scaling_test([1e6, 2e6, 4e6, 8e6], [1e-3, 2e-3, 4e-3, 8e-3])
    assert a == pytest.approx(1.0) and not overhead


def test_scaling_threshold_from_both_sides():
    work = [1, 2, 4, 8, 16]
    below = [w ** (SCALING_OVERHEAD_EXPONENT - 0.01) for w in work]
    above = [w ** (SCALING_OVERHEAD_EXPONENT + 0.01) for w in work]
    assert scaling_test(work, below)[1] and not scaling_test(work, above)[1]


def test_scaling_test_rejects_bad_sweeps():
    with pytest.raises(UsageError, match="two different"):
        scaling_test([4, 4], [1.0, 2.0])
    with pytest.raises(UsageError, match="positive"):
        scaling_test([0, 4], [1.0, 2.0])
    with pytest.raises(UsageError, match="one time per work point"):
        scaling_test([1, 2, 3], [1.0, 2.0])


def test_datasheet_ceilings_work_as_well():
    # the datasheet H100 (3.35 TB/s, no launch overhead measured): a 3 µs add is overhead-bound by
    # the absolute threshold
    h100 = from_spec(load_database().get("h100"))
    assert h100.launch_overhead_s is None
    v = classify(tiny(), 3e-6, h100)
    assert v.label is Label.OVERHEAD and "under 10.0 µs" in v.evidence


def test_cpu_timing_end_to_end_on_a_tiny_llama():
    timing = pytest.importorskip("rooflight.timing")
    model = build("tiny", max_seq=64, dtype=torch.float32)

    def step():
        with region("decode"):
            decode_one_token(model, torch.zeros(1, 1, dtype=torch.long), 8)

    prof = timing.profile(step, warmup=1, repeats=3, device="cpu")
    d = breakdown(prof, CPU)
    assert d.timed and d.device_kind == "cpu"
    assert all(v.evidence.startswith("CPU: ") for v in d.verdicts.values())
    # on a CPU the op's time is its dispatch: no verdict blames dispatch being longer than itself
    assert not any("CPU dispatch" in v.evidence and ">=" in v.evidence for v in d.verdicts.values())
    ran = sum(t.seconds for t in prof.timing.ops)
    whole = d.region("")
    assert whole.total_seconds == pytest.approx(ran + whole.idle_seconds)
    assert summary(d, "decode").startswith("CPU timing: decode: ")


def test_ops_faster_than_the_memory_roof_are_noted_as_warm_cache():
    from rooflight.api import analyze

    # 32 MiB of weights read in 8 µs: 4.2 TB/s, above the H100 SXM's 3.35 TB/s: from L2
    gemv = op(0, "aten::mm.default", flops={"bf16_tensor": 2 * 4096 * 4096}, bytes_read=2 * 4096 * 4096,
              bytes_written=2 * 4096)
    fast = timed([gemv], {0: 8e-6})
    a = analyze(fast, "h100_sxm", calibrated=False)
    note = next(n for n in a.notes if "warm-cache" in n)
    assert note.startswith("1 memory-bound op beat the device-memory roof (up to 125% of it)")
    assert "50 MB L2 of the H100 SXM" in note and "--flush-l2" in note
    # at the roof or below, or timed with L2 flushed: no such note
    assert not any("warm-cache" in n for n in analyze(timed([gemv], {0: 12e-6}), "h100_sxm", calibrated=False).notes)
    flushed = replace(fast, timing=replace(fast.timing, flush_l2=True))
    assert not any("warm-cache" in n for n in analyze(flushed, "h100_sxm", calibrated=False).notes)
