"""A Llama-architecture decoder of our own (random weights), prefill and decode over a KV cache.

The workload users try first: `rooflight profile kernels/llama.py`.  Configs run from `tiny`
(CPU-friendly) to the 7B, 13B and 70B shapes, which count on the meta device with no weights in
memory.  The architecture is Llama's: token embedding, N x (RMSNorm -> attention with rotary
embeddings, grouped-query heads and a KV cache -> residual -> RMSNorm -> SwiGLU MLP -> residual),
final RMSNorm, LM head.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from rooflight.llm import PRESETS, ModelConfig  # noqa: F401  (PRESETS: the names `config` takes)


# The config and its presets (tiny ... 70B shapes) are the library's: rooflight.llm owns the one table.
LlamaConfig = ModelConfig


def rope_tables(cfg: LlamaConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim))
    t = torch.arange(cfg.max_seq, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)  # [max_seq, head_dim/2]
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, S, H, D]; rotate pairs (x[..., :D/2], x[..., D/2:]) by the position's angle
    s, d = x.shape[1], x.shape[-1] // 2
    x1, x2 = x.narrow(-1, 0, d), x.narrow(-1, d, d)
    cos, sin = cos.view(1, s, 1, d).to(x.dtype), sin.view(1, s, 1, d).to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class KVCache(nn.Module):
    """A static cache: k, v: [B, Hkv, max_seq, head_dim]; `update` writes positions in place."""

    def __init__(self, batch: int, cfg: LlamaConfig, max_seq: int, dtype: torch.dtype, device=None):
        super().__init__()
        shape = (batch, cfg.n_kv_heads, max_seq, cfg.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: [B, Hkv, S_new, D] written at positions start.. -> the cache up to start + S_new
        end = start + k.shape[2]
        positions = torch.arange(start, end, device=k.device)
        self.k.index_copy_(2, positions, k)
        self.v.index_copy_(2, positions, v)
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        cfg = self.cfg
        q = self.wq(x).view(b, s, cfg.n_heads, cfg.head_dim)
        k = self.wk(x).view(b, s, cfg.n_kv_heads, cfg.head_dim)
        v = self.wv(x).view(b, s, cfg.n_kv_heads, cfg.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)
        gqa = cfg.n_kv_heads != cfg.n_heads
        # prefill: causal over the new tokens; decode (s == 1): the one query sees the whole cache
        o = F.scaled_dot_product_attention(q, k, v, is_causal=(s > 1 and start == 0), enable_gqa=gqa)
        return self.wo(o.transpose(1, 2).reshape(b, s, cfg.n_heads * cfg.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.intermediate, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.intermediate, bias=False)
        self.w2 = nn.Linear(cfg.intermediate, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, start: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), start, cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def setup_cache(self, batch: int, max_seq: int) -> None:
        dtype, device = self.output.weight.dtype, self.output.weight.device
        for layer in self.layers:
            layer.attention.cache = KVCache(batch, self.cfg, max_seq, dtype, device)

    def forward(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        # tokens: [B, S] -> logits of the last position [B, vocab]
        s = tokens.shape[1]
        cos, sin = self.rope_cos.narrow(0, start, s), self.rope_sin.narrow(0, start, s)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, start, cos, sin)
        return self.output(self.norm(x.narrow(1, s - 1, 1))).squeeze(1)


def build(config: str | LlamaConfig = "tiny", *, batch: int = 1, max_seq: int | None = None,
          device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Llama:
    """A model with random weights and an empty KV cache, ready for prefill and decode."""
    cfg = LlamaConfig.from_name(config) if isinstance(config, str) else config
    if max_seq is not None:
        cfg = replace(cfg, max_seq=max(max_seq, 1))
    device = torch.device(device)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):  # shapes first: no memory, no random numbers spent on default inits
            model = Llama(cfg)
    finally:
        torch.set_default_dtype(previous)
    _check_fits(model, cfg, batch, dtype, device)
    _materialize(model, device)
    real = device.type != "meta" and not _in_fake_mode()
    if real:
        torch.manual_seed(seed)
        _init(model)
    model.rope_cos, model.rope_sin = rope_tables(cfg, device)  # RoPE tables stay fp32
    model.setup_cache(batch, cfg.max_seq)
    return model.eval()


def _check_fits(model: nn.Module, cfg, batch: int, dtype: torch.dtype, device: torch.device) -> None:
    """Before any memory is taken: the weights and the KV cache against the device's free memory,
    with the numbers in the error (a 70B on a 24 GB machine fails here, not in the OOM killer)."""
    import os

    from rooflight.errors import UsageError

    if device.type == "cuda" and torch.cuda.is_available():
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu" and hasattr(os, "sysconf"):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
        return  # meta and fake devices hold no data
    item = torch.empty((), dtype=dtype).element_size()
    weights = sum(p.numel() for p in model.parameters()) * item
    kv = 2 * cfg.n_layers * batch * cfg.max_seq * cfg.n_kv_heads * cfg.head_dim * item
    if weights + kv > 0.9 * free:
        raise UsageError(f"{cfg.name} needs about {(weights + kv) / 2**30:.1f} GiB ({weights / 2**30:.1f} GiB of weights, "
                         f"{kv / 2**30:.1f} GiB of KV cache) and {device.type} has {free / 2**30:.1f} GiB free: count it "
                         "with --device meta --count-only (no memory), or choose a smaller config, batch or context")


def _materialize(model: nn.Module, device: torch.device) -> None:
    """Give every parameter and buffer uninitialized storage on `device` (also fake devices,
    where Module.to_empty cannot swap tensors)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=False)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.empty_like(b, device=device)


def _in_fake_mode() -> bool:
    from torch._guards import detect_fake_mode

    return detect_fake_mode() is not None


@torch.no_grad()
def _init(model: Llama) -> None:
    for p in model.parameters():
        if p.ndim == 2:  # embeddings and projections: unit-variance outputs
            nn.init.normal_(p, std=1.0 / math.sqrt(p.shape[1]))
        else:  # norm weights
            nn.init.ones_(p)


@torch.no_grad()
def prefill(model: Llama, tokens: torch.Tensor) -> torch.Tensor:
    """Run the prompt through the model, filling the KV cache; logits of the last token."""
    return model(tokens, start=0)


@torch.no_grad()
def decode_one_token(model: Llama, token: torch.Tensor, pos: int) -> torch.Tensor:
    """One decode step: a [B, 1] token at position `pos` against the cache; next-token logits."""
    return model(token, start=pos)


# ---------------------------------------------------------------------------- workloads
# `rooflight profile kernels/llama.py` builds and profiles these (see rooflight/workloads.py):
# tiny runs on a CPU in seconds; `--param config=llama-2-7b --device meta --count-only` counts a
# 7B with no weights in memory.  Each Run is checked against the same model in float64 (float32
# where a float64 copy would not fit in the device's free memory).

import copy  # noqa: E402  (the declarations below are an appendix to the model above)
import os  # noqa: E402

import rooflight  # noqa: E402
from rooflight.errors import RooflightError  # noqa: E402

# Largest relative error of the last-token logits against the float64 model: bf16 rounding of
# every activation (2^-9) compounds over the layers; measured on the CPU for random weights:
# 1.0-1.5% for 2 layers, 1.5-2% for 32 (prefill and decode alike).
TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-9}


def free_bytes(device: torch.device) -> float:
    """Memory free on `device` now (inf where it cannot be told)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return float("inf")


@torch.no_grad()
def reference_copy(model: Llama, dtype: torch.dtype | None = None) -> Llama:
    """A copy of `model` in float64 (weights, KV cache and RoPE tables), converted one tensor at
    a time; float32 when a float64 copy would not fit in the free memory of its device."""
    tensors = list(model.parameters()) + list(model.buffers())
    if dtype is None:
        elems = sum(t.numel() for t in tensors)
        free = free_bytes(model.output.weight.device)
        dtype = torch.float64 if elems * 8 < 0.8 * free else torch.float32
        if elems * 4 > 0.9 * free:
            raise RooflightError(
                f"no room for the float32 reference copy of this model and its KV cache ({elems * 4 / 2**30:.1f} GiB "
                f"needed, {free / 2**30:.1f} GiB free): profile with --no-check, or a smaller batch or context")
    memo = {}
    for t in tensors:
        wide = t.detach().to(dtype) if t.is_floating_point() else t.detach().clone()
        memo[id(t)] = nn.Parameter(wide, requires_grad=False) if isinstance(t, nn.Parameter) else wide
    return copy.deepcopy(model, memo)


def _tolerance(dtype: torch.dtype) -> float:
    return TOLERANCE.get(dtype, 5e-2)


@rooflight.workload(name="prefill", sweep={"prompt": (128, 512, 2048)})
def prefill_workload(config: str = "tiny", batch: int = 1, prompt: int = 128, seed: int = 0, device="cpu",
                     dtype=torch.bfloat16):
    """Prefill: a prompt of `prompt` tokens through the model, filling the KV cache."""
    model = build(config, batch=batch, max_seq=prompt, device=device, dtype=dtype, seed=seed)
    tokens = torch.randint(0, model.cfg.vocab, (batch, prompt), device=device)
    if torch.device(device).type == "meta":
        return rooflight.Run(prefill, (model, tokens))
    return rooflight.Run(prefill, (model, tokens), reference=lambda: prefill(reference_copy(model), tokens),
                         tolerance=_tolerance(dtype))


@rooflight.workload(name="decode", sweep={"batch": (1, 8, 64)})
def decode_workload(config: str = "tiny", batch: int = 1, context: int = 512, seed: int = 0, device="cpu",
                    dtype=torch.bfloat16):
    """Decode: one token per sequence against a KV cache holding `context` tokens."""
    model = build(config, batch=batch, max_seq=context + 1, device=device, dtype=dtype, seed=seed)
    token = torch.randint(0, model.cfg.vocab, (batch, 1), device=device)
    if torch.device(device).type == "meta":
        return rooflight.Run(decode_one_token, (model, token, context))
    fill_cache(model, seed)
    return rooflight.Run(decode_one_token, (model, token, context),
                         reference=lambda: decode_one_token(reference_copy(model), token, context),
                         tolerance=_tolerance(dtype))


@torch.no_grad()
def fill_cache(model: Llama, seed: int = 0) -> None:
    """Random unit-variance keys and values in every layer's cache, as if a prompt had filled it
    (cheaper than a prefill: what decode reads is the same amount of data)."""
    torch.manual_seed(seed + 1)
    for layer in model.layers:
        cache = layer.attention.cache
        if cache is not None:
            cache.k.normal_()
            cache.v.normal_()
