"""A user's script, as written: a GPT-2-style block (LayerNorm, causal attention, GELU MLP) and a
top-2 mixture-of-experts layer over 8 experts (an eager loop over the experts, as many codebases
write it), built on the CPU, run three times on the GPU.
`rooflight profile benchmarks/scripts/gpt2_moe.py` (add `-- --small` on a CPU)."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--small", action="store_true")
args = ap.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
dim, heads, ffn, experts, batch, seq = (128, 4, 256, 8, 2, 64) if args.small else (1024, 16, 4096, 8, 4, 1024)


class Block(nn.Module):  # GPT-2's
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(dim, dim=-1)
        q, k, v = (t.view(b, s, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, dim)
        x = x + self.c_proj(a)
        return x + self.mlp(self.ln_2(x))


class MoE(nn.Module):  # top-2 of 8 SwiGLU experts
    def __init__(self):
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.w1 = nn.ModuleList(nn.Linear(dim, ffn, bias=False) for _ in range(experts))
        self.w3 = nn.ModuleList(nn.Linear(dim, ffn, bias=False) for _ in range(experts))
        self.w2 = nn.ModuleList(nn.Linear(ffn, dim, bias=False) for _ in range(experts))

    def forward(self, x):
        flat = x.reshape(-1, dim)
        weights, chosen = torch.topk(F.softmax(self.router(flat), dim=-1, dtype=torch.float32), 2, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        for e in range(experts):
            rows, slot = torch.where(chosen == e)
            h = flat[rows]
            y = self.w2[e](F.silu(self.w1[e](h)) * self.w3[e](h))
            out.index_add_(0, rows, y * weights[rows, slot, None])
        return x + out.view_as(x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.moe = Block(), MoE()

    def forward(self, x):
        return self.moe(self.block(x))


torch.manual_seed(0)
model = Model().to(device, dtype).eval()
x = torch.randn(batch, seq, dim, device=device, dtype=dtype)
with torch.no_grad():
    for _ in range(3):
        y = model(x)
print("out", tuple(y.shape))
