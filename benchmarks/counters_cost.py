"""What the counter pass costs: `rooflight profile --counters` end to end against Nsight Compute
run over the whole program, with the same metrics and with `--set roofline`, on the same
workloads in one run.

    python benchmarks/counters_cost.py [--case 0] [--roofline-kernels 20] [--cap 240] [--every-kernel]

rooflight's pass measures one op of each distinct call (the row says how many kernels of the
counter pass were measured); --every-kernel also runs `--counters --every-kernel` and writes how
far each repeated op's counters (its first call's) are from its own.  When ncu over the whole run
is stopped at --cap, the whole run's kernel count is the timed run's kernels per run times the
child's runs (warm-ups and the measured one).

`--set roofline` replays every kernel many times (tens to hundreds of ms each): it is run twice,
on the first kernel and on the first --roofline-kernels kernels of the whole run; the difference
over the kernels between gives its cost per kernel, the first run less one kernel its start-up
(the child's own under ncu), and start-up + cost per kernel x the run's kernels the whole run's
(printed as an extrapolation, beside the parts measured).  The workload alone (the same child,
no tool over it) is timed too: no tool that runs the workload once takes less, so --set roofline's
whole run over it is the most any counter pass could be cheaper on that workload.  Each rooflight
run starts from an empty cache, as on a new machine; `--counters` is then run once more on the
cache the first left (ncu's metric query kept), as a later run on that machine would.  Each case's
row is printed and merged into benchmarks/results/counters_cost.json as soon as it is measured
(--case picks one, so each fits a 10-minute call).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rooflight import ncu  # noqa: E402

CASES = [("kernels/llama.py", "decode", {"config": "llama-2-7b", "batch": 1, "context": 512}, "7B-shape decode step"),
         ("benchmarks/counters_cases.py", "hf_llama_prefill", {}, "HF Llama 2-layer prefill, 512 tokens")]


def _timed(cmd, timeout, cache=None):
    """(seconds, the CompletedProcess or None, whether it was stopped at `timeout`); a stopped run is
    stopped with its children (ncu's profiled child would go on writing into the temporary folder).
    cache: rooflight's cache folder for the run (ROOFLIGHT_CACHE_DIR)."""
    t0 = time.perf_counter()
    env = {**os.environ, **({"ROOFLIGHT_CACHE_DIR": str(cache)} if cache else {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
        return time.perf_counter() - t0, subprocess.CompletedProcess(cmd, proc.returncode, out, err), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return time.perf_counter() - t0, None, True


def _kernels(ncu_bin: str, report: Path) -> int:
    out = subprocess.run([ncu_bin, "--import", str(report), "--csv", "--page", "raw"], capture_output=True, text=True)
    rows = list(csv.reader(io.StringIO(out.stdout[out.stdout.find('"ID"'):])))
    return sum(1 for r in rows[1:] if r and r[0].strip().isdigit())


def _agreement(one: dict, every: dict) -> dict:
    """How far each op shown with another op's counters (measured_on) is from its own, measured
    in the --every-kernel pass: the largest relative difference per figure."""
    def per_op(c):
        out = {}
        for k in c["kernels"]:
            a = out.setdefault(k["op_index"], {"dram_read": 0.0, "dram_write": 0.0, "l2_bytes": 0.0, "flops": 0.0})
            for f in ("dram_read", "dram_write", "l2_bytes"):
                a[f] += k[f]
            a["flops"] += sum(k["flops"].values())
        return out
    copied = {k["op_index"] for k in one["kernels"] if k.get("measured_on", -1) >= 0}
    a, b = per_op(one), per_op(every)
    worst = {}
    for op in copied:
        for f in ("dram_read", "dram_write", "l2_bytes", "flops"):
            x, y = a.get(op, {}).get(f, 0.0), b.get(op, {}).get(f, 0.0)
            if max(x, y) > 1e5:  # leave out figures too small to compare (a few sectors)
                worst[f] = max(worst.get(f, 0.0), abs(x - y) / max(x, y))
    return {"ops_copied": len(copied), "max_relative_difference": worst}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", type=int, action="append", help="index into CASES (repeatable; default all)")
    ap.add_argument("--roofline-kernels", type=int, default=20)
    ap.add_argument("--cap", type=float, default=240.0, help="seconds before a run is stopped")
    ap.add_argument("--every-kernel", action="store_true",
                    help="also run --counters --every-kernel and compare each repeated op's counters with its own")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "counters_cost.json"))
    args = ap.parse_args(argv)
    nb = ncu.find_ncu()
    query = subprocess.run([nb, "--devices", "0", "--query-metrics"], capture_output=True, text=True).stdout
    metrics = ncu.choose_metrics(query)
    import torch

    out = Path(args.out)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ncu": ncu.version(nb),
              "date": dt.date.today().isoformat(), "rows": []}
    if out.exists():  # rows of other cases measured earlier on this machine are kept
        old = json.loads(out.read_text())
        if old.get("device") == result["device"]:
            result["rows"] = old.get("rows", [])
    print(f"{result['device']}, torch {result['torch']}, {result['ncu']}, {result['date']}", flush=True)
    print(f"{'workload':38} {'kernels':>7} {'profile':>8} {'+counters':>9} {'ncu same':>9} {'roofline (extrap.)':>19} "
          f"{'roof/rl':>7}", flush=True)
    for i, (file, wl, params, label) in enumerate(CASES):
        if args.case and i not in args.case:
            continue
        base = [sys.executable, "-m", "rooflight", "profile", file, "-w", wl, "--no-sweep", "--format", "json",
                "--force", "--repeats", "3", "--no-check"] + [x for k, v in params.items() for x in ("--param", f"{k}={v}")]
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
            # each rooflight run starts from an empty cache, as on a new machine, but the last: it reads
            # what the one before kept (ncu's metric query), as any later run on that machine would
            t_plain, r0, _ = _timed(base + ["-o", f"{tmp}/a"], args.cap, cache=f"{tmp}/cache-plain")
            t_rl, r1, cut1 = _timed(base + ["-o", f"{tmp}/b", "--counters"], args.cap, cache=f"{tmp}/cache")
            t_warm, r7, cut7 = _timed(base + ["-o", f"{tmp}/w", "--counters"], args.cap, cache=f"{tmp}/cache")
            # the same counters rooflight chose (narrowed to the ops' dtypes), and its one repeat's kernels
            done = [json.loads(f.read_text()) for f in Path(f"{tmp}/b").glob("*.json") if not cut1]
            counted = next((d["counters"] for d in done if d.get("counters")), None)
            same_metrics = counted["metrics"] if counted else metrics
            n_repeat = len(counted["kernels"]) if counted else 0
            n_measured = sum(1 for k in counted["kernels"] if k.get("measured_on", -1) < 0) if counted else 0
            plain = [d for d in (json.loads(f.read_text()) for f in Path(f"{tmp}/a").glob("*.json"))
                     if d.get("timing")]
            per_run = len([k for k in plain[0]["timing"]["kernels"] if k["kind"] == "kernel"]) if plain else 0
            agreement = None
            if args.every_kernel and counted:
                t_every, r4, cut4 = _timed(base + ["-o", f"{tmp}/c", "--counters", "--every-kernel"], args.cap)
                every = [json.loads(f.read_text()) for f in Path(f"{tmp}/c").glob("*.json") if not cut4]
                every = next((d["counters"] for d in every if d.get("counters")), None)
                agreement = {"every_kernel_s": t_every, **(_agreement(counted, every) if every else {})}
            spec = {"kind": "workload", "path": str(ROOT / file), "workload": wl, "params": params, "device": "cuda",
                    "warmup": 3}
            sp = Path(tmp) / "spec.json"
            sp.write_text(json.dumps(spec))
            child = [sys.executable, "-m", "rooflight.ncu", str(sp)]
            # the workload alone: the same child (its build, warm-ups and run) with no tool over it; no
            # tool that runs the workload once can take less, so --set roofline's whole run over it
            # bounds the ratio any counter pass could reach on this workload
            t_alone, r6, cut6 = _timed(child, args.cap)
            t_same, r2, cut2 = _timed([nb, "--metrics", ",".join(same_metrics), "--clock-control", "none", "-f", "-o",
                                       f"{tmp}/same"] + child, args.cap)
            # the whole run: the warm-ups and the measured run (the child's), counted or, when the run was
            # stopped at the cap, from the timed profile's kernels per run
            n_all = _kernels(nb, Path(f"{tmp}/same.ncu-rep")) if not cut2 else per_run * (spec["warmup"] + 1)
            t_roof1, r5, cut5 = _timed([nb, "--set", "roofline", "--clock-control", "none", "-c", "1", "-f", "-o",
                                        f"{tmp}/roof1"] + child, args.cap)
            t_roof, r3, cut3 = _timed([nb, "--set", "roofline", "--clock-control", "none", "-c",
                                       str(args.roofline_kernels), "-f", "-o", f"{tmp}/roof"] + child, args.cap)
            n_roof = _kernels(nb, Path(f"{tmp}/roof.ncu-rep")) if not cut3 else 0
            n_roof1 = _kernels(nb, Path(f"{tmp}/roof1.ncu-rep")) if not cut5 else 0
        # per kernel under --set roofline: the slope between the two runs; its start-up: the one-kernel
        # run less that kernel (the child under ncu, the same in both)
        per_kernel = (t_roof - t_roof1) / (n_roof - n_roof1) if n_roof > n_roof1 > 0 else float("nan")
        startup = t_roof1 - per_kernel * n_roof1
        roof_whole = startup + per_kernel * n_all if n_all else float("nan")
        r = {"date": result["date"], "workload": label, "kernels_whole_run": n_all, "kernels_counter_pass": n_repeat,
             "kernels_measured": n_measured, "kernels_whole_run_counted": not cut2,
             "metrics": len(same_metrics), "rooflight_profile_s": t_plain,
             "rooflight_counters_s": t_rl, "counter_pass_s": t_rl - t_plain,
             # a second --counters run on the same machine: ncu's metric query read from rooflight's cache
             "rooflight_counters_again_s": t_warm, "roofline_over_rooflight_counters_again": roof_whole / t_warm, "ncu_same_metrics_whole_s": t_same,
             "ncu_roofline_first_kernels": n_roof, "ncu_roofline_first_s": t_roof,
             "ncu_roofline_one_kernel_s": t_roof1, "ncu_roofline_startup_s": startup,
             "ncu_roofline_per_kernel_s": per_kernel, "ncu_roofline_whole_extrapolated_s": roof_whole,
             "roofline_over_rooflight_counters": roof_whole / t_rl,
             # the most any counter pass could give: --set roofline's whole run over the profile alone
             "roofline_over_rooflight_profile": roof_whole / t_plain,
             "same_metrics_over_rooflight_counters": t_same / t_rl,
             "workload_alone_s": t_alone,
             # where rooflight's counter pass spent its time (Counters.pass_seconds)
             "counter_pass_phases_s": dict(counted.get("pass_seconds", {})) if counted else {},
             # the profile's own account of the pass (how long it waited for the child's build, ...)
             "counter_pass_notes": list(counted.get("notes", [])) if counted else [],
             "roofline_over_workload_alone": roof_whole / t_alone,
             "one_of_each_against_every_kernel": agreement,
             "errors": [x.stderr[-300:] for x in (r0, r1, r2, r3, r5, r6, r7) if x is not None and x.returncode],
             "cut_at_cap": [name for name, cut in (("rooflight --counters", cut1), ("ncu same metrics", cut2),
                                                   ("ncu roofline", cut3), ("ncu roofline, one kernel", cut5),
                                                   ("the workload alone", cut6),
                                                   ("rooflight --counters again", cut7))
                            if cut]}
        result["rows"] = [x for x in result["rows"] if x["workload"] != label] + [r]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"{r['workload']:38} {r['kernels_whole_run']:7d} {r['rooflight_profile_s']:7.1f}s "
              f"{r['rooflight_counters_s']:8.1f}s {r['ncu_same_metrics_whole_s']:8.1f}s "
              f"{r['ncu_roofline_whole_extrapolated_s']:18.0f}s {r['roofline_over_rooflight_counters']:7.1f}"
              f"   (roofline measured on 1 kernel: {r['ncu_roofline_one_kernel_s']:.1f} s, on "
              f"{r['ncu_roofline_first_kernels']}: {r['ncu_roofline_first_s']:.1f} s; {r['ncu_roofline_per_kernel_s']:.2f} s "
              f"a kernel, start-up {r['ncu_roofline_startup_s']:.1f} s)",
              flush=True)
        print(f"   rooflight --counters run again on this machine (ncu's metric query from its cache): "
              f"{r['rooflight_counters_again_s']:.1f} s, {r['roofline_over_rooflight_counters_again']:.1f}x", flush=True)
        print(f"   rooflight's profile alone (no counters) is {r['roofline_over_rooflight_profile']:.1f}x cheaper than "
              "--set roofline: the most any counter pass added to it could be", flush=True)
        print(f"   the workload alone (its build, {spec['warmup']} warm-ups and a run, no tool) took "
              f"{r['workload_alone_s']:.1f} s: --set roofline's whole run is {r['roofline_over_workload_alone']:.1f}x "
              "that, the most any tool that runs the workload once could be cheaper", flush=True)
        print(f"   counter pass: {r['kernels_measured']} of {r['kernels_counter_pass']} kernels measured (one of each "
              f"distinct call); whole run {r['kernels_whole_run']} kernels"
              + ("" if r["kernels_whole_run_counted"] else " (from the timed run's kernels per run: the ncu run was cut)"),
              flush=True)
        if r["counter_pass_phases_s"]:
            print("   " + ncu.where_the_time_went(tuple(r["counter_pass_phases_s"].items()), n_measured), flush=True)
        if agreement:
            print(f"   --every-kernel took {agreement['every_kernel_s']:.1f} s; ops shown with their first call's counters "
                  f"against their own: {agreement.get('ops_copied')} ops, largest differences "
                  f"{agreement.get('max_relative_difference')}", flush=True)
        for name in r["cut_at_cap"]:
            print(f"   {name}: stopped at the {args.cap:.0f} s cap (its time is a lower bound)", flush=True)
        for err in r["errors"]:
            print("   error:", err, flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
