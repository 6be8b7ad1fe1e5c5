"""User regions: `with rooflight.region("decode"):` marks part of the work.

Regions nest ("decode/attn").  They are also emitted as NVTX ranges (Nsight Systems / Compute
see them) and as torch.profiler labels `rooflight.region:<name>`, so GPU timings line up with
them.  Outside a capture a region costs one NVTX push/pop.

The stack is process-wide, not thread-local: the autograd engine runs backward ops on its own
threads, and they belong to the region the caller was in.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import UsageError

_STACK: list[str] = []
_NVTX_PUSH, _NVTX_POP = torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop
PROFILER_PREFIX = "rooflight.region:"
# callables (path, enter: bool) notified at region boundaries, e.g. the CPU timer's clock
LISTENERS: list = []


def current_region() -> str:
    """The nested region path, e.g. "decode/attn"; "" outside any region."""
    return "/".join(_STACK)


def current_paths() -> list[str]:
    """The path of every region open now, outermost first: ["decode", "decode/attn"]."""
    return ["/".join(_STACK[:i]) for i in range(1, len(_STACK) + 1)]


def _nvtx_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


@contextlib.contextmanager
def nvtx_as_regions() -> Iterator[None]:
    """While active, a script's torch.cuda.nvtx.range_push/range_pop (and `with nvtx.range(...)`)
    also open and close rooflight regions, and still emit NVTX where CUDA is there."""
    nvtx = torch.cuda.nvtx
    real_push, real_pop = nvtx.range_push, nvtx.range_pop
    opened: list = []

    def push(msg, *args, **kwargs):
        ctx = region(str(msg))
        ctx.__enter__()
        opened.append(ctx)
        return len(opened) - 1

    def pop(*args, **kwargs):
        if opened:
            opened.pop().__exit__(None, None, None)
        return len(opened)

    nvtx.range_push, nvtx.range_pop = push, pop
    try:
        yield
    finally:
        nvtx.range_push, nvtx.range_pop = real_push, real_pop
        while opened:
            opened.pop().__exit__(None, None, None)


@contextlib.contextmanager
def region(name: str) -> Iterator[None]:
    """Mark a region of the workload; usable as a context manager or a decorator."""
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"region name {name!r} must be a non-empty string")
    _STACK.append(name)
    path = current_region()
    nvtx = _nvtx_available()
    if nvtx:
        _NVTX_PUSH(name)
    for listener in LISTENERS:
        listener(path, True)
    try:
        with torch.profiler.record_function(PROFILER_PREFIX + path):
            yield
    finally:
        for listener in LISTENERS:
            listener(path, False)
        if nvtx:
            _NVTX_POP()
        _STACK.pop()
