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


def test_uncounted_time_is_weighed_in_the_headlines_steps_not_the_whole_run():
    # a setup's 10 ms copy (counted), then 2 steps of [an op with no formula: 1 ms, a counted add:
    # 0.1 ms]; the headline (step 2) is 1 / 1.1 = 91% uncounted, the whole run only 2 / 12.2 = 16%
    from rooflight.costs.model import TensorMeta
    from rooflight.profile_data import OpRecord, Step

    x = TensorMeta.contiguous((1 << 20,), "float32", "cuda:0")
    ops = [OpRecord(0, "aten::copy_.default", region="setup", inputs=(x,), outputs=(x,), bytes_read=x.bytes,
                    bytes_written=x.bytes)]
    for k in (1, 2):
        ops += [OpRecord(len(ops), "aten::_fused_layer.default", region=f"step {k}", module="layer", inputs=(x,),
                         outputs=(x,), counted=False),
                OpRecord(len(ops) + 1, "aten::add.Tensor", region=f"step {k}", module="layer", inputs=(x, x),
                         outputs=(x,), flops={"fp32": x.numel}, bytes_read=2 * x.bytes, bytes_written=x.bytes)]
    seconds = [10e-3, 1e-3, 0.1e-3, 1e-3, 0.1e-3]
    steps = (Step(1, "step 1", "forward", True, False, "M", None, None, None, 1, 2),
             Step(2, "step 2", "forward", False, True, "M", None, None, None, 3, 4))
    t = Timing("cuda", "NVIDIA H100 80GB HBM3", repeats=3, warmup=1,
               ops=tuple(OpTiming(i, s, s, s, kernels=1) for i, s in enumerate(seconds)),
               regions=(RegionTiming("", 12.2e-3, 12.2e-3), RegionTiming("setup", 10e-3, 10e-3),
                        RegionTiming("step 1", 1.1e-3, 1.1e-3), RegionTiming("step 2", 1.1e-3, 1.1e-3)))
    p = Profile(ops=tuple(ops), mode="timed", regions=("setup", "step 1", "step 2"), steps=steps, timing=t)
    note = next(n for n in analyze(p, H100).notes if "lower bounds" in n)
    assert "uncounted ops hold 91% of the measured op time of the headline's steps" in note
