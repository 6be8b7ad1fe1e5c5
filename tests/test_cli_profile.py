"""`rooflight profile`, `baseline` and `check` driven as a user drives them: real subprocesses of
the command on example files of both styles (tests/examples), and every error case."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rooflight.check import Tolerances, assert_no_regression, check_model, count_model

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "examples"


def rooflight(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rooflight", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture()
def model(tmp_path) -> Path:
    dst = tmp_path / "tiny_model.py"
    shutil.copy(EXAMPLES / "tiny_model.py", dst)
    return dst


def test_profile_model_file_count_only_with_sweep(tmp_path, model):
    r = rooflight("profile", str(model), "--count-only", "--device", "meta", "--sweep", "seq=32,64,128",
                  "--param", "batch=1", "--format", "html,json,svg,csv", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    for name in ("block__seq-32", "block__seq-64", "block__seq-128"):
        for ext in ("html", "json", "svg", "csv"):
            assert (out / f"{name}.{ext}").is_file(), (name, ext, sorted(p.name for p in out.iterdir()))
    assert (out / "block__sweep.svg").is_file() and (out / "index.html").is_file()
    prof = json.loads((out / "block__seq-64.json").read_text())
    assert prof["params"] == {"seq": 64, "batch": 1, "dim": 128, "heads": 4} and prof["mode"] == "count"
    assert "whole run:" in r.stdout and "predicted from counts" in r.stdout
    assert "wrote" in r.stdout


def test_profile_model_file_timed_on_cpu_with_correctness_check(tmp_path, model):
    r = rooflight("profile", str(model), "--device", "cpu", "--repeats", "2", "--warmup", "1", "--no-sweep",
                  "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "correctness: pass" in r.stdout and "CPU timing" in r.stdout
    prof = json.loads((tmp_path / "out" / "block.json").read_text())
    assert prof["mode"] == "timed" and prof["timing"]["device_kind"] == "cpu"


def test_profile_plain_script_with_arguments_regions_and_nvtx(tmp_path):
    r = rooflight("profile", str(EXAMPLES / "plain_script.py"), "--device", "cpu", "--format", "json", "-o", "out",
                  "--", "--size", "48", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "plain_script.json").read_text())
    # rooflight.region and an NVTX range are the script's own marks, its steps; what ran before them
    # (building the input) is its setup (rooflight.steps)
    assert prof["regions"] == ["setup", "matmul", "activation"]
    assert [(s["name"], s["kind"]) for s in prof["steps"]] == [("matmul", "marked"), ("activation", "marked")]
    mm = [o for o in prof["ops"] if o["op"].startswith("aten::mm")]
    assert mm and mm[0]["inputs"][0][0] == [48, 48]  # the script saw its own argument
    assert prof["params"] == {"argv": "--size 48"}


def test_script_that_raises_shows_the_users_traceback_not_ours(tmp_path):
    r = rooflight("profile", str(EXAMPLES / "plain_script.py"), "--count-only", "-o", "out", "--", "--fail",
                  cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback (most recent call last):" in r.stderr
    assert 'plain_script.py", line' in r.stderr and "ValueError: the user's own bug" in r.stderr
    assert "rooflight/" not in r.stderr.replace("rooflight: error", "")  # none of our frames
    assert r.stderr.strip().splitlines()[-1].startswith("rooflight: error: plain_script.py raised ValueError")
    assert not (tmp_path / "out").exists()


def test_script_calling_sys_exit(tmp_path):
    bad = rooflight("profile", str(EXAMPLES / "plain_script.py"), "--count-only", "--", "--exit", "3", cwd=tmp_path)
    assert bad.returncode == 1 and "exited with status 3" in bad.stderr and "Traceback" not in bad.stderr
    ok = rooflight("profile", str(EXAMPLES / "plain_script.py"), "--count-only", "--format", "json", "-o", "o2",
                   "--", "--exit", "0", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o2" / "plain_script.json").is_file()


def test_missing_file_and_bad_options_are_one_line_errors(tmp_path, model, capsys, monkeypatch):
    """In-process (fast): the same main() the console script runs."""
    from rooflight.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "saved.json").write_text('{"schema": "rooflight.profile"}')
    (tmp_path / "analysis.ipynb").write_text("{}")
    cases = [
        (["profile", "nope.py"], 2, "nope.py: no such file"),
        (["profile", "."], 2, ". is a folder: give the Python file to profile"),
        (["profile", "saved.json"], 2, "saved.json is a JSON file, not a script: a profile saved by rooflight is "
                                       "rendered again with `rooflight report saved.json`"),
        (["profile", "analysis.ipynb"], 2, "analysis.ipynb is a notebook: call rooflight.profile(fn)"),
        (["report", str(model)], 1, f"{model} is a Python file, not a saved profile: profile it with "
                                    f"`rooflight profile {model}`"),
        (["baseline", "."], 2, ". is a folder: give the model file"),
        (["profile", str(model), "--hw", "h1000"], 2, "unknown GPU 'h1000'"),
        (["profile", str(model), "--format", "pdf"], 2, "--format 'pdf'"),
        (["profile", str(model), "--param", "batch"], 2, "write NAME=VALUE"),
        (["profile", str(model), "--param", "colour=red", "--count-only"], 2, "has no parameter 'colour'"),
        (["profile", str(EXAMPLES / "plain_script.py"), "--sweep", "a=1,2"], 2, "applies to model files"),
        (["check", str(model), "--baseline", "missing.json"], 2, "no such baseline"),
    ]
    for args, code, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        err = capsys.readouterr().err
        assert exc.value.code == code, (args, exc.value.code, err)
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)


def test_workload_that_needs_cuda_on_a_cpu_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    f = tmp_path / "cuda_only.py"
    f.write_text(textwrap.dedent("""
        import torch, rooflight

        @rooflight.workload
        def step(n: int = 8):
            x = torch.randn(n, n, device="cuda")
            return torch.mm, (x, x)
    """))
    r = rooflight("profile", str(f), "--count-only", cwd=tmp_path)
    assert r.returncode == 1
    assert "needs a CUDA GPU and this machine has none" in r.stderr and "Traceback" not in r.stderr
    r = rooflight("profile", str(f), "--device", "cuda", cwd=tmp_path)
    assert r.returncode == 1 and "no CUDA GPU" in r.stderr


def test_interrupted_run_leaves_earlier_reports_untouched(tmp_path, model):
    first = rooflight("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    report = tmp_path / "out" / "block.json"
    before = report.read_bytes()
    f = tmp_path / "interrupts.py"
    f.write_text(model.read_text() + textwrap.dedent("""

        @rooflight.workload
        def zz_interrupted():
            raise KeyboardInterrupt
    """))
    r = rooflight("profile", str(f), "--count-only", "--no-sweep", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 130 and "interrupted" in r.stderr
    assert report.read_bytes() == before
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_users_own_files_are_not_overwritten(tmp_path, model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "block.json").write_text("my own notes")
    r = rooflight("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "not written by rooflight" in r.stderr
    assert (out / "block.json").read_text() == "my own notes"
    r = rooflight("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out", "--force",
                  cwd=tmp_path)
    assert r.returncode == 0 and (out / "block.json").read_text().startswith("{")


def test_check_passes_then_fails_when_sdpa_becomes_a_materialized_attention(tmp_path, model):
    b = rooflight("baseline", str(model), "-o", "rooflight-baseline.json", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    ok = rooflight("check", str(model), "--baseline", "rooflight-baseline.json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: no intensity regression" in ok.stdout
    model.write_text(model.read_text().replace('ATTENTION = "sdpa"', 'ATTENTION = "materialized"'))
    bad = rooflight("check", str(model), "--baseline", "rooflight-baseline.json", "--max-intensity-drop", "5%",
                    cwd=tmp_path)
    assert bad.returncode == 1
    assert "FAILED" in bad.stdout and "intensity fell" in bad.stdout and "bytes grew" in bad.stdout
    assert "attention" in bad.stdout  # the region that changed is named


def test_check_tolerances_and_bad_baselines(tmp_path, model):
    assert rooflight("baseline", str(model), "-o", "b.json", cwd=tmp_path).returncode == 0
    data = json.loads((tmp_path / "b.json").read_text())
    point = data["points"]["block[seq=64]"]
    point["total"]["bytes"] *= 0.9  # pretend the model used to move 10% fewer bytes
    point["total"]["intensity"] = point["total"]["flops"] / point["total"]["bytes"]
    (tmp_path / "tight.json").write_text(json.dumps(data))
    assert rooflight("check", str(model), "-b", "tight.json", cwd=tmp_path).returncode == 1
    loose = rooflight("check", str(model), "-b", "tight.json", "--max-intensity-drop", "15%", "--max-bytes-growth",
                      "15%", cwd=tmp_path)
    assert loose.returncode == 0, loose.stdout
    for text, message in (("{", "corrupt baseline"), ('{"schema": "rooflight.baseline", "version": 9}', "version 9"),
                          ('{"schema": "x"}', "not a rooflight baseline")):
        (tmp_path / "bad.json").write_text(text)
        r = rooflight("check", str(model), "-b", "bad.json", cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


def test_python_api_for_pytest(tmp_path, model):
    base = tmp_path / "b.json"
    base.write_text(json.dumps(count_model(model, device="meta")))
    result = assert_no_regression(model, base)
    assert result.ok
    model.write_text(model.read_text().replace('ATTENTION = "sdpa"', 'ATTENTION = "materialized"'))
    with pytest.raises(AssertionError, match="intensity regressed"):
        assert_no_regression(model, base)
    assert check_model(model, base, Tolerances(10.0, 10.0, 10.0)).ok


def test_a_model_file_that_imports_another_declares_only_its_own(tmp_path):
    from rooflight.workloads import Run, load_model_file

    (tmp_path / "base.py").write_text(textwrap.dedent("""
        import rooflight, torch

        @rooflight.workload
        def base_mm(n: int = 8, device="cpu"):
            x = torch.ones(n, n, device=device)
            return lambda: x @ x
    """))
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        import rooflight, torch
        from base import base_mm  # a helper from another model file: not one of this file's workloads

        @rooflight.workload
        def graphed(n: int = 8, device="cpu"):
            return rooflight.Run(base_mm(n, device), options={"cuda_graph": True, "repeats": 3})
    """))
    (w,) = load_model_file(tmp_path / "mine.py")
    assert w.name == "graphed"
    assert [v.name for v in load_model_file(tmp_path / "base.py")] == ["base_mm"]
    run = w.builder(n=4)
    assert run.options == {"cuda_graph": True, "repeats": 3}
    with pytest.raises(Exception, match="Run options colour: use cuda_graph, flush_l2, warmup, repeats"):
        Run(lambda: None, options={"colour": 1})


def test_a_model_file_in_a_package_imports_its_package_from_any_working_directory(tmp_path):
    # kernels/train.py style: a model file inside a package imports a sibling by its package's name,
    # which only the folder above the package makes importable (as pytest finds it); run from elsewhere
    pkg = tmp_path / "proj" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "common.py").write_text("import torch\n\ndef square(n):\n    return torch.ones(n, n)\n")
    (pkg / "train.py").write_text(textwrap.dedent("""
        import rooflight
        from models.common import square

        @rooflight.workload
        def mm(n: int = 8, device="cpu"):
            x = square(n).to(device)
            return lambda: x @ x
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = rooflight("profile", str(pkg / "train.py"), "--count-only", "--device", "meta", "--format", "json", "-o", "out",
                  cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    # 2 * 8 * 8 * 8 = 1,024 FLOPs
    assert json.loads((elsewhere / "out" / "mm.json").read_text())["ops"][0]["flops"] == {"fp32": 1024.0}
    # in a process: the package's folder is on sys.path while the file is imported, then taken off
    from rooflight.workloads import load_model_file

    before = list(sys.path)
    try:
        assert [w.name for w in load_model_file(pkg / "train.py")] == ["mm"] and sys.path == before
    finally:
        for name in ("models", "models.common"):
            sys.modules.pop(name, None)


@pytest.mark.gpu
def test_each_sweep_point_keeps_its_own_traces(tmp_path, model):
    r = rooflight("profile", str(model), "--sweep", "seq=16,32", "--format", "json", "-o", "out", "--trace", "tr",
                  "--repeats", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "tr").glob("*.trace.json")) == [
        "block__seq-16.labelled.trace.json", "block__seq-16.timed.trace.json",
        "block__seq-32.labelled.trace.json", "block__seq-32.timed.trace.json"]


def test_kept_traces_are_the_profilers_own():
    import torch

    from rooflight import timing

    with timing.keep_traces() as kept:
        timing._WORKLOAD.set("w")
        raw = timing._run_profiler(lambda: torch.mm(torch.ones(8, 8), torch.ones(8, 8)), cuda=False)
    assert kept == [("w", "timed", raw)] and any(ev.get("name") == "aten::mm" for ev in raw["traceEvents"])
    timing._run_profiler(lambda: None, cuda=False)
    assert len(kept) == 1  # outside keep_traces nothing is kept


@pytest.mark.gpu
def test_trace_dir_keeps_each_timed_pass(tmp_path, model):
    r = rooflight("profile", str(model), "--no-sweep", "--format", "json", "-o", "out", "--trace", "tr", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / "tr").glob("*.trace.json"))
    assert files == ["block.labelled.trace.json", "block.timed.trace.json"], files  # --no-sweep: the defaults' point
    raw = json.loads((tmp_path / "tr" / files[1]).read_text())
    assert any(ev.get("cat") == "kernel" for ev in raw["traceEvents"])


def test_quiet_prints_a_line_per_point_and_verbose_every_group(tmp_path, model):
    q = rooflight("profile", str(model), "--count-only", "--format", "json", "-o", "out", "-q", cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    lines = [ln for ln in q.stdout.splitlines() if ln.strip()]
    assert [ln.split(":")[0] for ln in lines if not ln.startswith("wrote")] == ["block [seq=64]", "block [seq=128]"]
    v = rooflight("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out", "-v",
                  cwd=tmp_path)
    n = rooflight("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out", cwd=tmp_path)
    assert v.stdout.count("advice:") >= n.stdout.count("advice:") and len(v.stdout) > len(n.stdout)
    both = rooflight("profile", str(model), "--count-only", "-q", "-v", cwd=tmp_path)
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_report_and_diff_take_a_directory_for_o_as_profile_does(tmp_path, model):
    assert rooflight("profile", str(model), "--count-only", "--no-sweep", "--format", "json", "-o", "out",
                     cwd=tmp_path).returncode == 0
    (tmp_path / "reports").mkdir()
    r = rooflight("report", "out/block.json", "-o", "reports", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "reports" / "block.html").is_file(), r.stderr
    d = rooflight("diff", "out/block.json", "out/block.json", "-o", "reports/", cwd=tmp_path)
    assert d.returncode == 0 and (tmp_path / "reports" / "block-vs-block.html").is_file(), d.stderr
    # a name with no suffix is a directory too, created (a file called `rep` holding HTML was written)
    r = rooflight("report", "out/block.json", "-o", "rep", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "rep" / "block.html").is_file(), r.stderr
    d = rooflight("diff", "out/block.json", "out/block.json", "-o", "cmp", cwd=tmp_path)
    assert d.returncode == 0 and (tmp_path / "cmp" / "block-vs-block.html").is_file(), d.stderr
    # any other suffix is one line: the report's own chart would overwrite it
    bad = rooflight("report", "out/block.json", "-o", "chart.png", "--png", cwd=tmp_path)
    assert bad.returncode == 2 and not (tmp_path / "chart.png").exists()
    assert "-o chart.png: the report is HTML; name it chart.html, or give a directory to put it in" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
