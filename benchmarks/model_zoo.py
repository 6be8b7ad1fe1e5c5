"""The model zoo: Hugging Face configs (random weights, no downloads) counted by rooflight, held
against closed forms and against torch.utils.flop_counter.FlopCounterMode in the same run.

    python benchmarks/model_zoo.py            # CPU, bf16, small shapes

Per model and phase (a 2 x 64-token prefill, then one decode step of 2 tokens): rooflight's linear
FLOPs against 2 x tokens x the matrices a token passes through (from the config), its total
FLOPs beside FlopCounterMode's (which counts matmuls and attention only, and not torch._grouped_mm),
its bytes over all the weights plus the KV cache (a decode step reads less than 1x where it reads
only part of the weights: the embedding's rows, the experts its tokens were routed to), and the
ops left uncounted.  Prints a table;
writes benchmarks/results/model_zoo.json with the machine, torch and transformers versions.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rooflight.capture import count  # noqa: E402
from rooflight.detect import describe_cpu  # noqa: E402

SMALL = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=1024)


def zoo():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, MixtralConfig

    yield "Llama (GQA 4:1)", LlamaConfig(**SMALL)
    yield "Mistral (sliding window 32)", MistralConfig(**SMALL, sliding_window=32)
    yield "Mixtral (grouped_mm experts)", MixtralConfig(**SMALL, num_local_experts=8, num_experts_per_tok=2)
    eager = MixtralConfig(**SMALL, num_local_experts=8, num_experts_per_tok=2)
    eager._experts_implementation = "eager"
    yield "Mixtral (eager experts)", eager
    yield "GPT-2", GPT2Config(n_layer=2, n_embd=256, n_head=8, vocab_size=1024, n_positions=512)
    try:
        from transformers import Qwen2MoeConfig
    except ImportError:  # older transformers
        return
    yield "Qwen2-MoE (shared expert)", Qwen2MoeConfig(**SMALL, moe_intermediate_size=128,
                                                      shared_expert_intermediate_size=256, num_experts=8,
                                                      num_experts_per_tok=2)


def linear_closed_form(cfg, tokens: int) -> float:
    """2 x tokens x every matrix a token passes through (top-k experts and the router for MoE;
    GPT-2's Conv1D biases add one FLOP per output in the GEMM epilogue)."""
    if cfg.model_type == "gpt2":
        h = cfg.n_embd
        return 2 * tokens * (cfg.n_layer * 12 * h * h + h * cfg.vocab_size) + tokens * cfg.n_layer * 9 * h
    h, i, heads, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads
    d = h // heads
    attn = 2 * h * heads * d + 2 * h * kv * d
    mlp = 3 * h * i
    bias = 0
    if cfg.model_type == "mixtral":
        mlp = cfg.num_experts_per_tok * 3 * h * i + h * cfg.num_local_experts
    if cfg.model_type == "qwen2_moe":  # top-k experts, a gated shared expert, the router; q/k/v biases
        mlp = (cfg.num_experts_per_tok * 3 * h * cfg.moe_intermediate_size + 3 * h * cfg.shared_expert_intermediate_size
               + h * cfg.num_experts + h)
        bias = tokens * cfg.num_hidden_layers * (heads + 2 * kv) * d
    return 2 * tokens * (cfg.num_hidden_layers * (attn + mlp) + h * cfg.vocab_size) + bias


def kv_bytes(cfg, batch: int, keys: int) -> float:
    if cfg.model_type == "gpt2":
        return 2 * cfg.n_layer * batch * keys * cfg.n_embd * 2
    d = cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * batch * keys * cfg.num_key_value_heads * d * 2


def main() -> int:
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    warnings.filterwarnings("ignore")
    rows = []
    for name, cfg in zoo():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).eval()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        ids, nxt = torch.randint(0, 1024, (2, 64)), torch.randint(0, 1024, (2, 1))
        with torch.no_grad():
            cache = model(ids, use_cache=True).past_key_values
            calls = {"prefill": (lambda: model(ids, use_cache=True), 128),
                     "decode": (lambda: model(nxt, past_key_values=cache, use_cache=True), 2)}
            for phase, (fn, tokens) in calls.items():
                prof = count(fn)
                try:
                    with FlopCounterMode(display=False) as fc:
                        fn()
                    fc_flops = float(fc.get_total_flops())
                except Exception as err:  # torch's SDPA formula rejects some grouped-query shapes
                    fc_flops = float("nan")
                    print(f"  FlopCounterMode failed on {name} {phase}: {type(err).__name__}")
                linear = sum(o.total_flops for o in prof.ops if o.short_op in ("mm", "addmm", "_grouped_mm"))
                closed = linear_closed_form(cfg, tokens)
                floor = weights + (kv_bytes(cfg, 2, 65) if phase == "decode" else 0)
                rows.append({"model": name, "phase": phase, "tokens": tokens, "ops": len(prof.ops),
                             "linear_flops": linear, "closed_form": closed, "linear_over_closed": linear / closed,
                             "total_flops": prof.total_flops, "flop_counter": fc_flops,
                             "bytes": prof.total_bytes, "weights_plus_kv": floor,
                             "bytes_over_weights_kv": prof.total_bytes / floor,
                             "uncounted": prof.uncounted()})
    import transformers

    device = describe_cpu().model
    result = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
              "date": dt.date.today().isoformat(), "rows": rows}
    print(f"{device}, torch {torch.__version__}, transformers {transformers.__version__}, bf16")
    print(f"{'model':30} {'phase':8} {'linear/closed':>13} {'rooflight FLOPs':>16} {'FlopCounter':>12} "
          f"{'bytes/(W+KV)':>12} uncounted")
    for r in rows:
        print(f"{r['model']:30} {r['phase']:8} {r['linear_over_closed']:13.6f} {r['total_flops']:16.4g} "
              f"{r['flop_counter']:12.4g} {r['bytes_over_weights_kv']:12.3f} {sum(r['uncounted'].values())}")
    out = ROOT / "benchmarks" / "results" / "model_zoo.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
