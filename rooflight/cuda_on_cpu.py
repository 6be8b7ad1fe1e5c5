"""A script written for CUDA, counted on a machine with no GPU: its CUDA tensors go to the CPU.

`rooflight profile train.py --count-only` on a laptop runs the user's unchanged script, which says
`.to("cuda")`, `device="cuda"`, `torch.autocast("cuda")`, `GradScaler("cuda")`.  Counting needs
no GPU (the capture counts each op as a GPU would run it wherever it runs: costs.functions'
plans), so inside `cuda_on_cpu()` every request for a CUDA device gets the CPU:

- a torch-function mode rewrites a CUDA device wherever a call names one (a `device=` argument,
  `Tensor.to(...)`, `Tensor.cuda()`; a module's `.to("cuda")` / `.cuda()` go through these);
  `pin_memory()` returns its tensor (page-locked host memory is a host-side matter);
- `torch.autocast("cuda", ...)` (and `torch.amp.autocast`, `torch.cuda.amp.autocast`) becomes the
  CPU's autocast with CUDA's dtype (float16 unless given) and CUDA's cast lists: while one is
  open, the CPU's autocast kernels are replaced by ones that do what the AutocastCUDA kernels do
  (each op's membership is read from the dispatcher; its policy — matrix ops in the lower
  precision, softmax / log_softmax / sum / cumsum / prod / norms given an fp32 result, the losses,
  layer / group / RMS norm, exp, log, pow, rsqrt ... cast to fp32, a few ops promoted to their
  widest input — is CUDA's), so `softmax` writes fp32 and `cross_entropy` runs as log_softmax
  into nll_loss as it does on a GPU, where the CPU's own lists differ;
- `GradScaler("cuda")` becomes the CPU's (the same unscale and update ops);
- `torch.Generator(device="cuda")` is the CPU's; `torch.cuda.synchronize()`, `empty_cache()`,
  `set_device()` and the peak-memory resets do nothing (there is no device to wait for or to free);
- CUDA events time the CPU's run (`record()` reads the host's clock, `elapsed_time` the
  milliseconds between two: what a loop timing itself prints is this machine's time, not a GPU's);
  streams are one stream, the CPU's order (`torch.cuda.Stream()`, `with torch.cuda.stream(s)`,
  `wait_stream`, `record_stream`: the work runs in program order, as on one stream);
- the memory statistics (`memory_allocated`, `max_memory_allocated`, `memory_reserved`,
  `max_memory_reserved`) read 0: no CUDA memory was allocated.

Anything else a script asks of CUDA (device properties, free memory, graphs, NVTX) raises as it
would on any machine without one; the caller turns that into one line naming the call.
`Redirected` lists what was stood in for, for the profile's note.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from .capture import SOFTMAXES

CPU = torch.device("cpu")


@dataclass
class Redirected:
    """What a run asked of CUDA and got from the CPU."""

    used: list[str] = field(default_factory=list)  # in first-use order, e.g. "tensors on cuda", "autocast('cuda')"

    def add(self, what: str) -> None:
        if what not in self.used:
            self.used.append(what)

    def note(self) -> str:
        return ("this machine has no GPU: the script's CUDA tensors were put on the CPU and counted as a GPU runs "
                f"them ({'; '.join(self.used)})")


def _is_cuda(d: Any) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    return isinstance(d, str) and (d == "cuda" or d.startswith("cuda:"))


class _DeviceMode(TorchFunctionMode):
    def __init__(self, seen: Redirected, cuda_autocast: Callable[[], bool]):
        super().__init__()
        self.seen = seen
        self.cuda_autocast = cuda_autocast  # inside an autocast('cuda') now

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Python's softmax calls (capture.SOFTMAXES) under autocast('cuda') are given dtype=float32
        # before they reach the capture: CUDA's policy for them, applied where the capture sees it
        # and counts fp16 into fp32 as the GPU's one kernel
        softmax = SOFTMAXES.get(func)
        if (softmax is not None and "dtype" not in kwargs and len(args) <= softmax[1] and args and _eligible(args[0])
                and self.cuda_autocast() and torch.is_autocast_enabled("cpu")):
            kwargs = {**kwargs, "dtype": torch.float32}
        if func is torch.Tensor.cuda:
            self.seen.add("tensors on cuda")
            return args[0].to(CPU, non_blocking=kwargs.get("non_blocking", False),
                              memory_format=kwargs.get("memory_format", torch.preserve_format))
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.record_stream:  # one stream: nothing to keep the memory for
            return None
        if _is_cuda(kwargs.get("device")):
            self.seen.add("tensors on cuda")
            kwargs = {**kwargs, "device": CPU}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            self.seen.add("tensors on cuda")
            args = (args[0], CPU, *args[2:])
        return func(*args, **kwargs)


_ACTIVE: list[Redirected] = []  # the stand-ins running now (the innermost last)


class _Generator(torch.Generator):
    """torch.Generator(device="cuda") as the CPU's (a subclass at module level: isinstance holds,
    and it pickles)."""

    def __new__(cls, device: Any = "cpu"):
        if _is_cuda(device):
            if _ACTIVE:
                _ACTIVE[-1].add("a torch.Generator on cuda as the CPU's")
            device = CPU
        return super().__new__(cls, device)

    def __init__(self, device: Any = "cpu"):
        pass


class _Event:
    """torch.cuda.Event on the CPU: the host's clock when recorded (the CPU runs each op to its
    end before the next starts, so there is nothing to wait for)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False,
                 external: bool = False):
        self.t: float | None = None
        if _ACTIVE:
            _ACTIVE[-1].add("CUDA events timing the CPU's run")

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "_Event") -> float:
        if self.t is None or end.t is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end.t - self.t) * 1e3

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass


class _Stream(torch.Stream):
    """torch.cuda.Stream on the CPU: the one stream the CPU's program order is (a torch.Stream, so
    that Tensor.record_stream takes it)."""

    def __new__(cls, device: Any = None, priority: int = 0, **kwargs: Any):
        if _ACTIVE:
            _ACTIVE[-1].add("CUDA streams as the CPU's one order")
        return super().__new__(cls, device="cpu")

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any):
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _Event:
        event = event if event is not None else _Event()
        event.record()
        return event

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self) -> "_Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


# ---------------------------------------------------------------------------- autocast as on CUDA

# CUDA's autocast policies (aten/src/ATen/autocast_mode.cpp); an op with an AutocastCUDA kernel
# named in none of these is cast to fp32
_LOWER = frozenset("""_convolution conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d conv_transpose3d
    convolution cudnn_convolution cudnn_convolution_transpose prelu addmm addmv addr matmul einsum mm mv
    linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell
    lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention
    scaled_dot_product_attention""".split())
_SET_DTYPE = frozenset("prod softmax log_softmax cumprod cumsum linalg_vector_norm linalg_matrix_norm sum".split())
# fp32_append_dtype: the norm is called through its overload that takes a dtype
_WITH_DTYPE = {"norm.Scalar": torch.ops.aten.norm.ScalarOpt_dtype, "norm.ScalarOpt_dim": torch.ops.aten.norm.ScalarOpt_dim_dtype}
_PROMOTE = frozenset("addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add".split())
_BANNED = frozenset({"binary_cross_entropy"})
_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _eligible(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _cast(x: Any, dtype: torch.dtype, cache: dict) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(y, dtype, cache) for y in x)
    if not _eligible(x) or x.dtype == dtype:
        return x
    if x.is_leaf and x.requires_grad and torch.is_autocast_cache_enabled():
        # CUDA's autocast casts a weight once per autocast region (its cache)
        hit = cache.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        cache[id(x)] = (x, out := x.to(dtype))
        return out
    return x.to(dtype)


def _kernel(op: Any, short: str, cache: dict) -> Callable:
    """An AutocastCPU kernel doing what op's AutocastCUDA kernel does (its policy chosen once)."""
    if short in _BANNED:
        def banned(*args, **kwargs):
            raise RuntimeError(f"torch.nn.functional.{short} is unsafe to autocast (CUDA's autocast refuses it): "
                               "use binary_cross_entropy_with_logits")
        return banned

    def run_in(dtype_of: Callable[[], torch.dtype]) -> Callable:
        # every eligible tensor argument cast to one dtype (lower precision, or fp32)
        def kernel(*args, **kwargs):
            dtype = dtype_of()
            with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
                return op(*_cast(args, dtype, cache), **_cast(kwargs, dtype, cache))
        return kernel

    if short in _LOWER:
        return run_in(lambda: torch.get_autocast_dtype("cpu"))
    names = [a.name for a in op._schema.arguments]
    with_dtype = _WITH_DTYPE.get(f"{short}.{op._overloadname}")
    if short in _SET_DTYPE or with_dtype is not None:
        def fp32_result(*args, **kwargs):
            # the first argument decides; an explicit dtype wins; else the kernel writes fp32
            # (the norm without a dtype argument: its overload with one, as CUDA's autocast calls)
            with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
                bound = {**dict(zip(names, args)), **kwargs}
                if not (args and _eligible(args[0])) or bound.get("dtype") is not None:
                    return op(*args, **kwargs)
                return (with_dtype or op)(**{**bound, "dtype": torch.float32})
        return fp32_result
    if short in _PROMOTE:
        def widest(*args, **kwargs):
            with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
                if any(_eligible(a) and a.dtype == torch.float32 for a in (*args, *kwargs.values())):
                    return op(*_cast(args, torch.float32, cache), **_cast(kwargs, torch.float32, cache))
                return op(*args, **kwargs)
        return widest
    return run_in(lambda: torch.float32)


def _passthrough(op: Any, composite: bool) -> Callable:
    """An AutocastCPU kernel for an op CUDA's autocast leaves alone: a composite decomposes with
    autocast still on (its parts are cast as on CUDA), anything else runs as is."""
    if composite:
        return lambda *args, **kwargs: op.decompose(*args, **kwargs)

    def run(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            return op(*args, **kwargs)
    return run


def _op(name: str) -> Any:
    base, _, overload = name.removeprefix("aten::").partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default"), base


def _cuda_policy_library(cache: dict) -> torch.library.Library:
    """The CPU's autocast kernels replaced by CUDA's policies; dropping the library restores them."""
    lib = torch.library.Library("aten", "IMPL")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": that is the point
        for name in names:
            on_cuda, on_cpu = has(name, "AutocastCUDA"), has(name, "AutocastCPU")
            if not (on_cuda or on_cpu):
                continue
            op, short = _op(name)
            overload = name.removeprefix("aten::")
            if on_cuda:
                lib.impl(overload, _kernel(op, short, cache), "AutocastCPU")
            else:
                lib.impl(overload, _passthrough(op, has(name, "CompositeImplicitAutograd")), "AutocastCPU")
    return lib


class _Patches:
    """Module attributes replaced for the run, restored after."""

    def __init__(self):
        self.saved: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        if hasattr(owner, name):
            self.saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

    def restore(self) -> None:
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()


@contextlib.contextmanager
def cuda_on_cpu() -> Iterator[Redirected]:
    """Run what is inside with every CUDA device request given the CPU (module docstring)."""
    seen = Redirected()
    patches = _Patches()
    real_autocast = torch.amp.autocast_mode.autocast
    real_scaler = torch.amp.grad_scaler.GradScaler
    state = {"open": 0, "lib": None, "cache": {}}

    class autocast(real_autocast):  # noqa: N801 (torch's name)
        def __init__(self, device_type: str = "cuda", dtype: torch.dtype | None = None, enabled: bool = True,
                     cache_enabled: bool | None = None):
            self._cuda = device_type == "cuda"
            if self._cuda:
                seen.add(f"autocast('cuda', {str(dtype or torch.float16).removeprefix('torch.')}) with CUDA's cast "
                         "lists")
                device_type, dtype = "cpu", dtype or torch.float16
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

        def __enter__(self):
            if self._cuda:
                if state["lib"] is None:
                    state["lib"] = _cuda_policy_library(state["cache"])
                state["open"] += 1
            return super().__enter__()

        def __exit__(self, *exc):
            out = super().__exit__(*exc)
            if self._cuda:
                state["open"] -= 1
                if not state["open"]:
                    state["cache"].clear()
            return out

    class cuda_autocast(autocast):  # noqa: N801 (torch.cuda.amp.autocast)
        def __init__(self, enabled: bool = True, dtype: torch.dtype = torch.float16, cache_enabled: bool = True):
            super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    class GradScaler(real_scaler):
        def __init__(self, device: str = "cuda", *args: Any, **kwargs: Any):
            if _is_cuda(device):
                seen.add("GradScaler('cuda') as the CPU's")
                device = "cpu"
            super().__init__(device, *args, **kwargs)

    class CudaGradScaler(GradScaler):  # torch.cuda.amp.GradScaler
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__("cuda", *args, **kwargs)

    def nothing(what: str) -> Callable:
        def call(*args: Any, **kwargs: Any) -> None:
            seen.add(f"torch.cuda.{what}() did nothing")
        return call

    real_default = torch.set_default_device

    def set_default_device(device: Any) -> None:
        if _is_cuda(device):
            seen.add("tensors on cuda")
            device = CPU
        real_default(device)

    for owner in (torch, torch.amp, torch.amp.autocast_mode):
        patches.set(owner, "autocast", autocast)
    patches.set(torch.cuda.amp, "autocast", cuda_autocast)
    for owner in (torch.amp, torch.amp.grad_scaler):
        patches.set(owner, "GradScaler", GradScaler)
    patches.set(torch.cuda.amp, "GradScaler", CudaGradScaler)
    for name in ("synchronize", "empty_cache", "set_device", "reset_peak_memory_stats", "reset_max_memory_allocated"):
        patches.set(torch.cuda, name, nothing(name))

    def zero(what: str) -> Callable:
        def call(*args: Any, **kwargs: Any) -> int:
            seen.add(f"torch.cuda.{what}() read 0")
            return 0
        return call

    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
        patches.set(torch.cuda, name, zero(name))

    def one_stream(*args: Any, **kwargs: Any) -> _Stream:
        return _Stream()

    def stream(s: Any = None) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(s)

    patches.set(torch.cuda, "Event", _Event)
    patches.set(torch.cuda, "Stream", _Stream)
    patches.set(torch.cuda, "stream", stream)
    patches.set(torch.cuda, "current_stream", one_stream)
    patches.set(torch.cuda, "default_stream", one_stream)
    patches.set(torch, "set_default_device", set_default_device)
    patches.set(torch, "Generator", _Generator)
    _ACTIVE.append(seen)
    try:
        with _DeviceMode(seen, lambda: state["open"] > 0):
            yield seen
    finally:
        _ACTIVE.remove(seen)
        patches.restore()
        state["lib"] = None  # its registrations go with it
