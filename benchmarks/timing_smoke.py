"""Time a small Llama's prefill and decode step on this machine's GPU (or CPU) and print the
heaviest ops with their kernels: a quick end-to-end check of the timing join.

    python benchmarks/timing_smoke.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))  # model files, by file name
from llama import build, decode_one_token, prefill  # noqa: E402
from rooflight.regions import region  # noqa: E402
from rooflight.timing import profile  # noqa: E402
from rooflight.units import fmt_bytes, fmt_flops, fmt_seconds  # noqa: E402


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = build("small", batch=4, max_seq=1024, device=dev)
    toks = torch.randint(0, model.cfg.vocab, (4, 512), device=dev)
    tok = toks.narrow(1, 0, 1)

    def step():
        with region("prefill"):
            prefill(model, toks)
        with region("decode"):
            decode_one_token(model, tok, 512)

    for graph in (False, True):
        if graph and dev != "cuda":
            continue
        p = profile(decode_one_token, model, tok, 512, repeats=10, cuda_graph=graph, workload="decode") if graph \
            else profile(step, repeats=10, workload="prefill+decode")
        t = p.timing
        print(f"\n== {p.workload} on {t.device_name} ({t.device_kind}), cuda_graph={graph}: "
              f"{len(t.ops)}/{len(p.ops)} ops timed, {len(t.kernels)} kernels")
        for n in t.notes:
            print("  note:", n)
        for r in t.regions:
            print(f"  region {r.region or '(all)':<10} wall {fmt_seconds(r.wall_seconds):>10} busy "
                  f"{fmt_seconds(r.busy_seconds):>10} idle {fmt_seconds(r.idle_seconds):>10} cpu {fmt_seconds(r.cpu_seconds)}")
        df = p.df.sort_values("seconds", ascending=False).head(12)
        for idx, row in df.iterrows():
            print(f"  {idx:>4} {row.module[:28]:<28} {row.op[:28]:<28} {fmt_flops(row.flops):>11} {fmt_bytes(row.bytes):>9} "
                  f"{fmt_seconds(row.seconds):>9} [{fmt_seconds(row.seconds_min)}..{fmt_seconds(row.seconds_max)}] "
                  f"cpu {fmt_seconds(row.cpu_seconds)} k={row.kernels}")
        names = {}
        for k in t.kernels:
            names.setdefault(k.op_index, []).append(k.name[:60])
        top = df.index[0]
        print(f"  kernels of op {top}: {names.get(top)}")
        if out_dir is not None:
            p.save(out_dir / f"smoke_{'graph' if graph else 'eager'}.json")


if __name__ == "__main__":
    main()
