"""Calibrate this machine's ceilings and print them beside the datasheet.

    python benchmarks/calibrate.py        # prints a table, writes benchmarks/results/calibrate-<device>.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rooflight.calibrate import calibrate, compare_to_datasheet  # noqa: E402
from rooflight.roofline import from_spec  # noqa: E402
from rooflight.detect import detect  # noqa: E402
from rooflight.hardware import load_database  # noqa: E402
from rooflight.render.tables import fmt_quantity  # noqa: E402


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
    rows = compare_to_datasheet(cal, sheet)
    for r in rows:
        ratio = f"{r['ratio']:.0%}" if r["ratio"] else ""
        print(f"{r['figure']:<16} {fmt_quantity(r['value'], r['unit']):>14} {fmt_quantity(r['datasheet'], r['unit']):>14} "
              f"{ratio:>7}  {r['how']}")
    out = {"device": cal.device_name, "spec": spec.key if spec else "", "torch": cal.torch_version,
           "date": cal.created[:10], "seconds": cal.seconds, "rows": rows}
    slug = "cpu" if cal.device_kind == "cpu" else (spec.key if spec else "gpu")
    path = Path(__file__).resolve().parent / "results" / f"calibrate-{slug}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
