"""Collectives: the bytes each rank sends over the GPU-to-GPU link, no FLOPs.

Per rank, for a tensor of S bytes over n ranks with NCCL's ring algorithms:
    all_reduce       2 (n-1)/n · S     (reduce-scatter then all-gather)
    all_gather       (n-1)/n · S_out   (S_out = n · S_in)
    reduce_scatter   (n-1)/n · S_in
    all_to_all       (n-1)/n · S
    broadcast        (n-1)/n · S       (pipelined ring)
    send / recv      S
Device memory: the input is read and the output written once each (the reduction's adds hide
under the transfer and are not counted).
"""

from __future__ import annotations

from .model import OpCall, OpCost, TensorMeta, _collect
from .registry import OpName, register_cost

_fn = OpName("_c10d_functional")
c10d = OpName("c10d")


def _ring(n: int | None) -> float:
    n = n or 1
    return (n - 1) / n if n > 1 else 0.0


def _first_tensor(x) -> TensorMeta:
    if isinstance(x, TensorMeta):
        return x
    for t in x:
        if isinstance(t, TensorMeta):
            return t
        if isinstance(t, (list, tuple)):
            return _first_tensor(t)
    raise ValueError("no tensor")


def _collective(call: OpCall, sent: float, read: float, written: float, what: str) -> OpCost:
    n = call.group_size or 1
    return OpCost({}, read, written, comm_bytes=sent, link="peer", note=f"{what} over {n} ranks")


# c10d's eager collectives take the buffers they fill as arguments, first:
# allgather_(output_tensors, input_tensors, ...), _reduce_scatter_base_(output_tensor, input_tensor,
# ...), alltoall_base_(output, input, ...).  Those are written, not read (bytes model, rule 3).
_OUTPUT_ARGS = ("output_tensors", "output_tensor", "outputs", "output")


def _sizes(call: OpCall) -> tuple[float, float]:
    """(bytes read, bytes written) on this rank: the input buffers, the output buffers."""
    read = written = 0.0
    for name, a in call.named_args():
        ts: list[TensorMeta] = []
        _collect(a, ts)
        if name in _OUTPUT_ARGS or name in call.out_args:
            written += sum(t.bytes for t in ts)
        else:
            read += sum(t.bytes for t in ts)
    if not written:
        written = sum(o.bytes for o in call.outputs if isinstance(o, TensorMeta)) or read
    return read, written


@register_cost(_fn.all_reduce, _fn.all_reduce_, _fn.all_reduce_coalesced, _fn.all_reduce_coalesced_,
               c10d.allreduce_, c10d.allreduce_coalesced_)
def all_reduce(call: OpCall) -> OpCost:
    read, _ = _sizes(call)
    return _collective(call, 2 * _ring(call.group_size) * read, read, read, "all-reduce")


@register_cost(_fn.all_gather_into_tensor, _fn.all_gather_into_tensor_coalesced,
               _fn.all_gather_into_tensor_out, c10d.allgather_, c10d._allgather_base_,
               c10d.allgather_into_tensor_coalesced_)
def all_gather(call: OpCall) -> OpCost:
    read, _ = _sizes(call)
    n = call.group_size or 1
    out_bytes = read * n
    return _collective(call, _ring(n) * out_bytes, read, out_bytes, "all-gather")


@register_cost(_fn.reduce_scatter_tensor, _fn.reduce_scatter_tensor_coalesced, c10d.reduce_scatter_,
               c10d._reduce_scatter_base_, c10d.reduce_scatter_tensor_coalesced_)
def reduce_scatter(call: OpCall) -> OpCost:
    read, _ = _sizes(call)
    n = call.group_size or 1
    return _collective(call, _ring(n) * read, read, read / n, "reduce-scatter")


@register_cost(_fn.all_to_all_single, c10d.alltoall_base_, c10d.alltoall_)
def all_to_all(call: OpCall) -> OpCost:
    read, _ = _sizes(call)
    return _collective(call, _ring(call.group_size) * read, read, read, "all-to-all")


@register_cost(_fn.broadcast, _fn.broadcast_, c10d.broadcast_)
def broadcast(call: OpCall) -> OpCost:
    read, _ = _sizes(call)
    return _collective(call, _ring(call.group_size) * read, read, read, "broadcast")


@register_cost(c10d.send, c10d.recv_, c10d.recv_any_source_)
def send_recv(call: OpCall) -> OpCost:
    t = _first_tensor(call.args[0])
    recv = "recv" in call.op
    return _collective(call, t.bytes, 0.0 if recv else t.bytes, t.bytes if recv else 0.0,
                       "receive" if recv else "send")


@register_cost(_fn.wait_tensor, _fn._wrap_tensor_autograd, c10d.barrier, c10d.monitored_barrier_)
def wait(call: OpCall) -> OpCost:
    # waiting moves nothing; the time it takes shows up as GPU idle time.  _wrap_tensor_autograd
    # only wraps a functional collective's result as an AsyncCollectiveTensor (no kernel)
    return OpCost()
