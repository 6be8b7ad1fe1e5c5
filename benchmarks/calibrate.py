"""Calibrate this machine's ceilings and print them beside the datasheet.

    python benchmarks/calibrate.py        # prints a table, writes benchmarks/results/calibrate-<device>.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rooflight.calibrate import calibrate  # noqa: E402
from rooflight.ceilings import from_spec  # noqa: E402
from rooflight.detect import detect  # noqa: E402
from rooflight.hardware import load_database  # noqa: E402
from rooflight.units import fmt_bandwidth, fmt_flops_rate, fmt_seconds  # noqa: E402


def main() -> None:
    db = load_database()
    det = detect(db)
    spec = db.get(det.gpus[0].spec_key) if det.gpus and det.gpus[0].spec_key else None
    cal = calibrate("cuda" if torch.cuda.is_available() else "cpu", progress=lambda m: print(f"  .. {m}", flush=True),
                    spec_key=spec.key if spec else "")
    sheet = from_spec(spec) if spec else None
    print(f"\n{cal.device_name} ({spec.name if spec else 'no datasheet'}), torch {cal.torch_version}, "
          f"{cal.created[:10]}, calibration took {cal.seconds:.1f} s")
    print(f"{'figure':<16} {'measured':>14} {'datasheet':>14} {'ratio':>7}  how")
    rows = []
    for key, m in cal.figures.items():
        ref = None
        if sheet is not None:
            if key in ("memory_copy", "memory_triad"):
                ref = sheet.memory_bytes_per_s
            elif key.startswith("flops."):
                cls = key.split(".", 1)[1]
                ref = sheet.peak(cls) if cls in {c.value for c in sheet.flops_per_s} else None
            elif key.startswith(("h2d", "d2h")):
                ref = sheet.link("pcie")
        fmt = fmt_seconds if m.unit == "seconds" else (fmt_bandwidth if m.unit == "bytes_per_s" else fmt_flops_rate)
        ratio = f"{m.value / ref:.0%}" if ref else ""
        print(f"{key:<16} {fmt(m.value):>14} {fmt(ref) if ref else '':>14} {ratio:>7}  {m.how}")
        rows.append({"figure": key, "value": m.value, "unit": m.unit, "datasheet": ref,
                     "ratio": m.value / ref if ref else None, "how": m.how})
    out = {"device": cal.device_name, "spec": spec.key if spec else "", "torch": cal.torch_version,
           "date": cal.created[:10], "seconds": cal.seconds, "rows": rows}
    slug = "cpu" if cal.device_kind == "cpu" else (spec.key if spec else "gpu")
    path = Path(__file__).resolve().parent / "results" / f"calibrate-{slug}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
