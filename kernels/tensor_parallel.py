"""Tensor parallelism (Megatron-style): a Llama MLP and attention block split over the ranks of a
torch.distributed group, with the all-reduces that join them (seed 002: tensor parallelism).

Column-parallel first projections (w1/w3 of the MLP, wq/wk/wv of attention: each rank holds
1/n of the output features, so of the heads), row-parallel second ones (w2, wo: 1/n of the input
features), and one all-reduce after each row-parallel projection sums the ranks' partial outputs:
per block and step, two all-reduces of tokens x dim activations, each moving 2(n-1)/n of its bytes
per rank (rooflight.costs.comm).  Run under torchrun (or any launch that sets RANK/WORLD_SIZE):
each rank builds its shard with the same seed; with no process group it runs unsplit (n = 1, no
collective).

    torchrun --nproc-per-node 2 -m rooflight profile kernels/tensor_parallel.py   # one profile per rank
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import rooflight
from rooflight.errors import UsageError


def group_ranks() -> tuple[int, int]:
    """(rank, world size) of the default process group, initialised from the environment when a
    launcher set RANK/WORLD_SIZE (gloo on the CPU, nccl on CUDA); (0, 1) without one."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("ROOFLIGHT_TP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _shard(full: int, n: int, what: str) -> int:
    if full % n:
        raise UsageError(f"{what} = {full} does not split over {n} ranks: choose a multiple of {n}")
    return full // n


class TPBlock(torch.nn.Module):
    """One transformer block's attention and SwiGLU MLP, this rank's shard of each."""

    def __init__(self, dim: int, heads: int, hidden: int, n: int):
        super().__init__()
        self.n, self.heads_here, self.head_dim = n, _shard(heads, n, "heads"), dim // heads
        here = self.heads_here * self.head_dim
        self.wqkv = torch.nn.Linear(dim, 3 * here, bias=False)  # column-parallel
        self.wo = torch.nn.Linear(here, dim, bias=False)  # row-parallel
        h = _shard(hidden, n, "hidden")
        self.w13 = torch.nn.Linear(dim, 2 * h, bias=False)  # column-parallel
        self.w2 = torch.nn.Linear(h, dim, bias=False)  # row-parallel

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.n > 1:
            dist.all_reduce(x)  # the ranks' partial sums of the row-parallel projection
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.wqkv(x).view(b, s, 3, self.heads_here, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, -1)
        x = x + self._reduce(self.wo(o))
        g, u = self.w13(x).chunk(2, dim=-1)
        return x + self._reduce(self.w2(F.silu(g) * u))


@rooflight.workload(sweep={"tokens": [16, 1024]})
def block(tokens: int = 16, dim: int = 512, heads: int = 8, hidden: int = 1536, batch: int = 1, seed: int = 0,
          device="cpu", dtype=torch.float32):
    """A tensor-parallel block over the launch's ranks (n = 1 without one): `tokens` per sequence."""
    rank, n = group_ranks()
    torch.manual_seed(seed)  # every rank the same activations; its own shard of the weights
    x = torch.randn(batch, tokens, dim, device=device, dtype=dtype)
    torch.manual_seed(seed + 1 + rank)
    model = TPBlock(dim, heads, hidden, n).to(device, dtype)
    return rooflight.Run(torch.no_grad()(model), (x,))


__all__ = ["TPBlock", "block", "group_ranks"]
