"""Communication: the collective formulas (bytes each rank sends, no FLOPs) called directly on
OpCalls shaped like the real schemas, over 4 ranks; a real one-rank gloo group through the
capture; and host<->device copies over PCIe.

Per rank, for S bytes over n ranks (NCCL rings): all_reduce 2(n-1)/n * S; all_gather
(n-1)/n * S_out with S_out = n * S_in; reduce_scatter (n-1)/n * S_in.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist

from rooflight.capture import count
from rooflight.costs import OpCall, TensorMeta, lookup
from rooflight.costs.movement import transfer_cost

N = 4


def gpu(*shape, dtype="bfloat16"):
    return TensorMeta.contiguous(shape, dtype, "cuda:0")


def collective(op: str, args: tuple, outputs: tuple, kwargs=None, out_args=()):
    """The registered formula's cost for `op` ("_c10d_functional::all_reduce.default") over N
    ranks, with the argument names of the op's real schema."""
    ns, rest = op.split("::")
    name, overload = rest.split(".")
    overload_obj = getattr(getattr(getattr(torch.ops, ns), name), overload)
    names = tuple(a.name for a in overload_obj._schema.arguments if not a.kwarg_only)
    call = OpCall(op, args, kwargs or {}, outputs, arg_names=names, group_size=N, out_args=out_args)
    return lookup(overload_obj)(call)


def test_all_reduce():
    x = gpu(1024, 1024)  # S = 1024*1024*2 = 2_097_152 bytes
    c = collective("_c10d_functional::all_reduce.default", (x, "sum", "tp"), (x,))
    # 2*(n-1)/n*S = 2*3/4*2_097_152 = 3_145_728 sent; the input read and the output written once
    assert (c.comm_bytes, c.link, c.total_flops) == (3_145_728, "peer", 0)
    assert (c.bytes_read, c.bytes_written) == (2_097_152, 2_097_152)
    assert "all-reduce over 4 ranks" in c.note


def test_all_gather():
    x = gpu(256, 1024)  # S_in = 524_288
    c = collective("_c10d_functional::all_gather_into_tensor.default", (x, N, "tp"), (gpu(1024, 1024),))
    # S_out = 4*524_288 = 2_097_152; sent (n-1)/n*S_out = 1_572_864 = (n-1)*S_in
    assert (c.comm_bytes, c.bytes_read, c.bytes_written) == (1_572_864, 524_288, 2_097_152)


def test_reduce_scatter():
    x = gpu(1024, 1024)  # S_in = 2_097_152
    c = collective("_c10d_functional::reduce_scatter_tensor.default", (x, "sum", N, "tp"), (gpu(256, 1024),))
    # sent (n-1)/n*S_in = 1_572_864; write S_in/n = 524_288
    assert (c.comm_bytes, c.bytes_read, c.bytes_written) == (1_572_864, 2_097_152, 524_288)


def test_eager_c10d_collectives_do_not_read_their_output_buffers():
    # torch.distributed.all_gather_into_tensor(out, inp) reaches c10d::_allgather_base_(output_tensor,
    # input_tensor, ...): the output buffer is written, not read, and not part of what is sent
    out, inp = gpu(1024, 1024), gpu(256, 1024)
    c = collective("c10d::_allgather_base_.default", (out, inp, None, False, -1), (out,))
    assert (c.comm_bytes, c.bytes_read, c.bytes_written) == (1_572_864, 524_288, 2_097_152)
    # list form: allgather_([[4 outputs]], [input], ...)
    outs = [gpu(256, 1024) for _ in range(N)]
    c = collective("c10d::allgather_.default", ([outs], [inp], None, False, -1), (outs,))
    assert (c.comm_bytes, c.bytes_read, c.bytes_written) == (1_572_864, 524_288, 2_097_152)
    # _reduce_scatter_base_(output_tensor [256,1024], input_tensor [1024,1024]): sends 3/4 of the input
    shard, full = gpu(256, 1024), gpu(1024, 1024)
    c = collective("c10d::_reduce_scatter_base_.default", (shard, full, None, None, False, -1), (shard,))
    assert (c.comm_bytes, c.bytes_read, c.bytes_written) == (1_572_864, 2_097_152, 524_288)
    # in-place all-reduce of its `tensors`
    c = collective("c10d::allreduce_.default", ([out], None, None, None, False, -1), ([out],))
    assert (c.comm_bytes, c.bytes_read, c.bytes_written) == (3_145_728, 2_097_152, 2_097_152)


def test_all_gather_out_variant_does_not_read_out():
    x, out = gpu(256, 1024), gpu(1024, 1024)
    c = collective("_c10d_functional::all_gather_into_tensor_out.default", (x, N, "tp"), (out,),
                   kwargs={"out": out}, out_args=("out",))
    assert (c.comm_bytes, c.bytes_read, c.bytes_written) == (1_572_864, 524_288, 2_097_152)


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_real_collectives_through_the_capture_on_one_rank(one_rank_group):
    import torch.distributed._functional_collectives as fc

    x, out = torch.randn(256, 1024), torch.empty(256, 1024)

    def step(x, out):
        dist.all_reduce(x)
        dist.all_gather_into_tensor(out, x)
        return fc.all_reduce(x, "sum", dist.group.WORLD) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # all_gather_into_tensor is deprecated in this torch
        prof = count(step, x, out)
    colls = [o for o in prof.ops if o.link == "peer"]
    assert [o.op for o in colls] == ["c10d::allreduce_.default", "c10d::_allgather_base_.default",
                                     "_c10d_functional::all_reduce.default"]
    # one rank sends nothing; each reads its 256*1024*4 = 1_048_576-byte input once
    assert all(o.comm_bytes == 0 and o.bytes_read == 1_048_576 for o in colls)
    assert prof.uncounted() == {}


# ---------------------------------------------------------------------------- host <-> device


def test_host_to_device_copy_crosses_pcie():
    src = TensorMeta.contiguous((1024, 1024), "float32", "cpu")
    dst = TensorMeta.contiguous((1024, 1024), "float32", "cuda:0")
    c = transfer_cost(src, dst)
    # 1024*1024*4 = 4_194_304 bytes over PCIe; on the device only the write of the destination
    assert (c.comm_bytes, c.link, c.bytes_read, c.bytes_written, c.total_flops) == (4_194_304, "pcie", 0, 4_194_304, 0)
    assert c.note == "host to device"
    back = transfer_cost(dst, src)
    assert (back.comm_bytes, back.bytes_read, back.bytes_written) == (4_194_304, 4_194_304, 0)
    assert back.note == "device to host"
    assert transfer_cost(src, src) is None  # same side: an ordinary copy


def test_to_copy_formula_onto_a_gpu():
    src, dst = TensorMeta.contiguous((64, 64), "float32", "cpu"), TensorMeta.contiguous((64, 64), "float32", "cuda:0")
    c = lookup(torch.ops.aten._to_copy.default)(OpCall("aten::_to_copy.default", (src,), {"device": "cuda:0"}, (dst,)))
    assert (c.comm_bytes, c.link, c.bytes_written) == (16_384, "pcie", 16_384)
