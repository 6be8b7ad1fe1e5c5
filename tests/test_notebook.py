"""A notebook, executed the way Jupyter runs it (nbclient, a fresh ipykernel): what each output shows."""

from __future__ import annotations

import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    "import torch, rooflight\ntorch.manual_seed(0)\nm = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), "
    "torch.nn.Linear(256, 64))\nprof = rooflight.count(m, torch.randn(8, 64))",
    "prof.plot()",
    "prof",
    "prof.analyze('h100')",
    "import pandas as pd\npd.DataFrame({'x': [1, 2]})",
    "prof.analyze('h100').frame()",
]


@pytest.fixture(scope="module")
def outputs():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    return [c.outputs for c in nb.cells]


def data(outs) -> dict:
    got = {}
    for o in outs:
        assert o.output_type != "error", "\n".join(o.get("traceback", []))
        got.update(o.get("data", {}))
    return got


def test_plot_shows_an_image_not_the_figure_repr(outputs):
    d = data(outputs[1])
    assert "image/png" in d, d.keys()
    assert "<Figure size" not in d.get("text/plain", "")


def test_a_profile_shows_html_scoped_to_itself_and_a_short_text_repr(outputs):
    d = data(outputs[2])
    assert len(d["text/plain"]) < 300 and d["text/plain"].startswith("<rooflight Profile 'Sequential': ")
    html = d["text/html"]
    css = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    selectors = [s.strip() for rule in css.split("}") if "{" in rule for s in rule.split("{")[0].split(",")]
    assert selectors and all(s.startswith(".rooflight") for s in selectors), [s for s in selectors
                                                                              if not s.startswith(".rooflight")]


def test_an_analysis_displays_itself_and_gives_its_verdicts_as_a_dataframe(outputs):
    d = data(outputs[3])
    assert "text/html" in d and "memory-bound" in d["text/html"]
    assert d["text/plain"].startswith("<rooflight Analysis of 'Sequential' on H100 SXM: ")
    frame = data(outputs[5])
    assert "label" in frame["text/html"] and "evidence" in frame["text/html"]
