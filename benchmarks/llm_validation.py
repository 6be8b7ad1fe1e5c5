"""Validate rooflight's projection and LLM model against a real Llama decode, on two GPUs.

Step 1, on each GPU (an H100, then an H200): build kernels/llama.py at the llama-2-7b shape
(bf16, random weights), time a prefill and one decode step per (batch, context) with
rooflight.timing.profile (eager; and replayed as a CUDA graph), and write

    DIR/llm_validation-<gpu>.json              measured times, the analytic model's prediction
    DIR/llm_validation-<gpu>-profiles.json.gz  every timed profile, to project later

    python benchmarks/llm_validation.py --out DIR                 # defaults: batch 1,16; context 1024,2048
    python benchmarks/llm_validation.py --out DIR --batch 1,8,16 --context 1024,4096 --prompt 512

Step 2, anywhere (no GPU needed):

    python benchmarks/llm_validation.py --compare h100/llm_validation-h100_sxm.json h200/llm_validation-h200_sxm.json

projects each H100 decode profile onto the H200 (rooflight.projection, measured efficiencies) and
holds it against the H200's measured decode time (target: within 15%), and holds the analytic
model (rooflight.llm, eager kernels, default efficiencies) against the measured time on both GPUs
(target: within 20%); writes benchmarks/results/llm_validation.json and prints a table.

"Measured decode time per token" is the GPU time of one eager decode step: the union of its
kernels' intervals (Timing.total.busy_seconds), which is what the roofline and the models
describe.  Eager PyTorch launches ~1600 kernels per 7B step from ~2800 dispatched ops, so its wall
time is the host's, not the GPU's: it is recorded beside (wall_s), and so is the CUDA-graph
replay's wall time (graph_s), where the host is out of the way.

    python benchmarks/llm_validation.py --smoke --out /tmp/x      # tiny config on the CPU, seconds
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "kernels"))  # model files, by file name

SCHEMA = "rooflight.llm_validation"
PROJECTION_TARGET = 0.15
ANALYTIC_TARGET = 0.20


# ---------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    from rooflight.render.outputs import slug

    return slug(text.lower())


def _spec_for(device_name: str):
    """The database spec of a device name, or None (a CPU, an unknown GPU)."""
    from rooflight.errors import UsageError
    from rooflight.hardware import load_database

    try:
        return load_database().get(device_name)
    except UsageError:
        return None


def analytic_seconds(cfg, phase: str, batch: int, *, context: int | None = None, prompt: int | None = None,
                     device_name: str = "", spec=None, mode: str = "eager") -> float | None:
    """rooflight.llm's GPU time of a step on the datasheet of `device_name` (None: not in the database)."""
    from rooflight import llm
    from rooflight.roofline import from_spec

    spec = spec or _spec_for(device_name)
    if spec is None:
        return None
    step = llm.step_cost(cfg, phase, batch, context=context, prompt=prompt, mode=mode)
    return llm.step_time(step, from_spec(spec)).seconds


def _err(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or not measured or math.isnan(measured) or math.isnan(predicted):
        return None
    return predicted / measured - 1.0


def _fmt_s(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "–"
    from rooflight.units import fmt_seconds

    return fmt_seconds(s)


def _fmt_err(e: float | None) -> str:
    return "–" if e is None else f"{e:+.1%}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------------------- step 1: measure


def _measured(prof) -> dict:
    t = prof.timing
    total = t.total if t is not None else None
    kernels = sum(o.kernels for o in t.ops) if t is not None else 0
    return {
        "measured_s": total.busy_seconds if total is not None else math.nan,  # GPU time (CPU: op time)
        "kernel_sum_s": sum(o.seconds for o in t.ops) if t is not None else math.nan,
        "wall_s": t.plain_wall_seconds if t is not None else math.nan,
        "kernels": kernels,
        "ops": len(prof.ops),
        "flops": prof.total_flops,
        "bytes": prof.total_bytes,
    }


def measure(args) -> Path:
    import torch

    from llama import build, decode_one_token, prefill
    from rooflight import llm, timing
    from rooflight.capture import device_name as _device_name

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("llm_validation: --device cuda asked for, but there is no CUDA GPU here")
    cfg = llm.preset(args.config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cfg = cfg.with_(dtype=args.dtype)
    batches, contexts = _ints(args.batch), _ints(args.context)
    prompt = args.prompt
    if max(contexts) >= cfg.max_seq or prompt > min(contexts):
        raise SystemExit(f"llm_validation: contexts must be < {cfg.max_seq} and the prompt <= the smallest context")
    name = _device_name(device)
    spec = _spec_for(name) if device.startswith("cuda") else None
    started = time.time()
    rows: list[dict] = []
    profiles: dict[str, dict] = {}
    graph_error = ""
    stem = f"llm_validation-{_slug(spec.key if spec else name)}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle, path = out / f"{stem}-profiles.json.gz", out / f"{stem}.json"

    def save() -> None:  # after every batch: a run cut short keeps what it measured
        with gzip.open(bundle, "wt", encoding="utf-8") as fh:
            json.dump(profiles, fh)
        result = {
            "schema": SCHEMA, "version": 1, "device": name, "spec": spec.key if spec else "",
            "device_kind": "cuda" if device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "date": _dt.date.today().isoformat(), "config": cfg.to_dict(),
            "dtype": args.dtype, "prompt": prompt, "batches": batches, "contexts": contexts,
            "warmup": args.warmup, "repeats": args.repeats, "profiles": bundle.name,
            "measured": "GPU time of one eager step (union of its kernels' intervals), median over the repeats",
            "time_model": llm.time_model_text("eager"), "rows": rows, "seconds": round(time.time() - started, 1),
        }
        path.write_text(json.dumps(result, indent=1, allow_nan=True))

    where = "GPU" if device.startswith("cuda") else "CPU op time"
    print(f"llm_validation: {cfg.name} {args.dtype} on {name} ({'database: ' + spec.name if spec else 'no spec'}), "
          f"torch {torch.__version__}", flush=True)
    for b in batches:
        # a cache of `context` tokens; the decode step writes position `context` (context + 1 keys)
        model = build(cfg, batch=b, max_seq=max(contexts) + 1, device=device, dtype=dtype, seed=0)
        gen = torch.Generator(device="cpu").manual_seed(b)
        tokens = torch.randint(0, cfg.vocab, (b, prompt), generator=gen).to(device)
        key = f"prefill_b{b}_p{prompt}"
        pp = timing.profile(prefill, model, tokens, warmup=args.warmup, repeats=args.repeats, workload=key,
                            params={"batch": b, "prompt": prompt})
        profiles[key] = pp.to_dict()
        row = {"phase": "prefill", "batch": b, "prompt": prompt, "context": prompt, "profile": key, **_measured(pp)}
        row["analytic_s"] = analytic_seconds(cfg, "prefill", b, prompt=prompt, spec=spec)
        rows.append(row)
        print(f"  prefill b={b} p={prompt}: {_fmt_s(row['measured_s'])} {where}, model {_fmt_s(row['analytic_s'])}",
              flush=True)
        tok = tokens.narrow(1, 0, 1).contiguous()
        for c in contexts:
            key = f"decode_b{b}_c{c}"
            dp = timing.profile(decode_one_token, model, tok, c, warmup=args.warmup, repeats=args.repeats,
                                workload=key, params={"batch": b, "context": c})
            profiles[key] = dp.to_dict()
            row = {"phase": "decode", "batch": b, "context": c, "profile": key, **_measured(dp)}
            row["analytic_s"] = analytic_seconds(cfg, "decode", b, context=c, spec=spec)
            row["analytic_fused_s"] = analytic_seconds(cfg, "decode", b, context=c, spec=spec, mode="fused")
            step = llm.step_cost(cfg, "decode", b, context=c)
            row["analytic_flops"], row["analytic_bytes"] = step.flops, step.bytes
            row["graph_s"] = None
            if device.startswith("cuda") and not args.no_graph and graph_error:
                row["graph_error"] = f"skipped after an earlier capture failed ({graph_error})"
            elif device.startswith("cuda") and not args.no_graph:
                try:
                    gp = timing.profile(decode_one_token, model, tok, c, warmup=args.warmup,
                                        repeats=args.repeats, cuda_graph=True, workload=key + "_graph")
                    row["graph_s"] = gp.timing.plain_wall_seconds
                    row["graph_busy_s"] = gp.timing.total.busy_seconds if gp.timing.total else None
                except Exception as err:  # a kernel that cannot be captured: recorded, not fatal
                    graph_error = row["graph_error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    try:
                        torch.cuda.synchronize()
                    except Exception:
                        pass
            rows.append(row)
            print(f"  decode b={b} c={c}: {_fmt_s(row['measured_s'])} {where} ({row['kernels']} kernels), wall "
                  f"{_fmt_s(row['wall_s'])}, graph {_fmt_s(row['graph_s'])}; model {_fmt_s(row['analytic_s'])} "
                  f"({_fmt_err(_err(row['analytic_s'], row['measured_s']))})", flush=True)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        save()
    headers = ["phase", "batch", "context", f"measured ({where})", "wall (eager)", "graph", "model", "model err"]
    print(_table(headers, [[r["phase"], str(r["batch"]), str(r["context"]), _fmt_s(r["measured_s"]),
                            _fmt_s(r["wall_s"]), _fmt_s(r.get("graph_s")), _fmt_s(r["analytic_s"]),
                            _fmt_err(_err(r["analytic_s"], r["measured_s"]))] for r in rows]))
    print(f"wrote {path} and {bundle}")
    return path


# ---------------------------------------------------------------------------- step 2: compare


def load_result(path: str | Path) -> tuple[dict, dict]:
    """(results, profiles by key) of a step-1 file; the bundle is read beside it."""
    p = Path(path)
    data = json.loads(p.read_text())
    if data.get("schema") != SCHEMA:
        raise SystemExit(f"{p}: not an llm_validation result (schema {data.get('schema')!r})")
    bundle = p.parent / data["profiles"]
    with gzip.open(bundle, "rt", encoding="utf-8") as fh:
        profiles = json.load(fh)
    return data, profiles


def compare(source_path: str | Path, target_path: str | Path, out: str | Path) -> dict:
    """Project the source GPU's decode profiles onto the target GPU and hold them, and the
    analytic model on both, against the measured times; write and return the comparison."""
    from rooflight import llm
    from rooflight.api import project
    from rooflight.profile_data import Profile

    src, src_profiles = load_result(source_path)
    tgt, _ = load_result(target_path)
    src_spec, tgt_spec = _spec_for(src["device"]), _spec_for(tgt["device"])
    if tgt_spec is None:
        raise SystemExit(f"{target_path}: {tgt['device']} is not in the hardware database; cannot project onto it")
    cfg_src = llm.get_config(src["config"])
    cfg_tgt = llm.get_config(tgt["config"])
    by_key = {(r["phase"], r["batch"], r["context"]): r for r in src["rows"]}
    rows = []
    for rt in tgt["rows"]:
        key = (rt["phase"], rt["batch"], rt["context"])
        rs = by_key.get(key)
        if rs is None:
            continue
        prof = Profile.from_dict(src_profiles[rs["profile"]])
        proj = project(prof, [tgt_spec])
        predicted = proj.targets[0].total_s
        kw = dict(context=rt["context"]) if rt["phase"] == "decode" else dict(prompt=rt["prompt"])
        a_src = analytic_seconds(cfg_src, rt["phase"], rt["batch"], spec=src_spec, **kw) if src_spec else None
        a_tgt = analytic_seconds(cfg_tgt, rt["phase"], rt["batch"], spec=tgt_spec, **kw)
        row = {
            "phase": rt["phase"], "batch": rt["batch"], "context": rt["context"],
            "source_measured_s": rs["measured_s"], "target_measured_s": rt["measured_s"],
            "projected_s": predicted, "projection_error": _err(predicted, rt["measured_s"]),
            "projection_model": proj.model, "projection_notes": list(proj.notes),
            "analytic_source_s": a_src, "analytic_source_error": _err(a_src, rs["measured_s"]),
            "analytic_target_s": a_tgt, "analytic_target_error": _err(a_tgt, rt["measured_s"]),
            "source_graph_s": rs.get("graph_s"), "target_graph_s": rt.get("graph_s"),
            "analytic_source_vs_graph": _err(a_src, rs.get("graph_s")),
            "analytic_target_vs_graph": _err(a_tgt, rt.get("graph_s")),
            "measured_ratio": (rs["measured_s"] / rt["measured_s"]) if rt["measured_s"] else None,
        }
        rows.append(row)
    decode = [r for r in rows if r["phase"] == "decode"]

    def within(errs, bound):
        errs = [e for e in errs if e is not None]
        return bool(errs) and all(abs(e) <= bound for e in errs)

    result = {
        "schema": SCHEMA + ".compare", "version": 1, "date": _dt.date.today().isoformat(),
        "source": {"device": src["device"], "spec": src_spec.key if src_spec else "", "torch": src["torch"],
                   "date": src["date"], "file": str(source_path)},
        "target": {"device": tgt["device"], "spec": tgt_spec.key, "torch": tgt["torch"], "date": tgt["date"],
                   "file": str(target_path)},
        "measured": "GPU time of one eager step (union of kernel intervals), median of the repeats",
        "time_model": llm.time_model_text("eager"),
        "targets": {"projection_within": PROJECTION_TARGET, "analytic_within": ANALYTIC_TARGET},
        "projection_pass": within([r["projection_error"] for r in decode], PROJECTION_TARGET),
        "analytic_source_pass": within([r["analytic_source_error"] for r in decode], ANALYTIC_TARGET),
        "analytic_target_pass": within([r["analytic_target_error"] for r in decode], ANALYTIC_TARGET),
        "rows": rows,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, allow_nan=True))
    s_name, t_name = (src_spec.name if src_spec else src["device"]), tgt_spec.name
    headers = ["phase", "batch", "context", f"{s_name} meas.", f"{t_name} meas.", "projected", "proj err",
               f"model {s_name}", "err", f"model {t_name}", "err"]
    print(_table(headers, [[r["phase"], str(r["batch"]), str(r["context"]), _fmt_s(r["source_measured_s"]),
                            _fmt_s(r["target_measured_s"]), _fmt_s(r["projected_s"]), _fmt_err(r["projection_error"]),
                            _fmt_s(r["analytic_source_s"]), _fmt_err(r["analytic_source_error"]),
                            _fmt_s(r["analytic_target_s"]), _fmt_err(r["analytic_target_error"])] for r in rows]))
    print(f"decode: projection {s_name} -> {t_name} within {PROJECTION_TARGET:.0%}: "
          f"{'PASS' if result['projection_pass'] else 'FAIL'}; analytic within {ANALYTIC_TARGET:.0%}: {s_name} "
          f"{'PASS' if result['analytic_source_pass'] else 'FAIL'}, {t_name} "
          f"{'PASS' if result['analytic_target_pass'] else 'FAIL'}")
    print(f"wrote {out}")
    return result


# ---------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="directory for step 1's files (default benchmarks/results); "
                                                "with --compare: the comparison file")
    ap.add_argument("--compare", nargs=2, metavar=("SOURCE.json", "TARGET.json"),
                    help="step 2: project SOURCE's profiles onto TARGET's GPU and compare")
    ap.add_argument("--smoke", action="store_true", help="tiny config on the CPU: a quick check of the script")
    ap.add_argument("--config", default="llama-2-7b")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--context", default="1024,2048")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph timing")
    args = ap.parse_args(argv)
    if args.compare:
        compare(args.compare[0], args.compare[1], args.out or HERE / "results" / "llm_validation.json")
        return 0
    if args.smoke:
        args.config, args.batch, args.context, args.prompt = "tiny", "1,2", "64,128", 32
        args.warmup, args.repeats, args.device = 1, 2, args.device or "cpu"
    args.out = args.out or str(HERE / "results")
    measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
