"""rooflight diff and the CI gate's machine-readable outputs: rows, spreads, matching, exit codes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rooflight
from rooflight import api
from rooflight.analysis import analyze
from rooflight.diff import diff
from rooflight.hardware import load_database
from rooflight.profile_data import OpTiming, RegionTiming, Timing
from rooflight.roofline import from_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "reports" / "examples"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}  # this checkout, whatever is installed
    return subprocess.run([sys.executable, "-m", "rooflight", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


# ---------------------------------------------------------------------------- two real GPU runs


def test_diff_of_the_committed_h200_runs_materialized_against_flash_attention():
    a_file, b_file = EXAMPLES / "attention-naive.json", EXAMPLES / "attention-flash.json"
    d = api.diff(a_file, b_file, calibrated=False)
    a, b = rooflight.load(a_file), rooflight.load(b_file)
    assert [(r.scope, r.change) for r in d.rows] == [("run", "faster"), ("module", "faster")]
    run, mod = d.rows
    # the headline: each run's whole wall time (median of 10 on the H200), from the files
    assert run.a.seconds == a.timing.total.wall_seconds and run.b.seconds == b.timing.total.wall_seconds
    assert run.speedup == pytest.approx(a.timing.total.wall_seconds / b.timing.total.wall_seconds)
    # FLOPs: A's bmm QK^T and PV are 2 * 2*B*H*S*S*D = 2 * 2*1*32*4096*4096*128 = 274,877,906,944 on the
    # bf16 tensor cores, plus its scale, mask and softmax on the vector units; B is one fused kernel
    assert mod.a.flops == a.total_flops and mod.b.flops == b.total_flops
    assert sum(o.flops.get("bf16_tensor", 0) for o in a.ops) == 2 * (2 * 1 * 32 * 4096 * 4096 * 128)
    # bytes: A writes and reads back the [1, 32, 4096, 4096] scores several times; B reads q, k, v, writes o
    assert mod.ratio("bytes") == pytest.approx(b.total_bytes / a.total_bytes)
    assert mod.ratio("bytes") < 1 / 50
    assert (mod.a.label, mod.b.label) == ("memory-bound", "compute-bound")
    assert "matched by module path" in mod.note and "_scaled_dot_product_flash_attention" in mod.note
    speedup = a.timing.total.wall_seconds / b.timing.total.wall_seconds
    assert d.verdict.startswith(f"B is {speedup:.2g}× faster than A")
    assert "its bytes fell" in d.verdict
    assert any("different workloads" in n for n in d.notes)
    assert all(0 < r.a.attained <= 1.05 and 0 < r.b.attained <= 1.05 for r in d.rows)  # under the roofs
    frame = d.frame()
    assert list(frame["scope"]) == ["run", "module"] and frame.loc[0, "b_label"] == "compute-bound"
    assert "H200" in d.a_about and "torch 2.11" in d.a_about


def test_the_committed_comparison_report_is_the_diff_of_the_committed_runs():
    page = (EXAMPLES / "attention-naive-vs-flash.html").read_text()
    d = api.diff(EXAMPLES / "attention-naive.json", EXAMPLES / "attention-flash.json", calibrated=False)
    assert d.verdict.replace("→", "&rarr;") in page or d.verdict in page.replace("&#x27;", "'")


# ---------------------------------------------------------------------------- synthetic timings


class Block(torch.nn.Module):
    """attention (materialized or SDPA), then an MLP with or without its activation module."""

    def __init__(self, fused: bool, act: bool):
        super().__init__()
        self.up = torch.nn.Linear(32, 64)
        self.act = torch.nn.GELU() if act else None
        self.down = torch.nn.Linear(64, 32)
        self.fused = fused

    def attn(self, q):
        if self.fused:
            return F.scaled_dot_product_attention(q, q, q)
        return torch.softmax(q @ q.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ q

    def forward(self, x):
        h = self.up(x)
        if self.act is not None:
            h = self.act(h)
        return self.down(h) + self.attn(x.view(1, 2, 16, 16)).reshape(x.shape)


def timed(prof, times: dict[str, tuple[float, float, float]], default=(10e-6, 9e-6, 11e-6), wall=None):
    """The profile with a GPU timing: every op with work gets (median, min, max) seconds, by short op name."""
    ops = [OpTiming(o.index, *times.get(o.short_op, default), kernels=1) for o in prof.ops if o.bytes or o.total_flops]
    busy = sum(t.seconds for t in ops)
    t = Timing("cuda", "NVIDIA H100 80GB HBM3", repeats=10, warmup=3, ops=tuple(ops),
               regions=(RegionTiming("", wall or busy, busy),))
    return replace(prof, mode="timed", timing=t)


@pytest.fixture(scope="module")
def h100():
    return from_spec(load_database().get("h100"))


def counted(fused: bool, act: bool = True):
    torch.manual_seed(0)
    m = Block(fused, act)
    x = torch.randn(16, 32)
    with torch.no_grad():
        return rooflight.count(m, x)


def test_a_change_inside_both_runs_spread_is_no_change(h100):
    p = counted(True)
    a = analyze(timed(p, {}), h100)
    noisy = analyze(timed(p, {}, default=(10.5e-6, 9.5e-6, 11.5e-6)), h100)  # +5%, spreads overlap
    d = diff(a, noisy)
    assert {r.change for r in d.rows} == {"no change"}
    assert d.verdict.startswith("no change in time beyond the runs' spread")
    faster = analyze(timed(p, {}, default=(5e-6, 4.8e-6, 5.2e-6)), h100)  # 2x, spreads apart
    d = diff(a, faster)
    assert d.run.change == "faster" and d.run.speedup == pytest.approx(2.0)
    assert {r.change for r in d.rows if r.scope == "group"} == {"faster"}
    # one op's time alone changes: only its group moves; the rest stay "no change"
    one = analyze(timed(p, {"addmm": (20e-6, 19e-6, 21e-6)}), h100)
    d = diff(a, one)
    moved = [r for r in d.rows if r.changed]
    assert [r.scope for r in moved] == ["run", "group", "group"] and all(r.change == "slower" for r in moved)
    assert {r.name for r in moved[1:]} == {"up addmm", "down addmm"}
    assert d.verdict.startswith("B is 0.") is False and "slower than A" in d.verdict


def test_a_change_measured_on_one_repeat_says_it_may_be_noise(h100):
    # one repeat on each side: min = median = max, so any difference reads as a change; the
    # verdict says it is one sample's, and the note that neither reading is firm
    p = counted(True)
    one = lambda prof: replace(prof, timing=replace(prof.timing, repeats=1))  # noqa: E731
    a = analyze(one(timed(p, {}, default=(10e-6, 10e-6, 10e-6))), h100)
    b = analyze(one(timed(p, {}, default=(11e-6, 11e-6, 11e-6))), h100)
    d = diff(a, b)
    assert d.run.change == "slower"
    assert "(one repeat on a side: too few to tell a change from noise; time both with --repeats 5 or more)" in d.verdict
    assert any("a change in time, or 'no change', is weak evidence" in n for n in d.notes)
    # ten repeats with spreads apart: a plain verdict
    d = diff(analyze(timed(p, {}), h100), analyze(timed(p, {}, default=(5e-6, 4.8e-6, 5.2e-6)), h100))
    assert "too few to tell" not in d.verdict


def test_groups_on_one_side_only_and_a_fused_kernel_matched_by_module_path(h100):
    a = analyze(timed(counted(False, act=True), {}), h100)
    b = analyze(timed(counted(True, act=False), {}), h100)
    d = diff(a, b)
    only_a = [r.name for r in d.rows if r.change == "only in A"]
    assert only_a == ["act gelu"]  # the activation module is gone from B and nothing in B has its path
    (mod,) = [r for r in d.rows if r.scope == "module"]
    # A's materialized attention (bmm, softmax, div ...) at the top level against B's one SDPA op
    assert mod.name.startswith("(top level): ") and "scaled_dot_product_attention" in mod.name
    assert "_softmax" in mod.note and mod.a.ops > 1 and mod.b.ops == 1
    # the top level's ops but the residual add (matched by name as the group "add" on both sides)
    assert mod.a.flops == sum(o.total_flops for o in a.profile.ops if o.module == "" and o.short_op != "add")
    matched = {r.name for r in d.rows if r.scope == "group" and r.a and r.b}
    assert matched == {"up addmm", "down addmm", "add"}


def test_count_only_profiles_compare_counts(h100):
    a = analyze(counted(False), h100)
    b = analyze(counted(True), h100)
    d = diff(a, b)
    assert d.run.change == "counts changed" and not d.timed
    assert d.verdict.startswith("counts only: FLOPs")
    same = diff(a, analyze(counted(False), h100))
    assert {r.change for r in same.rows} == {"same counts"}
    assert any("count-only" in n for n in d.notes)


def test_diff_to_dict_is_strict_json(h100):
    a = analyze(counted(False), h100)
    d = api.diff(a.profile, counted(True), hw="h100")
    text = json.dumps(d.to_dict(), allow_nan=False)  # NaN would raise: strict JSON for any parser
    back = json.loads(text)
    assert back["schema"] == "rooflight.diff" and back["rows"][0]["scope"] == "run"
    assert back["rows"][0]["a_seconds"] is None  # count-only: no time, null not NaN


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture()
def two_profiles(tmp_path):
    a, b = counted(False), counted(True)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    return tmp_path


def test_cli_diff_prints_every_row_writes_html_and_json(two_profiles):
    t = two_profiles
    r = run_cli("diff", "a.json", "b.json", "-o", "cmp.html", cwd=t)
    assert r.returncode == 0, r.stderr
    assert "counts only: FLOPs" in r.stdout and "(top level)" in r.stdout
    assert (t / "cmp.html").read_text().startswith("<!DOCTYPE html>")
    j = run_cli("diff", "a.json", "b.json", "--format", "json", cwd=t)
    assert j.returncode == 0 and json.loads(j.stdout)["b_file"] == "b.json"
    again = run_cli("diff", "a.json", "b.json", "-o", "cmp.html", cwd=t)  # rooflight's own file: replaced
    assert again.returncode == 0, again.stderr
    (t / "mine.html").write_text("my notes")
    refused = run_cli("diff", "a.json", "b.json", "-o", "mine.html", cwd=t)
    assert refused.returncode == 2 and (t / "mine.html").read_text() == "my notes"


@pytest.mark.parametrize("args, message", [
    (["a.json", "nope.json"], "nope.json: no such file"),
    (["a.json", "b.json", "-o", "cmp.png"], "the comparison report is HTML"),
    (["a.json", "b.json", "-o", "a.json"], "the comparison report is HTML"),
    (["a.json", "b.json", "--limit", "-1"], "--limit -1"),
    (["a.json", "bad.json"], "bad.json"),
])
def test_cli_diff_bad_input_is_one_line_and_exit_2(two_profiles, args, message):
    (two_profiles / "bad.json").write_text("{")
    r = run_cli("diff", *args, cwd=two_profiles)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_diff_against_a_baseline(tmp_path):
    model = tmp_path / "tiny_model.py"
    shutil.copy(ROOT / "tests" / "examples" / "tiny_model.py", model)
    assert run_cli("baseline", str(model), "-o", "base.json", "--no-sweep", cwd=tmp_path).returncode == 0
    prof = run_cli("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out", cwd=tmp_path)
    assert prof.returncode == 0, prof.stderr
    (saved,) = (tmp_path / "out").glob("[!.]*.json")
    r = run_cli("diff", "base.json", str(saved), "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {row["change"] for row in d["rows"]} == {"same counts"}
    assert any("is a rooflight baseline" in n for n in d["notes"])


# ---------------------------------------------------------------------------- the CI gate's formats


@pytest.fixture()
def gate(tmp_path):
    model = tmp_path / "tiny_model.py"
    shutil.copy(ROOT / "tests" / "examples" / "tiny_model.py", model)
    assert run_cli("baseline", str(model), "-o", "base.json", cwd=tmp_path).returncode == 0
    data = json.loads((tmp_path / "base.json").read_text())
    for point in data["points"].values():  # pretend the model used to move 20% fewer bytes
        point["total"]["bytes"] *= 0.8
        point["total"]["intensity"] = point["total"]["flops"] / point["total"]["bytes"]
    (tmp_path / "tight.json").write_text(json.dumps(data))
    return tmp_path, model


def test_check_formats_and_exit_codes(gate):
    t, model = gate
    ok = run_cli("check", str(model), "-b", "base.json", "--format", "json", cwd=t)
    assert ok.returncode == 0, ok.stderr
    j = json.loads(ok.stdout)
    assert j["ok"] and j["tolerances"] == {"max_intensity_drop": 0.05, "max_flops_growth": 0.05,
                                           "max_bytes_growth": 0.05}
    assert len(j["entries"]) > 3 and all({"baseline", "now", "change", "problems"} <= set(e) for e in j["entries"])
    bad = run_cli("check", str(model), "-b", "tight.json", "--format", "junit", cwd=t)
    assert bad.returncode == 1
    suite = ET.fromstring(bad.stdout)
    failures = suite.findall(".//testcase/failure")
    points = json.loads((t / "tight.json").read_text())["points"]
    assert int(suite.get("failures")) == len(failures) == len(points)  # every point's total regressed
    assert all("bytes grew 25.0%" in f.get("message") for f in failures)  # 1 / 0.8 = 1.25
    assert int(suite.get("tests")) == len(suite.findall(".//testcase")) == len(j["entries"])
    gh = run_cli("check", str(model), "-b", "tight.json", "--format", "github", cwd=t)
    assert gh.returncode == 1
    lines = gh.stdout.strip().splitlines()
    assert sum(line.startswith("::error file=") for line in lines) == len(points)
    assert lines[-1].startswith("::notice title=rooflight check::")
    text = run_cli("check", str(model), "-b", "tight.json", cwd=t)
    assert text.returncode == 1 and "more rows" not in text.stdout and "compared" in text.stdout
    for args, message in ((["-b", "missing.json"], "no such baseline"),
                          (["-b", "base.json", "--format", "xml"], "xml"),
                          (["-b", "base.json", "--max-intensity-drop", "lots"], "--max-intensity-drop")):
        r = run_cli("check", str(model), *args, cwd=t)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    other = run_cli("check", str(model), "-b", "base.json", "--param", "seq=12", "--no-sweep", cwd=t)
    assert other.returncode == 2 and "re-create" in other.stderr  # a baseline of other parameters: not a regression


def test_check_a_saved_profile_without_counting_again(gate):
    t, model = gate
    prof = run_cli("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out", cwd=t)
    assert prof.returncode == 0, prof.stderr
    (saved,) = (t / "out").glob("[!.]*.json")
    ok = run_cli("check", str(saved), "-b", "base.json", cwd=t)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = run_cli("check", str(saved), "-b", "tight.json", "--format", "json", cwd=t)
    assert bad.returncode == 1 and json.loads(bad.stdout)["failures"] >= 1
    r = run_cli("check", str(saved), "-b", "base.json", "--param", "seq=8", cwd=t)
    assert r.returncode == 2 and "compared as it is" in r.stderr


# ---------------------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="chromium not installed (apt-get install chromium; .ci/run installs it)")
def test_comparison_report_in_headless_chromium(tmp_path):
    from tests.test_render import _run_chromium

    page = tmp_path / "cmp.html"
    d = api.diff(EXAMPLES / "attention-naive.json", EXAMPLES / "attention-flash.json", calibrated=False)
    d.to_html(page)
    shot = tmp_path / "shot.png"
    r = _run_chromium(tmp_path, "--window-size=1280,1400", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img[..., :3].std() > 0.05, "blank screenshot"
    dom = _run_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert "B is 9.1× faster than A" in dom and dom.count("<tr") == 2 + len(d.rows)  # 2 header rows
    assert "data:image/png;base64," in dom
