"""Ops that move data: copies and casts, concatenation, padding, factories, indexing.

No FLOPs (a dtype conversion is not arithmetic worth a roof); the bytes model's rule 4 applies
to the indexing ops: they touch the rows or elements they address, not the whole source.
Copies between the host and a GPU are communication: their bytes cross PCIe (`link="pcie"`);
only the GPU side's reads or writes count as device-memory traffic.
"""

from __future__ import annotations

import math

import torch

from ..math_class import MathClass
from .model import OpCall, OpCost, TensorMeta
from .pointwise import elementwise_cost, vector_class
from .registry import aten, register_cost, register_generic



def _is_gpu(device: str) -> bool:
    return device.startswith(("cuda", "hip", "xpu", "mps"))


def transfer_cost(src: TensorMeta, dst: TensorMeta) -> OpCost | None:
    """Host<->device copy: PCIe bytes, plus the device side's memory traffic.  None if same side."""
    if "meta" in (src.device, dst.device) or _is_gpu(src.device) == _is_gpu(dst.device):
        return None
    nbytes = dst.bytes if _is_gpu(dst.device) else src.bytes
    direction = "host to device" if _is_gpu(dst.device) else "device to host"
    if _is_gpu(dst.device):
        return OpCost({}, 0.0, dst.bytes, comm_bytes=nbytes, link="pcie", note=direction)
    return OpCost({}, src.bytes, 0.0, comm_bytes=nbytes, link="pcie", note=direction)


def _copy(call: OpCall, src: TensorMeta, dst: TensorMeta) -> OpCost:
    moved = transfer_cost(src, dst)
    if moved is not None:
        return moved
    note = f"cast {src.dtype} -> {dst.dtype}" if src.dtype != dst.dtype else ""
    return OpCost({}, src.bytes, dst.bytes, note=note)


@register_cost(aten._to_copy, aten.to, aten.clone, aten.contiguous, aten._copy_from_and_resize,
               aten._copy_from)
def to_copy(call: OpCall) -> OpCost:
    return _copy(call, call.arg(0), call.out)


@register_cost(aten.copy_, aten.copy)
def copy_(call: OpCall) -> OpCost:
    # copy_(self=dst, src): the destination is written, not read
    dst, src = call.arg(0), call.arg(1)
    out = call.out if call.outputs else dst
    return _copy(call, src, out)


@register_cost(aten._pin_memory)
def pin_memory(call: OpCall) -> OpCost:
    # tensor.pin_memory() (a DataLoader with pin_memory=True): a host copy into page-locked memory,
    # read once and written once in host memory; nothing crosses to the GPU until a later .to()
    x = call.arg(0)
    out = call.out if call.outputs else x
    return OpCost({}, x.bytes, out.bytes, note="host copy into page-locked memory")


@register_cost(aten._local_scalar_dense)
def item(call: OpCall) -> OpCost:
    # tensor.item(): one element crosses to the host, and the host waits for the GPU
    x = call.arg(0)
    if _is_gpu(x.device):
        return OpCost({}, x.itemsize, 0.0, comm_bytes=x.itemsize, link="pcie",
                      note="device to host (.item() synchronizes)")
    return OpCost({}, x.itemsize, 0.0)


@register_cost(aten.cat, aten.stack, aten.constant_pad_nd, aten.repeat, aten.flip, aten.roll,
               aten.tril, aten.triu, aten.slice_scatter, aten.select_scatter, aten.diagonal_scatter,
               aten.as_strided_scatter, aten._unsafe_view, aten.view_as_real, aten.view_as_complex,
               aten.pixel_shuffle, aten.col2im, aten.im2col, aten.reflection_pad1d,
               aten.reflection_pad2d, aten.replication_pad1d, aten.replication_pad2d,
               aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d, aten.upsample_linear1d,
               aten.upsample_bilinear2d, aten.upsample_bicubic2d, aten.upsample_trilinear3d, aten.tril_, aten.triu_)
def read_all_write_all(call: OpCall) -> OpCost:
    # read each input once, write the output once; no arithmetic worth counting
    outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
    written = sum(o.bytes for o in outs)
    # a view result (e.g. _unsafe_view, view_as_real) moves nothing
    if call.op.split("::")[-1].split(".")[0] in ("_unsafe_view", "view_as_real", "view_as_complex"):
        return OpCost()
    return OpCost({}, sum(t.bytes for t in call.tensor_inputs()), written)


@register_cost(aten.zeros, aten.ones, aten.full, aten.zeros_like, aten.ones_like, aten.full_like,
               aten.fill, aten.fill_, aten.zero_, aten.new_zeros, aten.new_ones, aten.new_full,
               aten.arange, aten.linspace, aten.scalar_tensor, aten.eye, aten.masked_fill_)
def fill(call: OpCall) -> OpCost:
    # writes every output element; reads nothing but a mask (masked_fill_)
    outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
    reads = 0.0
    if call.op.startswith("aten::masked_fill_"):
        reads = call.arg(1).bytes
    return OpCost({}, reads, sum(o.bytes for o in outs))


@register_cost(aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided,
               aten.empty_permuted, aten.resize_, aten.set_, aten.record_stream, aten.detach_,
               aten._assert_async, aten._assert_tensor_metadata, aten._functional_assert_async,
               aten.lift_fresh, aten.lift_fresh_copy, aten._resize_output_, aten.as_strided_, aten.transpose_,
               aten.t_, aten.squeeze_, aten.unsqueeze_, aten.swapdims_, aten.swapaxes_)
def allocation(call: OpCall) -> OpCost:
    # allocating or re-describing memory (an in-place view: Swin's as_strided_) moves no bytes
    return OpCost()


def _returns_alias_only(op) -> bool:
    schema = op._schema
    writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    aliased = [r.alias_info is not None for r in schema.returns]
    return bool(aliased) and all(aliased) and not writes


def _returns_no_tensor(op) -> bool:
    # sizes, strides, flags; not an op that computes over its input to return a Python value
    # (aten.equal is tagged pointwise and returns a bool: it reads both tensors)
    if torch.Tag.pointwise in op.tags or torch.Tag.reduction in op.tags:
        return False
    schema = op._schema
    writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    return not writes and not any("Tensor" in str(r.type) for r in schema.returns)


@register_generic("view", _returns_alias_only)
def view(call: OpCall) -> OpCost:
    # views (view, t, transpose, expand, slice, select, permute, unsqueeze, split, ...) only
    # describe existing memory differently
    return OpCost()


@register_generic("metadata", _returns_no_tensor)
def metadata(call: OpCall) -> OpCost:
    # sizes, strides, devices, is_contiguous ...: no device work
    return OpCost()


# ---------------------------------------------------------------- indexing

@register_cost(aten.embedding)
def embedding(call: OpCall) -> OpCost:
    # weight: [V, D], indices: [*] -> out: [*, D].  Reads the rows touched: min(n, V) rows of D
    # (repeated ids hit the cache), plus the ids; writes the output.
    weight, indices = call.arg(0), call.arg(1)
    rows = min(indices.numel, weight.shape[0])
    row_bytes = math.prod(weight.shape[1:]) * weight.itemsize
    return OpCost({}, rows * row_bytes + indices.bytes, call.out.bytes)


@register_cost(aten.embedding_dense_backward)
def embedding_backward(call: OpCall) -> OpCost:
    # grad_output: [*, D] accumulated into a zeroed [V, D] gradient
    grad, indices = call.arg(0), call.arg(1)
    return OpCost({vector_class_of(grad): grad.numel}, grad.bytes + indices.bytes, call.out.bytes)


def vector_class_of(t: TensorMeta) -> MathClass:
    return vector_class(t)


@register_cost(aten.index_select, aten.index, aten._unsafe_index, aten.take, aten.masked_select)
def gather_rows(call: OpCall) -> OpCost:
    # out = self[index...]: reads as many source elements as it writes, plus the indices
    src = call.arg(0)
    index_bytes = sum(t.bytes for t in call.tensor_inputs()[1:])
    n = call.out.numel
    return OpCost({}, min(n, src.touched_elements) * src.itemsize + index_bytes, call.out.bytes)


@register_cost(aten.gather)
def gather(call: OpCall) -> OpCost:
    # gather(self, dim, index) -> out shaped like index: one source element per index
    src, index = call.arg(0), call.arg(2, "index")
    return OpCost({}, min(index.numel, src.touched_elements) * src.itemsize + index.bytes, call.out.bytes)


def _scatter(call: OpCall, dst: TensorMeta, n_updates: int, update_bytes: float, index_bytes: float,
             accumulate: bool, inplace: bool) -> OpCost:
    # in place: only the updated elements are written (read too when accumulating);
    # out-of-place: read the destination and the updates, write the result once (bytes model,
    # rule 1: eager torch clones then scatters in place, which writes the updated elements twice)
    flops = {vector_class_of(dst): n_updates} if accumulate else {}
    touched = n_updates * dst.itemsize
    if inplace:
        return OpCost(flops, update_bytes + index_bytes + (touched if accumulate else 0), touched)
    return OpCost(flops, dst.bytes + update_bytes + index_bytes, call.out.bytes)


@register_cost(aten.scatter, aten.scatter_, aten.scatter_add, aten.scatter_add_, aten.scatter_reduce,
               aten.scatter_reduce_)
def scatter(call: OpCall) -> OpCost:
    # scatter(self, dim, index, src|value): index.numel() elements updated
    dst, index = call.arg(0), call.arg(2, "index")
    src = call.arg(3, "src")
    src_bytes = min(index.numel, src.touched_elements) * src.itemsize if isinstance(src, TensorMeta) else 0
    name = call.op.split("::")[-1].split(".")[0]
    accumulate = "add" in name or "reduce" in name
    return _scatter(call, dst, index.numel, src_bytes, index.bytes, accumulate, name.endswith("_"))


@register_cost(aten.index_put, aten.index_put_, aten._index_put_impl_, aten._unsafe_index_put)
def index_put(call: OpCall) -> OpCost:
    # self[indices] = values (accumulate: +=).  Updated elements: the broadcast index shape
    # times the dims the indices do not address.
    dst, indices, values = call.arg(0), call.arg(1), call.arg(2)
    accumulate = bool(call.arg(3, "accumulate", False))
    idx = [t for t in indices if isinstance(t, TensorMeta)]
    shape = torch.broadcast_shapes(*[t.shape for t in idx]) if idx else ()
    n = math.prod(shape) * math.prod(dst.shape[len(indices):])
    name = call.op.split("::")[-1].split(".")[0]
    inplace = name.endswith("_")
    vals = min(n, values.touched_elements) * values.itemsize
    return _scatter(call, dst, n, vals, sum(t.bytes for t in idx), accumulate, inplace)


@register_cost(aten.index_add, aten.index_add_, aten.index_copy, aten.index_copy_, aten.index_fill_,
               aten.index_fill)
def index_update(call: OpCall) -> OpCost:
    # index_add(self, dim, index, source): source.numel() elements updated
    dst, dim, index = call.arg(0), call.arg(1), call.arg(2)
    src = call.arg(3, "source")
    name = call.op.split("::")[-1].split(".")[0]
    if isinstance(src, TensorMeta):
        n, src_bytes = src.numel, src.bytes
    else:  # index_fill: a scalar value into index.numel() slices
        n = index.numel * (dst.numel // max(dst.shape[dim], 1)) if dst.ndim else index.numel
        src_bytes = 0.0
    return _scatter(call, dst, n, src_bytes, index.bytes, "add" in name, name.endswith("_"))


@register_cost(aten.nonzero, aten.unique_consecutive, aten._unique2, aten.unique_dim)
def data_dependent(call: OpCall) -> OpCost:
    # read the input once, write what comes out
    outs = [o for o in call.outputs if isinstance(o, TensorMeta)]
    x = call.arg(0)
    return OpCost({vector_class_of(x): x.numel}, x.bytes, sum(o.bytes for o in outs))


@register_cost(aten.where.self, aten.masked_scatter, aten.masked_scatter_)
def select_by_mask(call: OpCall) -> OpCost:
    return elementwise_cost(call, 1)


__all__ = ["transfer_cost", "register_generic"]
