"""The README's set-up commands and CI agree, so the README stays true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up\s+```bash\n(.*?)```", text, re.S)
    assert block, "README has no '## Set up' bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_two_setup_commands_both_pinning_cpu_torch_first():
    cmds = setup_commands()
    assert len(cmds) == 2
    for cmd in cmds:
        assert cmd.startswith("pip install torch==2.13.0 && ")


def test_ci_runs_the_readme_test_command_exactly():
    test_cmd = setup_commands()[1]
    assert "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, f".ci/run must run the README's test command: {test_cmd!r}"


def test_package_pins_only_a_lower_bound_on_torch():
    py = (ROOT / "pyproject.toml").read_text()
    deps = re.findall(r'"torch([^"]*)"', py)
    assert deps and all(d.startswith(">=") for d in deps), deps
