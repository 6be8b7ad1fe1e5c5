"""The recorded H100 profile the tests share (tests/fixtures, made by fixtures/record_traces.py)."""

from __future__ import annotations

from pathlib import Path

from rooflight import api, timing, trace
from rooflight.profile_data import Profile

FIX = Path(__file__).resolve().parent / "fixtures"
H100 = "NVIDIA H100 80GB HBM3"


def recorded_h100_decode(workload: str = "tiny llama decode", device_name: str = H100) -> api.Profile:
    """The tiny Llama decode step timed on an H100 (tests/fixtures, made by record_traces.py): the
    labelled and plain traces joined offline by the public rooflight.timing.from_traces."""
    labelled = trace.parse(trace.read_trace(FIX / "trace_labelled.json.gz"))
    plain = trace.parse(trace.read_trace(FIX / "trace_timed.json.gz"))
    counted = Profile.load(FIX / "trace_profile.json")
    return api.Profile.of(timing.from_traces(counted, labelled, plain, repeats=2, warmup=3, device_name=device_name,
                                             workload=workload))
