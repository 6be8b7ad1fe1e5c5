"""A model file of the workload style, used by the CLI tests: one attention block, either fused
(SDPA) or materialized; ATTENTION below is what the "changed model" test rewrites."""

import torch
import torch.nn.functional as F

import rooflight

ATTENTION = "sdpa"


def attention(q, k, v):
    if ATTENTION == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


class Block(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.out = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        with rooflight.region("attention"):
            o = attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, s, d))


@rooflight.workload(sweep={"seq": [64, 128]})
def block(seq: int = 64, batch: int = 2, dim: int = 128, heads: int = 4, device="cpu", dtype=torch.float32):
    """One attention block's forward pass."""
    torch.manual_seed(0)
    model = Block(dim, heads).to(device=device, dtype=dtype)
    x = torch.randn(batch, seq, dim, device=device, dtype=dtype)
    with torch.no_grad():
        ref = model.double()(x.double()) if device != "meta" else None
        model = model.to(dtype)

    def reference():
        return ref

    return rooflight.Run(torch.no_grad()(model), (x,), reference=reference if ref is not None else None)
