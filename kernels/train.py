"""Training and mixture-of-experts workloads: what real models run besides inference.

- `train_step`: one training step of kernels/llama.py's Llama (forward over every position, the
  next-token cross-entropy, backward, AdamW): tiny by default; `--param config=llama-2-7b --device
  meta --count-only` counts a 7B step with no weights in memory.  The optimizer is a parameter:
  `adamw` (one tensor at a time), `adamw-foreach` (the GPU default), `adamw-fused` (one kernel; not
  on meta tensors, which have no kernel for it).
- `moe`: a top-2 mixture-of-experts FFN over 8 SwiGLU experts, two ways: `eager` (a loop over the
  experts, torch.where picking each one's tokens: data-dependent shapes, so count it on real
  tensors) and `grouped` (tokens sorted by expert, each projection one `torch._grouped_mm`, as
  Hugging Face's default Mixtral experts run).

    rooflight profile kernels/train.py --no-sweep
    rooflight profile kernels/train.py -w train_step --param config=llama-2-7b --param optimizer=adamw-foreach \
        --device meta --count-only --no-sweep
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import rooflight
from llama import build
from rooflight.errors import UsageError

OPTIMIZERS = ("adamw", "adamw-foreach", "adamw-fused")


def _optimizer(params, name: str, device: str) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UsageError(f"optimizer '{name}': choose from {', '.join(OPTIMIZERS)}")
    if name == "adamw-fused" and device == "meta":
        raise UsageError("adamw-fused has no kernel for meta tensors: count on meta with --param "
                         "optimizer=adamw-foreach (the same elementwise work, op by op), or on real tensors")
    kw = {"adamw": dict(foreach=False), "adamw-foreach": dict(foreach=True), "adamw-fused": dict(fused=True)}[name]
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **kw)


@rooflight.workload(name="train_step", sweep={"optimizer": OPTIMIZERS})
def train_step(config: str = "tiny", batch: int = 2, seq: int = 128, optimizer: str = "adamw-fused", seed: int = 0,
               device="cpu", dtype=torch.bfloat16):
    """Forward over every position, next-token cross-entropy, backward, one AdamW step."""
    model = build(config, batch=batch, max_seq=seq, device=device, dtype=dtype, seed=seed)
    for layer in model.layers:  # training runs without a KV cache
        layer.attention.cache = None
    params = [p.requires_grad_(True) for p in model.parameters()]
    opt = _optimizer(params, optimizer, str(device))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randint(0, model.cfg.vocab, (batch, seq + 1), generator=gen).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    cos, sin = model.rope_cos.narrow(0, 0, seq), model.rope_sin.narrow(0, 0, seq)

    def forward_loss() -> torch.Tensor:
        x = model.tok_embeddings(inputs)
        for layer in model.layers:
            x = layer(x, 0, cos, sin)
        logits = model.output(model.norm(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        forward_loss().backward()
        opt.step()

    if str(device) != "meta":
        step()  # the optimizer's states exist from here on: each profiled step is a steady one
    return step


@rooflight.workload(name="moe", sweep={"variant": ("eager", "grouped")})
def moe(tokens: int = 512, dim: int = 256, ffn: int = 512, experts: int = 8, top_k: int = 2,
        variant: str = "grouped", seed: int = 0, device="cpu", dtype=torch.bfloat16):
    """A top-k MoE FFN: router, softmax, top-k, the experts' SwiGLU, the weighted sum."""
    if variant not in ("eager", "grouped"):
        raise UsageError(f"variant '{variant}': choose eager or grouped")
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x = rand(tokens, dim)
    router = rand(dim, experts, scale=dim ** -0.5)
    w1, w3 = rand(experts, dim, ffn, scale=dim ** -0.5), rand(experts, dim, ffn, scale=dim ** -0.5)
    w2 = rand(experts, ffn, dim, scale=ffn ** -0.5)

    def route():
        weights, chosen = torch.topk(F.softmax(x @ router, dim=-1, dtype=torch.float32), top_k, dim=-1)
        return (weights / weights.sum(-1, keepdim=True)).to(dtype), chosen

    def eager() -> torch.Tensor:
        weights, chosen = route()
        out = torch.zeros_like(x)
        for e in range(experts):
            rows, slot = torch.where(chosen == e)
            h = x[rows]
            y = (F.silu(h @ w1[e]) * (h @ w3[e])) @ w2[e]
            out.index_add_(0, rows, y * weights[rows, slot, None])
        return out

    def grouped() -> torch.Tensor:
        weights, chosen = route()
        flat = chosen.flatten()  # [tokens * top_k]
        order = torch.argsort(flat, stable=True)
        rows = order // top_k  # the token of each routed copy
        offs = torch.cumsum(torch.bincount(flat, minlength=experts), 0).to(torch.int32)
        h = x[rows]
        y = torch._grouped_mm(F.silu(torch._grouped_mm(h, w1, offs)) * torch._grouped_mm(h, w3, offs), w2, offs)
        out = torch.zeros_like(x)
        out.index_add_(0, rows, y * weights.flatten()[order, None])
        return out

    fn = eager if variant == "eager" else grouped
    return fn
