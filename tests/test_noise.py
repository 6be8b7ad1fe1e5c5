"""Timing noise made visible: noisy ops marked in the JSON, the HTML, and in a note that says when
the headline rests on them."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

import rooflight
from rooflight.analysis import analyze
from rooflight.hardware import load_database
from rooflight.profile_data import OpTiming, Profile, RegionTiming, Timing
from rooflight.render.html import report_html
from rooflight.roofline import from_spec


def timed(spread: tuple[float, float], wall: float):
    torch.manual_seed(0)
    p = rooflight.count(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()), torch.randn(8, 64))
    ops = tuple(OpTiming(o.index, 10e-6, *spread, kernels=1) for o in p.ops if o.bytes)
    t = Timing("cuda", "NVIDIA H100 80GB HBM3", repeats=5, warmup=1, ops=ops,
               regions=(RegionTiming("", wall, sum(x.seconds for x in ops)),))
    return replace(p, mode="timed", timing=t)


H100 = from_spec(load_database().get("h100"))


def test_steady_times_get_no_note():
    a = analyze(timed((9.5e-6, 10.5e-6), 20e-6), H100)  # 10% spread: not noisy
    assert not any(n.startswith("timing noise") for n in a.notes)
    assert not json.loads(a.profile.to_json())["timing"]["ops"][0]["noisy"]


def test_noisy_ops_are_marked_everywhere_and_a_close_headline_says_it_may_flip():
    p = timed((2e-6, 30e-6), 20e-6)  # each op 2-30 µs around 10 µs: noisy; 20 µs wall: the ops are the run
    a = analyze(p, H100)
    note = a.notes[0]
    assert note.startswith("timing noise: 2 of 2 timed ops spread more than 20% over their 5 repeats")
    assert "may flip between runs" in note
    d = json.loads(p.to_json())
    assert [o["noisy"] for o in d["timing"]["ops"]] == [True, True]
    assert Profile.from_json(p.to_json()).to_json() == p.to_json()  # the derived flag is not read back as a field
    page = report_html(a)
    assert page.count("<span class=noisy>±</span>") == 2 and "title='noisy: repeats spread" in page


def test_a_wide_lead_is_not_called_fragile():
    a = analyze(timed((2e-6, 30e-6), 2e-3), H100)  # 2 ms of idle around 20 µs of noisy ops: overhead-bound
    note = next(n for n in a.notes if n.startswith("timing noise"))
    assert "may flip" not in note and "more --repeats" in note
