"""Facts about the GPU software stack that the cost model relies on, checked on the real GPU.

- which SDPA kernel torch runs for each kind of call, against the backend rooflight predicts
  when it counts off the GPU (fused vs math changes the count; the name is reported);
- that counting on CUDA gives the same FLOPs and bytes as counting the same workload on the
  meta device (the Llama model, prefill and decode);
- what F.rms_norm dispatches to on CUDA; the BlockMask tuple flex attention's op receives.

    python benchmarks/gpu_facts.py          # prints a table, writes benchmarks/results/gpu_facts.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))  # model files, by file name
from llama import build, decode_one_token, prefill  # noqa: E402
from rooflight.capture import Capture, count  # noqa: E402
from rooflight.costs import attention as A  # noqa: E402
from rooflight.costs.model import TensorMeta  # noqa: E402
from rooflight.capture import enabled_sdpa_backends, snapshot_settings  # noqa: E402

SDPA_CASES = [
    # name, dtype, B, Hq, Hkv, Sq, Sk, D, causal, mask, gqa
    ("bf16 causal MHA d128", torch.bfloat16, 4, 16, 16, 1024, 1024, 128, True, False, False),
    ("bf16 full MHA d128", torch.bfloat16, 4, 16, 16, 1024, 1024, 128, False, False, False),
    ("fp16 causal MHA d64", torch.float16, 4, 16, 16, 1024, 1024, 64, True, False, False),
    ("bf16 causal GQA 4:1 enable_gqa", torch.bfloat16, 4, 32, 8, 1024, 1024, 128, True, False, True),
    ("bf16 decode GQA Sq=1 enable_gqa", torch.bfloat16, 8, 32, 8, 1, 4096, 128, False, False, True),
    ("bf16 decode MHA Sq=1", torch.bfloat16, 8, 32, 32, 1, 4096, 128, False, False, False),
    ("bf16 bool mask", torch.bfloat16, 2, 16, 16, 512, 512, 128, False, True, False),
    ("fp32 causal", torch.float32, 2, 16, 16, 512, 512, 64, True, False, False),
    ("fp32 GQA enable_gqa", torch.float32, 2, 16, 4, 512, 512, 64, True, False, True),
    ("bf16 d256 causal", torch.bfloat16, 2, 8, 8, 512, 512, 256, True, False, False),
]


def sdpa_facts() -> list[dict]:
    rows = []
    for name, dtype, b, hq, hkv, sq, sk, d, causal, mask, gqa in SDPA_CASES:
        q = torch.randn(b, hq, sq, d, device="cuda", dtype=dtype)
        k = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype)
        v = torch.randn(b, hkv, sk, d, device="cuda", dtype=dtype)
        m = torch.ones(sq, sk, device="cuda", dtype=torch.bool).tril() if mask else None
        kw = dict(attn_mask=m, is_causal=causal and not mask, enable_gqa=gqa)
        with torch.no_grad(), Capture() as cap:
            F.scaled_dot_product_attention(q, k, v, **kw)
        ran = [o.op for o in cap.records if "attention" in o.op or "bmm" in o.op or "softmax" in o.op]
        settings = snapshot_settings()
        predicted = A.predict_sdpa_backend(TensorMeta.of(q), TensorMeta.of(k), TensorMeta.of(v), has_mask=mask,
                                           dropout_p=0.0, enable_gqa=gqa, settings=settings)
        cuda_prof = cap.profile()
        meta = [t.to("meta") for t in (q, k, v)]
        mm = m.to("meta") if m is not None else None
        with torch.no_grad():
            meta_prof = count(lambda: F.scaled_dot_product_attention(*meta, attn_mask=mm, is_causal=kw["is_causal"],
                                                                     enable_gqa=gqa))
        rows.append({
            "case": name, "ran": ran[0] if ran else "", "ops": len(cap.records), "predicted": predicted,
            "cuda_flops": cuda_prof.total_flops, "meta_flops": meta_prof.total_flops,
            "cuda_bytes": cuda_prof.total_bytes, "meta_bytes": meta_prof.total_bytes,
            "agree": cuda_prof.total_flops == meta_prof.total_flops and cuda_prof.total_bytes == meta_prof.total_bytes,
        })
    return rows


def llama_parity() -> list[dict]:
    rows = []
    for step in ("prefill", "decode"):
        res = {}
        for dev in ("cuda", "meta"):
            m = build("tiny", batch=2, device=dev)
            toks = torch.zeros(2, 256, dtype=torch.long, device=dev)
            p = count(prefill, m, toks)
            if step == "decode":
                p = count(decode_one_token, m, toks.narrow(1, 0, 1), 256)
            res[dev] = p
        rows.append({"step": step, "cuda_flops": res["cuda"].total_flops, "meta_flops": res["meta"].total_flops,
                     "cuda_bytes": res["cuda"].total_bytes, "meta_bytes": res["meta"].total_bytes,
                     "agree": (res["cuda"].flops_by_class() == res["meta"].flops_by_class()
                               and res["cuda"].total_bytes == res["meta"].total_bytes),
                     "diff_ops": [(a.op, b.op, a.bytes, b.bytes) for a, b in zip(res["cuda"].ops, res["meta"].ops)
                                  if (a.op, a.bytes, a.total_flops) != (b.op, b.bytes, b.total_flops)][:10]})
    return rows


def misc_facts() -> dict:
    out = {}
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    with Capture() as cap:
        F.rms_norm(x, (4096,), w, 1e-6)
    out["rms_norm_ops"] = [o.op for o in cap.records]
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        bm = create_block_mask(lambda b, h, q, kv: (q - kv).abs() <= 256, None, None, 2048, 2048, device="cuda")
        out["block_mask_tuple"] = [type(t).__name__ if not isinstance(t, torch.Tensor) else f"Tensor{tuple(t.shape)}"
                                   for t in bm.as_tuple()]
        q = torch.randn(1, 8, 2048, 64, device="cuda", dtype=torch.bfloat16)
        with Capture() as cap:
            flex_attention(q, q, q, block_mask=bm)
        out["flex_ops"] = [(o.op, o.total_flops, o.note) for o in cap.records]
        compiled = torch.compile(flex_attention)
        ref = compiled(q, q, q, block_mask=bm)
        with Capture() as cap:
            got = compiled(q, q, q, block_mask=bm)
        out["flex_compiled_ops"] = [(o.op, o.total_flops) for o in cap.records]
        out["flex_compiled_max_err"] = float((ref.float() - got.float()).abs().max())
    except Exception as err:  # report, do not hide
        out["flex_error"] = f"{type(err).__name__}: {err}"
    out["sdpa_priority"] = list(enabled_sdpa_backends())
    return out


def main() -> None:
    t0 = time.time()
    facts = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
             "sdpa": sdpa_facts(), "llama_parity": llama_parity(), "misc": misc_facts()}
    facts["seconds"] = round(time.time() - t0, 1)
    print(f"{facts['device']}  torch {facts['torch']}  {facts['date']}")
    print(f"{'SDPA case':<34} {'ran on CUDA':<52} {'predicted':<10} {'count agrees'}")
    for r in facts["sdpa"]:
        print(f"{r['case']:<34} {r['ran']:<52} {r['predicted']:<10} {r['agree']}")
    for r in facts["llama_parity"]:
        print(f"llama tiny {r['step']}: cuda vs meta agree = {r['agree']}  {r['diff_ops'][:3]}")
    for k, v in facts["misc"].items():
        print(f"{k}: {v}")
    out = Path(__file__).resolve().parent / "results" / "gpu_facts.json"
    out.write_text(json.dumps(facts, indent=1, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
