"""The kernels/ gallery: every technique from the seeds profiled on one GPU, rendered as one report.

Step 1, on the GPU, in parts that each fit a ten-minute command (the device tool's limit):

    python benchmarks/gallery.py run --part gemm,quant --out DIR
    python benchmarks/gallery.py run --part attention,decode,sparse,fusion,overhead,llama --out DIR

profiles every workload point of those parts exactly as `rooflight profile kernels/X.py` does
(rooflight.runner: warm-up, repeats, the correctness check against the float64 reference) and
writes DIR/gallery-<parts>.json.gz (every timed profile with its check) and DIR/calibration.json
(this GPU's calibrated ceilings: `rooflight calibrate` runs first when none is cached).  A point
that fails (out of memory, a missing kernel) is recorded with its error; the rest go on.  Points
not started before --deadline seconds are recorded as skipped, so a part always ends in time.

Step 2, anywhere (no GPU needed):

    python benchmarks/gallery.py render DIR --out reports/gallery

holds every profile against the GPU's calibrated roofs and writes one self-contained report
(reports/gallery/index.html: a table per technique with intensity, attained % of the roofline
and time, the findings the seeds predict, and a roofline of every run), the charts as PNG for
the README, gallery.json (the rows, with the GPU, torch version and date), and the two example
reports under reports/examples/ (Llama-2-7B decode and prefill on that GPU).

    python benchmarks/gallery.py run --smoke --out /tmp/g && python benchmarks/gallery.py render /tmp/g --out /tmp/r
runs a few tiny points on the CPU, to check the plumbing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import gzip
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCHEMA = "rooflight.gallery"

M_SWEEP = [1, 16, 64, 256, 1024, 4096, 8192]
SHAPES = ["4096x4096", "4096x11008", "8192x28672"]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass(frozen=True)
class Entry:
    """One workload of kernels/ with the points the gallery profiles."""

    part: str
    technique: str  # the seeds' name for what it shows
    file: str  # under kernels/
    workload: str
    params: dict = field(default_factory=dict)
    sweeps: dict = field(default_factory=dict)
    variant: str = ""  # the row name in its technique's table (default: the workload's name)


def suite() -> list[Entry]:
    out: list[Entry] = []
    for prec in ("bf16", "fp16", "tf32", "fp32", "fp8"):
        out.append(Entry("gemm", "GEMM / GEMV", "gemm.py", f"linear_{prec}", {}, {"shape": SHAPES, "m": M_SWEEP}, prec))
    for wl, name in (("bf16_baseline", "bf16"), ("int8_weight_only", "int8 weight-only"),
                     ("int4_weight_only", "int4 weight-only"), ("w8a8_fp8", "W8A8 fp8")):
        out.append(Entry("quant", "Quantized linear 4096x11008", "quant.py", wl, {}, {"batch": BATCHES}, name))
    out.append(Entry("attention", "Prefill attention", "attention.py", "naive", {}, {"seq": [512, 2048, 8192]},
                     "naive (materialized scores)"))
    for backend in ("flash", "efficient", "cudnn"):
        out.append(Entry("attention", "Prefill attention", "attention.py", "sdpa", {"backend": backend},
                         {"seq": [512, 2048, 8192, 16384]}, f"SDPA {backend}"))
    out.append(Entry("attention", "Prefill attention", "attention.py", "sdpa", {"backend": "flash", "causal": False},
                     {"seq": [2048, 8192]}, "SDPA flash, not causal"))
    for kv, name in ((8, "GQA (8 KV heads)"), (1, "MQA (1 KV head)")):
        out.append(Entry("attention", "Prefill attention", "attention.py", "sdpa",
                         {"backend": "flash", "kv_heads": kv}, {"seq": [2048, 8192]}, f"SDPA flash, {name}"))
    for kv, name in ((32, "MHA"), (8, "GQA 8 KV heads"), (1, "MQA")):
        out.append(Entry("decode", "Decode attention", "decode_attention.py", "decode", {"kv_heads": kv},
                         {"batch": [1, 16, 64, 256]}, f"SDPA over a KV cache, {name}"))
    out.append(Entry("decode", "Decode attention", "decode_attention.py", "decode", {"kv_heads": 8, "batch": 16},
                     {"context": [512, 4096, 32768]}, "SDPA, GQA, batch 16, by context"))
    out.append(Entry("decode", "Decode attention", "decode_attention.py", "paged", {},
                     {"batch": [8, 64, 256], "context": [4096, 16384]}, "paged KV (our Triton kernel)"))
    out.append(Entry("decode", "Decode attention", "decode_attention.py", "paged_shared", {},
                     {"share": [False, True]}, "paged, 8 samples of one prompt"))
    out.append(Entry("decode", "Decode attention", "decode_attention.py", "flash_decoding", {},
                     {"splits": [1, "auto"]}, "split-KV (flash decoding), batch 1, 32k"))
    for wl in ("dense", "local", "atrous", "local_strided", "random_local_global"):
        out.append(Entry("sparse", "Sparse attention (FlexAttention block masks)", "sparse_attention.py", wl, {},
                         {"seq": [2048, 8192]}))
    for wl in ("rmsnorm_chain", "swiglu_chain", "add_rmsnorm_chain"):
        out.append(Entry("fusion", "Fusion (torch.compile)", "fusion.py", wl, {}, {"variant": ["eager", "compiled"]}))
    for config, context in (("small", 256), ("llama-2-7b", 1024)):
        out.append(Entry("overhead", "Launch overhead (one decode step, batch 1)", "overhead.py", "decode_step",
                         {"config": config, "context": context}, {"mode": ["eager", "cuda_graph", "reduce_overhead"]},
                         config))
    out.append(Entry("llama", "Llama-2-7B end to end", "llama.py", "decode", {"config": "llama-2-7b", "context": 1024},
                     {"batch": [1, 4, 16]}, "decode, context 1024"))
    out.append(Entry("llama", "Llama-2-7B end to end", "llama.py", "prefill", {"config": "llama-2-7b"},
                     {"prompt": [512, 2048]}, "prefill"))
    return out


def smoke_suite() -> list[Entry]:
    """Tiny points that run on a CPU in seconds: the plumbing, not the figures."""
    return [
        Entry("gemm", "GEMM / GEMV", "gemm.py", "linear_bf16", {"shape": "4096x4096"}, {"m": [1, 16]}, "bf16"),
        Entry("quant", "Quantized linear 4096x11008", "quant.py", "bf16_baseline", {"shape": "4096x4096"},
              {"batch": [1]}, "bf16"),
        Entry("attention", "Prefill attention", "attention.py", "naive", {"heads": 2, "kv_heads": 2}, {"seq": [128]}),
        Entry("fusion", "Fusion (torch.compile)", "fusion.py", "rmsnorm_chain", {"tokens": 64, "dim": 256},
              {"variant": ["eager"]}),
        Entry("llama", "Llama end to end", "llama.py", "decode", {"config": "tiny", "context": 64}, {"batch": [1, 2]},
              "decode"),
    ]


# ---------------------------------------------------------------------------- step 1: run


def _calibration(device: str) -> dict | None:
    """The cached calibration of this device, measured first when there is none."""
    from rooflight import calibrate as cal

    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    got = cal.load_cached(name)
    if got is None:
        print("calibrating this GPU first (rooflight calibrate)", flush=True)
        got = cal.calibrate("cuda", progress=lambda m: print(f"  .. {m}", flush=True))
        cal.save(got)
    return got.to_dict()


def run(args) -> int:
    import torch

    from rooflight.runner import Options, profile_workloads
    from rooflight.workloads import load_model_file, points

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        print("no CUDA GPU here: the gallery's figures come from a GPU (use --smoke to check the plumbing)",
              file=sys.stderr)
        return 2
    started = time.time()
    entries = smoke_suite() if args.smoke else suite()
    parts = [p for p in args.part.split(",") if p] if args.part else sorted({e.part for e in entries})
    unknown = set(parts) - {e.part for e in entries}
    if unknown:
        print(f"unknown part(s) {', '.join(sorted(unknown))}: use {', '.join(sorted({e.part for e in entries}))}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calibration = _calibration(device)
    if calibration is not None:
        (out / "calibration.json").write_text(json.dumps(calibration, indent=1))
    opts = Options(device=device, warmup=args.warmup, repeats=args.repeats, flush_l2=args.flush_l2)
    loaded: dict[str, list] = {}
    runs: list[dict] = []
    bundle = out / f"gallery-{'-'.join(parts)}{'-smoke' if args.smoke else ''}.json.gz"

    def save() -> None:  # after every point: a part cut short keeps what it measured
        meta = {"schema": SCHEMA, "version": 1, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                "device_kind": device, "torch": torch.__version__, "date": _dt.date.today().isoformat(),
                "parts": parts, "warmup": args.warmup, "repeats": args.repeats, "flush_l2": args.flush_l2,
                "seconds": round(time.time() - started, 1), "calibration": calibration}
        with gzip.open(bundle, "wt", encoding="utf-8") as fh:
            json.dump({"meta": meta, "runs": runs}, fh)

    for entry in (e for e in entries if e.part in parts):
        path = ROOT / "kernels" / entry.file
        if entry.file not in loaded:
            loaded[entry.file] = load_model_file(path)
        workload = next(w for w in loaded[entry.file] if w.name == entry.workload)
        for point, label in points(workload, entry.params, entry.sweeps, default_sweep=False):
            row = {"part": entry.part, "technique": entry.technique, "variant": entry.variant or entry.workload,
                   "file": f"kernels/{entry.file}", "workload": entry.workload, "label": label,
                   "params": {k: v for k, v in point.items() if isinstance(v, (int, float, str, bool))}}
            if time.time() - started > args.deadline:
                row["skipped"] = f"not started: past the {args.deadline:.0f} s deadline of this part"
                runs.append(row)
                continue
            t0 = time.time()
            try:
                (res,) = profile_workloads(path, [workload], opts, params=point, sweeps={}, default_sweep=False)
                row["profile"] = res.profile.to_dict()
                row["check"] = list(res.check) if res.check is not None else None
                row["notes"] = list(res.notes)
                status = "ok" if res.check is None or res.check[0] <= res.check[1] else "CHECK FAILED"
            except Exception as err:  # noqa: BLE001 - one failing point must not lose the others
                row["error"] = f"{type(err).__name__}: {err}".strip()[:2000]
                status = "error: " + row["error"].splitlines()[0][:160]
                if args.verbose:
                    traceback.print_exc()
            row["seconds"] = round(time.time() - t0, 2)
            runs.append(row)
            print(f"{time.time() - started:7.1f} s  {entry.workload} [{label}]  {status}  ({row['seconds']} s)",
                  flush=True)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            save()
    save()
    print(f"wrote {bundle} ({len(runs)} points, {time.time() - started:.0f} s)")
    return 0


# ---------------------------------------------------------------------------- step 2: render


@dataclass
class Row:
    """One profiled point, held against the roofline."""

    technique: str
    variant: str
    workload: str
    label: str
    params: dict
    analysis: Any = None
    check: tuple | None = None
    error: str = ""

    @property
    def profile(self):
        return self.analysis.profile

    @property
    def seconds(self) -> float:
        """GPU time of one run: the union of its kernels' intervals (median over the repeats)."""
        t = self.profile.timing
        return t.total.busy_seconds if t is not None and t.total is not None else math.nan

    @property
    def wall(self) -> float:
        """Wall time of one run as the user's code calls it, host included (median, no profiler)."""
        t = self.profile.timing
        return t.total.wall_seconds if t is not None and t.total is not None else math.nan

    @property
    def floor_seconds(self) -> float:
        """The roofline's time for the run: each op's larger floor (compute or memory), summed."""
        return sum(v.max_floor_s for v in self.analysis.diagnosis.verdicts.values())

    @property
    def attained(self) -> float:
        """Of the roofline, in GPU time: how well the kernels use the machine."""
        return self.floor_seconds / self.seconds if self.seconds > 0 else math.nan

    @property
    def attained_wall(self) -> float:
        """Of the roofline, in wall time: what the user gets, host overhead included."""
        return self.floor_seconds / self.wall if self.wall > 0 else math.nan

    @property
    def headline(self) -> tuple[str, float]:
        r = self.analysis.diagnosis.region("")
        return r.headline.value, r.fraction(r.headline)

    def to_dict(self) -> dict:
        p = self.profile
        label, share = self.headline
        return {"technique": self.technique, "variant": self.variant, "workload": self.workload, "point": self.label,
                "params": self.params, "flops": p.total_flops, "bytes": p.total_bytes, "intensity": p.intensity,
                "gpu_seconds": self.seconds, "wall_seconds": self.wall, "floor_seconds": self.floor_seconds,
                "attained": self.attained, "attained_wall": self.attained_wall,
                "label": label, "label_share": share, "kernels": len(p.timing.kernels) if p.timing else 0,
                "check": list(self.check) if self.check else None}


def _load(dirs: list[Path]) -> tuple[dict, list[dict]]:
    metas, by_part = [], {}
    for d in dirs:
        files = sorted(d.glob("*.json.gz")) if d.is_dir() else [d]
        if not files:
            raise SystemExit(f"{d}: no *.json.gz bundle in it; run `python benchmarks/gallery.py run` on a GPU first")
        for f in files:
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
            if data.get("meta", {}).get("schema") != SCHEMA:
                raise SystemExit(f"{f}: not a rooflight gallery bundle")
            metas.append(data["meta"])
            for part in data["meta"]["parts"]:  # a part run again in a later bundle replaces the earlier one
                by_part[part] = [r for r in data["runs"] if r["part"] == part]
    runs = [r for part in by_part.values() for r in part]
    devices = {m["device"] for m in metas}
    if len(devices) != 1:
        raise SystemExit(f"the bundles come from several devices ({', '.join(sorted(devices))}): render one GPU at a time")
    meta = dict(metas[0])
    meta["parts"] = list(by_part)
    meta["dates"] = sorted({m["date"] for m in metas})
    meta["seconds"] = sum(m["seconds"] for m in metas)
    return meta, runs


def _fmt_s(x: float) -> str:
    from rooflight.units import fmt_seconds

    return "–" if not (x == x) else fmt_seconds(x)


def _pct(x: float) -> str:
    return "–" if x is None or not (x == x) else f"{x:.0%}"


def _x(x: float) -> str:
    return "–" if x is None or not (x == x) or math.isinf(x) else (f"{x:.2f}×" if x < 10 else f"{x:.0f}×")


def _by(rows: list[Row], workload: str, **params) -> list[Row]:
    return [r for r in rows if r.workload == workload and all(r.params.get(k) == v for k, v in params.items())]


def _one(rows: list[Row], workload: str, **params) -> Row | None:
    got = _by(rows, workload, **params)
    return got[0] if got else None


def _labels_by(rows: list[Row], key: str) -> str:
    short = {"memory-bound": "mem", "compute-bound": "compute", "overhead-bound": "overhead",
             "communication-bound": "comm"}
    return ", ".join(f"{r.params[key]} {short.get(r.headline[0], r.headline[0])}" for r in rows)


def findings(rows: list[Row], ceilings) -> list[tuple[str, list[str]]]:
    """What each technique did, in sentences with the measured numbers (only where measured).
    Kernel techniques are compared on GPU time (what the kernels do); launch overhead and the
    end-to-end model on wall time too (what the user waits for)."""
    import importlib.util

    out: list[tuple[str, list[str]]] = []

    # GEMM: where the labels cross from memory- to compute-bound, against the ridge of the roofs
    gemm = [r for r in rows if r.workload.startswith("linear_")]
    if gemm:
        spec = importlib.util.spec_from_file_location("gallery_gemm", ROOT / "kernels" / "gemm.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        lines = []
        for prec in ("bf16", "fp16", "tf32", "fp32", "fp8"):
            for shape in SHAPES:
                pts = sorted(_by(gemm, f"linear_{prec}", shape=shape), key=lambda r: r.params["m"])
                if not pts:
                    continue
                cls = {"bf16": "bf16_tensor", "fp16": "fp16_tensor", "tf32": "tf32_tensor", "fp32": "fp32",
                       "fp8": "fp8_tensor"}[prec]
                try:
                    m_star = f"{mod.crossing_m(shape, ceilings.peak(cls) / ceilings.memory_bytes_per_s, prec):.0f}"
                except (KeyError, ValueError):
                    m_star = "–"
                best = max(pts, key=lambda r: r.attained)
                first = next((r.params["m"] for r in pts if r.headline[0] == "compute-bound"), None)
                lines.append(f"{prec} {shape}, label by M: {_labels_by(pts, 'm')}. Compute-bound from M = "
                             f"{first if first is not None else '– (not in the sweep)'}; the calibrated ridge is at "
                             f"M ≈ {m_star}. Best: {_pct(best.attained)} of the roofline in GPU time at M = "
                             f"{best.params['m']} ({_fmt_s(best.seconds)}).")
        out.append(("GEMM / GEMV", lines))

    # attention: FlashAttention's cut in bytes and time against the materialized scores
    lines = []
    for seq in (512, 2048, 8192, 16384):
        naive = _one(rows, "naive", seq=seq)
        flash = _one(rows, "sdpa", seq=seq, backend="flash", causal=True, kv_heads=32)
        if naive and flash:
            lines.append(f"seq {seq}: SDPA flash moves {_x(naive.profile.total_bytes / flash.profile.total_bytes)} "
                         f"fewer bytes than the materialized attention and runs {_x(naive.seconds / flash.seconds)} "
                         f"faster on the GPU ({_fmt_s(naive.seconds)} → {_fmt_s(flash.seconds)}); intensity "
                         f"{naive.profile.intensity:.0f} → {flash.profile.intensity:.0f} FLOP/B, "
                         f"{_pct(flash.attained)} of the roofline.")
        elif flash:
            lines.append(f"seq {seq}: SDPA flash {_fmt_s(flash.seconds)}, {_pct(flash.attained)} of the roofline "
                         f"(the materialized attention was not run at this length).")
    for seq in (2048, 8192, 16384):
        by_backend = [(b, _one(rows, "sdpa", seq=seq, backend=b, causal=True, kv_heads=32))
                      for b in ("flash", "efficient", "cudnn")]
        by_backend = [(b, r) for b, r in by_backend if r]
        if len(by_backend) > 1:
            lines.append(f"seq {seq}, by backend: " + ", ".join(
                f"{b} {_fmt_s(r.seconds)} ({_pct(r.attained)})" for b, r in by_backend) + ".")
    for seq in (2048, 8192):
        mha = _one(rows, "sdpa", seq=seq, backend="flash", causal=True, kv_heads=32)
        for kv in (8, 1):
            g = _one(rows, "sdpa", seq=seq, backend="flash", kv_heads=kv)
            if mha and g:
                lines.append(f"seq {seq}, {kv} KV head{'s' if kv > 1 else ''}: "
                             f"{_x(mha.profile.total_bytes / g.profile.total_bytes)} fewer bytes in total, GPU time "
                             f"{_fmt_s(mha.seconds)} → {_fmt_s(g.seconds)}: prefill is compute-bound, so GQA/MQA "
                             f"save memory (the KV cache), not prefill time.")
        full = _one(rows, "sdpa", seq=seq, backend="flash", causal=False)
        if mha and full:
            lines.append(f"seq {seq}: causal does {mha.profile.total_flops / full.profile.total_flops:.0%} of the "
                         f"non-causal FLOPs and takes {mha.seconds / full.seconds:.0%} of its GPU time.")
    if lines:
        out.append(("Prefill attention", lines))

    # sparse attention: the work a pattern skips, and the time it saves
    lines = []
    for seq in (2048, 8192):
        dense = _one(rows, "dense", seq=seq)
        for wl in ("local", "atrous", "local_strided", "random_local_global"):
            s = _one(rows, wl, seq=seq)
            if dense and s:
                lines.append(f"seq {seq}, {wl}: {s.profile.total_flops / dense.profile.total_flops:.0%} of the "
                             f"causal FLOPs, {s.seconds / dense.seconds:.0%} of its GPU time ({_fmt_s(s.seconds)} "
                             f"against {_fmt_s(dense.seconds)}), {len(s.profile.timing.kernels)} kernels.")
    if lines:
        out.append(("Sparse attention", lines))

    # decode: intensity grows with the group size; the paged kernel's bandwidth; sharing; splits
    lines = []
    for batch in (1, 16, 64, 256):
        got = [(kv, _one(rows, "decode", kv_heads=kv, batch=batch, context=4096)) for kv in (32, 8, 1)]
        got = [(kv, r) for kv, r in got if r and not r.params.get("config")]
        if len(got) > 1:
            lines.append(f"batch {batch}, context 4096, KV heads " + "/".join(str(kv) for kv, _ in got)
                         + ": intensity " + " / ".join(f"{r.profile.intensity:.1f}" for _, r in got)
                         + " FLOP/B, GPU time " + " / ".join(_fmt_s(r.seconds) for _, r in got) + ".")
    for r in sorted(_by(rows, "paged"), key=lambda r: (r.params["context"], r.params["batch"])):
        bw = r.profile.total_bytes / r.seconds
        lines.append(f"paged KV (Triton), batch {r.params['batch']}, context {r.params['context']}: "
                     f"{bw / 1e12:.2f} TB/s = {bw / ceilings.memory_bytes_per_s:.0%} of the calibrated bandwidth "
                     f"({_fmt_s(r.seconds)} GPU, {_fmt_s(r.wall)} wall with the block-table plan).")
    a, b = _one(rows, "paged_shared", share=False), _one(rows, "paged_shared", share=True)
    if a and b:
        lines.append(f"8 samples sharing a 3584-token prompt: a shared block read once per step cuts the bytes "
                     f"{_x(a.profile.total_bytes / b.profile.total_bytes)} and the GPU time "
                     f"{_x(a.seconds / b.seconds)} ({_fmt_s(a.seconds)} → {_fmt_s(b.seconds)}; unshared, the "
                     f"repeated blocks are served from L2, so the counted bytes overstate DRAM traffic).")
    a, b = _one(rows, "flash_decoding", splits=1), _one(rows, "flash_decoding", splits="auto")
    if a and b:
        lines.append(f"batch 1 at 32k context: splitting the KV sequence over the SMs runs {_x(a.seconds / b.seconds)} "
                     f"faster on the GPU ({_fmt_s(a.seconds)} → {_fmt_s(b.seconds)}, {_pct(a.attained)} → "
                     f"{_pct(b.attained)} of the roofline).")
    if lines:
        out.append(("Decode attention", lines))

    # weight-only quantization: where it wins and where it stops winning
    lines = []
    for wl, name in (("int8_weight_only", "int8 weight-only"), ("int4_weight_only", "int4 weight-only"),
                     ("w8a8_fp8", "W8A8 fp8")):
        pairs = [(b, _one(rows, "bf16_baseline", batch=b), _one(rows, wl, batch=b)) for b in BATCHES]
        pairs = [(b, x, y) for b, x, y in pairs if x and y]
        if not pairs:
            continue
        speed = ", ".join(f"{b}: {_x(x.seconds / y.seconds)}" for b, x, y in pairs)
        losing = [b for b, x, y in pairs if y.seconds >= x.seconds]
        winning = [b for b, x, y in pairs if y.seconds < x.seconds]
        upto = [b for b in winning if losing and b < losing[0]]
        if not losing:
            verdict = "It wins at every batch measured."
        elif not winning:
            verdict = "It never wins here."
        elif upto:
            verdict = f"It wins up to batch {max(upto)} and stops winning at batch {losing[0]}."
        else:
            verdict = f"It loses at batch {losing[0]} but wins at batch {', '.join(map(str, winning))}."
        lines.append(f"{name} against bf16, GPU-time speed-up by batch: {speed}. {verdict}")
    if lines:
        out.append(("Quantized linear layers", lines))

    # fusion: the bytes the compiled kernel no longer moves
    lines = []
    for wl in ("rmsnorm_chain", "swiglu_chain", "add_rmsnorm_chain"):
        a, b = _one(rows, wl, variant="eager"), _one(rows, wl, variant="compiled")
        if a and b:
            lines.append(f"{wl}: {len(a.profile.timing.kernels)} kernels → {len(b.profile.timing.kernels)}, bytes "
                         f"{a.profile.total_bytes / 1e6:.0f} MB → {b.profile.total_bytes / 1e6:.0f} MB, GPU time "
                         f"{_fmt_s(a.seconds)} → {_fmt_s(b.seconds)} ({_pct(a.attained)} → {_pct(b.attained)} of the "
                         f"memory roof); wall {_fmt_s(a.wall)} → {_fmt_s(b.wall)}.")
    if lines:
        out.append(("Fusion", lines))

    # overhead: eager decode against a CUDA graph and reduce-overhead, on wall time
    lines = []
    for r in sorted(_by(rows, "decode_step"), key=lambda r: (str(r.params.get("config")),
                                                            ("eager", "cuda_graph", "reduce_overhead").index(
                                                                r.params.get("mode", "eager")))):
        label, share = r.headline
        lines.append(f"{r.params.get('config')} batch {r.params.get('batch')}, {r.params.get('mode')}: "
                     f"{_fmt_s(r.wall)} wall per step ({_fmt_s(r.seconds)} of it GPU busy, "
                     f"{len(r.profile.timing.kernels)} kernels), {share:.0%} of the time {label}, "
                     f"{_pct(r.attained_wall)} of the roofline in wall time.")
    if lines:
        out.append(("Launch overhead", lines))

    lines = []
    for r in sorted(_by(rows, "decode"), key=lambda r: r.params.get("batch", 0)):
        if str(r.params.get("config", "")).startswith("llama"):
            label, share = r.headline
            lines.append(f"decode, batch {r.params['batch']}, context {r.params['context']}: {_fmt_s(r.wall)} wall, "
                         f"{_fmt_s(r.seconds)} GPU per step ({_pct(r.attained)} of the roofline in GPU time, "
                         f"{_pct(r.attained_wall)} in wall time); {share:.0%} {label}; intensity "
                         f"{r.profile.intensity:.1f} FLOP/B.")
    for r in sorted(_by(rows, "prefill"), key=lambda r: r.params.get("prompt", 0)):
        if str(r.params.get("config", "")).startswith("llama"):
            label, share = r.headline
            lines.append(f"prefill of {r.params['prompt']} tokens: {_fmt_s(r.wall)} wall, {_fmt_s(r.seconds)} GPU "
                         f"({_pct(r.attained)} of the roofline in GPU time); {share:.0%} {label}.")
    if lines:
        out.append(("Llama-2-7B end to end", lines))
    return out


def render(args) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    meta, runs = _load([Path(d) for d in args.dirs])
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ROOFLIGHT_CACHE_DIR"] = cache  # the GPU's own calibration, not this machine's cache
        from rooflight import calibrate as cal

        if meta.get("calibration"):
            cal.save(cal.Calibration.from_dict(meta["calibration"]))
        return _render(meta, runs, Path(args.out), args)


def _render(meta: dict, runs: list[dict], out: Path, args) -> int:
    from rooflight.api import analyze
    from rooflight.files import write_files
    from rooflight.render.outputs import slug
    from rooflight.profile_data import Profile
    from rooflight.render.charts import Point, figure_bytes, roofline, roofs_of
    from rooflight.render.html import e, img, page, report_html

    rows: list[Row] = []
    failed: list[dict] = []
    for r in runs:
        if "profile" not in r:
            failed.append(r)
            continue
        a = analyze(Profile.from_dict(r["profile"]), args.hw)
        rows.append(Row(r["technique"], r["variant"], r["workload"], r["label"], r["params"], a,
                        tuple(r["check"]) if r.get("check") else None))
    if not rows:
        raise SystemExit("no profiled point in the bundles")
    ceilings = rows[0].analysis.ceilings
    hw_name = rows[0].analysis.spec.name if rows[0].analysis.spec else ceilings.name
    files: dict[Path, bytes | str] = {}  # written together at the end, under rooflight's overwrite policy
    title_meta = (f"{meta['device']} ({hw_name}, {ceilings.source} roofs) · torch {meta['torch']} · "
                  f"{', '.join(meta['dates'])} · {meta['warmup']} warm-up runs, median of {meta['repeats']}")

    # one roofline with every run as a point (its whole-run intensity and attained FLOP/s)
    charted = [r for r in rows if r.seconds > 0 and r.profile.total_flops > 0]
    points = [Point(f"{r.workload} {r.label}", r.profile.intensity, r.profile.total_flops / r.seconds, r.seconds,
                    r.headline[0]) for r in charted]
    classes = sorted({c for r in rows for c in r.profile.flops_by_class()})
    roofs = roofs_of(rows[0].analysis, classes)
    fig = roofline(points, roofs, title=f"kernels/ on {hw_name}: every run of the gallery", label_top=0)
    files[out / "roofline.png"] = figure_bytes(fig, "png")
    # one per technique, with its heaviest points labelled
    techniques = list(dict.fromkeys(r.technique for r in rows))
    charts = {}  # technique -> its figure
    for t in techniques:
        sel = [p for p, r in zip(points, charted) if r.technique == t]
        if sel:  # only the roofs of the math classes this technique's runs use
            used = sorted({c for r in charted if r.technique == t for c in r.profile.flops_by_class()})
            charts[t] = roofline(sel, roofs_of(rows[0].analysis, used), title=f"{t} on {hw_name}", label_top=10)
            files[out / f"roofline-{slug(t.lower())}.png"] = figure_bytes(charts[t], "png")

    # the tables
    def table(t: str) -> str:
        head = ("<tr><th>variant</th><th>point</th><th class=n>FLOPs</th><th class=n>bytes</th>"
                "<th class=n>intensity FLOP/B</th><th class=n>GPU time</th><th class=n>attained (GPU)</th>"
                "<th class=n>wall time</th><th>label (of the wall time)</th><th class=n>kernels</th><th>check</th></tr>")
        body = []
        for r in (r for r in rows if r.technique == t):
            label, share = r.headline
            chk = "–" if r.check is None else (f"pass ({r.check[0]:.1e})" if r.check[0] <= r.check[1]
                                                else f"FAIL ({r.check[0]:.1e} > {r.check[1]:.0e})")
            body.append(f"<tr><td>{e(r.variant)}</td><td>{e(r.label)}</td><td class=n>{r.profile.total_flops:.3g}</td>"
                        f"<td class=n>{r.profile.total_bytes:.3g}</td><td class=n>{r.profile.intensity:.3g}</td>"
                        f"<td class=n>{e(_fmt_s(r.seconds))}</td><td class=n>{_pct(r.attained)}</td>"
                        f"<td class=n>{e(_fmt_s(r.wall))}</td>"
                        f"<td><span class='lab lab-{e(label)}'>{e(label)}</span> {share:.0%}</td>"
                        f"<td class=n>{len(r.profile.timing.kernels) if r.profile.timing else 0}</td>"
                        f"<td>{e(chk)}</td></tr>")
        return f"<table>{head}{''.join(body)}</table>"

    found = findings(rows, ceilings)
    cold = list(dict.fromkeys(r.technique for r in rows if r.profile.timing and r.profile.timing.flush_l2))
    cold_text = (f" L2 flushed before each timed repeat (cold cache) for: {', '.join(cold)}; the others ran warm."
                 if cold else " Timed warm (L2 not flushed between repeats).")
    parts = [f"<h1>rooflight gallery: the seeds' techniques on {e(hw_name)}</h1>",
             f"<div class=meta>{e(title_meta)}<br>{len(rows)} runs profiled with <code>rooflight.runner</code> "
             f"(what <code>rooflight profile kernels/X.py</code> runs), each checked against a float64 reference "
             f"where it has one. GPU time: the union of one run's kernel intervals (median); wall time: one call "
             f"as the user's code makes it, host included (median, no profiler attached); attained: the roofline's "
             f"time (each op's larger floor on the calibrated roofs) over the GPU time. The label is the run's "
             f"largest share of its wall time (GPU idle time counts as overhead-bound).{e(cold_text)}</div>",
             "<h2>What each technique did</h2>"]
    for title, lines in found:
        parts.append(f"<h3>{e(title)}</h3><ul>{''.join(f'<li>{e(x)}</li>' for x in lines)}</ul>")
    parts.append(f"<h2>Every run on one roofline</h2><div class=charts>{img(fig, 'roofline of every run')}</div>")
    for t in techniques:
        chart = img(charts[t], f"roofline: {t}") if t in charts else ""
        parts.append(f"<h2>{e(t)}</h2><div class=charts>{chart}</div>{table(t)}")
    if failed:
        parts.append("<h2>Points that did not run</h2><ul>" + "".join(
            f"<li>{e(r['workload'])} [{e(r['label'])}]: {e((r.get('error') or r.get('skipped') or '').splitlines()[0])}"
            "</li>" for r in failed) + "</ul>")
    files[out / "index.html"] = page("rooflight gallery", "".join(parts))

    result = {"schema": SCHEMA + ".results", "version": 1, "device": meta["device"], "hardware": hw_name,
              "roofs": ceilings.source, "torch": meta["torch"], "dates": meta["dates"], "warmup": meta["warmup"],
              "repeats": meta["repeats"], "gpu_seconds": meta["seconds"], "l2_flushed_for": cold,
              "findings": [{"technique": t, "lines": lines} for t, lines in found],
              "rows": [r.to_dict() for r in rows],
              "not_run": [{k: r.get(k) for k in ("workload", "label", "error", "skipped")} for r in failed]}
    files[out / "gallery.json"] = json.dumps(result, indent=1, default=str)

    # the example reports: the workload users try first, on this GPU
    if args.examples:
        ex = Path(args.examples)
        from rooflight.api import project
        from rooflight.render.charts import roofline_of
        from rooflight.render.projection import projection_html

        for wl, key, name in (("decode", "batch", "llama-2-7b-decode"), ("prefill", "prompt", "llama-2-7b-prefill")):
            cands = [r for r in _by(rows, wl) if str(r.params.get("config", "")).startswith("llama-2-7b")]
            if not cands:
                continue
            r = min(cands, key=lambda r: r.params[key])
            extra = [("Projected onto every GPU in the database",
                      projection_html(project(r.profile, "all"), charts=["A100 80GB SXM", "H200 SXM", "RTX 4090"]))]
            files[ex / f"{name}.html"] = report_html(r.analysis, extra_sections=extra)
            files[ex / f"{name}.png"] = figure_bytes(roofline_of(r.analysis), "png")
            if wl == "decode":  # to render again: rooflight report reports/examples/llama-2-7b-decode.json
                files[ex / f"{name}.json"] = r.profile.to_json(indent=None)
    write_files(files, force=args.force)
    print(f"{len(rows)} runs, {len(failed)} not run; wrote {out / 'index.html'}")
    for t, lines in found:
        print(f"\n{t}")
        for x in lines:
            print(f"  {x}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="profile the suite on this GPU")
    r.add_argument("--part", default="", help="comma-separated parts (default: all): gemm, quant, attention, decode, "
                                              "sparse, fusion, overhead, llama")
    r.add_argument("--out", required=True)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--repeats", type=int, default=10)
    r.add_argument("--deadline", type=float, default=540.0, help="start no point after this many seconds")
    r.add_argument("--flush-l2", action="store_true", help="flush L2 before each timed repeat (cold cache: weights "
                                                          "and KV caches that fit in L2 are read from device memory)")
    r.add_argument("--smoke", action="store_true", help="tiny points on the CPU: the plumbing only")
    r.add_argument("-v", "--verbose", action="store_true")
    g = sub.add_parser("render", help="write the report from bundles (no GPU needed)")
    g.add_argument("dirs", nargs="+", help="directories (or files) holding gallery-*.json.gz")
    g.add_argument("--out", default=str(ROOT / "reports" / "gallery"))
    g.add_argument("--hw", default=None, help="hardware to hold it against (default: the GPU it ran on)")
    g.add_argument("--examples", default=None, help="also write the Llama example reports into this directory")
    g.add_argument("--force", action="store_true", help="overwrite files in --out/--examples that rooflight did not write")
    args = ap.parse_args(argv)
    return run(args) if args.cmd == "run" else render(args)


if __name__ == "__main__":
    sys.exit(main())
