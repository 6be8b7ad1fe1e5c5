"""What counting costs: rooflight.count against torch.utils.flop_counter.FlopCounterMode (which
counts FLOPs only) and the plain run, on the same workloads in one run.

    python benchmarks/capture_speed.py                      # CPU: small Hugging Face models
    python benchmarks/capture_speed.py --device cuda --big  # GPU: a 1B-shape Llama generate() too

Per workload: the plain run's time, FlopCounterMode's and rooflight.count's (best of --repeats),
the ops rooflight recorded, each one's cost per op ((counted - plain) / ops) and the ratios
rooflight / FlopCounterMode and rooflight / plain, and beside them the floor of any counter that
sees each op at the dispatcher: a TorchDispatchMode that only runs each op ("mode"), and
rooflight's counted pass alone ("pass": the run under the capture, before its profile is built;
"rooflight" is count(), the pass and the profile).  On the
models rooflight counts as `rooflight profile` does (steps found).  The first row repeats one op, so both see the
same ops: its per-op costs compare like with like.  On the models rooflight records more ops
than run plain on a CPU (an attention off the GPU runs as the decomposition a GPU's math kernel
would, so its scores are counted), and FlopCounterMode runs the fused kernel: their per-op
figures share rooflight's op count as the denominator.  Prints a table; writes
benchmarks/results/capture_speed[-DEVICE].json with the machine, torch version and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rooflight.capture import Capture, count  # noqa: E402
from rooflight.detect import describe_cpu  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best_times(fns: dict, device: str, repeats: int) -> dict:
    """The fastest of `repeats` runs of each callable, taken in turns (plain, mode, counted, ...) so
    that a slow spell of a shared machine falls on all of them; its noise only ever adds time (on
    the GPU machine the middle run of a plain 1B generate() moved 0.37-0.62 s between two calls,
    its best 0.37-0.47 s).  Each run starts with Python's collector clear (a full collection
    first, untimed): otherwise one run's garbage (a counted pass leaves ~100k objects) is
    collected in whichever run comes next.  Each pays for the collections its own objects bring."""
    best = {k: math.inf for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


class _PassThrough(TorchDispatchMode):
    """The floor of any dispatch-level counter: a mode that sees every op and only runs it."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def workloads(device: str, big: bool):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    small = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024)
    llama = LlamaForCausalLM(small).to(device, dtype).eval()
    ids = torch.randint(0, 1024, (2, 128), device=device)

    def llama_forward():
        with torch.no_grad():
            llama(ids)

    def llama_generate():
        with torch.no_grad():
            llama.generate(ids[:1, :32], max_new_tokens=16, min_new_tokens=16, do_sample=False)

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=8, vocab_size=1024, n_positions=512)).to(
        device, dtype).eval()

    def gpt2_forward():
        with torch.no_grad():
            gpt2(ids)

    a = torch.randn(8, 8, device=device, dtype=dtype)
    b = torch.randn(8, 8, device=device, dtype=dtype)

    def adds():  # one op 20,000 times: both counters see exactly the same ops (a per-op cost, pure)
        for _ in range(20_000):
            torch.add(a, b)

    out = [("torch.add 8x8, x20000 (same ops for both)", adds),
           ("llama 4x256 forward, 2x128 tokens", llama_forward),
           ("llama 4x256 generate, 16 tokens", llama_generate),
           ("gpt-2 4x256 forward, 2x128 tokens", gpt2_forward)]
    if big:
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096)
        big_model = LlamaForCausalLM(cfg).to(device, dtype).eval()
        prompt = torch.randint(0, 128256, (1, 128), device=device)

        def big_generate():
            with torch.no_grad():
                big_model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)

        out.append(("llama 1B-shape generate, 32 tokens", big_generate))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big", action="store_true", help="add a 1B-shape Llama generate() (GPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name, fn in workloads(args.device, args.big):
        fn()  # warm up (first-call initialisation stays out of every number)
        steps = not name.startswith("torch.add")  # a script's counted pass: steps found, as the CLI does

        def flop_counter():
            with FlopCounterMode(display=False):
                fn()

        def pass_through():
            with _PassThrough():
                fn()

        def counted_pass():  # the run under the capture, without building its profile after
            with Capture(steps=steps):
                fn()

        fns = {"plain": fn, "mode": pass_through, "pass": counted_pass, "rooflight": lambda: count(fn, steps=steps)}
        try:
            flop_counter()
            fns["flop_counter"], fc_error = flop_counter, ""
        except Exception as err:  # e.g. torch's SDPA formula rejects grouped-query shapes
            fc_error = f"{type(err).__name__}: {err}"
        ops = len(count(fn).ops)
        t = _best_times(fns, args.device, args.repeats)
        plain, fc, rl, mode = t["plain"], t.get("flop_counter", math.nan), t["rooflight"], t["mode"]
        rows.append({"workload": name, "ops": ops, "plain_s": plain, "pass_through_mode_s": mode,
                     "flop_counter_s": fc, "rooflight_s": rl, "rooflight_pass_s": t["pass"],
                     "rooflight_pass_over_plain": t["pass"] / plain,
                     "pass_through_us_per_op": (mode - plain) / ops * 1e6,
                     "flop_counter_us_per_op": (fc - plain) / ops * 1e6, "rooflight_us_per_op": (rl - plain) / ops * 1e6,
                     "rooflight_over_flop_counter": rl / fc, "rooflight_over_plain": rl / plain,
                     "pass_through_over_plain": mode / plain, "flop_counter_error": fc_error})
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else describe_cpu().model
    result = {"device": device_name, "torch": torch.__version__, "date": dt.date.today().isoformat(),
              "repeats": args.repeats, "rows": rows}
    print(f"{device_name}, torch {torch.__version__}, best of {args.repeats}")
    print(f"{'workload':42} {'ops':>6} {'plain':>9} {'mode':>9} {'FlopCounter':>11} {'rooflight':>9} "
          f"{'us/op mode':>10} {'us/op FC':>9} {'us/op rl':>9} {'rl/FC':>6} {'mode/plain':>10} {'pass/plain':>10} "
          f"{'rl/plain':>8}")
    for r in rows:
        print(f"{r['workload']:42} {r['ops']:6d} {r['plain_s']*1e3:7.1f}ms {r['pass_through_mode_s']*1e3:7.1f}ms "
              f"{r['flop_counter_s']*1e3:9.1f}ms {r['rooflight_s']*1e3:7.1f}ms {r['pass_through_us_per_op']:10.1f} "
              f"{r['flop_counter_us_per_op']:9.1f} {r['rooflight_us_per_op']:9.1f} "
              f"{r['rooflight_over_flop_counter']:6.2f} {r['pass_through_over_plain']:10.2f} "
              f"{r['rooflight_pass_over_plain']:10.2f} {r['rooflight_over_plain']:8.2f}"
              + (f"  (FlopCounterMode failed: {r['flop_counter_error'][:60]})" if r["flop_counter_error"] else ""))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "capture_speed.json" if args.device == "cpu" else f"capture_speed-{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
