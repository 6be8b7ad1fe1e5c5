"""The facade (rooflight.api) and the rules of the house: the data module is data, the analysis is
pure, displaying never measures nor writes, one function writes a run's files, one overwrite policy,
one grouping, one intensity rule, no import cycle."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rooflight
from rooflight import api, calibrate
from rooflight.analysis import analyze as pure_analyze
from rooflight.check import summarize
from rooflight.files import MANIFEST, OutputDir, write_files
from rooflight.groups import group_ops
from rooflight.hardware import load_database
from rooflight.profile_data import OpRecord, OpTiming, Profile, RegionTiming, Timing
from rooflight.roofline import Roofs, from_spec, intensity
from rooflight.runner import Options, profile_workloads
from rooflight.workloads import load_model_file

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMPORTS = ROOT.parent / "shared" / "tools" / "imports.py"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rooflight", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def cpu_timed(device_name: str = "Some Other CPU 9000") -> Profile:
    ops = (OpRecord(0, "aten::mm.default", flops={"fp32": 2e9}, bytes_read=1e6, bytes_written=1e6, device="cpu"),)
    t = Timing("cpu", device_name, 3, 1, ops=(OpTiming(0, 1e-3, 1e-3, 1e-3, 1e-3, 1),),
               regions=(RegionTiming("", 1.2e-3, 1e-3, 1.2e-3),))
    return Profile(ops, workload="cpu mm", device="cpu", device_name=device_name, mode="timed", timing=t)


# ---------------------------------------------------------------------------- names


def test_the_function_and_the_data_module_no_longer_collide():
    assert callable(rooflight.profile) and callable(rooflight.count)
    data = importlib.import_module("rooflight.profile_data")
    assert data.Profile is Profile and issubclass(rooflight.Profile, Profile)
    # the data class knows nothing of charts and reports; the facade's subclass adds them
    for name in ("analyze", "plot", "savefig", "to_html", "_repr_html_"):
        assert not hasattr(Profile, name) and hasattr(rooflight.Profile, name)


@pytest.mark.skipif(not SHARED_IMPORTS.is_file(), reason="shared/tools/imports.py is not beside the checkout")
def test_no_import_cycle_and_the_pipeline_points_one_way():
    # every import counts, also one inside a function (the tool reads the source, it runs nothing)
    rules = ["rooflight.profile_data->rooflight.render", "rooflight.profile_data->rooflight.analysis",
             "rooflight.profile_data->rooflight.api", "rooflight.analysis->rooflight.calibrate",
             "rooflight.analysis->rooflight.detect", "rooflight.analysis->rooflight.api",
             "rooflight.projection->rooflight.detect", "rooflight.projection->rooflight.calibrate",
             "rooflight.render->rooflight.files", "rooflight.render->rooflight.calibrate",
             "rooflight.render->rooflight.detect", "rooflight.render->rooflight.api"]
    r = subprocess.run([sys.executable, str(SHARED_IMPORTS), "rooflight", "--cycles", "--forbid", *rules],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


MODEL_FILES = sorted(p.stem for p in (ROOT / "kernels").glob("*.py"))


def test_the_library_never_imports_the_examples():
    # kernels/ is a folder of model files imported by their file names (tests and benchmarks put
    # the folder on sys.path, rooflight puts it there while it imports one of them)
    imports = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(MODEL_FILES + ["kernels"]) + r")\b", re.M)
    for path in (ROOT / "rooflight").rglob("*.py"):
        assert not imports.search(path.read_text()), path


def test_the_model_files_shadow_no_installed_module():
    # kernels/ was a package until transformers 5.25, which imports Hugging Face's `kernels`
    # package, found ours first (the repository root is on sys.path) and failed in every test
    # that built a Hugging Face model.  A model file's name must not be an installed module's either.
    assert not (ROOT / "kernels" / "__init__.py").exists()
    folder = (ROOT / "kernels").resolve()
    path = [p for p in sys.path if Path(p or ".").resolve() != folder]
    taken = [name for name in MODEL_FILES if importlib.machinery.PathFinder.find_spec(name, path) is not None]
    assert not taken, f"kernels/{taken[0]}.py has an installed module's name; rename the file"


# ---------------------------------------------------------------------------- roofs and the pure analysis


def test_analysis_is_a_pure_function_of_the_profile_and_its_roofs(h100_decode):
    spec = load_database().get("h100")
    a = pure_analyze(h100_decode, Roofs(from_spec(spec), from_spec(spec), spec))
    b = api.analyze(h100_decode, "h100", calibrated=False)
    assert a.diagnosis == b.diagnosis and a.groups == b.groups
    # bare ceilings work too
    assert pure_analyze(h100_decode, from_spec(spec)).diagnosis == a.diagnosis


def test_displaying_never_measures_the_machine_nor_writes_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLIGHT_CACHE_DIR", str(tmp_path / "cache"))

    def no_calibration(*a, **k):
        raise AssertionError("displaying a profile ran a calibration")

    monkeypatch.setattr(calibrate, "calibrate", no_calibration)
    prof = api.Profile.of(cpu_timed())
    html = prof._repr_html_()
    assert "rooflight calibrate --device cpu" in html  # the note names the command that makes one
    with pytest.raises(api.MissingCalibrationError, match="rooflight calibrate --device cpu"):
        prof.plot()
    assert not (tmp_path / "cache").exists()


def test_a_cached_cpu_calibration_is_used_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLIGHT_CACHE_DIR", str(tmp_path / "cache"))
    cal = calibrate.Calibration("cpu", "Some Other CPU 9000", "", torch.__version__, "2026-12-01T00:00:00+00:00", 1.0,
                                {"memory_copy": calibrate.Measurement(20e9, "bytes_per_s", "test"),
                                 "flops.fp32": calibrate.Measurement(1e12, "flops_per_s", "test")})
    path = calibrate.save(cal)
    before = path.read_bytes()
    a = api.Profile.of(cpu_timed()).analyze()
    # 2e9 FLOPs at 1 TFLOP/s = 2 ms floor; 2 MB at 20 GB/s = 0.1 ms; the op took 1 ms: compute-bound
    assert a.ceilings.source == "calibrated" and str(a.diagnosis.verdicts[0].label) == "compute-bound"
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_the_notebook_profile_analyses_once_per_choice_of_roofs(h100_decode, monkeypatch):
    prof = dataclasses.replace(h100_decode)  # a fresh object: no analysis yet
    calls = []
    real = api.analyze
    monkeypatch.setattr(api, "analyze", lambda *a, **k: calls.append(a[1:]) or real(*a, **k))
    prof.plot("h100")
    prof.to_html(hw="h100")
    prof.plot("h100")
    assert len(calls) == 1
    prof.plot("h200")
    assert len(calls) == 2


# ---------------------------------------------------------------------------- a run's files


def test_the_notebook_writes_what_the_command_writes(tmp_path):
    model = ROOT / "tests" / "examples" / "tiny_model.py"
    r = cli("profile", str(model), "--count-only", "--device", "meta", "--sweep", "seq=32,64", "-o", "cmd",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = profile_workloads(model, load_model_file(model), Options(device="meta", count_only=True),
                                sweeps={"seq": [32, 64]})
    written = rooflight.write(results, tmp_path / "lib", source=model.name)
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in (tmp_path / "cmd").iterdir() if p.name != MANIFEST)
    assert "block__sweep.png" in names and "index.html" in names
    # the same profile, the same JSON (but for when it was made)
    a = json.loads((tmp_path / "cmd" / "block__seq-64.json").read_text())
    b = json.loads((tmp_path / "lib" / "block__seq-64.json").read_text())
    a.pop("created"), b.pop("created")
    assert a == b


def test_one_overwrite_policy_for_every_command(tmp_path, h100_decode):
    src = h100_decode.save(tmp_path / "run.json")
    (tmp_path / "run.html").write_text("my own notes")
    r = cli("report", str(src), cwd=tmp_path)
    assert r.returncode == 2 and "was not written by rooflight" in r.stderr
    assert (tmp_path / "run.html").read_text() == "my own notes"
    r = cli("report", str(src), "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("report", str(src), "--png", cwd=tmp_path)  # its own file now (the manifest says so): no --force
    assert r.returncode == 0, r.stderr
    assert set(json.loads((tmp_path / MANIFEST).read_text())["files"]) == {"run.html", "run.png"}
    # baseline: the same rule, checked before anything is counted
    (tmp_path / "base.json").write_text("{}")
    r = cli("baseline", str(ROOT / "tests" / "examples" / "tiny_model.py"), "-o", "base.json", cwd=tmp_path)
    assert r.returncode == 2 and "was not written by rooflight" in r.stderr
    assert (tmp_path / "base.json").read_text() == "{}"


def test_write_files_checks_every_destination_before_writing_any(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.txt").write_text("keep")
    with pytest.raises(rooflight.errors.UsageError, match="mine.txt"):
        write_files({tmp_path / "a" / "x.html": "x", tmp_path / "b" / "mine.txt": "y"})
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "mine.txt").read_text() == "keep"
    od = OutputDir(tmp_path / "a")
    od.add("x.html", "x")
    assert [p.name for p in od.commit()] == ["x.html"]


# ---------------------------------------------------------------------------- one grouping, one intensity


def test_one_grouping_at_two_coarsenesses(h100_decode):
    fine = group_ops(h100_decode)
    coarse = group_ops(h100_decode, by=("module", "op"))
    assert {i for g in fine for i in g.indices} == {i for g in coarse for i in g.indices}
    assert len(coarse) <= len(fine)
    # the baseline keeps the coarse groups, keyed "template op"
    base = summarize(h100_decode)["groups"]
    assert set(base) == {f"{g.module} {g.op}".strip() for g in coarse if g.flops or g.bytes}
    wq = next(k for k in base if k.endswith("attention.wq mm"))
    assert wq.startswith("layers.*.")
    with pytest.raises(ValueError, match="unknown key fields"):
        group_ops(h100_decode, by=("layer",))


def test_one_intensity_rule_for_zero_bytes():
    assert intensity(10.0, 0.0) == math.inf and intensity(0.0, 0.0) == 0.0 and intensity(8.0, 2.0) == 4.0
    op = OpRecord(0, "aten::mul.Tensor", flops={"fp32": 10.0})
    assert op.intensity == math.inf
    p = Profile((OpRecord(0, "aten::view.default"),))
    assert p.intensity == 0.0


def test_files_get_the_umasks_mode_not_mkstemps(tmp_path):
    from rooflight.files import write_text_atomic

    old = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "report.html", "x")
        assert p.stat().st_mode & 0o777 == 0o644  # 0666 less the umask (mkstemp alone gives 0600)
        os.chmod(p, 0o640)
        write_text_atomic(p, "y")  # a replaced file keeps its own mode
        assert p.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_a_wheel_finds_its_built_in_gpus(tmp_path):
    """Installed from a wheel (not editable), the spec files lie in rooflight/hw_specs/."""
    from rooflight import hardware

    pkg = tmp_path / "site" / "rooflight"
    (pkg / "hw_specs").mkdir(parents=True)
    for f in (ROOT / "hw_specs").glob("*.toml"):
        (pkg / "hw_specs" / f.name).write_text(f.read_text())
    fake = pkg / "hardware.py"
    fake.write_text("")
    code = (f"import rooflight.hardware as h, pathlib; h.__file__ = {str(fake)!r}; "
            "d = h.builtin_spec_dir(); print(d); print(len(list(d.glob('*.toml'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = r.stdout.split()
    assert r.returncode == 0 and lines[0] == str(pkg / "hw_specs") and int(lines[1]) >= 11, r.stdout + r.stderr
    assert hardware.builtin_spec_dir() == ROOT / "hw_specs"  # a source checkout: the top-level folder


def test_a_profile_keeps_the_roofs_it_was_analysed_against(tmp_path):
    """`profile --hw h200`, then a re-render with no --hw: the same H200 roofs (not this machine's
    GPU nor the H100 default), and saying so; --hw and --datasheet still choose others."""
    torch.manual_seed(0)
    prof = rooflight.count(torch.nn.Linear(64, 64), torch.randn(4, 64))
    out = api.render_run(prof, formats=("json",), hw="h200")
    (name,) = [n for n in out.files if n.endswith(".json")]
    saved = Profile.from_json(out.files[name].decode() if isinstance(out.files[name], bytes) else out.files[name])
    assert saved.roofs["ceilings"]["name"] == "H200 SXM" and saved.roofs["spec"] == "h200_sxm"
    again = api.analyze(saved)
    assert again.ceilings.name == "H200 SXM" and again.spec.key == "h200_sxm"
    assert any("analysed against when profiled" in n for n in again.notes)
    assert api.analyze(saved, "a10").ceilings.name == "A10"
    damaged = dataclasses.replace(saved, roofs={"ceilings": {"name": "x", "memory_bytes_per_s": -1}})
    assert api.analyze(damaged).ceilings.name != "x"  # a damaged record is ignored, never trusted
    assert Profile.from_json(saved.to_json()).roofs == saved.roofs
