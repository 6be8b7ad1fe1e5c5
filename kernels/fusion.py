"""Fusion: RMSNorm, SwiGLU and the residual add + RMSNorm chain, eager against torch.compile.

Eager PyTorch runs each of these chains as several kernels, each reading its inputs from device
memory and writing its output back; `torch.compile` (inductor) emits one kernel that reads the
chain's inputs once and writes its outputs once.  The chains are memory-bound either way, so
the bytes saved are the time saved.  Three workloads, each swept over `variant`:

    rmsnorm        y = x * rsqrt(mean(x², -1) + eps) * w      (Llama's RMSNorm, computed in fp32)
    swiglu         y = silu(gate) * up                         (the MLP's gated activation)
    add_rmsnorm    h = x + residual; y = rmsnorm(h)            (returns y and h, as a block does)

## How the compiled variant is counted

rooflight counts the ops a run dispatches, and it runs compiled code eagerly to do so
(`set_stance("force_eager")`): a plain `torch.compile(fn)` would be counted as eager's op graph,
the eager bytes, and its time could not be joined to those ops (the kernels differ).  So the
compiled variant is a custom op (`torch.library.custom_op`, namespace `rooflight_kernels`):

- its implementation calls the compiled function under `set_stance("default")`, so the fused
  kernel runs, whether or not a capture is active; the profiler sees that kernel inside the
  op's label, and times it as the op's time (the call also runs below ADInplaceOrView, so that
  dynamo sees the same dispatch state inside a capture as outside and compiles only once);
- its cost formula (`rooflight.register_cost`) counts the fused kernel's minimum traffic (every
  input read once, every output written once) and the chain's FLOPs.  That is a claim about the
  compiled kernel, not a measurement: inductor meets it for these chains (one reduction and
  pointwise ops fused into one kernel per row block), and Nsight Compute's dram__bytes can
  confirm it; the GPU test checks that one kernel runs per op.
- a fake implementation gives the output shapes, so the op counts on meta tensors too.

The alternative, letting the capture see the compiled graph's aten ops, would count the same
FLOPs and the eager bytes again: no bytes saved would show.  The `backend` parameter picks the
torch.compile backend ("inductor" by default; the CPU tests use "aot_eager", which checks the
wiring in a second but fuses nothing).

Eager traffic in closed form, for T rows of D elements in bf16 (2 bytes; fp32 intermediates 4):
RMSNorm reads and writes 36·T·D + 24·T + 2·D bytes in 8 kernels against 4·T·D + 2·D fused
(9x less); SwiGLU (I elements per row) 10·T·I in 2 kernels against 6·T·I (1.7x); add + RMSNorm
42·T·D + 24·T + 2·D in 9 kernels against 8·T·D + 2·D (5x).  The tests pin these numbers.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import rooflight
from rooflight.costs import OpCost, register_cost
from rooflight.errors import UsageError
from rooflight.math_class import MathClass

NAMESPACE = "rooflight_kernels"
VARIANTS = ("eager", "compiled")
EPS = 1e-5

# against the float64 chain on the same inputs: bf16 output rounding (~1e-3 rms) and fp32 math
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-5}


# ---------------------------------------------------------------------------- the chains (eager)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    # as kernels/llama.py: upcast, square, mean, add eps, rsqrt, scale, downcast, weight: 8 kernels
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    # silu, multiply: 2 kernels
    return F.silu(gate) * up


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    # the residual add, then RMSNorm of the sum: 9 kernels; the sum is the next residual
    h = x + residual
    return rmsnorm(h, weight, eps), h


@functools.lru_cache(maxsize=None)
def compiled(fn, backend: str = "inductor"):
    """torch.compile(fn) for static shapes, one per (function, backend)."""
    return torch.compile(fn, backend=backend, dynamic=False)


def _run_compiled(fn, backend: str, *args):
    # set_stance: run the compiled code even inside a rooflight capture (which forces eager);
    # below ADInplaceOrView, as kernels run: the dispatch state is then the same whether the op
    # was called plainly or through a capture's dispatch mode, so dynamo's guards match and the
    # function compiles once (not again, with autotuning, inside the profiler's labelled pass)
    with torch.compiler.set_stance("default"), torch._C._AutoDispatchBelowADInplaceOrView():
        return compiled(fn, backend)(*args)


# ---------------------------------------------------------------------------- fused ops and their costs


def _define_ops() -> None:
    """Define the custom ops once per process (a model file may be imported more than once)."""
    if hasattr(getattr(torch.ops, NAMESPACE), "rmsnorm"):
        return

    @torch.library.custom_op(f"{NAMESPACE}::rmsnorm", mutates_args=())
    def rmsnorm_op(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
        return _run_compiled(rmsnorm, backend, x, weight, eps)

    @rmsnorm_op.register_fake
    def _(x, weight, eps, backend):
        return torch.empty_like(x)

    @torch.library.custom_op(f"{NAMESPACE}::swiglu", mutates_args=())
    def swiglu_op(gate: torch.Tensor, up: torch.Tensor, backend: str) -> torch.Tensor:
        return _run_compiled(swiglu, backend, gate, up)

    @swiglu_op.register_fake
    def _(gate, up, backend):
        return torch.empty_like(gate)

    @torch.library.custom_op(f"{NAMESPACE}::add_rmsnorm", mutates_args=())
    def add_rmsnorm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _run_compiled(add_rmsnorm, backend, x, residual, weight, eps)

    @add_rmsnorm_op.register_fake
    def _(x, residual, weight, eps, backend):
        return torch.empty_like(x), torch.empty_like(x)


_define_ops()


def _reads_and_writes(call) -> tuple[float, float]:
    return sum(t.bytes for t in call.tensor_inputs()), sum(t.bytes for t in call.outputs)


# FLOPs per element of the fused chains, in the units of rooflight's eager formulas
# (costs/pointwise.py): RMSNorm square + accumulate + rstd scale + weight scale = 4; silu 4 and
# the product 1 = 5; the residual add 1 + RMSNorm 4 = 5.  Half-precision math runs in fp32.
FUSED_FLOPS_PER_ELEMENT = {"rmsnorm": 4, "swiglu": 5, "add_rmsnorm": 5}


def _fused_cost(name: str):
    def cost(call) -> OpCost:
        # one kernel: every input read once, every output written once
        x = call.tensor_inputs()[0]
        cls = MathClass.FP64 if x.dtype == "float64" else MathClass.FP32
        reads, writes = _reads_and_writes(call)
        return OpCost({cls: FUSED_FLOPS_PER_ELEMENT[name] * x.numel}, reads, writes,
                      note=f"fused {name} (torch.compile): inputs read once, outputs written once")

    cost.__name__ = f"fused_{name}"
    return cost


for _name in FUSED_FLOPS_PER_ELEMENT:
    register_cost(f"{NAMESPACE}::{_name}", override=True)(_fused_cost(_name))


def fused(name: str, backend: str = "inductor"):
    """The compiled chain as one op, called as the eager chain is: fused("rmsnorm")(x, w, eps)."""
    op = getattr(getattr(torch.ops, NAMESPACE), name)

    def run(*args):
        return op(*args, backend)

    run.__name__ = run.__qualname__ = f"compiled_{name}"
    return run


# ---------------------------------------------------------------------------- workloads


def _check(variant: str, dtype: torch.dtype) -> None:
    if variant not in VARIANTS:
        raise UsageError(f"variant {variant!r}: use eager or compiled")
    if dtype not in TOLERANCE:
        raise UsageError(f"dtype {dtype}: use bf16, fp16 or fp32")


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@rooflight.workload(sweep={"variant": VARIANTS})
def rmsnorm_chain(variant: str = "eager", tokens: int = 4096, dim: int = 4096, backend: str = "inductor",
                  seed: int = 0, device="cpu", dtype=torch.bfloat16):
    """RMSNorm over [tokens, dim]: eager (8 kernels) or compiled (one fused kernel)."""
    _check(variant, dtype)
    torch.manual_seed(seed)
    x = torch.randn(tokens, dim, device=device, dtype=dtype)
    w = (1 + 0.1 * torch.randn(dim, device=device)).to(dtype)
    fn = rmsnorm if variant == "eager" else fused("rmsnorm", backend)
    meta = torch.device(device).type == "meta"
    return rooflight.Run(fn, (x, w, EPS), reference=None if meta else (lambda: rmsnorm(x.double(), w.double())),
                         tolerance=TOLERANCE[dtype])


@rooflight.workload(sweep={"variant": VARIANTS})
def swiglu_chain(variant: str = "eager", tokens: int = 4096, intermediate: int = 11008, backend: str = "inductor",
                 seed: int = 0, device="cpu", dtype=torch.bfloat16):
    """SwiGLU silu(gate) * up over [tokens, intermediate]: eager (2 kernels) or compiled (one)."""
    _check(variant, dtype)
    torch.manual_seed(seed)
    gate = torch.randn(tokens, intermediate, device=device, dtype=dtype)
    up = torch.randn(tokens, intermediate, device=device, dtype=dtype)
    fn = swiglu if variant == "eager" else fused("swiglu", backend)
    meta = torch.device(device).type == "meta"
    return rooflight.Run(fn, (gate, up), reference=None if meta else (lambda: swiglu(gate.double(), up.double())),
                         tolerance=TOLERANCE[dtype])


@rooflight.workload(sweep={"variant": VARIANTS})
def add_rmsnorm_chain(variant: str = "eager", tokens: int = 4096, dim: int = 4096, backend: str = "inductor",
                      seed: int = 0, device="cpu", dtype=torch.bfloat16):
    """Residual add + RMSNorm over [tokens, dim]: eager (9 kernels) or compiled (one)."""
    _check(variant, dtype)
    torch.manual_seed(seed)
    x = torch.randn(tokens, dim, device=device, dtype=dtype)
    residual = torch.randn(tokens, dim, device=device, dtype=dtype)
    w = (1 + 0.1 * torch.randn(dim, device=device)).to(dtype)
    fn = add_rmsnorm if variant == "eager" else fused("add_rmsnorm", backend)
    meta = torch.device(device).type == "meta"

    def reference():
        # the normalized output (the check compares the first output); h is x + residual exactly
        return _first(add_rmsnorm(x.double(), residual.double(), w.double()))

    return rooflight.Run(fn, (x, residual, w, EPS), reference=None if meta else reference,
                         tolerance=TOLERANCE[dtype])
