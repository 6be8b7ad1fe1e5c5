"""Hardware counters beside the counts (rooflight.counters, rooflight.ncu): recorded Nsight
Compute output from an H200 (tests/fixtures/counters/, made by record_counters.py: ncu 2025.3.1,
torch 2.11.0+cu130, 2026-12-01) parsed, joined to the recorded profiles and compared, exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rooflight import counters as C
from rooflight import ncu
from rooflight.profile_data import Profile, ProfileFormatError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "counters"


def load(tag: str) -> Profile:
    p = Profile.load(FIX / f"{tag}.json")
    kernels = C.parse_csv((FIX / f"{tag}.csv").read_text())
    return C.attach(p, C.join(p, kernels, tool="Nsight Compute 2025.3.1.0"))


def only(p: Profile, short: str) -> C.Comparison:
    rows = [c for c in C.compare(p, l2_mb=60) if c.name.endswith(short)]
    assert len(rows) == 1, [c.name for c in C.compare(p)]
    return rows[0]


def test_the_metric_set_is_chosen_from_what_the_chip_offers():
    chosen = ncu.choose_metrics((FIX / "query-metrics-h200.txt").read_text())
    assert "sm__ops_path_tensor_op_hgmma_src_bf16_dst_fp32_sparsity_off.sum" in chosen
    assert "sm__ops_path_tensor_src_fp8_sparsity_off.sum" in chosen
    assert "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum" in chosen
    assert {"dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_bytes.sum", "gpu__time_duration.sum"} <= set(chosen)
    assert not any("sparsity_on" in m for m in chosen)  # dense work only
    assert chosen == tuple(json.loads((FIX / "metrics.json").read_text())["metrics"])  # what the fixtures ran with
    with pytest.raises(ncu.CountersUnavailable, match="dram__bytes_read"):
        ncu.choose_metrics("sm__ops_path_tensor_op_hgmma_src_bf16_dst_fp32_sparsity_off Counter")


def test_the_metric_set_narrows_to_the_dtypes_the_ops_touch():
    query = (FIX / "query-metrics-h200.txt").read_text()
    bf16 = ncu.choose_metrics(query, frozenset({"bfloat16", "int64"}))
    # a bf16 model: the bf16 tensor pipes (Hopper's hgmma and the older hmma path), fp32 and half
    # CUDA-core add/mul/fma, the four byte/time counters: 2 + 3 + 3 + 4 = 12 of the 23
    assert bf16 == ("sm__ops_path_tensor_op_hgmma_src_bf16_dst_fp32_sparsity_off.sum",
                    "sm__ops_path_tensor_op_hmma_src_bf16_dst_fp32_sparsity_off.sum",
                    *(f"smsp__sass_thread_inst_executed_op_{p}{o}_pred_on.sum" for p in "fh" for o in ("add", "mul", "fma")),
                    "dram__bytes_read.sum", "dram__bytes_write.sum", "lts__t_bytes.sum", "gpu__time_duration.sum")
    fp8 = ncu.choose_metrics(query, frozenset({"float8_e4m3fn", "bfloat16", "float32"}))
    assert "sm__ops_path_tensor_src_fp8_sparsity_off.sum" in fp8 and not any("int8" in m or "_op_d" in m for m in fp8)
    assert len(ncu.choose_metrics(query, None)) == 23  # no profile to go by: every counter


def test_metric_classes_count_an_fma_as_two():
    assert C.metric_class("sm__ops_path_tensor_op_hgmma_src_bf16_dst_fp32_sparsity_off.sum") == ("bf16_tensor", 1.0)
    assert C.metric_class("sm__ops_path_tensor_op_hmma_src_fp16_dst_fp16_sparsity_off.sum") == ("fp16_tensor_fp16_acc", 1.0)
    assert C.metric_class("sm__ops_path_tensor_src_fp8_sparsity_off.sum") == ("fp8_tensor", 1.0)
    assert C.metric_class("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum") == ("fp32", 2.0)
    assert C.metric_class("smsp__sass_thread_inst_executed_op_hadd_pred_on.sum") == ("fp16", 1.0)
    assert C.metric_class("dram__bytes_read.sum") is None


def test_the_raw_csv_parses_with_its_units_row_and_thousands_separators():
    ks = C.parse_csv((FIX / "gemm_bf16_m-1.csv").read_text())
    assert [k.name[:30] for k in ks] == ["nvjet_sm90_tst_64x8_64x16_2x1_", "void cublasLt::splitKreduce_ke"]
    assert ks[0].dram_read == 33_578_752 and ks[0].seconds == pytest.approx(12_160e-9)
    assert ks[0].flops == {"bf16_tensor": 268_435_456.0}
    # the split-K reduce: 8,192 fadd + 4,096 fmul + 4,096 hfma (x2)
    assert ks[1].flops == {"fp32": 8192 + 4096, "fp16": 2 * 4096}
    with pytest.raises(C.CounterFormatError, match="no kernel table"):
        C.parse_csv("==PROF== Disconnected\n==ERROR== something")


def test_kernel_names_compare_by_function():
    assert C.kernel_key("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, T2)") \
        == "vectorized_elementwise_kernel"
    assert C.kernel_key("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT") == "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT"


def test_gemv_executes_eight_times_its_useful_flops_and_reads_its_weights():
    c = only(load("gemm_bf16_m-1"), "mm")
    # useful: 2 * M * N * K = 2 * 1 * 4096 * 4096 = 33,554,432; cuBLAS pads M = 1 to 8 rows: 268,435,456
    assert c.useful_tensor == 2 * 4096 * 4096 and c.executed_tensor == 8 * 2 * 4096 * 4096
    assert c.tensor_ratio == 8.0
    # the weights: 4096 * 4096 * 2 B = 33,554,432 B; DRAM read 33,578,752 + 41,472 (the reduce)
    assert c.read_ratio == pytest.approx(1.0019, abs=1e-3)
    assert c.kernels == 2
    assert "padding" in c.why[0] and "M = 1" in c.why[0] and "still memory-bound" in c.why[0]


def test_a_compute_bound_gemm_matches_the_counters():
    c = only(load("gemm_bf16_m-1024"), "mm")
    # 2 * 1024 * 4096 * 4096 = 34,359,738,368 FLOPs, executed exactly
    assert c.useful_tensor == 2 * 1024 * 4096 * 4096 == c.executed_tensor
    assert 0.99 < c.read_ratio < 1.01
    # the 8 MB output is still in the 60 MB L2 when the kernel ends: writes read low, and say why
    assert c.write_ratio < 0.5 and any("stays in the L2" in w and "8 MB" in w for w in c.why)


def test_causal_flash_attention_matches_the_tile_model():
    c = only(load("sdpa_backend-flash_causal-True"), "_scaled_dot_product_flash_attention")
    assert c.tensor_ratio == pytest.approx(1.0, abs=2e-3)
    assert 0.95 < c.read_ratio < 1.1


def test_gqa_decode_attention_pads_its_query_rows():
    c = only(load("decode_attention_kv_heads-8"), "_scaled_dot_product_cudnn_attention")
    # 32 query heads over 8 KV heads: the kernel fills 4x the useful FLOPs (padded query rows)
    assert c.tensor_ratio == pytest.approx(4.0, abs=1e-3)
    assert 0.99 < c.read_ratio < 1.01  # the KV cache read once
    assert "padding" in c.why[0] and "KV cache" in c.why[0]


def test_memory_bound_kernels_read_their_modelled_bytes():
    p = load("rms_norm_eager")
    big = [c for c in C.compare(p, l2_mb=60) if c.model_read > 1e8]
    assert len(big) == 6
    assert all(0.99 < c.read_ratio < 1.01 for c in big)
    soft = only(load("softmax"), "_softmax")
    assert 0.99 < soft.read_ratio < 1.01


def test_every_kernel_is_joined_and_the_counters_round_trip_through_json():
    p = load("rms_norm_eager")
    assert all(k.op_index >= 0 for k in p.counters.kernels) and not p.counters.notes
    back = Profile.from_json(p.to_json())
    assert back.counters == p.counters
    assert [c.why for c in C.compare(back)] == [c.why for c in C.compare(p)]
    # the pass's phases round-trip; a negative one is refused by name
    timed = replace(p, counters=replace(p.counters, pass_seconds={"warm-ups": 2.5, "measured run": 10.25}))
    assert Profile.from_json(timed.to_json()).counters.pass_seconds == {"warm-ups": 2.5, "measured run": 10.25}
    d = json.loads(timed.to_json())
    d["counters"]["pass_seconds"]["warm-ups"] = -1
    with pytest.raises(ProfileFormatError, match=r"counters.pass_seconds\['warm-ups'\] = -1"):
        Profile.from_json(json.dumps(d))


def test_an_unknown_kernel_is_left_out_and_said():
    p = Profile.load(FIX / "softmax.json")
    ks = C.parse_csv((FIX / "softmax.csv").read_text())
    stranger = C.NcuKernel(99, "void mystery_kernel<1>()", {}, 1.0, 0.0, 0.0, 1e-6)
    joined = C.join(p, ks + [stranger], tool="ncu")
    assert joined.kernels[-1].op_index == -1
    assert any("1 of 2 kernels" in n for n in joined.notes)


def test_no_ncu_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("ROOFLIGHT_NCU", "/nonexistent/ncu")
    with pytest.raises(ncu.CountersUnavailable, match="ROOFLIGHT_NCU=/nonexistent/ncu: no such file"):
        ncu.find_ncu()
    monkeypatch.delenv("ROOFLIGHT_NCU")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(ncu, "_SEARCH", ())
    with pytest.raises(ncu.CountersUnavailable, match="not on PATH"):
        ncu.find_ncu()


def test_counters_on_the_cpu_say_they_need_a_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "rooflight", "profile", str(ROOT / "tests" / "examples" / "tiny_model.py"),
                        "--device", "cpu", "--counters", "-o", "out"], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode != 0
    assert "--counters reads a GPU's hardware counters" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_every_kernel_without_counters_is_one_line_before_anything_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "rooflight", "profile", str(ROOT / "tests" / "examples" / "tiny_model.py"),
                        "--every-kernel", "-o", "out"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--every-kernel says how the counter pass measures: add --counters" in r.stderr + r.stdout
    assert not (tmp_path / "out").exists()


def test_the_api_names_what_counters_takes():
    import rooflight
    from rooflight.errors import RooflightError

    with pytest.raises(RooflightError, match="counters='all': give True"):
        rooflight.profile(lambda: None, counters="all")


def test_the_report_shows_the_counters(h100_decode):
    from rooflight import api
    from rooflight.render.html import report_html

    p = load("gemm_bf16_m-1")
    a = api.analyze(api.Profile.of(p), "H200 SXM")
    html = report_html(a)
    assert "Hardware counters: counted beside measured" in html and "8.00x" in html and "padding" in html


def test_advice_reads_the_counters_where_they_change_the_verdict():
    """A GEMV at ~8x executed FLOPs reading its minimum bytes: no re-read advice (it is
    memory-bound either way); the same kernel made to read 3x its bytes: the advice says the
    fix is its tiling, not the bandwidth, and that the padded FLOPs are free."""
    from dataclasses import replace

    from rooflight.advice import advise
    from rooflight.api import analyze

    p = load("gemm_bf16_m-1")
    a = analyze(p, calibrated=False)
    assert "dram-rereads" not in {x.rule for x in advise(p, a.diagnosis, a.ceilings)}
    tripled = replace(p.counters, kernels=tuple(replace(k, dram_read=3 * k.dram_read) for k in p.counters.kernels))
    q = replace(p, counters=tripled)
    a = analyze(q, calibrated=False)
    (tip,) = [x for x in advise(q, a.diagnosis, a.ceilings) if x.rule == "dram-rereads"]
    model = sum(o.bytes_read for o in q.ops if o.short_op == "mm")
    measured = sum(k.dram_read for k in tripled.kernels if k.op_index >= 0)
    assert f"read {measured / model:.1f}x the bytes" in tip.effect and "tile padding" in tip.effect


def test_the_report_draws_counted_dram_and_l2_points_per_group():
    from rooflight.api import analyze
    from rooflight.render.counters import counters_html, counters_roofline

    a = analyze(load("softmax"), calibrated=False)
    fig = counters_roofline(a)
    ax = fig.axes[0]
    # one group: its counted point (hollow), its DRAM point and its L2 point, joined by one line
    offsets = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
    assert len(offsets) == 3
    (c,) = C.compare(a.profile, by="group")
    xs = sorted(float(o[0][0]) for o in offsets)
    counted = (c.useful_tensor + c.useful_core) / (c.model_read + c.model_write)
    assert xs == pytest.approx(sorted([counted, c.measured_intensity, c.l2_intensity]))
    from rooflight.render.html import report_html

    assert "counted and measured intensity" in report_html(a) and "<table" in counters_html(a)


# ---------------------------------------------------------------------------- one of each


def test_the_counter_pass_marks_the_first_op_of_each_distinct_call():
    """rooflight.ncu's child opens ncu's profiling range (cudaProfilerStart/Stop) around the first
    op of each distinct call only; here the marks are recorded instead."""
    import torch

    from rooflight.capture import Capture

    marks = []
    a, b, c = torch.randn(8, 16), torch.randn(16, 4), torch.randn(16, 8)
    with Capture(distinct=marks.append) as cap:
        torch.mm(a, b)   # 0: first of its call
        torch.mm(a, b)   # 1: the same op on the same argument metadata
        torch.mm(a, c)   # 2: another shape
        torch.mm(a, b)   # 3: again the first's
        torch.nonzero(a)  # 4: data-dependent: always measured
        torch.nonzero(a)  # 5
    rec = cap.recorder
    assert [o.op for o in cap.records] == ["aten::mm.default"] * 4 + ["aten::nonzero.default"] * 2
    assert rec.same_as == {1: 0, 3: 0}
    assert marks == [True, False] * 4  # ops 0, 2, 4, 5


def test_ops_that_repeat_a_call_show_its_counters_and_say_so():
    """The join of a pass that measured one of each: in the recorded RMSNorm run, take op 5 as a
    repeat of op 1 (as the child would report for a second layer), drop its kernel from ncu's
    output (it was not measured), and op 5 gets op 1's counters, marked measured_on=1."""
    p = Profile.load(FIX / "rms_norm_eager.json")
    ks = C.parse_csv((FIX / "rms_norm_eager.csv").read_text())
    full = C.join(p, ks, tool="ncu")
    one_of_each = C.join(p, ks[:5] + ks[6:], tool="ncu", same_as={5: 1})
    by_op = {k.op_index: k for k in one_of_each.kernels}
    assert [k.op_index for k in one_of_each.kernels] == list(range(8))
    assert by_op[5].measured_on == 1 and all(by_op[i].measured_on == -1 for i in range(8) if i != 5)
    f1 = next(k for k in full.kernels if k.op_index == 1)
    assert (by_op[5].dram_read, by_op[5].flops, by_op[5].name) == (f1.dram_read, f1.flops, f1.name)
    assert all(by_op[i] == k for k in full.kernels for i in [k.op_index] if i != 5)
    assert any("7 kernels measured" in n and "1 more kernels of 1 ops" in n for n in one_of_each.notes)
    attached = C.attach(p, one_of_each)
    back = Profile.from_json(attached.to_json())
    assert back.counters == attached.counters
    # the terminal's table says how many kernels were measured
    import rooflight
    from rooflight.render.counters import counters_table

    table = counters_table(rooflight.analyze(attached, hw="H200 SXM"))
    assert table.caption == ("7 of 8 kernels measured, one of each distinct call; the other 1 show their first "
                             "call's counters (--every-kernel replays them all)")
    # a file written before measured_on existed reads as measured on each op's own launch
    d = json.loads(C.attach(p, full).to_json())
    for k in d["counters"]["kernels"]:
        del k["measured_on"]
    assert all(k.measured_on == -1 for k in Profile.from_json(json.dumps(d)).counters.kernels)


STACK = '''
import torch
import rooflight


@rooflight.workload
def stack(n: int = 4096, layers: int = 4, device="cuda"):
    """`layers` identical bf16 linear layers on 1024 tokens: one distinct call, `layers` times."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(n, n, bias=False) for _ in range(layers)]).to(device, torch.bfloat16)
    x = torch.randn(1024, n, device=device, dtype=torch.bfloat16)
    return rooflight.Run(model, (x,))
'''


def _need_ncu() -> None:
    try:
        ncu.find_ncu()
    except ncu.CountersUnavailable:
        pytest.skip("no Nsight Compute on this machine")


@pytest.mark.gpu
def test_one_of_each_gives_repeated_layers_the_counters_they_would_read(tmp_path):
    """`--counters` measures the first of four identical layers and shows its counters for the
    other three; `--every-kernel` measures all four: each repeat's own counters are within 2% of
    the first's (ncu flushes the caches before each kernel)."""
    _need_ncu()
    model = tmp_path / "stack.py"
    model.write_text(STACK)
    runs = {}
    for tag, extra in (("one", []), ("every", ["--every-kernel"])):
        r = subprocess.run([sys.executable, "-m", "rooflight", "profile", str(model), "--counters", "--repeats", "2",
                            "--format", "json", "-o", str(tmp_path / tag), *extra],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        (f,) = [f for f in (tmp_path / tag).glob("*.json") if json.loads(f.read_text()).get("timing")]
        runs[tag] = Profile.load(f)
    one, every = runs["one"].counters, runs["every"].counters
    mm = [o.index for o in runs["one"].ops if o.short_op in ("mm", "addmm", "matmul")]
    assert len(mm) == 4
    copied = {k.op_index: k for k in one.kernels if k.measured_on >= 0}
    assert set(copied) == set(mm[1:]) and all(k.measured_on == mm[0] for k in copied.values())
    own = {}
    for k in every.kernels:
        own.setdefault(k.op_index, []).append(k)
    for op in mm[1:]:
        (theirs,) = own[op]
        mine = copied[op]
        assert mine.name == theirs.name
        assert abs(mine.dram_read - theirs.dram_read) <= 0.02 * theirs.dram_read
        assert abs(sum(mine.flops.values()) - sum(theirs.flops.values())) <= 0.02 * sum(theirs.flops.values())
    assert any("kernels measured" in n for n in one.notes)


# ---------------------------------------------------------------------------- the early counter pass
# The parent side of `--counters` on a model file, on this CPU machine: a stand-in ncu (a script
# named by ROOFLIGHT_NCU) answers --version, --query-metrics (the H200's recorded list) and
# --import (a recorded CSV), and runs the real child (python -m rooflight.ncu) as ncu would; the
# workload stamps its build and its calls with the process id, so the order of the two processes'
# work can be read back.

FAKE_NCU = '''#!{python}
import os, subprocess, sys
args = sys.argv[1:]
fix = {fix!r}
if args == ["--version"]:
    print("NVIDIA (R) Nsight Compute Command Line Profiler"); print("Version 2099.1.0.0 (stand-in)"); sys.exit(0)
if "--query-metrics" in args:
    if os.environ.get("FAKE_NCU_QUERIES"):
        open(os.environ["FAKE_NCU_QUERIES"], "a").write("query\\n")
    print(open(os.path.join(fix, "query-metrics-h200.txt")).read()); sys.exit(0)
if "--import" in args:
    print(open(os.path.join(fix, "softmax.csv")).read()); sys.exit(0)
with open(os.environ["FAKE_NCU_LOG"], "a") as log:
    log.write(args[args.index("--metrics") + 1] + "\\n")
if os.environ.get("FAKE_NCU_FORBID"):
    print("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters")
    sys.exit(1)
if os.environ.get("FAKE_NCU_FAIL_FIRST") and not os.path.exists(os.environ["FAKE_NCU_LOG"] + ".failed"):
    open(os.environ["FAKE_NCU_LOG"] + ".failed", "w").close()
    print("==ERROR== the stand-in failed on purpose"); sys.exit(3)
rep = args[args.index("-o") + 1]
code = subprocess.run(args[args.index("-m") - 1:]).returncode
open(rep + ".ncu-rep", "w").write("stand-in report")
sys.exit(code)
'''

STAMPED = '''
import os, time
import torch
import rooflight


def _stamp(what):
    with open(os.environ["STAMPS"], "a") as f:
        f.write(f"{{os.getpid()}} {{what}} {{time.time():.6f}}\\n")


@rooflight.workload
def slow_build(n: int = 32):
    """A set-up of {setup} s (as a model's weights initialised on the CPU), then a matmul."""
    _stamp("build-start")
    time.sleep({setup})
    x = torch.randn(n, n)
    _stamp("build-end")

    def step():
        _stamp("call")
        return x @ x

    return rooflight.Run(step, ())
'''


def _stamps(path: Path) -> dict[int, list[tuple[str, float]]]:
    out: dict[int, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        pid, what, t = line.split()
        out.setdefault(int(pid), []).append((what, float(t)))
    return out


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    from rooflight import runner

    fake = tmp_path / "ncu"
    fake.write_text(FAKE_NCU.format(python=sys.executable, fix=str(FIX)))
    fake.chmod(0o755)
    monkeypatch.setenv("ROOFLIGHT_NCU", str(fake))
    monkeypatch.setenv("FAKE_NCU_LOG", str(tmp_path / "ncu.log"))
    monkeypatch.setenv("STAMPS", str(tmp_path / "stamps"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setattr(runner, "check_counters", lambda options: None)  # the stand-in runs on this CPU
    ncu._setup.cache_clear()
    yield tmp_path
    ncu._setup.cache_clear()


def test_what_an_ncu_offers_on_a_gpu_is_asked_once_per_binary_and_gpu(stand_in, monkeypatch):
    """The ~2 s `--query-metrics` is kept in rooflight's cache between runs, keyed by the ncu
    binary and the GPU: a second process reads it; another GPU, a changed binary or a spoiled
    file asks again; with no GPU to name nothing is kept."""
    queries = stand_in / "queries"
    monkeypatch.setenv("FAKE_NCU_QUERIES", str(queries))
    fake = os.environ["ROOFLIGHT_NCU"]
    asked = lambda: len(queries.read_text().splitlines()) if queries.exists() else 0  # noqa: E731

    def setup():
        ncu._setup.cache_clear()  # as a new process would start
        return ncu._setup(fake)

    monkeypatch.setattr(ncu, "_gpu_identity", lambda: "NVIDIA H200|9.0|GPU-1")
    first = setup()
    assert asked() == 1 and "dram__bytes_read" in first[1] and "stand-in" in first[0]
    assert setup() == first and asked() == 1  # read back from the cache
    (kept,) = (Path(os.environ["ROOFLIGHT_CACHE_DIR"]) / "ncu").glob("query-*.json")
    monkeypatch.setattr(ncu, "_gpu_identity", lambda: "NVIDIA H100 80GB HBM3|9.0|GPU-2")
    assert setup() == first and asked() == 2  # another GPU: asked, kept beside the first
    monkeypatch.setattr(ncu, "_gpu_identity", lambda: "NVIDIA H200|9.0|GPU-1")
    kept.write_text("{ spoiled")
    assert setup() == first and asked() == 3 and json.loads(kept.read_text())["version"] == first[0]
    os.utime(fake, ns=(1, 1))  # another binary at the same path (an upgrade)
    assert setup() == first and asked() == 4
    monkeypatch.setattr(ncu, "_gpu_identity", lambda: None)
    setup(), setup()
    assert asked() == 6  # no GPU to name: asked each time
    assert len(list((Path(os.environ["ROOFLIGHT_CACHE_DIR"]) / "ncu").glob("query-*.json"))) == 3


def _profile_with_counters(tmp_path, setup: float):
    from rooflight import runner
    from rooflight.workloads import load_model_file

    model = tmp_path / "stamped.py"
    model.write_text(STAMPED.format(setup=setup))
    request = runner.CounterRequest()
    opts = runner.Options(device="cpu", warmup=1, repeats=1, check=False)
    results = runner.profile_workloads(model, load_model_file(model), opts, default_sweep=False, counters=request)
    return results, request


def test_the_counter_pass_builds_beside_the_profile_and_runs_after_it(stand_in):
    """The child starts before the profile's build and builds beside it (the two 6 s set-ups
    overlap); the profile's first call waits until the child is built, and the child's first call
    comes after the profile's last: no work of one beside the other's calls."""
    (r,), request = _profile_with_counters(stand_in, 6.0)  # longer than the child's start here
    assert request.error is None
    by = _stamps(stand_in / "stamps")
    (child,) = [p for p in by if p != os.getpid()]
    mine, theirs = dict((w, t) for w, t in by[os.getpid()] if w != "call"), by[child]
    child_build = dict((w, t) for w, t in theirs if w != "call")
    assert child_build["build-start"] < mine["build-end"] and mine["build-start"] < child_build["build-end"]
    parent_calls = [t for w, t in by[os.getpid()] if w == "call"]
    child_calls = [t for w, t in theirs if w == "call"]
    assert parent_calls and child_calls
    assert min(parent_calls) > child_build["build-end"]
    assert min(child_calls) > max(parent_calls)
    # the child was given every counter the chip offers (its dtypes were not known yet)
    (metrics,) = (stand_in / "ncu.log").read_text().split()
    assert len(metrics.split(",")) == 23
    notes = r.profile.counters.notes
    assert any("set up while the profile set up its own" in n and "after the profile" in n for n in notes)
    assert any("23 counters, every one this GPU offers" in n for n in notes)
    # where the pass's time after the profile went: the build was before the go, so it is not in it;
    # its warm-up is the child's one call before the measured run, its measured run the capture
    spent = r.profile.counters.pass_seconds
    assert list(spent) == ["start", "warm-ups", "measured run", "report", "import"]
    assert spent["start"] < 1.0
    (where,) = [n for n in notes if n.startswith("where the counter pass's time went")]
    assert "start and build" not in where and "s of warm-ups" in where and "ncu writing its report" in where
    kernels = len(ncu._counters.parse_csv((FIX / "softmax.csv").read_text()))  # what the stand-in's import gives
    assert f"({kernels} kernel{'s' if kernels > 1 else ''} replayed, " in where
    # the whole pass (from the go to the import read back) is its phases' sum, to the clocks' rounding
    assert abs(sum(spent.values()) - float(notes[0].split(" took ")[1].split(" s")[0])) < 0.15


def test_a_counter_pass_that_failed_beside_the_profile_is_run_again_after_it(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_NCU_FAIL_FIRST", "1")
    (r,), request = _profile_with_counters(stand_in, 0.2)
    assert request.error is None and r.profile.counters is not None
    first, second = (stand_in / "ncu.log").read_text().split()
    assert len(first.split(",")) == 23 and len(second.split(",")) < 23  # the second narrowed to the ops' dtypes
    assert any("the counter pass started beside the profile failed (the counter pass under ncu failed (exit 3): "
               "==ERROR== the stand-in failed on purpose), so one more was run after it" in n
               for n in r.profile.counters.notes)
    # the pass run after the profile builds the workload again (a 0.2 s set-up): its start says so
    assert r.profile.counters.pass_seconds["start"] >= 0.2
    assert any(n.startswith("where the counter pass's time went: the child's start and build ")
               for n in r.profile.counters.notes)


def test_a_child_that_wrote_no_clock_marks_gives_no_phases(tmp_path):
    assert ncu._phases(tmp_path / "none.json", 0.0, 1.0, 2.0) == ()
    (tmp_path / "cut.json").write_text('{"warmups": 1.0}')
    assert ncu._phases(tmp_path / "cut.json", 0.0, 1.0, 2.0) == ()
    (tmp_path / "t.json").write_text('{"warmups": 10.5, "run": 12.0, "done": 20.0}')
    # go at 10.0, the child's marks, its exit at 21.0, the import read back at 21.5
    assert ncu._phases(tmp_path / "t.json", 10.0, 21.0, 21.5) == (
        ("start", 0.5), ("warm-ups", 1.5), ("measured run", 8.0), ("report", 1.0), ("import", 0.5))
    assert ncu.where_the_time_went(ncu._phases(tmp_path / "t.json", 10.0, 21.0, 21.5), 40) == (
        "where the counter pass's time went: the child's start and build 0.5 s, 1.5 s of warm-ups, the measured "
        "run 8.0 s (40 kernels replayed, 0.20 s each), ncu writing its report 1.0 s, reading it back 0.5 s")


def test_no_ncu_leaves_the_profile_whole_and_the_error_for_after(stand_in, monkeypatch):
    monkeypatch.setenv("ROOFLIGHT_NCU", str(stand_in / "nowhere"))
    (r,), request = _profile_with_counters(stand_in, 0.0)
    assert r.profile.counters is None and r.profile.timing is not None
    assert "ROOFLIGHT_NCU=" in str(request.error) and "no such file" in str(request.error)


def test_a_waiting_child_whose_profile_went_away_stops(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec = {"ready": str(tmp_path / "ready"), "go": str(tmp_path / "go"), "parent": dead.pid}
    assert ncu._wait_for_go(spec) is False and (tmp_path / "ready").exists()
    (tmp_path / "ready").unlink()
    ncu._write_atomic(tmp_path / "go", "stop")
    assert ncu._wait_for_go({**spec, "parent": os.getpid()}) is False
    ncu._write_atomic(tmp_path / "go", "run")
    assert ncu._wait_for_go({**spec, "parent": os.getpid()}) is True


GPU_SCRIPT = '''
import torch

model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.GELU(), torch.nn.Linear(512, 512)).cuda().half()
x = torch.randn(256, 512, device="cuda", dtype=torch.half)
with torch.no_grad():
    for _ in range(3):
        model(x)
torch.cuda.synchronize()
'''


@pytest.mark.gpu
def test_a_script_s_counter_pass_follows_its_profile_with_the_counters_its_dtypes_move(tmp_path):
    """A plain script under --counters: one more run of it under ncu after the profile (a script
    has no build to overlap), narrowed to the counters fp16 work can move; its matmuls joined."""
    _need_ncu()
    script = tmp_path / "mlp.py"
    script.write_text(GPU_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "rooflight", "profile", str(script), "--counters", "--format", "json",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (f,) = [f for f in (tmp_path / "out").glob("*.json") if json.loads(f.read_text()).get("counters")]
    p = Profile.load(f)
    assert any("those the ops' dtypes can move" in n for n in p.counters.notes)
    joined = {p.ops[k.op_index].short_op for k in p.counters.kernels if k.op_index >= 0}
    assert joined & {"addmm", "mm", "linear"}


def test_an_ncu_that_cannot_run_is_one_line_and_leaves_the_profile_whole(stand_in, monkeypatch):
    broken = stand_in / "not-ncu"
    broken.write_text("this is not a program\n")  # no shebang, not executable
    monkeypatch.setenv("ROOFLIGHT_NCU", str(broken))
    (r,), request = _profile_with_counters(stand_in, 0.0)
    assert r.profile.counters is None and r.profile.timing is not None
    assert isinstance(request.error, ncu.CountersUnavailable)
    assert "--query-metrics failed" in str(request.error) and "the profile without counters was written" in str(request.error)


def test_counters_it_may_not_read_are_not_asked_for_twice(stand_in, monkeypatch):
    """A permission failure of the early child is final: no second child runs after the profile."""
    monkeypatch.setenv("FAKE_NCU_FORBID", "1")
    (r,), request = _profile_with_counters(stand_in, 0.0)
    assert r.profile.counters is None and r.profile.timing is not None
    assert isinstance(request.error, ncu.CountersForbidden) and "ERR_NVGPUCTRPERM" in str(request.error)
    assert len((stand_in / "ncu.log").read_text().split()) == 1


def test_depthwise_convolutions_are_counted_as_the_cuda_core_work_the_gpu_does():
    """Recorded on an H200 (torch 2.11, Nsight Compute 2025.3.1, 2026-12-02): a bf16 depthwise
    conv1d, x [4, 4096, 2048], weight [4096, 1, 4], padding 3, forward and backward.  PyTorch runs
    it with its own conv_depthwise2d kernels: the tensor pipes did no work at all.  Counted again
    here from the same shapes, it is CUDA-core work too (it was tensor-core work before, which put
    it under a roof 15x too high)."""
    import torch
    import torch.nn.functional as F

    from rooflight.capture import count

    p = Profile.load(FIX / "depthwise_conv1d_train.json")
    rows = {c.name.split(" ", 1)[1]: c for c in C.compare(p, l2_mb=60) if "convolution" in c.name}
    assert set(rows) == {"convolution", "convolution_backward"}
    for c in rows.values():
        assert c.executed_tensor == 0 and c.useful_tensor == 0 and c.executed_core > 0
    # forward: 2 * 4 * 4096 * 2051 * 4 = 268,828,672 useful FLOPs, the counters' CUDA-core 537 M
    assert rows["convolution"].useful_core == 268_828_672
    assert 1.9 < rows["convolution"].executed_core / rows["convolution"].useful_core < 2.1
    (conv,) = [o for o in p.ops if o.short_op == "convolution"]
    x, w = (torch.empty(t.shape, dtype=torch.bfloat16, device="meta", requires_grad=True) for t in conv.inputs[:2])
    again = count(lambda: F.conv1d(x, w, padding=3, groups=w.shape[0]).float().square().sum().backward())
    for o in again.ops:
        if "convolution" in o.short_op:
            assert o.flops and not any(k.endswith("_tensor") for k in o.flops), (o.short_op, dict(o.flops))
