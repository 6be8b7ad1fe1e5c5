"""A script written for CUDA, counted on a machine with no GPU (rooflight.cuda_on_cpu): its CUDA
tensors go to the CPU, torch.autocast("cuda") casts as CUDA's autocast does, GradScaler("cuda")
is the CPU's; the counts equal those of the same script written for the CPU; a CUDA call the CPU
cannot stand in for is one line naming it.  On a GPU, the stand-in's autocast is held to CUDA's
own, op for op."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rooflight import count
from rooflight.cuda_on_cpu import cuda_on_cpu

ROOT = Path(__file__).resolve().parent.parent
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="the stand-in is for machines without a GPU")

TRAIN = """
import torch
import torch.nn.functional as F

torch.manual_seed(0)
DEVICE = "{device}"
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 16)).to(DEVICE)
opt = torch.optim.AdamW(model.parameters(), foreach=True)
for _ in range(3):
    x = torch.randn(32, 64, device=DEVICE)
    y = torch.randint(0, 16, (32,)).to(DEVICE)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    {sync}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rooflight", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def _facts(prof: dict) -> list[tuple]:
    return [(o["op"], o["phase"], tuple((tuple(t[0]), t[2]) for t in o["inputs"]), o["flops"], o["bytes_read"],
             o["bytes_written"]) for o in prof["ops"]]


@no_gpu
def test_a_script_written_for_cuda_counts_as_the_same_script_written_for_the_cpu(tmp_path):
    # (not cuda.py: a script's folder is on sys.path, and torch imports a package named cuda)
    (tmp_path / "on_cuda.py").write_text(TRAIN.format(device="cuda", sync="torch.cuda.synchronize()"))
    (tmp_path / "on_cpu.py").write_text(TRAIN.format(device="cpu", sync="pass"))
    for name in ("on_cuda", "on_cpu"):
        r = cli("profile", f"{name}.py", "--count-only", "--format", "json", "-o", name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    cuda = json.loads((tmp_path / "on_cuda" / "on_cuda.json").read_text())
    cpu = json.loads((tmp_path / "on_cpu" / "on_cpu.json").read_text())
    assert _facts(cuda) == _facts(cpu) and len(cuda["ops"]) > 100
    # each step's two linears, forward: 2*32*64*128 + 2*32*128*16 = 524,288 + 131,072 FLOPs (+ the biases' adds)
    addmm = [o for o in cuda["ops"] if o["op"] == "aten::addmm.default"]
    assert sum(sum(o["flops"].values()) for o in addmm) == 3 * (524_288 + 32 * 128 + 131_072 + 32 * 16)
    (note,) = [n for n in cuda["notes"] if "no GPU" in n and "CPU" in n]
    assert "tensors on cuda" in note and "torch.cuda.synchronize() did nothing" in note
    assert not any("no GPU: the script" in n for n in cpu["notes"])


@no_gpu
def test_without_count_only_the_error_says_to_count_it(tmp_path):
    (tmp_path / "s.py").write_text(TRAIN.format(device="cuda", sync="pass"))
    r = cli("profile", "s.py", "-o", "out", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "needs a CUDA GPU and this machine has none: count it here with --count-only" in r.stderr
    r = cli("profile", "s.py", "--count-only", "--device", "meta", "-o", "out", cwd=tmp_path)
    assert r.returncode != 0 and "count a script with --count-only" in r.stderr


@no_gpu
def test_a_cuda_call_the_cpu_cannot_stand_in_for_is_one_line_naming_it(tmp_path):
    (tmp_path / "s.py").write_text("import torch\nx = torch.randn(8, device='cuda')\n"
                                   "props = torch.cuda.get_device_properties(0)\n")
    r = cli("profile", "s.py", "--count-only", "-o", "out", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "s.py asks CUDA for what a CPU cannot stand in for at s.py:3" in line
    assert "count it on a machine with a GPU, or run that line only when torch.cuda.is_available()" in line


TIMED_WITH_EVENTS = """
import torch
model = torch.nn.Linear(256, 256).cuda()
x = torch.randn(64, 256, device="cuda")
side = torch.cuda.Stream()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
for _ in range(3):
    start.record()
    with torch.cuda.stream(side):
        y = model(x)
    torch.cuda.current_stream().wait_stream(side)
    y.record_stream(torch.cuda.current_stream())
    end.record()
    torch.cuda.synchronize()
    print(f"loop-ms {start.elapsed_time(end):.3f} ms peak {torch.cuda.max_memory_allocated()}")
"""


@no_gpu
def test_a_loop_timing_itself_with_cuda_events_and_streams_counts_on_the_cpu(tmp_path):
    # events time the CPU's run, streams are its one order, memory statistics read 0: the
    # script runs unchanged and its three [64, 256] x [256, 256] linears count as on the CPU
    # (2*64*256*256 = 8,388,608 fp32 FLOPs and the bias 16,384 each)
    (tmp_path / "timed.py").write_text(TIMED_WITH_EVENTS)
    r = cli("profile", "timed.py", "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    times = [float(ln.split()[1]) for ln in r.stdout.splitlines() if ln.startswith("loop-ms ")]
    assert len(times) == 3 and all(t > 0 for t in times) and "peak 0" in r.stdout
    prof = json.loads((tmp_path / "out" / "timed.json").read_text())
    assert [sum(o["flops"].values()) for o in prof["ops"] if o["op"].startswith("aten::addmm")] == [8_404_992] * 3
    note, = [n for n in prof["notes"] if n.startswith("this machine has no GPU")]
    for part in ("CUDA streams as the CPU's one order", "CUDA events timing the CPU's run",
                 "torch.cuda.max_memory_allocated() read 0"):
        assert part in note
    real = (torch.cuda.Event, torch.cuda.Stream, torch.cuda.stream, torch.cuda.max_memory_allocated)
    with cuda_on_cpu():
        assert torch.cuda.Event is not real[0]
    assert (torch.cuda.Event, torch.cuda.Stream, torch.cuda.stream, torch.cuda.max_memory_allocated) == real


def _recorded(fn) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    prof = count(fn)
    return [(o.short_op, tuple(t.dtype for t in o.inputs), tuple(t.dtype for t in o.outputs)) for o in prof.ops]


def _autocast_region(device: str):
    lin = torch.nn.Linear(64, 64).to(device)
    x = torch.randn(8, 64, device=device)
    y = torch.randint(0, 64, (8,), device=device)

    def run():
        with torch.autocast(device, dtype=torch.float16):
            h = lin(lin(x))  # the weight cast once: autocast's cache
            p = h.softmax(-1)
            s = h.sum()
            n = F.layer_norm(h, (64,))
            loss = F.cross_entropy(h, y)
        return p, s, n, loss
    return run


def _on_stand_in(make, seen: list | None = None):
    """What `make("cuda")()` records with the stand-in entered inside the capture (as
    `rooflight profile` enters it: its mode sees each call before the capture's)."""
    def run():
        with cuda_on_cpu() as redirected:
            make("cuda")()
            if seen is not None:
                seen.extend(redirected.used)
    return _recorded(run)


KEEP_OUT = ("t", "detach", "randn", "randint", "empty", "uniform_", "view", "_unsafe_view")


@no_gpu
def test_autocast_cuda_casts_as_cudas_autocast_does_not_as_the_cpus():
    seen = []
    ops = _on_stand_in(_autocast_region, seen)
    assert "autocast('cuda', float16) with CUDA's cast lists" in seen
    ops = [o for o in ops if o[0] not in KEEP_OUT]
    f16, f32 = "float16", "float32"
    assert ops[:4] == [("_to_copy", (f32,), (f16,)), ("_to_copy", (f32,), (f16,)), ("_to_copy", (f32,), (f16,)),
                       ("addmm", (f16, f16, f16), (f16,))]  # bias, x, weight
    assert ops[4] == ("addmm", (f16, f16, f16), (f16,))  # the second call: bias and weight from the cache
    # softmax: CUDA's autocast gives it an fp32 result (the CPU's keeps fp16), one kernel from fp16
    # into fp32 as on a GPU; sum: fp32 with no copy
    assert ops[5] == ("_softmax", (f16,), (f32,))
    assert ops[6] == ("sum", (f16,), (f32,))
    # layer norm: its input cast to fp32; cross entropy: log_softmax in fp16 (its dtype is explicit
    # inside cross_entropy_loss), then nll_loss casts to fp32, as on CUDA (the CPU's casts the logits first)
    assert ops[7:9] == [("_to_copy", (f16,), (f32,)), ("native_layer_norm", (f32,), (f32, f32, f32))]
    assert ops[9][:1] == ("_log_softmax",) and ops[9][1] == (f16,)
    assert ops[10] == ("_to_copy", (f16,), (f32,)) and ops[11][0] == "nll_loss_forward" and ops[11][1][0] == f32
    # outside the stand-in the CPU's own autocast is back: softmax stays fp16
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.randn(4, 4).half().softmax(-1).dtype == torch.float16


@no_gpu
def test_grad_scaler_cuda_runs_as_the_cpus_and_everything_is_put_back():
    real = (torch.autocast, torch.amp.GradScaler, torch.cuda.amp.GradScaler, torch.cuda.synchronize,
            torch.set_default_device, torch.Generator)

    def step():
        lin = torch.nn.Linear(16, 16).cuda()
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda")
        g = torch.Generator(device="cuda").manual_seed(0)  # a seeded batch, as a user's sampler makes
        assert isinstance(g, torch.Generator) and g.device.type == "cpu"
        with torch.autocast("cuda"):
            loss = lin(torch.randn(4, 16, device="cuda", generator=g)).float().sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    with cuda_on_cpu() as seen:
        prof = count(step)
    assert "GradScaler('cuda') as the CPU's" in seen.used and "a torch.Generator on cuda as the CPU's" in seen.used
    names = [o.short_op for o in prof.ops]
    assert "_amp_foreach_non_finite_check_and_unscale_" in names and "_amp_update_scale_" in names
    assert not prof.uncounted()
    assert (torch.autocast, torch.amp.GradScaler, torch.cuda.amp.GradScaler, torch.cuda.synchronize,
            torch.set_default_device, torch.Generator) == real


@pytest.mark.gpu
def test_the_stand_ins_autocast_records_what_cudas_autocast_runs():
    # on a GPU: the region under CUDA's real autocast, and under the stand-in (which puts it on the
    # CPU wherever it runs), record the same ops with the same dtypes, one for one
    on_gpu = _recorded(_autocast_region("cuda"))
    on_cpu = _on_stand_in(_autocast_region)
    assert [o for o in on_cpu if o[0] not in KEEP_OUT] == [o for o in on_gpu if o[0] not in KEEP_OUT]


@no_gpu
def test_a_nanogpt_style_cuda_training_script_counts_on_the_cpu(tmp_path):
    r = cli("profile", str(ROOT / "tests" / "examples" / "cuda_train.py"), "--count-only", "--format", "json", "-o",
            "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "cuda_train.json").read_text())
    assert [s["kind"] for s in prof["steps"]] == ["train"] * 3 and all(o["counted"] for o in prof["ops"])
    (note,) = [n for n in prof["notes"] if "no GPU: the script" in n]
    for what in ("autocast('cuda', float16) with CUDA's cast lists", "GradScaler('cuda') as the CPU's", "tensors on cuda"):
        assert what in note
    # a step's forward matrix work, in fp16 under autocast: B = 4, T = 32, d = 64, V = 512, 2 blocks;
    # per block qkv, proj, fc, out: 2*B*T*d*d*(3 + 1 + 4 + 4) = 12,582,912, the tied head 2*B*T*d*V =
    # 8,388,608: 2 * 12,582,912 + 8,388,608 = 33,554,432 tensor FLOPs; the biases' adds 9*d*B*T = 73,728 a block
    mats = [o for o in prof["ops"] if o["region"] == "step 2" and o["phase"] == "forward"
            and o["op"] in ("aten::addmm.default", "aten::mm.default")]
    assert sum(o["flops"].get("fp16_tensor", 0) for o in mats) == 33_554_432
    assert sum(o["flops"].get("fp32", 0) for o in mats) == 2 * 73_728
    # the scaler's unscale and the clip run between the backward and the optimizer's step
    phases = {o["op"].split("::")[-1].split(".")[0]: o["phase"] for o in prof["ops"] if o["region"] == "step 2"}
    assert phases["_amp_foreach_non_finite_check_and_unscale_"] == phases["_foreach_norm"] == "after backward"
    assert phases["_fused_adamw_"] == "optimizer"
