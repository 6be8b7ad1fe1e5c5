"""Projection onto other GPUs: exact floors on known datasheets, the fp8 fallback, the efficiency
model (measured, clamped, default), sums per region, the table across the database, rendering and
the `rooflight project` command."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rooflight.roofline import from_spec
from rooflight.errors import UnknownHardwareError, UsageError
from rooflight.hardware import load_database
from rooflight.profile_data import OpRecord, OpTiming, Profile, RegionTiming, Timing
from rooflight.api import project
from rooflight.projection import (DEFAULT_EFFICIENCY, EFFICIENCY_RANGE, KERNEL_FIXED_S, MATMUL_KERNEL_FIXED_S,
                                  measured_efficiency, predict_seconds)

FIX = Path(__file__).resolve().parent / "fixtures"
H100 = "NVIDIA H100 80GB HBM3"

# H100 SXM datasheet: 3.35 TB/s, bf16 989.4 TFLOP/s, fp8 1979 TFLOP/s
# A100 80GB SXM: 2.039 TB/s, bf16/fp16 tensor 312 TFLOP/s, no fp8 (falls back to fp16 tensor)
OPS = (
    # a compute-bound GEMM: 2 TFLOP, 1 GB
    OpRecord(0, "aten::mm.default", "layers.0.mlp", region="prefill", flops={"bf16_tensor": 2e12},
             bytes_read=0.8e9, bytes_written=0.2e9),
    # a memory-bound copy: 3.35 GB
    OpRecord(1, "aten::copy_.default", "layers.0", region="decode", bytes_read=1.675e9, bytes_written=1.675e9),
    # an fp8 GEMM: 1.979 TFLOP
    OpRecord(2, "aten::_scaled_mm.default", "layers.0.attn", region="decode/attn", flops={"fp8_tensor": 1.979e12},
             bytes_read=1e6, bytes_written=1e6),
    # a view: no kernel, no cost
    OpRecord(3, "aten::view.default", "layers.0", region="decode"),
)
FLOOR_H100 = [2e12 / 989.4e12, 3.35e9 / 3.35e12, 1.979e12 / 1979e12, 0.0]
FLOOR_A100 = [2e12 / 312e12, 3.35e9 / 2.039e12, 1.979e12 / 312e12, 0.0]  # fp8 runs at the fp16 tensor rate
EFF = [0.8, 0.9, 0.7]


def timed_profile(idle: float = 1e-3) -> Profile:
    ops = tuple(OpTiming(i, FLOOR_H100[i] / EFF[i], FLOOR_H100[i] / EFF[i], FLOOR_H100[i] / EFF[i], kernels=1)
                for i in range(3))
    busy = sum(o.seconds for o in ops)
    t = Timing("cuda", H100, repeats=3, warmup=1, ops=ops, regions=(RegionTiming("", busy + idle, busy),))
    return Profile(OPS, workload="constructed", device="cuda:0", device_name=H100, mode="timed",
                   regions=("prefill", "decode", "decode/attn"), timing=t)


def counted_profile() -> Profile:
    return Profile(OPS, workload="constructed", device="meta", regions=("prefill", "decode", "decode/attn"))


def test_measured_efficiency_scales_the_target_floor_exactly():
    p = project(timed_profile(), ["h100", "a100_80gb_sxm"], kernel_fixed_s=0)
    assert p.timed and p.model == f"measured efficiency from {H100}"
    h100, a100 = p.target("h100"), p.target("a100-80gb-sxm")
    for i in range(3):
        # on its own GPU every op takes its measured time again
        assert h100.op(i).seconds == pytest.approx(FLOOR_H100[i] / EFF[i], rel=1e-12)
        assert h100.op(i).efficiency == pytest.approx(EFF[i], rel=1e-12)
        # elsewhere: the target's floor over the efficiency attained on the H100
        assert a100.op(i).floor_s == pytest.approx(FLOOR_A100[i], rel=1e-12)
        assert a100.op(i).seconds == pytest.approx(FLOOR_A100[i] / EFF[i], rel=1e-12)
    assert a100.op(3).seconds == 0.0 and h100.op(3).seconds == 0.0
    assert a100.op(0).label == "compute-bound" and a100.op(1).label == "memory-bound"


def test_fp8_falls_back_to_fp16_tensor_on_the_a100_and_says_so():
    p = project(timed_profile(), ["h100", "a100_80gb_sxm"], kernel_fixed_s=0)
    a100, h100 = p.target("a100_80gb_sxm"), p.target("h100")
    assert a100.op(2).fallback == "fp8_tensor -> fp16_tensor" and a100.op(2).roof_class == "fp8_tensor"
    assert h100.op(2).fallback == "" and not h100.notes
    assert any("fp8 tensor ops are held against the fp16 tensor roof on the A100 80GB SXM: its ceilings have no fp8 "
               "tensor figure" in n for n in a100.notes)
    # the 7900 XTX has no fp8 either; the H200 has it
    q = project(counted_profile(), ["7900xtx", "h200"])
    assert any("no fp8 tensor" in n for n in q.target("7900xtx").notes)
    assert not q.target("h200").notes


def test_regions_sum_their_ops_and_idle_is_kept_apart():
    p = project(timed_profile(idle=2e-3), ["a100_80gb_sxm"], kernel_fixed_s=0)
    t = p.targets[0]
    s = [t.op(i).seconds for i in range(4)]
    assert t.regions["prefill"] == pytest.approx(s[0])
    assert t.regions["decode/attn"] == pytest.approx(s[2])
    assert t.regions["decode"] == pytest.approx(s[1] + s[2] + s[3])  # sub-regions included
    assert t.total_s == pytest.approx(sum(s))  # GPU time: the source's idle time is not in it
    assert p.source_idle_s == pytest.approx(2e-3)
    assert p.source_total_s == pytest.approx(sum(FLOOR_H100[i] / EFF[i] for i in range(3)))
    assert p.regions[0] == "" and set(p.regions) == {"", "prefill", "decode", "decode/attn"}
    # the label holding most of the time, and its share
    assert t.dominant_label == max(t.seconds_by_label, key=t.seconds_by_label.get)
    assert 0 < t.dominant_share <= 1


def test_count_only_profile_uses_default_efficiencies_and_fixed_kernel_cost():
    p = project(counted_profile(), ["a100_80gb_sxm"])
    assert not p.timed and p.model.startswith("default efficiencies") and math.isnan(p.source_total_s)
    t = p.targets[0]
    # 2.6 us per GEMM kernel + floor / 0.75; 1.5 us per elementwise kernel + floor / 0.85
    assert t.op(0).seconds == pytest.approx(MATMUL_KERNEL_FIXED_S + FLOOR_A100[0] / DEFAULT_EFFICIENCY["compute"])
    assert t.op(1).seconds == pytest.approx(KERNEL_FIXED_S + FLOOR_A100[1] / DEFAULT_EFFICIENCY["memory"])
    assert t.op(2).seconds == pytest.approx(MATMUL_KERNEL_FIXED_S + FLOOR_A100[2] / DEFAULT_EFFICIENCY["compute"])
    assert t.op(3).seconds == 0.0 and t.op(3).label == "overhead-bound"
    assert t.op(1).efficiency_source == "default"
    # use_measured=False ignores a profile's times
    q = project(timed_profile(), ["a100_80gb_sxm"], use_measured=False)
    assert not q.timed and q.targets[0].total_s == pytest.approx(t.total_s)


def test_efficiency_is_clamped_and_latency_carried_over():
    h100 = from_spec(load_database().get("h100"))
    copy = OPS[1]  # floor 1 ms on the H100
    lo, hi = EFFICIENCY_RANGE
    # faster than the DRAM floor (served from L2): efficiency 1
    eff, fixed, how = measured_efficiency(copy, 0.5e-3, h100, 1, 0.0)
    assert (eff, fixed, how) == (hi, 0.0, "above-roof")
    # 100x its floor: efficiency 0.02, and what that does not explain is latency, carried as is
    eff, fixed, how = measured_efficiency(copy, 100e-3, h100, 1, 0.0)
    assert eff == lo and how == "latency" and fixed == pytest.approx(100e-3 - 1e-3 / lo)
    ops = (OpTiming(1, 100e-3, 100e-3, 100e-3, kernels=1),)
    prof = Profile((copy,), device_name=H100, mode="timed", timing=Timing("cuda", H100, 3, 1, ops=ops))
    p = project(prof, ["h100", "a100_80gb_sxm"], kernel_fixed_s=0)
    assert p.target("h100").total_s == pytest.approx(100e-3)
    assert p.target("a100_80gb_sxm").total_s == pytest.approx(fixed + FLOOR_A100[1] / lo)
    assert any("below 0.02" in n for n in p.notes)


def test_fixed_part_is_reproduced_on_the_source_and_kept_on_the_target():
    h100 = from_spec(load_database().get("h100"))
    # a kernel measured at 21 us with a 10 us floor and a 1.5 us fixed part: efficiency 10 / 19.5
    op = OpRecord(0, "aten::add.Tensor", bytes_read=33.5e6 / 2, bytes_written=33.5e6 / 2)
    eff, fixed, how = measured_efficiency(op, 21e-6, h100, 1)
    assert how == "measured" and fixed == pytest.approx(KERNEL_FIXED_S)
    assert eff == pytest.approx(10e-6 / (21e-6 - KERNEL_FIXED_S))
    a100 = from_spec(load_database().get("a100_80gb_sxm"))
    pred = predict_seconds(op, a100, kernels=1, efficiency=eff)
    assert pred.seconds == pytest.approx(KERNEL_FIXED_S + 33.5e6 / 2.039e12 / eff)


def test_table_across_every_gpu_in_the_database():
    db = load_database()
    p = project(counted_profile(), "all")
    assert [t.key for t in p.targets] == [s.key for s in db]
    rows = p.table()
    assert len(rows) == len(db)
    for r in rows:
        assert r["total_s"] > 0 and r["label"] and {"prefill", "decode", "decode/attn"} <= set(r)
    # a faster memory system is never slower on the memory-bound copy
    h200, h100 = p.target("h200"), p.target("h100")
    assert h200.op(1).seconds < h100.op(1).seconds
    assert p.df.loc["H200 SXM", "total_s"] == pytest.approx(h200.total_s)
    d = p.to_dict()
    assert json.loads(json.dumps(d))["targets"][0]["name"] == db.specs[0].name


def test_unknown_gpu_and_cpu_timings():
    with pytest.raises(UnknownHardwareError):
        project(counted_profile(), "h900")
    with pytest.raises(UsageError):
        project(counted_profile(), "h100").target("a10")
    t = Timing("cpu", "Some CPU", 3, 1, ops=(OpTiming(1, 1.0, 1.0, 1.0, kernels=1),))
    p = project(replace(counted_profile(), mode="timed", timing=t), ["h100"])
    assert not p.timed and any("CPU" in n for n in p.notes)



def test_a_real_h100_profile_projects_onto_itself_and_the_h200(h100_decode):
    p = project(h100_decode, ["h100", "h200", "a10"])
    busy = h100_decode.timing.total.busy_seconds
    assert p.source_total_s == pytest.approx(busy, rel=1e-6)
    # every op on its own GPU takes its measured time again (latency-bound ops included)
    assert p.target("h100").total_s == pytest.approx(busy, rel=1e-9)
    # a tiny model is all launch latency: the H200's bandwidth hardly helps, the A10's hardly hurts
    assert p.target("h200").total_s <= busy
    assert p.target("h200").total_s == pytest.approx(busy, rel=0.05)
    assert p.target("h200").dominant_label == "overhead-bound"
    assert p.target("a10").total_s >= busy


def test_render_table_escapes_and_rooflines(h100_decode):
    from matplotlib.figure import Figure

    from rooflight.render.html import report_html
    from rooflight.render.projection import projection_html, projection_roofline, projection_table_html

    prof = replace(counted_profile(), regions=("<script>alert(1)</script>",),
                   ops=tuple(replace(o, region="<script>alert(1)</script>") for o in OPS))
    p = project(prof, "all")
    html_text = projection_table_html(p)
    assert "<script>alert" not in html_text and "&lt;script&gt;" in html_text
    for s in load_database():
        assert s.name in html_text
    fig = projection_roofline(p, "a100_80gb_sxm")
    assert isinstance(fig, Figure) and fig.axes[0].get_xscale() == "log"
    q = project(h100_decode, ["h100", "h200"])
    section = projection_html(q)
    assert section.count("<img") == 2 and "measured on" in section
    page = report_html(h100_decode.analyze("h100"), extra_sections=[("Projection", section)])
    assert "<h2>Projection</h2>" in page


def _app() -> typer.Typer:
    from rooflight.cli import app

    return app


def test_cli_project_prints_a_table_and_writes_charts(tmp_path, h100_decode):
    src = h100_decode.save(tmp_path / "run.json")
    runner = CliRunner()
    r = runner.invoke(_app(), ["project", str(src), "--hw", "a10,4090,7900xtx", "-o", str(tmp_path / "out")],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "predicted time on each of 3 GPUs" in r.output  # three single-GPU targets, not one run on three
    for name in ("A10", "RTX 4090", "Radeon RX 7900 XTX", "measured efficiency from NVIDIA H100 80GB HBM3"):
        assert name in r.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    assert written == ["projection.json", "projection_a10.png", "projection_rtx_4090.png",
                       "projection_rx_7900_xtx.png"]
    r = runner.invoke(_app(), ["project", str(src), "--hw", "all"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and all(s.name in r.output for s in load_database())


def test_cli_project_errors_are_one_line_with_exit_2(tmp_path, h100_decode):
    src = h100_decode.save(tmp_path / "run.json")
    r = CliRunner().invoke(_app(), ["project", str(src), "--hw", "h900"])
    assert r.exit_code == 2
    assert "unknown GPU 'h900'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(_app(), ["project", str(tmp_path / "missing.json")])
    assert r.exit_code == 1 and "no such file" in r.output


def test_a_note_every_target_shares_is_printed_once_naming_them_all():
    from types import SimpleNamespace as NS

    from rooflight.cli.project import _merged_target_notes

    a = NS(name="A10", notes=("int32 ops are held against the fp32 roof on the A10: its ceilings have no int32 figure",
                              "only on the A10"))
    b = NS(name="L4", notes=("int32 ops are held against the fp32 roof on the L4: its ceilings have no int32 figure",))
    assert _merged_target_notes([a, b]) == [
        "int32 ops are held against the fp32 roof on the A10, L4: its ceilings have no int32 figure", "only on the A10"]
