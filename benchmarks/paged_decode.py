"""Bandwidth of the paged decode kernel (kernels/paged_attention.py) against the calibrated copy.

    python3 benchmarks/paged_decode.py                 # on a GPU, under 2 minutes
    python3 benchmarks/paged_decode.py --smoke         # on a CPU: tiny sizes through Triton's interpreter

On a GPU: checks the kernel against a float64 reference first (MHA, GQA, MQA, shared prefix,
split KV, ragged lengths; exit 1 on a mismatch), tries a few launch configurations at large
batch x context and keeps the fastest, then times a sweep of batch x context, the page size,
a shared prompt prefix (read once vs once per sequence), split KV at small batch (FlashDecoding
on and off) and SDPA over a contiguous cache for comparison.  Bandwidth = the bytes rooflight
counts for the step (its cost formula: the K/V rows the plan reads, a shared block once, plus q,
the block-table entries, the plan and the outputs) / the median time of triton.testing.do_bench
(L2 cleared before each run).  It is printed beside the calibrated copy bandwidth
(benchmarks/results/calibrate-<gpu>.json) and the datasheet's; the target is 80% of the copy.
Writes benchmarks/results/paged_decode.json (smoke: paged_decode-smoke.json) unless --out says.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; on a CPU through Triton's interpreter")
    ap.add_argument("--out", type=Path, default=None, help="where to write the JSON results")
    ap.add_argument("--no-tune", action="store_true", help="use the kernel's default launch configuration")
    return ap.parse_args(argv)


def interpreter_works() -> bool:
    """Whether Triton's interpreter can run these kernels: Triton is installed, and is not one
    older than 3.7 beside numpy 2.4+ (its loops over run-time bounds fail there: triton#9171)."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    def major_minor(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", v)[:2])

    try:
        triton_v, numpy_v = version("triton"), version("numpy")
    except PackageNotFoundError:
        return False
    return not (major_minor(triton_v) < (3, 7) and major_minor(numpy_v) >= (2, 4))


ARGS = _args()
import torch  # noqa: E402

if not torch.cuda.is_available():
    ARGS.smoke = True
    if "triton" not in sys.modules and interpreter_works():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported (it reads this once)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "kernels"))  # model files, by file name

import rooflight  # noqa: E402
import paged_attention as pa  # noqa: E402


def kernel(*args, **kwargs):
    """The Triton kernels launched directly (no torch.library dispatch in the timings); on a CPU
    without Triton's interpreter, the op's PyTorch path (smoke runs only)."""
    if torch.cuda.is_available() or pa.interpreting():
        return pa.paged_decode_triton(*args, **kwargs)
    kwargs.pop("config", None)
    return pa.paged_decode(*args, **kwargs)


def calibrated_copy(device_name: str) -> tuple[float | None, float | None, str]:
    """(calibrated copy bytes/s, datasheet bytes/s, source) for this GPU, from the calibration files."""
    for path in sorted(RESULTS.glob("calibrate-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("device") != device_name:
            continue
        for row in data.get("rows", []):
            if row.get("figure") == "memory_copy":
                return float(row["value"]), float(row.get("datasheet") or 0) or None, path.name
    return None, None, "no calibration for this device (run benchmarks/calibrate.py)"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(fn) -> float:
    """Median seconds per call."""
    if torch.cuda.is_available():
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def step_bytes(q, cache, plan) -> float:
    """What rooflight counts for one step (both ops: the kernel, and the merge if any)."""
    prof = rooflight.count(pa.paged_decode, q, cache.k_cache, cache.v_cache, cache.block_tables, plan)
    return sum(o.bytes_read + o.bytes_written for o in prof.ops)


def setup(batch, context, heads, kv_heads, head_dim, page, device, *, prefix=0, samples=1, share=True, splits="auto",
          lens=None):
    cache = pa.build_cache(batch, context, n_kv_heads=kv_heads, head_dim=head_dim, page_size=page, prefix=prefix,
                           samples=samples, device=device, dtype=torch.bfloat16, lens=lens)
    torch.manual_seed(1)
    q = torch.randn(batch, heads, head_dim, device=device, dtype=torch.bfloat16)
    plan = pa.plan(cache.block_tables, cache.seq_lens, page_size=page, n_heads=heads, n_kv_heads=kv_heads,
                   share_prefix=share, splits=splits)
    return q, cache, plan


def rel_err(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def check(device, small: bool) -> list[dict]:
    """The kernel against the float64 reference on fresh random inputs."""
    cases = [  # (name, batch, context, heads, kv_heads, head_dim, page, extra)
        ("GQA 4:1", 4, 300, 8, 2, 64, 16, {}),
        ("shared prefix", 8, 160, 8, 2, 64, 16, {"prefix": 100, "samples": 4}),
        ("ragged lengths", 5, 0, 8, 2, 64, 16, {"lens": [1, 17, 64, 250, 333]}),
    ]
    if not small:
        cases += [("MQA", 3, 200, 8, 1, 64, 16, {}),
                  ("MHA", 2, 130, 4, 4, 128, 32, {}),
                  ("split KV", 1, 2048, 8, 2, 64, 16, {"splits": 4}),
                  ("GQA 8:1 d128 large", 16, 4096, 32, 4, 128, 16, {}),
                  ("shared prefix d128", 16, 4096, 32, 8, 128, 16, {"prefix": 3000, "samples": 8}),
                  ("split KV d128", 2, 32768, 32, 8, 128, 64, {"splits": "auto"})]
    rows = []
    for name, b, ctx, hq, hkv, d, page, extra in cases:
        lens = extra.pop("lens", None)
        ctx = ctx or max(lens)
        q, cache, plan = setup(b, ctx, hq, hkv, d, page, device, lens=lens, **extra)
        out = kernel(q, cache.k_cache, cache.v_cache, cache.block_tables, plan)
        err = rel_err(out, pa.reference(q, cache))
        rows.append({"case": name, "plan": plan.describe(), "relative_error": err, "ok": err <= 1e-2})
        print(f"  check {name:<22} {plan.describe():<60} rel err {err:.2e} {'ok' if err <= 1e-2 else 'FAIL'}")
    return rows


def tune(q, cache, plan) -> tuple[pa.Config, list[dict]]:
    # (tokens per tile, warps, stages): stages - 1 tiles of K and V in flight per program
    grid = [(32, 4, 3), (32, 4, 4), (32, 8, 4), (64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3), (64, 8, 4),
            (128, 4, 2), (128, 4, 3), (128, 8, 2), (128, 8, 3)]
    configs = [pa.Config(*c) for c in grid]
    rows, best = [], (float("inf"), pa.Config())
    for cfg in configs:
        try:
            t = bench(lambda: kernel(q, cache.k_cache, cache.v_cache, cache.block_tables, plan,
                                                     config=cfg))
        except Exception as err:  # e.g. out of shared memory for the largest tiles
            rows.append({"config": vars(cfg), "error": f"{type(err).__name__}: {str(err)[:120]}"})
            continue
        rows.append({"config": vars(cfg), "seconds": t})
        best = min(best, (t, cfg), key=lambda x: x[0])
    return best[1], rows


def point(label, q, cache, plan, config, copy_bw, extra=None) -> dict:
    t = bench(lambda: kernel(q, cache.k_cache, cache.v_cache, cache.block_tables, plan,
                                             config=config))
    nbytes = step_bytes(q, cache, plan)
    bw = nbytes / t
    row = {"case": label, "batch": q.shape[0], "heads": q.shape[1], "kv_heads": cache.k_cache.shape[1],
           "head_dim": q.shape[2], "page_size": cache.page_size, "context": int(cache.seq_lens.max()),
           "plan": plan.describe(), "bytes": nbytes, "seconds": t, "bytes_per_s": bw,
           "of_copy": bw / copy_bw if copy_bw else None, **(extra or {})}
    share = f"{row['of_copy']:6.1%}" if copy_bw else "   n/a"
    print(f"  {label:<34} {t * 1e6:9.1f} us  {nbytes / 1e9:7.3f} GB  {bw / 1e12:6.3f} TB/s  {share} of copy   "
          f"[{plan.describe()}]")
    return row


def sdpa_point(label, batch, context, heads, kv_heads, head_dim, copy_bw, device="cuda") -> dict:
    import torch.nn.functional as F

    q = torch.randn(batch, heads, 1, head_dim, device=device, dtype=torch.bfloat16)
    k = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=heads != kv_heads)  # noqa: E731
    t = bench(fn)
    prof = rooflight.count(fn)
    nbytes = sum(o.bytes_read + o.bytes_written for o in prof.ops)
    ran = ", ".join(sorted({o.op.split("::")[-1] for o in prof.ops}))
    bw = nbytes / t
    share = f"{bw / copy_bw:6.1%}" if copy_bw else "   n/a"
    print(f"  {label:<34} {t * 1e6:9.1f} us  {nbytes / 1e9:7.3f} GB  {bw / 1e12:6.3f} TB/s  {share} of copy   [{ran}]")
    return {"case": label, "batch": batch, "context": context, "heads": heads, "kv_heads": kv_heads,
            "head_dim": head_dim, "op": ran, "bytes": nbytes, "seconds": t, "bytes_per_s": bw,
            "of_copy": bw / copy_bw if copy_bw else None}


def free():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    t_start = time.perf_counter()
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    if gpu:
        name = torch.cuda.get_device_name()
    else:
        name = "cpu (Triton interpreter)" if pa.interpreting() else "cpu (PyTorch path)"
    copy_bw, sheet_bw, source = calibrated_copy(name) if gpu else (None, None, "no GPU")
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    print(f"{name}: torch {torch.__version__}, triton {triton_version}")
    if copy_bw:
        print(f"calibrated copy {copy_bw / 1e12:.2f} TB/s ({source}), datasheet {sheet_bw / 1e12:.2f} TB/s; "
              f"target 80% of copy = {0.8 * copy_bw / 1e12:.2f} TB/s")
    result = {"device": name, "torch": torch.__version__, "triton": triton_version,
              "date": _dt.date.today().isoformat(), "mode": "smoke" if ARGS.smoke else "full",
              "interpreter": pa.interpreting(), "calibrated_copy_bytes_per_s": copy_bw,
              "datasheet_bytes_per_s": sheet_bw, "calibration": source}

    print("correctness (float64 reference):")
    result["checks"] = check(device, small=ARGS.smoke)
    if not all(r["ok"] for r in result["checks"]):
        print("FAILED: the kernel does not match the reference")
        _write(result)
        return 1

    rows = []
    if ARGS.smoke:
        q, cache, plan = setup(4, 256, 8, 2, 64, 16, device, splits=1)
        rows.append(point("smoke B4 ctx256 GQA 4:1", q, cache, plan, pa.Config(), copy_bw))
    else:
        heads, kv_heads, d = 32, 8, 128
        q, cache, plan = setup(64, 8192, heads, kv_heads, d, 16, device)
        if ARGS.no_tune:
            config, tuning = pa.Config(), []
        else:
            config, tuning = tune(q, cache, plan)
            print(f"launch configurations tried at B64 ctx8192 GQA 4:1: best {vars(config)}")
        result["tuning"], result["config"] = tuning, vars(config)
        print("bandwidth (GQA 4:1, 32 query heads, d128, bf16, 16-token blocks unless said):")
        rows.append(point("B64 ctx8192", q, cache, plan, config, copy_bw))
        default_t = next((r.get("seconds") for r in tuning if r.get("config") == vars(pa.Config())), None)
        if default_t:
            result["default_config_seconds"] = default_t
        del q, cache, plan
        free()
        for b, ctx in ((256, 4096), (128, 8192), (32, 16384), (16, 32768), (8, 4096)):
            q, cache, plan = setup(b, ctx, heads, kv_heads, d, 16, device)
            rows.append(point(f"B{b} ctx{ctx}", q, cache, plan, config, copy_bw))
            del q, cache, plan
            free()
        for page in (32, 64):
            q, cache, plan = setup(64, 8192, heads, kv_heads, d, page, device)
            rows.append(point(f"B64 ctx8192 page{page}", q, cache, plan, config, copy_bw))
            del q, cache, plan
            free()
        for hkv, tag in ((32, "MHA"), (1, "MQA")):
            q, cache, plan = setup(32, 8192, heads, hkv, d, 16, device)
            rows.append(point(f"B32 ctx8192 {tag}", q, cache, plan, config, copy_bw))
            del q, cache, plan
            free()
        print("shared prompt prefix (8 prompts x 8 samples, 8192 tokens, the first 7680 shared):")
        for share in (False, True):
            q, cache, plan = setup(64, 8192, heads, kv_heads, d, 16, device, prefix=7680, samples=8, share=share)
            rows.append(point(f"shared prefix, share={share}", q, cache, plan, config, copy_bw,
                              {"share": share, "unique_kv_bytes": len(cache.referenced_blocks()) * 16 * kv_heads
                               * d * 2 * 2}))
            del q, cache, plan
            free()
        print("long context at small batch (FlashDecoding: split KV):")
        for b in (1, 4):
            for splits in (1, "auto"):
                q, cache, plan = setup(b, 32768, heads, kv_heads, d, 16, device, splits=splits)
                rows.append(point(f"B{b} ctx32768 splits={splits}", q, cache, plan, config, copy_bw,
                                  {"splits": splits}))
                del q, cache, plan
                free()
        print("SDPA over a contiguous cache, for comparison:")
        rows.append(sdpa_point("SDPA B64 ctx8192 GQA 4:1", 64, 8192, heads, kv_heads, d, copy_bw, device))
        rows.append(sdpa_point("SDPA B1 ctx32768 GQA 4:1", 1, 32768, heads, kv_heads, d, copy_bw, device))
    result["points"] = rows
    by_case = {r["case"]: r for r in rows}
    summary = {}
    for name, slow, fast in (("shared prefix read once", "shared prefix, share=False", "shared prefix, share=True"),
                             ("split KV, B1 ctx32768", "B1 ctx32768 splits=1", "B1 ctx32768 splits=auto"),
                             ("split KV, B4 ctx32768", "B4 ctx32768 splits=1", "B4 ctx32768 splits=auto")):
        if slow in by_case and fast in by_case:
            summary[name] = by_case[slow]["seconds"] / by_case[fast]["seconds"]
            print(f"{name}: {summary[name]:.2f}x faster")
    result["speedups"] = summary
    big = [r for r in rows if r["case"] in ("B64 ctx8192", "B256 ctx4096", "B128 ctx8192")]
    if copy_bw and big:
        best = max(r["of_copy"] for r in big)
        result["target_met"] = best >= 0.8
        print(f"large batch x context: {best:.1%} of the calibrated copy bandwidth "
              f"({'meets' if best >= 0.8 else 'misses'} the 80% target)")
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    _write(result)
    return 0


def _write(result: dict) -> None:
    out = ARGS.out or RESULTS / ("paged_decode-smoke.json" if result["mode"] == "smoke" else "paged_decode.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
