"""What Nsight Compute charges per kernel for each part of the counter pass's metric set: the
cost of a kernel's replay grows with the passes its metrics need, and the instrumented CUDA-core
counters (smsp__sass_*) and the tensor pipes of every precision need the most.

    python benchmarks/ncu_passes.py [--kernels 40]

The same child (the Hugging Face Llama 2-layer prefill of benchmarks/counters_cases.py, one
warm-up, then one prefill between cudaProfilerStart/Stop) runs under `ncu --profile-from-start off
--launch-count K --clock-control none` once per metric set; the child times its profiled prefill,
so the table's seconds per kernel are the replays' alone (the child's start-up, the same in every
row, is left out), and ncu's own "- N passes" lines give the passes.  Results:
benchmarks/results/ncu_passes.json (with the GPU, driver, ncu and torch versions and the date).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rooflight import ncu  # noqa: E402


def child(times: str) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from counters_cases import hf_llama_prefill

    run = hf_llama_prefill()
    run()
    torch.cuda.synchronize()
    cudart = torch.cuda.cudart()
    t0 = time.time()
    cudart.cudaProfilerStart()
    run()
    torch.cuda.synchronize()
    cudart.cudaProfilerStop()
    Path(times).write_text(json.dumps({"profiled_s": time.time() - t0}))


def metric_sets(query: str) -> list[tuple[str, list[str], list[str]]]:
    full = list(ncu.choose_metrics(query))
    bf16 = list(ncu.choose_metrics(query, frozenset({"bfloat16", "float32", "int64"})))  # the prefill's dtypes
    t = ["gpu__time_duration.sum"]
    byt = [m for m in full if not m.startswith(("sm__", "smsp__"))]
    return [("kernel duration only", t, []),
            ("DRAM and L2 bytes", byt, []),
            ("tensor pipes, every precision", [m for m in full if m.startswith("sm__ops")] + t, []),
            ("tensor pipes, bf16 and tf32", [m for m in bf16 if m.startswith("sm__ops")] + t, []),
            ("CUDA-core fp32 and fp16 (instrumented)", [m for m in bf16 if m.startswith("smsp__")] + t, []),
            ("all 23 (the early counter pass's)", full, []),
            ("a bf16 model's 14 (the pass after the profile)", bf16, []),
            ("all 23, caches not flushed", full, ["--cache-control", "none"])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=40, help="kernels profiled per metric set (--launch-count)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ncu_passes.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    import torch

    nb = ncu.find_ncu()
    t0 = time.perf_counter()
    query = subprocess.run([nb, "--devices", "0", "--query-metrics"], capture_output=True, text=True).stdout
    query_s = time.perf_counter() - t0
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    result = {"device": torch.cuda.get_device_name(), "driver": driver, "torch": torch.__version__,
              "ncu": ncu.version(nb), "date": dt.date.today().isoformat(), "kernels": args.kernels,
              "query_metrics_s": query_s, "rows": []}
    print(f"{result['device']}, driver {driver}, torch {result['torch']}, {result['ncu']}, {result['date']}")
    print(f"ncu --query-metrics took {query_s:.1f} s; {args.kernels} kernels of the HF Llama 2-layer prefill per row")
    print(f"{'metric set':48} {'metrics':>7} {'passes':>7} {'s a kernel':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "times.json"
        for name, metrics, extra in metric_sets(query):
            times.unlink(missing_ok=True)
            cmd = [nb, "--metrics", ",".join(metrics), "--clock-control", "none", "--profile-from-start", "off",
                   "--launch-count", str(args.kernels), *extra, "-f", "-o", f"{tmp}/rep",
                   sys.executable, __file__, "--child", str(times)]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            passes = collections.Counter(int(m) for m in re.findall(r"- (\d+) pass", r.stdout + r.stderr))
            profiled = json.loads(times.read_text())["profiled_s"] if times.exists() else None
            row = {"metric_set": name, "metrics": len(metrics), "passes": dict(passes), "profiled_s": profiled,
                   "seconds_per_kernel": profiled / args.kernels if profiled else None, "returncode": r.returncode,
                   "error": "" if r.returncode == 0 else (r.stdout + r.stderr)[-300:]}
            result["rows"].append(row)
            shown = "/".join(str(k) for k in sorted(passes)) or "-"
            per = f"{row['seconds_per_kernel']:.3f}" if row["seconds_per_kernel"] else "failed"
            print(f"{name:48} {len(metrics):7d} {shown:>7} {per:>10}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
