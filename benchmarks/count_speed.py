"""How long counting takes: a Llama-2-7B-shaped decode step and a 2048-token prefill, counted on
meta and fake-CUDA tensors (no weights in memory).  Target: under 10 s on a 2-core machine.

    python benchmarks/count_speed.py            # prints a table, writes benchmarks/results/count_speed.json
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))  # model files, by file name
from llama import build, decode_one_token, prefill  # noqa: E402
from rooflight import count  # noqa: E402
from rooflight.detect import describe_cpu  # noqa: E402
from rooflight.units import fmt_bytes, fmt_flops  # noqa: E402

CONFIG, PROMPT, BATCH = "llama-2-7b", 2048, 1


def measure(device: str) -> list[dict]:
    rows = []
    fake = device == "fake-cuda"
    ctx = FakeTensorMode() if fake else torch.device("meta")
    dev = "cuda" if fake else "meta"
    with ctx:
        t0 = time.perf_counter()
        model = build(CONFIG, batch=BATCH, max_seq=PROMPT + 16, device=dev)
        built = time.perf_counter() - t0
        toks = torch.zeros(BATCH, PROMPT, dtype=torch.long, device=dev)
        for step, fn, args in (("prefill 2048", prefill, (model, toks)),
                               ("decode step", decode_one_token, (model, toks.narrow(1, 0, 1), PROMPT))):
            t0 = time.perf_counter()
            prof = count(fn, *args)
            seconds = time.perf_counter() - t0
            rows.append({"device": device, "step": step, "seconds": round(seconds, 3), "build_seconds": round(built, 3),
                         "ops": len(prof.ops), "flops": prof.total_flops, "bytes": prof.total_bytes,
                         "intensity": round(prof.intensity, 3)})
    return rows


def main() -> None:
    rows = measure("meta") + measure("fake-cuda")
    print(f"{'device':<10} {'step':<13} {'count s':>8} {'ops':>6} {'FLOPs':>12} {'bytes':>10} {'FLOP/B':>7}")
    for r in rows:
        print(f"{r['device']:<10} {r['step']:<13} {r['seconds']:>8.2f} {r['ops']:>6} {fmt_flops(r['flops']):>12} "
              f"{fmt_bytes(r['bytes']):>10} {r['intensity']:>7.2f}")
    cpu = describe_cpu()
    out = {
        "benchmark": "count_speed", "config": CONFIG, "prompt": PROMPT, "batch": BATCH,
        "machine": {"cpu": cpu.model, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"), "target_seconds": 10.0, "rows": rows,
    }
    path = Path(__file__).resolve().parent / "results" / "count_speed.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
