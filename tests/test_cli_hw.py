"""`rooflight hw ...` driven as a user drives it: typer's runner, and a real subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rooflight.cli import app, main
from rooflight.hardware import builtin_spec_dir

runner = CliRunner()


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_hw_list_shows_every_gpu_with_ridge():
    r = invoke("hw", "list")
    assert r.exit_code == 0, r.output
    for name in ("H100 SXM", "H200 SXM", "A10", "RTX 4090", "RX 7900 XTX"):
        assert name in r.output
    assert "295 FLOP/B" in r.output  # H100 SXM bf16 ridge
    assert "3.35 TB/s" in r.output


def test_hw_show_prints_every_figure_with_its_source():
    r = invoke("hw", "show", "h100")
    assert r.exit_code == 0, r.output
    assert "H100 SXM" in r.output
    assert "h100_sxm.toml (built-in)" in r.output
    assert "peak_dense.bf16_tensor" in r.output and "989.4 TFLOPS" in r.output
    assert "datasheet" in r.output and "sources" in r.output
    assert "ridge.bf16_tensor" in r.output and "295.3 FLOP/B" in r.output


def test_hw_show_says_which_file_a_user_spec_came_from(tmp_path):
    src = (builtin_spec_dir() / "h100_sxm.toml").read_text().replace('"3.35 TB/s"', '"3.1 TB/s"')
    (tmp_path / "h100_lab.toml").write_text(src)
    r = invoke("hw", "show", "h100", "--hw-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "h100_lab.toml (user, replaces" in r.output
    assert "3.1 TB/s" in r.output


def test_hw_detect_without_gpu_describes_the_cpu():
    r = invoke("hw", "detect")
    assert r.exit_code == 0, r.output
    import torch

    if not torch.cuda.is_available():
        assert "No GPU found" in r.output
        assert "CPU:" in r.output


def test_unknown_gpu_is_one_line_exit_2(capsys):
    code, out, err = run_main(capsys, "hw", "show", "h1000")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rooflight: error: unknown GPU 'h1000'")
    assert "Traceback" not in err


def test_ambiguous_gpu_lists_candidates(capsys):
    code, _, err = run_main(capsys, "hw", "show", "a100")
    assert code == 2
    assert "ambiguous" in err and "A100 80GB SXM" in err


def test_usage_errors_are_one_line_exit_2(capsys):
    for args in (["hw", "shw"], ["hw", "list", "--bogus"], ["hw", "show"]):
        code, _, err = run_main(capsys, *args)
        assert code == 2, args
        assert err.count("\n") == 1 and err.startswith("rooflight: error:"), err


def test_malformed_user_spec_is_one_line_exit_1(capsys, tmp_path):
    (tmp_path / "bad.toml").write_text("name = 3\n")
    code, _, err = run_main(capsys, "hw", "list", "--hw-dir", str(tmp_path))
    assert code == 1
    assert err.startswith("rooflight: error: bad.toml: ") and err.count("\n") == 1


def test_help_reads_well():
    r = invoke("--help")
    assert r.exit_code == 0 and "Roofline performance analyzer" in r.output and "hw" in r.output
    r = invoke("hw", "--help")
    assert r.exit_code == 0 and all(c in r.output for c in ("list", "show", "detect"))
    r = invoke("hw", "show", "--help")
    assert r.exit_code == 0 and "forgiving" in r.output


@pytest.mark.skipif(shutil.which("rooflight") is None, reason="console script not installed (pip install -e .)")
def test_installed_console_script_runs_as_a_subprocess():
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(["rooflight", "hw", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "H100 SXM" in r.stdout
    r = subprocess.run(["rooflight", "hw", "show", "nope-gpu"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("rooflight: error: unknown GPU") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "rooflight", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("rooflight ")


def test_a_command_that_draws_nothing_loads_neither_matplotlib_nor_dynamo():
    # `rooflight --help`, `hw list`, a JSON-only profile: matplotlib (~0.7 s, ~10 s building its
    # font cache on a fresh machine) loads on the first chart drawn, torch._dynamo (~1.6 s) when a
    # capture starts; a chart drawn still works
    script = (
        "import sys, torch, rooflight, rooflight.cli.application\n"
        "from rooflight.cli import main\n"
        "try:\n"
        "    main(['hw', 'list'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "loaded = [m for m in ('matplotlib', 'torch._dynamo') if m in sys.modules]\n"
        "fig = rooflight.count(lambda: torch.randn(8, 8) @ torch.randn(8, 8)).plot()\n"
        "print(loaded, 'matplotlib' in sys.modules, type(fig).__name__)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[] True ChartFigure"


def test_every_commands_help_shows_flags_as_flags():
    """Each command's --help works, and a flag is shown as a flag (no '<bool>' value to give)."""
    import typer.main

    cmd = typer.main.get_command(app)  # what CliRunner runs: the flags' own declarations, no patching
    names = []
    for top, sub in cmd.commands.items():
        if getattr(sub, "commands", None):
            names += [[top, s] for s in sub.commands]
        else:
            names.append([top])
    assert len(names) >= 10
    for args in names:
        r = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (args, r.output[-500:])
        flags = [ln for ln in r.output.splitlines() if "<bool>" in ln and "--help" not in ln]
        assert not flags, (args, flags)


def test_a_flag_given_true_says_it_is_a_flag(capsys):
    code, out, err = run_main(capsys, "diff", "a.json", "b.json", "--changed", "true")
    assert code == 2 and "--changed is a flag, give it alone" in err and err.count("\n") == 1
    # profile takes a script's arguments positionally: 'true' lands there, and the error says why
    model = str(__import__("pathlib").Path(__file__).parent / "examples" / "tiny_model.py")
    code, out, err = run_main(capsys, "profile", model, "--count-only", "true")
    assert code == 2 and "'true' after a flag? flags such as --count-only take no value" in err
