"""Communication: nccl-tests bus bandwidth, exposed time on known timelines, and a tensor-parallel
block counted on two CPU ranks (gloo) with its all-reduce bytes against the closed form."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rooflight.comm import Bandwidth, bus_factor, exposure, per_rank_bytes, straggler_wait

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind, n, factor", [("all_reduce", 8, 2 * 7 / 8), ("all_reduce", 2, 1.0),
                                             ("all_gather", 4, 3 / 4), ("reduce_scatter", 8, 7 / 8),
                                             ("all_to_all", 2, 1 / 2), ("broadcast", 8, 1.0), ("send_recv", 2, 1.0),
                                             ("all_reduce", 1, 0.0)])
def test_bus_factor_is_nccl_tests(kind, n, factor):
    assert bus_factor(kind, n) == pytest.approx(factor)


def test_bandwidth_arithmetic():
    # 1 GiB all-reduce over 8 ranks in 10 ms: algbw 107.4 GB/s, busbw x 2*7/8 = 187.9 GB/s
    b = Bandwidth("all_reduce", 2**30, 8, 0.010)
    assert b.algbw == pytest.approx(2**30 / 0.010)
    assert b.busbw == pytest.approx(2**30 / 0.010 * 1.75)
    # what each rank's link carries: the ring's share of S
    assert per_rank_bytes("all_reduce", 1000, 4) == pytest.approx(1500)  # 2 * 3/4
    assert per_rank_bytes("all_gather", 1000, 4) == pytest.approx(750)  # S = the gathered output
    assert per_rank_bytes("broadcast", 1000, 4) == pytest.approx(750)
    with pytest.raises(ValueError):
        bus_factor("gossip", 2)


def test_exposed_communication_on_a_known_timeline():
    # compute 0-10 and 12-20 µs; communication 8-14 (2 under compute, 2 exposed, 2 under compute) and 22-25
    ks = [(0, 10, False), (12, 20, False), (8, 14, True), (22, 25, True)]
    e = exposure(ks)
    assert e.comm_seconds == 9 and e.overlapped_seconds == 4 and e.exposed_seconds == 5
    assert e.compute_seconds == 18 and e.exposed_fraction == pytest.approx(5 / 9)
    # two comm kernels overlapping each other count once; fully hidden communication exposes nothing
    assert exposure([(0, 10, False), (2, 5, True), (3, 6, True)]).exposed_seconds == 0
    assert exposure([(0, 4, True)]).exposed_fraction == 1.0


def _timed_run_with_a_collective(comm_start_us: float):
    """A step of three ops timed over two repeats, as the profiler's trace gives them: a GEMM on
    stream 7 over [0, 100) µs, an all-reduce's NCCL kernel on stream 20 from `comm_start_us` for
    100 µs, an add on stream 7 over [200, 250); each repeat 1000 µs after the last."""
    from rooflight import timing
    from rooflight import trace as tr
    from rooflight.costs.model import TensorMeta
    from rooflight.profile_data import OpRecord, Profile

    x = TensorMeta.contiguous((1024, 1024), "bfloat16", "cuda:0")
    ops = (OpRecord(0, "aten::mm.default", region="step 1", device="cuda:0", inputs=(x, x), outputs=(x,)),
           OpRecord(1, "c10d::allreduce_.default", region="step 1", device="cuda:0", inputs=(x,), outputs=(x,),
                    comm_bytes=2 * x.bytes, link="peer"),
           OpRecord(2, "aten::add.Tensor", region="step 1", device="cuda:0", inputs=(x, x), outputs=(x,)))
    counted = Profile(ops=ops, workload="tp", device="cuda:0", regions=("step 1",))
    names = ["sm90_xmma_gemm_bf16", "ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "vectorized_elementwise_kernel"]
    spans = [(0, 100, 7), (comm_start_us, comm_start_us + 100, 20), (200, 250, 7)]
    events, annotations = [], []
    for rep in range(2):
        t0 = 1000 * rep
        annotations.append(tr.HostRange(f"{tr.REPEAT_PREFIX}{rep}", "user_annotation", 1, t0 - 5, t0 + 260))
        for i, (name, (a, b, stream)) in enumerate(zip(names, spans)):
            events.append(tr.DeviceEvent(name, "kernel", t0 + a, t0 + b, stream, 10 * rep + i, (1,), (1,), t0 + a - 1,
                                         -1, "step 1", rep, None))
    plain = tr.Trace(tuple(events), tuple(annotations), ())
    t = timing.aggregate_gpu(plain, names, [0, 1, 2], counted, repeats=2, warmup=0, device_name="H200")
    _timed_run_with_a_collective.profile = counted.__class__(**{**counted.__dict__, "timing": t, "mode": "timed"})
    return t


@pytest.mark.parametrize("start, exposed", [(50, 50), (100, 100), (0, 0), (150, 50)])
def test_exposed_communication_is_read_from_the_run_itself(start, exposed):
    # the NCCL kernel over [start, start + 100) µs against compute over [0, 100) and [200, 250):
    # from 50: 50 µs under the GEMM, 50 exposed; from 100: all of it exposed; from 0: hidden;
    # from 150: 50 exposed, then 50 under the add
    t = _timed_run_with_a_collective(start)
    for region in ("", "step 1"):
        r = t.region(region)
        assert r.comm_seconds == pytest.approx(100e-6)
        assert r.comm_exposed_seconds == pytest.approx(exposed * 1e-6)


def test_the_summary_says_how_much_communication_was_exposed():
    from dataclasses import replace

    from rooflight.comm import exposed_in, exposure_text

    from rooflight.profile_data import Profile

    t = _timed_run_with_a_collective(50)
    prof = Profile(ops=(), workload="tp", device="cuda:0", timing=t, mode="timed")
    e = exposed_in(prof)
    assert (e.comm_seconds, e.exposed_seconds) == pytest.approx((100e-6, 50e-6))
    assert exposure_text(e) == ("communication in the run: 100 µs of collectives' kernels, 50.0 µs (50%) exposed "
                                "(no compute kernel ran beside it), 50.0 µs hidden behind compute")
    assert exposed_in(replace(prof, timing=None)) is None
    # and the terminal's (and the report's) summary says it under the run's verdict
    import rooflight
    from rooflight.render.steps import summary_lines

    a = rooflight.analyze(_timed_run_with_a_collective.profile, hw="H200 SXM")
    lines = summary_lines(a)
    assert lines[1].startswith("communication in the run: 100 µs of collectives' kernels, 50.0 µs (50%) exposed")


def test_straggler_wait():
    assert straggler_wait([1.0, 1.5, 4.0]) == [3.0, 2.5, 0.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, n: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      ROOFLIGHT_TP_BACKEND="gloo")
    sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]
    import torch.distributed as dist

    import rooflight
    import tensor_parallel as tp
    from rooflight.workloads import build, load_model_file

    (w,) = [w for w in load_model_file(ROOT / "kernels" / "tensor_parallel.py") if w.name == "block"]
    run = build(w, {**w.params, "tokens": 64}, device="cpu", dtype=torch.float32)
    prof = rooflight.count(run.fn, *run.args)
    rows = [{"op": o.short_op, "comm": o.comm_bytes, "read": o.bytes_read, "note": o.note} for o in prof.ops
            if o.comm_bytes or "allreduce" in o.op or "all_reduce" in o.op]
    mm = sum(o.total_flops for o in prof.ops if o.short_op in ("mm", "addmm", "bmm", "linear", "matmul"))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rows": rows, "mm_flops": mm, "n": tp.group_ranks()[1]}))
    dist.destroy_process_group()


def test_a_tensor_parallel_block_on_two_cpu_ranks_moves_the_closed_form_bytes(tmp_path):
    import torch.multiprocessing as mp

    n = 2
    mp.spawn(_rank, args=(n, _free_port(), str(tmp_path)), nprocs=n, join=True)
    for rank in range(n):
        d = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert d["n"] == 2
        reduces = [r for r in d["rows"] if "allreduce" in r["op"] or "all_reduce" in r["op"]]
        # two all-reduces a block (after wo and after w2) of [1, 64, 512] fp32 = 131,072 B each;
        # each rank's link carries 2 (n-1)/n of it: 131,072 B at n = 2
        assert [r["comm"] for r in reduces] == [131_072, 131_072], d["rows"]
        assert all("all-reduce over 2 ranks" in r["note"] for r in reduces)
        # this rank's matmuls are half the unsplit block's: 2*64*512*(3*512 + 512 + 2*1536 + 1536)/2
        assert d["mm_flops"] == 2 * 64 * 512 * (3 * 512 + 512 + 2 * 1536 + 1536) / 2


def test_profile_nproc_runs_the_ranks_and_puts_their_collectives_side_by_side(tmp_path):
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    for k in ("RANK", "WORLD_SIZE"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "rooflight", "profile", str(ROOT / "kernels" / "tensor_parallel.py"),
                        "--nproc", "2", "--count-only", "--device", "cpu", "--no-sweep", "--format", "json",
                        "-o", "out"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "ranks.json").read_text())
    assert summary["ranks"] == 2 and summary["backend"] == "gloo"
    assert sorted(p["rank"] for p in summary["per_rank"]) == [0, 1]
    for p in summary["per_rank"]:
        (c,) = p["collectives"]
        # the defaults: 16 tokens x 512 fp32 = 32,768 B per all-reduce, two a block, 2(n-1)/n = 1 at n = 2
        assert (c["collective"], c["count"], c["link_bytes"], c["ranks"]) == ("all_reduce", 2, 65_536, "2")
    assert (tmp_path / "out" / "rank1" / "block.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "rooflight", "profile", str(ROOT / "kernels" / "tensor_parallel.py"),
                          "--nproc", "1", "--count-only"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "give 2 or more ranks" in bad.stderr


def _nproc(script: Path, *args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "rooflight", "profile", str(script), "--nproc", "2", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


DDP_SCRIPT = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group("gloo")
torch.manual_seed(0)
m = DDP(torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)))
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for _ in range(3):
    m(torch.randn(16, 64)).square().mean().backward()
    opt.step()
    opt.zero_grad()
dist.destroy_process_group()
"""


def test_a_ddp_script_is_timed_on_two_ranks_in_one_run_each(tmp_path):
    # a rank's script creates and destroys its gloo group: run again in the same process, its next
    # rendezvous met the last one's and hung, or failed with "Connection reset by peer", in about
    # one launch of three; so on several ranks a script runs once, counted and timed together
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    r = _nproc(script, "--device", "cpu", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "ranks.json").read_text())
    assert sorted(p["rank"] for p in summary["per_rank"]) == [0, 1]
    for p in summary["per_rank"]:
        reduces = [c for c in p["collectives"] if c["collective"] == "all_reduce"]
        # DDP's gradient buckets: at least one all-reduce a step, timed on the CPU
        assert reduces and reduces[0]["count"] >= 3 and reduces[0]["timed"]
        notes = json.loads((tmp_path / p["profile"]).read_text())["notes"]
        assert any("one of several ranks: the script ran once" in n for n in notes)
    r = _nproc(script, "--device", "cpu", "--repeats", "3", "-o", "out2", cwd=tmp_path)
    assert r.returncode != 0 and "runs once (its process group is created once per process)" in r.stderr


def test_a_rank_that_fails_stops_the_others_and_says_which(tmp_path):
    # rank 1 raises before the first collective, rank 0 waits in its all-reduce for a peer that
    # never comes: the launch must end with rank 1's error, not wait for ever
    script = tmp_path / "one_fails.py"
    script.write_text("import os, torch, torch.distributed as dist\n"
                      "dist.init_process_group('gloo')\n"
                      "if os.environ['RANK'] == '1':\n    raise ValueError('rank one is broken')\n"
                      "dist.all_reduce(torch.ones(4))\n")
    r = _nproc(script, "--device", "cpu", "--count-only", cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    assert "rank 1 of 2 exited 1" in r.stderr and "rank one is broken" in r.stderr


# ---------------------------------------------------------------------------- the interconnect's roof


def test_interconnect_points_use_nccl_tests_arithmetic_and_the_plateau_is_the_best_large_size():
    from rooflight.interconnect import PLATEAU_SIZES, Point, plateau

    # 256 MiB all-reduce over 8 ranks in 4 ms: algbw 67.1 GB/s, busbw x 2*7/8 = 117.4 GB/s
    p = Point("all_reduce", 2**28, 8, 0.004)
    assert p.algbw == pytest.approx(2**28 / 0.004) and p.busbw == pytest.approx(2**28 / 0.004 * 1.75)
    # all-gather of a 64 MiB output over 4 ranks in 1 ms: busbw = S/t x 3/4
    assert Point("all_gather", 2**26, 4, 0.001).busbw == pytest.approx(2**26 / 0.001 * 0.75)
    # the curve rises to a plateau; the roof is the best of the PLATEAU_SIZES largest sizes, not
    # the largest alone (a noisy last point) nor a small size
    curve = [Point("all_reduce", 2**k, 2, t) for k, t in ((12, 1e-5), (20, 1e-4), (24, 1e-3), (26, 3.5e-3), (28, 1.6e-2))]
    best = plateau(curve, "all_reduce")
    assert PLATEAU_SIZES == 3 and best.size == 2**26  # 2**26 / 3.5 ms beats 2**24 / 1 ms and 2**28 / 16 ms
    assert plateau(curve, "all_gather") is None


def test_a_calibration_with_the_interconnect_gives_the_peer_link_roof(tmp_path):
    from rooflight.calibrate import Calibration, Measurement, compare_to_datasheet
    from rooflight.roofline import Ceilings

    figures = {"memory_copy": Measurement(3e12, "bytes_per_s", "copy"),
               "link.all_reduce_busbw": Measurement(360e9, "bytes_per_s", "all_reduce over 8 ranks (NCCL)"),
               "curve.all_reduce.4096": Measurement(1.2e9, "bytes_per_s", "4 KiB")}
    cal = Calibration("cuda", "NVIDIA H200", "h200_sxm", "2.11", "2026-12-01", 30.0, figures)
    back = Calibration.from_dict(cal.to_dict())
    c = back.to_ceilings()
    assert c.link("peer") == 360e9 and "peer" in c.measured
    sheet = Ceilings(name="H200 SXM", memory_bytes_per_s=4.8e12, flops_per_s={}, link_bytes_per_s={"peer": 450e9})
    rows = {r["figure"]: r for r in compare_to_datasheet(back, sheet)}
    assert rows["link.all_reduce_busbw"]["ratio"] == pytest.approx(0.8)  # busbw against NVLink each way
    assert rows["curve.all_reduce.4096"]["datasheet"] == 450e9


def test_calibrate_measures_the_interconnect_between_two_cpu_processes(tmp_path):
    """`rooflight calibrate --device cpu --quick --nproc 2`: gloo between two processes, the
    all-reduce and all-gather curves and their plateaus, in a few seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROOFLIGHT_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "rooflight", "calibrate", "--device", "cpu", "--quick", "--nproc", "2",
                        "--no-save"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    out = " ".join(r.stdout.split())
    assert "link.all_reduce_busbw" in out and "link.all_gather_busbw" in out
    assert "bus bandwidth by message size" in out and "all_reduce over 2 ranks (gloo)" in out
    bad = subprocess.run([sys.executable, "-m", "rooflight", "calibrate", "--device", "cpu", "--nproc", "1"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "--nproc 1: the interconnect needs 2 or more ranks" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr
