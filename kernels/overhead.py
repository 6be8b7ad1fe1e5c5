"""Overhead: a small model's decode step, eager against a CUDA graph and torch.compile(mode="reduce-overhead").

One decode step of kernels/llama.py (default: the `small` config, batch 1, 256 tokens in the KV
cache) launches a few hundred small kernels.  Eager PyTorch pays the host's dispatch for each
(5-20 µs), longer than most of these kernels run, so the GPU waits between them: the step is
overhead-bound (rooflight counts the GPU's idle time as overhead-bound time).  Replaying the
same kernels from a CUDA graph removes the host from the loop; compiling with
mode="reduce-overhead" also fuses the elementwise kernels and replays the result from a graph.
The workload `decode_step` takes `mode`:

    eager            the step as PyTorch runs it
    cuda_graph       the same kernels, timed as a CUDA graph replay (rooflight.timing.profile with
                     cuda_graph=True: it counts the step eagerly, captures it once, times the
                     replays and joins each replayed kernel to its op by order, so counts and
                     times describe the same kernels).  The Run asks for that through
                     `Run(..., options={"cuda_graph": True})`; a rooflight whose Run has no
                     `options` refuses this mode (profile mode=eager with --cuda-graph instead).
    reduce_overhead  torch.compile(mode="reduce-overhead"): inductor's kernels in CUDA graphs.
                     Counted as the eager op graph (rooflight runs compiled code eagerly to
                     count it), timed as compiled: the GEMMs and attention join their ops, the
                     fused elementwise kernels have no eager op to join and show only in the
                     whole run's busy time (the report notes how many did not match).

The modes that need a GPU are swept by default only where one exists (cuda_graph only where Run
takes options); on the meta device every mode counts (the same counts as eager).

What to expect on an H100: at `small` the eager step is mostly GPU idle; the graph removes the
idle time but each of the many tiny kernels still takes a couple of µs, so a large share stays
overhead-bound (short kernels) beside the memory-bound GEMVs; reduce_overhead fuses most of those
away.  With `--param config=llama-2-7b` the GEMVs dominate and the graph-replayed step is
memory-bound.  (Predictions; the GPU tests and the gallery measure them.)
"""

from __future__ import annotations

import dataclasses

import torch

import rooflight
from rooflight.errors import NoGPUError, UsageError

MODES = ("eager", "cuda_graph", "reduce_overhead")
GPU_MODES = ("cuda_graph", "reduce_overhead")
RUN_TAKES_OPTIONS = "options" in {f.name for f in dataclasses.fields(rooflight.Run)}


def _import_llama():
    """kernels/llama.py, without making its workloads ours: `load_model_file` takes every
    workload declared while this file is imported, and llama.py declares its own."""
    from rooflight import workloads as _wl

    start = len(_wl._DECLARED)
    try:
        import llama  # its folder is on sys.path while rooflight (or Python, for a script) imports this file
    finally:
        del _wl._DECLARED[start:]
    return llama


llama = _import_llama()


def compiled_step(backend: str = "inductor", mode: str = "reduce-overhead"):
    """decode_one_token under torch.compile; each call starts a new CUDA-graph step, so the
    previous step's outputs may be overwritten (nothing here keeps them)."""
    step = torch.compile(llama.decode_one_token, backend=backend, mode=mode)

    def run(model, token, pos):
        torch.compiler.cudagraph_mark_step_begin()
        return step(model, token, pos)

    run.__name__ = run.__qualname__ = "decode_one_token_reduce_overhead"
    return run


def default_modes() -> tuple[str, ...]:
    """The modes swept by default: those this machine (and this rooflight) can time."""
    if not torch.cuda.is_available():
        return ("eager",)
    return tuple(m for m in MODES if m != "cuda_graph" or RUN_TAKES_OPTIONS)


@rooflight.workload(sweep={"mode": default_modes()})
def decode_step(mode: str = "eager", config: str = "small", batch: int = 1, context: int = 256, seed: int = 0,
                device="cpu", dtype=torch.bfloat16):
    """One decode step of a Llama-architecture model: eager, CUDA graph or reduce-overhead."""
    if mode not in MODES:
        raise UsageError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    dev = torch.device(device)
    if mode in GPU_MODES and dev.type not in ("cuda", "meta"):
        raise NoGPUError(f"mode={mode} needs a CUDA GPU (on {dev.type} it would time the eager step): "
                         "use --param mode=eager here, or --device meta --count-only to count")
    if mode == "cuda_graph" and not RUN_TAKES_OPTIONS:
        raise UsageError("mode=cuda_graph needs rooflight.Run(options=...), which this rooflight lacks: "
                         "profile --param mode=eager with --cuda-graph instead")
    model = llama.build(config, batch=batch, max_seq=context + 1, device=device, dtype=dtype, seed=seed)
    token = torch.randint(0, model.cfg.vocab, (batch, 1), device=device)
    if dev.type != "meta":
        llama.fill_cache(model, seed)
    step = llama.decode_one_token
    if mode == "reduce_overhead":
        step = compiled_step()
        for layer in model.layers:  # the cache is written in place at fixed addresses: let the graphs keep it
            torch._dynamo.mark_static_address(layer.attention.cache.k)
            torch._dynamo.mark_static_address(layer.attention.cache.v)
    extra = {"options": {"cuda_graph": True}} if mode == "cuda_graph" else {}
    if dev.type == "meta":
        return rooflight.Run(step, (model, token, context), **extra)
    return rooflight.Run(step, (model, token, context), tolerance=llama.TOLERANCE.get(dtype, 5e-2),
                         reference=lambda: llama.decode_one_token(llama.reference_copy(model), token, context),
                         **extra)
