"""The cases of benchmarks/counters_validation.py: rooflight's counts against Nsight Compute's
counters, one workload per case (a model file: `rooflight profile benchmarks/counters_cases.py
--counters` profiles them all, each followed by its counter pass).

GEMMs over M = 1 ... 8192 in bf16, fp16 and fp32; every SDPA backend, causal and not; decode
attention MHA / GQA / MQA; the paged-KV decode kernel of kernels/; norms, elementwise, softmax,
embedding; int8 / int4 / fp8 matmuls; a Hugging Face Llama decoder layer.  Shapes are chosen
large enough (tens of MB) that DRAM traffic is the kernel's, not the L2's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kernels"))  # model files, by file name

import rooflight  # noqa: E402
import gemm  # noqa: E402
import quant  # noqa: E402

BF16 = torch.bfloat16


@rooflight.workload(sweep={"m": [1, 16, 128, 1024, 8192]})
def gemm_bf16(m: int = 1, device="cuda"):
    """x [m, 4096] @ W.T, W [4096, 4096], bf16."""
    return gemm.linear(m, "4096x4096", "bf16", device=device)


@rooflight.workload
def gemm_fp16(m: int = 4096, device="cuda"):
    """x [4096, 4096] @ W.T, fp16."""
    return gemm.linear(m, "4096x4096", "fp16", device=device)


@rooflight.workload
def gemm_fp32(m: int = 2048, device="cuda"):
    """x [2048, 4096] @ W.T, fp32 with TF32 off: CUDA-core FMAs."""
    return gemm.linear(m, "4096x4096", "fp32", device=device)


@rooflight.workload
def gemm_tf32(m: int = 2048, device="cuda"):
    """x [2048, 4096] @ W.T, fp32 inputs on TF32 tensor cores."""
    return gemm.linear(m, "4096x4096", "tf32", device=device)


_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


@rooflight.workload(sweep={"backend": ["flash", "efficient", "cudnn"], "causal": [False, True]})
def sdpa(backend: str = "flash", causal: bool = False, batch: int = 4, heads: int = 16, seq: int = 2048,
         head_dim: int = 128, device="cuda"):
    """F.scaled_dot_product_attention [B, H, S, D] bf16 on one backend."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device=device, dtype=BF16) for _ in range(3))

    def run():
        with sdpa_kernel([_BACKENDS[backend]]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


@rooflight.workload(sweep={"kv_heads": [32, 8, 1]})
def decode_attention(kv_heads: int = 32, batch: int = 8, heads: int = 32, context: int = 4096, head_dim: int = 128,
                     device="cuda"):
    """One decode step's attention: 1 query per sequence over `context` cached keys (MHA, GQA, MQA)."""
    torch.manual_seed(0)
    q = torch.randn(batch, heads, 1, head_dim, device=device, dtype=BF16)
    k, v = (torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=BF16) for _ in range(2))
    return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=kv_heads != heads)


@rooflight.workload
def paged_decode(batch: int = 16, context: int = 4096, device="cuda"):
    """The paged-KV decode kernel of kernels/paged_attention.py (Triton), GQA 32/8 heads."""
    import paged_attention as pa

    torch.manual_seed(0)
    cache = pa.build_cache(batch, context, n_kv_heads=8, head_dim=128, device=device, dtype=BF16)
    q = torch.randn(batch, 32, 128, device=device, dtype=BF16)
    the_plan = pa.plan(cache.block_tables, cache.seq_lens, page_size=cache.page_size, n_heads=32, n_kv_heads=8,
                       device=device)
    return lambda: pa.paged_decode(q, cache.k_cache, cache.v_cache, cache.block_tables, the_plan)


def _x(rows: int, cols: int, device, dtype=BF16):
    torch.manual_seed(0)
    return torch.randn(rows, cols, device=device, dtype=dtype)


@rooflight.workload
def rms_norm_eager(rows: int = 16384, cols: int = 4096, device="cuda"):
    """RMSNorm as Llama writes it (fp32 upcast, pow, mean, rsqrt, mul, cast, weight)."""
    x, w = _x(rows, cols, device), torch.ones(cols, device=device, dtype=BF16)

    def run():
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * h.to(BF16)

    return run


@rooflight.workload
def rms_norm_fused(rows: int = 16384, cols: int = 4096, device="cuda"):
    """F.rms_norm (one fused kernel on the GPU)."""
    x, w = _x(rows, cols, device), torch.ones(cols, device=device, dtype=BF16)
    return lambda: F.rms_norm(x, (cols,), w, 1e-6)


@rooflight.workload
def layer_norm(rows: int = 16384, cols: int = 4096, device="cuda"):
    """F.layer_norm with weight and bias."""
    x = _x(rows, cols, device)
    w, b = torch.ones(cols, device=device, dtype=BF16), torch.zeros(cols, device=device, dtype=BF16)
    return lambda: F.layer_norm(x, (cols,), w, b)


@rooflight.workload
def add(rows: int = 16384, cols: int = 4096, device="cuda"):
    """x + y, bf16 (a residual add)."""
    x, y = _x(rows, cols, device), _x(rows, cols, device)
    return lambda: x + y


@rooflight.workload
def swiglu(rows: int = 16384, cols: int = 4096, device="cuda"):
    """silu(gate) * up, bf16 (two kernels eager)."""
    g, u = _x(rows, cols, device), _x(rows, cols, device)
    return lambda: F.silu(g) * u


@rooflight.workload
def softmax(rows: int = 16384, cols: int = 4096, device="cuda"):
    """torch.softmax over the last dim, bf16."""
    x = _x(rows, cols, device)
    return lambda: torch.softmax(x, dim=-1)


@rooflight.workload
def embedding(tokens: int = 65536, vocab: int = 128256, dim: int = 4096, device="cuda"):
    """An embedding lookup of 65,536 tokens from a 128k x 4096 table."""
    torch.manual_seed(0)
    table = torch.randn(vocab, dim, device=device, dtype=BF16)
    ids = torch.randint(0, vocab, (tokens,), device=device)
    return lambda: F.embedding(ids, table)


@rooflight.workload(sweep={"scheme": ["int8", "int4", "fp8"]})
def quantized_linear(scheme: str = "int8", batch: int = 16, device="cuda"):
    """A 4096 -> 11008 linear layer with quantized weights (kernels/quant.py)."""
    return quant.layer(batch, scheme, "4096x11008", device=device)


@rooflight.workload
def int8_mm(m: int = 4096, device="cuda"):
    """torch._int_mm: int8 x int8 -> int32 [4096, 4096, 4096] on the integer tensor cores."""
    torch.manual_seed(0)
    a = torch.randint(-8, 8, (m, 4096), device=device, dtype=torch.int8)
    b = torch.randint(-8, 8, (4096, 4096), device=device, dtype=torch.int8)
    return lambda: torch._int_mm(a, b)


@rooflight.workload
def hf_llama_layer(tokens: int = 1024, device="cuda"):
    """One Hugging Face LlamaDecoderLayer (8B shape, random weights), a 1,024-token prefill."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      num_hidden_layers=1, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, 0).to(device, BF16).eval()
    rope = LlamaRotaryEmbedding(cfg).to(device)
    x = torch.randn(1, tokens, 4096, device=device, dtype=BF16) / math.sqrt(4096)
    pos = torch.arange(tokens, device=device)[None]
    emb = rope(x, pos)

    def run():
        with torch.no_grad():
            return layer(x, position_embeddings=emb, attention_mask=None, position_ids=pos)

    return run


@rooflight.workload
def hf_llama_prefill(layers: int = 2, tokens: int = 512, device="cuda"):
    """A Hugging Face LlamaForCausalLM of 2 layers (8B-shaped layers, random weights), a 512-token prefill."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device, BF16).eval()
    ids = torch.randint(0, 32000, (1, tokens), device=device)

    def run():
        with torch.no_grad():
            return model(ids, use_cache=False).logits

    return run
