"""What counting costs: rooflight.count against torch.utils.flop_counter.FlopCounterMode (which
counts FLOPs only) and the plain run, on the same workloads in one run.

    python benchmarks/capture_speed.py                      # CPU: small Hugging Face models
    python benchmarks/capture_speed.py --device cuda --big  # GPU: a 1B-shape Llama generate() too

Per workload: the plain run's time, FlopCounterMode's and rooflight.count's (median of --repeats),
the ops rooflight recorded, each one's cost per op ((counted - plain) / ops) and the ratios
rooflight / FlopCounterMode and rooflight / plain.  The first row repeats one op, so both see the
same ops: its per-op costs compare like with like.  On the models rooflight records more ops
than run plain on a CPU (an attention off the GPU runs as the decomposition a GPU's math kernel
would, so its scores are counted), and FlopCounterMode runs the fused kernel: their per-op
figures share rooflight's op count as the denominator.  Prints a table; writes
benchmarks/results/capture_speed[-DEVICE].json with the machine, torch version and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rooflight.capture import count  # noqa: E402
from rooflight.detect import describe_cpu  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_time(fn, device: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="add a 1B-shape Llama generate() (GPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name, fn in workloads(args.device, args.big):
        fn()  # warm up (first-call initialisation stays out of every number)
        plain = _median_time(fn, args.device, args.repeats)

        def flop_counter():
            with FlopCounterMode(display=False):
                fn()

        try:
            fc = _median_time(flop_counter, args.device, args.repeats)
            fc_error = ""
        except Exception as err:  # e.g. torch's SDPA formula rejects grouped-query shapes
            fc, fc_error = math.nan, f"{type(err).__name__}: {err}"
        ops = len(count(fn).ops)
        rl = _median_time(lambda: count(fn), args.device, args.repeats)
        rows.append({"workload": name, "ops": ops, "plain_s": plain, "flop_counter_s": fc, "rooflight_s": rl,
                     "flop_counter_us_per_op": (fc - plain) / ops * 1e6, "rooflight_us_per_op": (rl - plain) / ops * 1e6,
                     "rooflight_over_flop_counter": rl / fc, "rooflight_over_plain": rl / plain,
                     "flop_counter_error": fc_error})
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else describe_cpu().model
    result = {"device": device_name, "torch": torch.__version__, "date": dt.date.today().isoformat(),
              "repeats": args.repeats, "rows": rows}
    print(f"{device_name}, torch {torch.__version__}, median of {args.repeats}")
    print(f"{'workload':42} {'ops':>6} {'plain':>9} {'FlopCounter':>11} {'rooflight':>9} {'us/op FC':>9} "
          f"{'us/op rl':>9} {'rl/FC':>6} {'rl/plain':>8}")
    for r in rows:
        print(f"{r['workload']:42} {r['ops']:6d} {r['plain_s']*1e3:7.1f}ms {r['flop_counter_s']*1e3:9.1f}ms "
              f"{r['rooflight_s']*1e3:7.1f}ms {r['flop_counter_us_per_op']:9.1f} {r['rooflight_us_per_op']:9.1f} "
              f"{r['rooflight_over_flop_counter']:6.2f} {r['rooflight_over_plain']:8.2f}"
              + (f"  (FlopCounterMode failed: {r['flop_counter_error'][:60]})" if r["flop_counter_error"] else ""))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "capture_speed.json" if args.device == "cpu" else f"capture_speed-{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
