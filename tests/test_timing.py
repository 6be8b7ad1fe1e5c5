"""Timing: the kernel<->op join on a profiler trace recorded on an H100 (tests/fixtures, made by
tests/fixtures/record_traces.py), and the CPU timing path end to end."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rooflight import timing, trace
from rooflight.errors import NoGPUError, UsageError
from rooflight.profile_data import Profile
from rooflight.regions import region

FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def recorded():
    labelled = trace.parse(trace.read_trace(FIX / "trace_labelled.json.gz"))
    timed = trace.parse(trace.read_trace(FIX / "trace_timed.json.gz"))
    prof = Profile.load(FIX / "trace_profile.json")
    return labelled, timed, prof


def test_every_kernel_of_the_labelled_pass_joins_to_an_op(recorded):
    labelled, _, prof = recorded
    events = [d for d in labelled.device_events if d.repeat == 0]
    assert events and all(d.op_index >= 0 for d in events)
    kinds = Counter((prof.ops[d.op_index].short_op, d.kind) for d in events)
    # each matrix product launched a GEMM kernel; the attention launched cuDNN's kernels
    gemms = [d for d in events if prof.ops[d.op_index].short_op == "mm"]
    assert gemms and all(d.kind == "kernel" for d in gemms)
    assert all("scaled_dot_product" in prof.ops[d.op_index].op for d in events if "cudnn" in d.name.lower()
               or "fmha" in d.name.lower() or "flash" in d.name.lower())
    assert kinds[("mm", "kernel")] == sum(1 for o in prof.ops if o.short_op == "mm")
    # regions come from the labels open at launch
    assert {d.region for d in events} == {"decode"}


def test_a_region_entered_twice_is_timed_entry_by_entry():
    """A region marked around the same code in two places (`with rooflight.region("attn")` in
    each layer): its wall time is its entries', not the span from the first to the last, which
    would hold the 800 µs of other work between them as the region's idle time."""
    from rooflight.costs.model import TensorMeta
    from rooflight.profile_data import OpRecord

    x = TensorMeta.contiguous((1024, 1024), "bfloat16", "cuda:0")
    ops = tuple(OpRecord(i, "aten::mm.default", region="" if i == 1 else "attn", device="cuda:0", inputs=(x, x),
                         outputs=(x,)) for i in range(3))
    counted = Profile(ops=ops, workload="w", device="cuda:0", regions=("attn",))
    names, spans = ["k0", "k1", "k2"], [(0, 100), (100, 850), (900, 1000)]
    events, ann = [], []
    for rep in range(2):
        t0 = 2000 * rep
        ann += [trace.HostRange(f"{trace.REPEAT_PREFIX}{rep}", "user_annotation", 1, t0 - 5, t0 + 1010),
                # the host leaves each entry long before its kernel ends (the GPU runs behind)
                trace.HostRange(f"{trace.REGION_PREFIX}attn", "user_annotation", 1, t0 - 2, t0 + 20),
                trace.HostRange(f"{trace.REGION_PREFIX}attn", "user_annotation", 1, t0 + 880, t0 + 905)]
        for i, (n, (a, b)) in enumerate(zip(names, spans)):
            launch = t0 + (1 if i == 0 else 30 if i == 1 else 890)
            events.append(trace.DeviceEvent(n, "kernel", t0 + a, t0 + b, 7, 10 * rep + i, (1,), (1,), launch, -1,
                                            "" if i == 1 else "attn", rep, None))
    t = timing.aggregate_gpu(trace.Trace(tuple(events), tuple(ann), ()), names, [0, 1, 2], counted, repeats=2,
                             warmup=0, device_name="H200")
    attn = t.region("attn")
    # entries [-2, 100) and [880, 1000): 102 + 120 = 222 µs of wall, 200 µs of it kernels; the
    # GPU idled from 850, but the host entered the second entry only at 880
    assert attn.wall_seconds == pytest.approx(222e-6) and attn.busy_seconds == pytest.approx(200e-6)
    assert t.region("").wall_seconds == pytest.approx(1015e-6)
    # the GPU behind the host: the other kernel runs until 900, past the entry's start at 880,
    # so none of its time is the region's (the second entry is its kernel's 100 µs)
    late = [replace(d, end_us=d.end_us + 50) if d.name == "k1" else d for d in events]
    t = timing.aggregate_gpu(trace.Trace(tuple(late), tuple(ann), ()), names, [0, 1, 2], counted, repeats=2,
                             warmup=0, device_name="H200")
    assert t.region("attn").wall_seconds == pytest.approx(202e-6)


def test_the_loop_between_forward_steps_is_the_gaps_between_them():
    from rooflight.steps import BETWEEN, UNMARKED

    class S:
        def __init__(self, name, kind):
            self.name, self.kind = name, kind

    bounds = {"step 1": (0.0, 3.0), "step 2": (5.0, 9.0), "step 3": (10.0, 12.0), BETWEEN: (3.0, 10.0)}
    walls = {"step 1": 3.0, "step 2": 4.0, "step 3": 2.0}
    fwd = [S("step 1", "forward"), S("step 2", "forward"), S("step 3", "forward")]
    assert timing.left_by_steps(fwd, bounds, walls) == {BETWEEN: 3.0}  # 3 to 5 and 9 to 10, not 3 to 10
    marked = [S("step 1", "marked"), S("step 2", "marked")]
    assert timing.left_by_steps(marked, bounds, walls) == {UNMARKED: 2.0}  # 0 to 9, less 3 + 4
    # one marked step entered many times (a region in every layer): 0 to 12, less its entries' 7
    assert timing.left_by_steps([S("attn", "marked")], {"attn": (0.0, 12.0)}, {"attn": 7.0}) == {UNMARKED: 5.0}
    assert timing.left_by_steps([S("step 1", "train"), S("step 2", "train")], bounds, walls) == {}  # they tile the run


def test_plain_passes_align_with_the_labelled_pass(recorded):
    labelled, timed, prof = recorded
    ref = [d for d in labelled.device_events if d.repeat == 0]
    for rep in (0, 1):
        seq = [d.name for d in timed.device_events if d.repeat == rep]
        assert trace.align_to_ops([d.name for d in ref], [d.op_index for d in ref], seq)[0] == list(range(len(ref)))


def test_aggregate_gives_per_op_kernel_and_region_times(recorded):
    labelled, timed, prof = recorded
    ref = [d for d in labelled.device_events if d.repeat == 0]
    t = timing.aggregate_gpu(timed, [d.name for d in ref], [d.op_index for d in ref], prof, repeats=2, warmup=3,
                              flush_l2=False, cuda_graph=False, notes=[], device_name="NVIDIA H100 80GB HBM3")
    assert t.device_kind == "cuda" and not t.notes
    launching = {d.op_index for d in ref}
    assert {o.op_index for o in t.ops} == launching
    for o in t.ops:
        assert 0 < o.seconds_min <= o.seconds <= o.seconds_max < 1e-3  # a tiny model: every op under a millisecond
        assert o.kernels >= 1
        assert o.cpu_seconds > 0  # the outermost aten op open at the launch
    assert len(t.kernels) == len(ref)
    total, dec = t.total, t.region("decode")
    assert total is not None and dec is not None
    busy = sum(k.seconds for k in t.kernels)
    # kernels do not overlap on one stream: busy time is the sum of kernel times (within rounding)
    assert dec.busy_seconds == pytest.approx(busy, rel=0.05)
    assert 0 < dec.busy_seconds <= dec.wall_seconds <= total.wall_seconds
    assert 0 < total.busy_fraction < 1


def test_kernels_in_place_of_one_ops_kernels_join_that_op():
    # reference (labelled run): op 0 launched a, b; op 1 launched c, d, e (eager); op 2 launched f
    ref, ops = ["a", "b", "c", "d", "e", "f"], [0, 0, 1, 1, 1, 2]
    # timed run: op 1 ran one compiled kernel instead of its three
    pos, own = trace.align_to_ops(ref, ops, ["a", "b", "fused", "f"])
    assert pos == [0, 1, -1, 5] and own == [0, 0, 1, 2]
    # a kernel inserted between two kernels of one op (a split-K reduction) joins it
    assert trace.align_to_ops(ref, ops, ["a", "b", "c", "d", "reduce", "e", "f"])[1] == [0, 0, 1, 1, 1, 1, 2]
    # in place of kernels of two ops, or inserted between two ops: no owner
    assert trace.align_to_ops(ref, ops, ["a", "x", "d", "e", "f"])[1] == [0, -1, 1, 1, 2]
    assert trace.align_to_ops(ref, ops, ["a", "b", "x", "c", "d", "e", "f"])[1] == [0, 0, -1, 1, 1, 1, 2]
    # the labelled run's unlabelled kernels (rooflight's own copies after the op) own nothing
    ref2, ops2 = ["a", "e1", "e2", "cpy", "cpy", "f"], [0, 1, 1, -1, -1, 2]
    assert trace.align_to_ops(ref2, ops2, ["a", "fused", "f"])[1] == [0, 1, 2]
    # identical sequences: every kernel at its place
    assert trace.align_to_ops(ref, ops, ref) == (list(range(6)), ops)


def test_aggregate_joins_a_substituted_kernel_to_its_op(recorded):
    # the labelled run saw other kernel names for the attention op (its eager kernels, say) than
    # the timed runs: the timed kernels still time that op, and a note says so
    labelled, timed, prof = recorded
    ref = [d for d in labelled.device_events if d.repeat == 0]
    names, ops = [d.name for d in ref], [d.op_index for d in ref]
    attn = next(d.op_index for d in ref if "scaled_dot_product" in prof.ops[d.op_index].op)
    renamed = [f"eager_{n}" if o == attn else n for n, o in zip(names, ops)]
    args = dict(repeats=2, warmup=3, flush_l2=False, cuda_graph=False, device_name="NVIDIA H100 80GB HBM3")
    exact = timing.aggregate_gpu(timed, names, ops, prof, notes=[], **args)
    joined = timing.aggregate_gpu(timed, renamed, ops, prof, notes=[], **args)
    assert joined.op(attn).seconds == pytest.approx(exact.op(attn).seconds)
    assert joined.op(attn).kernels == exact.op(attn).kernels
    assert [o.seconds for o in joined.ops] == pytest.approx([o.seconds for o in exact.ops])
    assert any("joined to the op whose kernels they replaced" in n for n in joined.notes)
    assert len(joined.kernels) == len(exact.kernels)
    assert [k.op_index for k in joined.kernels] == [k.op_index for k in exact.kernels]


def test_a_backwards_kernels_launched_on_autograds_thread_join_the_run_its_region_and_their_ops():
    # the main thread (tid 1) opens the repeat and the region "step 2" and launches the forward's
    # kernel; autograd's thread (tid 2) runs the backward's op, labelled there, and launches its
    # kernel: that launch sees no repeat or region on its own thread, so it takes those open on
    # the main thread at that time (before: repeat -1, region "": dropped from every timing)
    def x(name, cat, tid, ts, dur, **args):
        return {"ph": "X", "name": name, "cat": cat, "tid": tid, "ts": ts, "dur": dur, "args": args}

    events = [
        x("rooflight.repeat:0", "user_annotation", 1, 0, 100),
        x("rooflight.region:step 2", "user_annotation", 1, 1, 98),
        x("rooflight.region:step 2/inner", "user_annotation", 1, 2, 60),
        x("rooflight.op:0", "user_annotation", 1, 5, 5),
        x("cudaLaunchKernel", "cuda_runtime", 1, 6, 1, correlation=10),
        x("rooflight.op:1", "user_annotation", 2, 40, 10),
        x("cudaLaunchKernel", "cuda_runtime", 2, 41, 1, correlation=11),
        x("cudaLaunchKernel", "cuda_runtime", 2, 70, 1, correlation=12),  # after "inner" closed
        x("cudaLaunchKernel", "cuda_runtime", 2, 150, 1, correlation=13),  # after the repeat
        x("fwd", "kernel", 7, 8, 3, correlation=10), x("bwd", "kernel", 7, 43, 3, correlation=11),
        x("bwd2", "kernel", 7, 72, 3, correlation=12), x("later", "kernel", 7, 152, 3, correlation=13),
    ]
    got = {d.name: (d.repeat, d.region, d.op_index) for d in trace.parse({"traceEvents": events}).device_events}
    assert got == {"fwd": (0, "step 2/inner", 0), "bwd": (0, "step 2/inner", 1), "bwd2": (0, "step 2", -1),
                   "later": (-1, "", -1)}


def test_union_and_align_helpers():
    # [0,10) and [5,20) overlap: 20 µs; [30,40) apart: +10 µs
    assert trace.union_seconds([(0, 10), (5, 20), (30, 40)]) == pytest.approx(30e-6)
    assert trace.align_to_ops(["a", "b", "c"], [0, 1, 2], ["a", "x", "c"])[0] == [0, -1, 2]


def test_cpu_timing_path_end_to_end():
    lin = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256)

    def work():
        with region("mlp"):
            torch.relu(lin(x))

    p = timing.profile(work, warmup=1, repeats=3, device="cpu")
    t = p.timing
    assert p.mode == "timed" and t.device_kind == "cpu"
    assert any("CPU results" in n for n in t.notes)
    ops = {p.ops[o.op_index].short_op: o for o in t.ops}
    assert {"addmm", "relu"} <= set(ops)
    assert all(o.seconds > 0 and o.seconds_min <= o.seconds <= o.seconds_max for o in t.ops)
    assert t.region("mlp") is not None and t.total.wall_seconds > 0
    df = p.df
    assert "seconds" in df.columns and df.seconds.notna().any()
    q = Profile.from_json(p.to_json())
    assert q.to_json() == p.to_json() and q.timing.ops == p.timing.ops


def test_bad_options_are_clear_errors():
    with pytest.raises(UsageError, match="repeats"):
        timing.profile(lambda: None, repeats=0)
    if not torch.cuda.is_available():
        with pytest.raises(NoGPUError, match="no CUDA GPU"):
            timing.profile(lambda: None, device="cuda")


@pytest.mark.gpu
def test_gpu_timing_joins_kernels_to_ops():
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    p = timing.profile(lambda: (x @ x).relu(), warmup=2, repeats=5)
    t = p.timing
    ops = {p.ops[o.op_index].short_op: o for o in t.ops}
    assert set(ops) >= {"mm", "relu"}
    assert all(o.kernels >= 1 for o in t.ops)
    assert not math.isnan(ops["mm"].cpu_seconds)


@pytest.mark.gpu
def test_gpu_training_step_times_its_backwards_kernels():
    # a two-linear MLP's training step, x [512, 1024] -> 4096 -> 1024, bf16: autograd runs the
    # backward from its own thread, whose kernels must be timed like the forward's.  Forward: 2
    # GEMMs of 2*512*1024*4096 = 4.29 GFLOP each; backward: dW for both and dX for the second
    # (x needs no gradient): 3 GEMMs of that size, 1.5x the forward's matrix work
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024))
    m = m.to("cuda", torch.bfloat16)
    x = torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16)
    p = timing.profile(lambda: m(x).float().square().mean().backward(), warmup=2, repeats=3)
    timed = {t.op_index: t for t in p.timing.ops}
    gemms = {ph: [o for o in p.ops if o.phase == ph and o.short_op in ("mm", "addmm")] for ph in ("forward", "backward")}
    tensor = [sum(o.flops.get("bf16_tensor", 0) for o in gemms[ph]) for ph in ("forward", "backward")]
    assert tensor == [2 * 4_294_967_296, 3 * 4_294_967_296]
    assert all(o.index in timed and timed[o.index].kernels >= 1 for o in gemms["backward"])
    fwd, bwd = (sum(timed[o.index].seconds for o in gemms[ph]) for ph in ("forward", "backward"))
    assert 1.0 < bwd / fwd < 2.5  # 1.5x the work, on the same tensor cores


@pytest.mark.gpu
def test_gpu_region_in_every_layer_and_the_loop_between_steps_are_not_spans():
    # 8 blocks, each two 2048x4096x4096 bf16 GEMMs (68.7 GFLOP each), the first inside
    # region("attn"): the region's 8 entries hold half the GEMMs, so its wall is about half the
    # run's, not the span from the first block to the last.  Run as a loop of 4 forwards that
    # prints a number between them, the region is the script's mark (its one marked step) and
    # the rest is "unmarked"; with no region, the 4 forwards are steps and the loop's code
    # between them the gaps between the calls
    from rooflight.steps import BETWEEN, UNMARKED

    marking = [True]

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4096, 4096), torch.nn.Linear(4096, 4096)

        def forward(self, x):
            with region("attn") if marking[0] else contextlib.nullcontext():
                h = self.a(x)
            return self.b(h)

    model = torch.nn.Sequential(*[Block() for _ in range(8)]).to("cuda", torch.bfloat16)
    x = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)

    def loop():
        with torch.no_grad():
            for _ in range(4):
                y = model(x)
                print(float(y[0, 0]))

    t = timing.profile(lambda: model(x), warmup=1, repeats=3).timing
    attn, whole = t.region("attn"), t.region("")
    assert attn.busy_seconds <= attn.wall_seconds < 0.75 * whole.wall_seconds, (attn, whole)
    t = timing.profile(loop, warmup=1, repeats=3, steps=True).timing
    attn, whole, rest = t.region("attn"), t.region(""), t.region(UNMARKED)
    assert attn.wall_seconds < 0.75 * whole.wall_seconds and rest.wall_seconds < 0.75 * whole.wall_seconds
    marking[0] = False
    p = timing.profile(loop, warmup=1, repeats=3, steps=True)
    assert [s.kind for s in p.steps] == ["forward"] * 4
    between = p.timing.region(BETWEEN)
    assert between is not None and between.wall_seconds < 0.5 * p.timing.region("").wall_seconds


def test_a_compiled_model_timed_on_the_cpu_says_its_op_times_are_the_eager_ops():
    # torch.compile(module): the capture runs its eager op graph, so CPU op times are eager ops'
    # (backend="eager": the compiled path without inductor's C++ build, seconds in CI)
    m = torch.compile(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU()), backend="eager")
    x = torch.randn(8, 32)
    with torch.no_grad():
        p = timing.profile(lambda: m(x), warmup=1, repeats=2, device="cpu")
    # the user's module paths, not torch.compile's wrapper's ("0", not "_orig_mod.0")
    assert [o.module for o in p.ops if o.short_op in ("addmm", "gelu")] == ["0", "1"]
    assert timing.COMPILED_CPU_NOTE in p.timing.notes
    plain = torch.nn.Linear(32, 64)
    assert timing.COMPILED_CPU_NOTE not in timing.profile(lambda: plain(x), repeats=1, device="cpu").timing.notes


def test_step_calls_find_the_step_module_by_its_place_and_mark_the_calls_that_begin_steps():
    # a DPO-like loop: a reference and a policy of one class, the reference called first; the steps
    # are the policy's calls (place 1), each begun by the reference's call just before (place 0)
    from rooflight.profile_data import Step

    ref, policy = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    steps = [Step(k, f"step {k}", "train", module="Linear", instance=1, begins_instance=0, begins_call=k - 1)
             for k in (1, 2, 3)]
    ticks = iter(range(100))
    with timing._StepCalls(steps, lambda: next(ticks)) as calls:
        for _ in range(3):
            ref(x)
            policy(x)
        calls.end()
    # ticks: ref starts 0, 3, 6; policy starts 1, 4, 7, ends 2, 5, 8; the run's end 9
    assert (calls.starts, calls.ends, calls.side, calls.last) == ([1, 4, 7], [2, 5, 8], {0: [0, 3, 6]}, 9)
    assert timing._step_marks(steps, calls.starts, calls.ends, calls.last, calls.side) == [(0, 3, 2), (3, 6, 5), (6, 9, 8)]
    # the hooks are gone: a later call marks nothing
    policy(x)
    assert calls.starts == [1, 4, 7]
