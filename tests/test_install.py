"""The wheel, installed the way a user installs it: not editable, the repository not on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("rooflight-*.whl")
    # a fresh environment that borrows this one's torch, numpy, ... (no network, no CUDA wheels),
    # with rooflight itself installed from the wheel alone
    env_dir = tmp / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    work = tmp / "work"
    work.mkdir()
    shutil.copy(ROOT / "tests" / "examples" / "tiny_model.py", work / "tiny_model.py")
    return py, work


def run(py: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ROOFLIGHT_HW_DIR")}
    return subprocess.run([str(py), *args], cwd=work, capture_output=True, text=True, timeout=600, env=env)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    py, work = installed
    r = run(py, work, "-c", "import rooflight, sys; print(rooflight.__file__)")
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip())
    assert str(ROOT) not in str(where) and "site-packages" in str(where), where


def test_the_commands_work_from_the_wheel(installed):
    py, work = installed
    hw = run(py, work, "-m", "rooflight", "hw", "list")
    assert hw.returncode == 0 and "H100 SXM" in hw.stdout and "H200" in hw.stdout, hw.stderr
    prof = run(py, work, "-m", "rooflight", "profile", "tiny_model.py", "--count-only", "--no-sweep", "--format",
               "json,html", "-o", "out")
    assert prof.returncode == 0, prof.stderr
    saved = next(p for p in (work / "out").glob("*.json") if not p.name.startswith("."))
    rep = run(py, work, "-m", "rooflight", "report", str(saved), "--hw", "a100-sxm", "-o", "again.html")
    assert rep.returncode == 0 and (work / "again.html").read_text().startswith("<!DOCTYPE html>"), rep.stderr
    llm = run(py, work, "-m", "rooflight", "llm", "llama-2-7b", "--hw", "h100", "--batch", "1")
    assert llm.returncode == 0 and "TPOT" in llm.stdout, llm.stderr
