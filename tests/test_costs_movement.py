"""Exact bytes of the ops that move data (embedding, indexing, cat, slices, casts, copies), the
zero cost of views, the uncounted record of an op with no formula, and data-dependent ops.

Bytes model (rooflight/costs/model.py): each input read once, each output written once; a view
counts only the elements it touches; indexing ops touch the rows/elements they address.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from rooflight.capture import count
from rooflight.costs import TensorMeta, lookup
from rooflight.errors import CountError

bf16 = torch.bfloat16


def only(prof, name: str):
    recs = [o for o in prof.ops if o.short_op == name]
    assert len(recs) == 1, [o.op for o in prof.ops]
    rest = [o for o in prof.ops if o is not recs[0]]
    assert all(o.counted and o.bytes == 0 and o.total_flops == 0 for o in rest), [o.op for o in rest]
    return recs[0]


def cost(rec) -> tuple[dict, float, float]:
    return dict(rec.flops), rec.bytes_read, rec.bytes_written


# ---------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_embedding_reads_the_rows_looked_up_not_the_table(device):
    table = torch.randn(1000, 16, device=device)
    ids = torch.tensor([[1, 2, 3, 1], [5, 5, 5, 5]], device=device)
    rec = only(count(F.embedding, ids, table), "embedding")
    # 8 ids into a [1000,16] fp32 table: min(8, 1000) = 8 rows of 16*4 = 64 bytes -> 512, plus the
    # int64 ids 8*8 = 64 -> 576 read (not the table's 64_000); write [2,4,16] 8*64 = 512
    assert cost(rec) == ({}, 576, 512)


def test_embedding_with_more_ids_than_rows_reads_each_row_once():
    table, ids = torch.randn(3, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    rec = only(count(F.embedding, ids, table), "embedding")
    # min(8, 3) = 3 rows: 3*64 = 192 + ids 64 -> 256; write 8*64 = 512
    assert cost(rec) == ({}, 256, 512)


def test_decode_step_embedding_of_a_7b_vocabulary_on_meta():
    table = torch.empty(32_000, 4096, dtype=bf16, device="meta")  # 262 MB that never exists
    rec = only(count(F.embedding, torch.zeros(1, 1, dtype=torch.long, device="meta"), table), "embedding")
    # one id: one row 4096*2 = 8_192 + the id 8 -> 8_200 read; write 8_192
    assert cost(rec) == ({}, 8_200, 8_192)


# ---------------------------------------------------------------------------- gather / scatter


def test_index_select():
    rec = only(count(torch.index_select, torch.randn(1000, 16), 0, torch.tensor([3, 4, 5])), "index_select")
    # 3 rows of 16 fp32: 192 + 3 int64 ids 24 -> 216; write 192
    assert cost(rec) == ({}, 216, 192)


def test_gather():
    src, idx = torch.randn(10, 8), torch.randint(0, 8, (10, 3))
    rec = only(count(torch.gather, src, 1, idx), "gather")
    # one source element per index: 30*4 = 120 + the index 30*8 = 240 -> 360; write 30*4 = 120
    assert cost(rec) == ({}, 360, 120)


def test_scatter_add_in_place_touches_the_updated_elements():
    dst, idx, src = torch.zeros(10, 8), torch.randint(0, 8, (10, 3)), torch.randn(10, 3)
    rec = only(count(lambda d, i, s: d.scatter_add_(1, i, s), dst, idx, src), "scatter_add_")
    # 30 updates: read src 120 + index 240 + the 30 destination elements it adds to 120 -> 480;
    # write those 30 elements 120; 30 adds
    assert cost(rec) == ({"fp32": 30}, 480, 120)


def test_scatter_add_out_of_place_writes_its_result_once():
    dst, idx, src = torch.zeros(10, 8), torch.randint(0, 8, (10, 3)), torch.randn(10, 3)
    rec = only(count(torch.scatter_add, dst, 1, idx, src), "scatter_add")
    # read the destination 80*4 = 320 + src 120 + index 240 -> 680; write the result 320, once
    assert cost(rec) == ({"fp32": 30}, 680, 320)


@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_(accumulate):
    dst, rows, values = torch.zeros(10, 8), torch.tensor([1, 2, 3]), torch.randn(3, 8)
    rec = only(count(lambda d, i, v: d.index_put_((i,), v, accumulate=accumulate), dst, rows, values), "index_put_")
    # 3 rows of 8 updated = 24 elements: read values 96 + ids 24 = 120 (accumulate: + the 24 old
    # values 96 = 216, and 24 adds); write 96
    assert cost(rec) == (({"fp32": 24}, 216, 96) if accumulate else ({}, 120, 96))


# ---------------------------------------------------------------------------- cat, slices, casts, copies


def test_cat():
    a = torch.randn(64, 32)
    rec = only(count(torch.cat, [a, a[:10]]), "cat")
    # read 64*32*4 + 10*32*4 (only the slice's rows) = 8_192 + 1_280 = 9_472; write 74*32*4 = 9_472
    assert cost(rec) == ({}, 9_472, 9_472)


def test_a_strided_slice_read_by_an_op_counts_only_the_slice():
    big = torch.randn(64, 64)
    cols = only(count(lambda t: t[:, :16] * 2, big), "mul")
    # t[:, :16]: 64*16 elements of the 4096, stride (64, 1): read 1_024*4 = 4_096, write 4_096
    assert cost(cols) == ({"fp32": 1_024}, 4_096, 4_096)
    rows = only(count(lambda t: t[::2] + 1, big), "add")
    # every other row: 32*64*4 = 8_192 read, 8_192 written
    assert cost(rows) == ({"fp32": 2_048}, 8_192, 8_192)


def test_an_overlapping_view_counts_the_span_it_covers():
    base = torch.randn(1000)
    windows = base[100:110].unfold(0, 4, 1)  # [7,4], strides (1, 1): 28 loads of 10 distinct elements
    rec = only(count(torch.sum, windows), "sum")
    # distinct elements: the span from the first to the last address, 1 + 6*1 + 3*1 = 10 -> 40 bytes
    # (not 28*4 = 112, nor the 900 elements of storage past the offset)
    assert rec.bytes_read == 40
    assert TensorMeta.of(windows).touched_elements == 10


def test_dtype_cast():
    rec = only(count(lambda t: t.to(bf16), torch.randn(64, 64)), "_to_copy")
    # read 4096*4 = 16_384, write 4096*2 = 8_192, no FLOPs
    assert cost(rec) == ({}, 16_384, 8_192)
    assert rec.note == "cast float32 -> bfloat16"


def test_copy_writes_its_destination_without_reading_it():
    dst, src = torch.empty(64, 64, dtype=bf16), torch.randn(64, 64)
    rec = only(count(lambda d, s: d.copy_(s), dst, src), "copy_")
    assert cost(rec) == ({}, 16_384, 8_192)
    # a broadcast source is read once: [64] -> [64,64]: 64*4 = 256 read, 8_192 written
    rec = only(count(lambda d, s: d.copy_(s), dst, torch.randn(64)), "copy_")
    assert cost(rec) == ({}, 256, 8_192)


# ---------------------------------------------------------------------------- views, uncounted ops


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_views_cost_exactly_nothing(device):
    def views(t):
        v = t.view(64).reshape(8, 8).t().unsqueeze(0).expand(3, 8, 8).permute(1, 0, 2)
        return v.narrow(0, 1, 2).select(0, 0).transpose(0, 1).squeeze().unbind(0)

    prof = count(views, torch.randn(8, 8, device=device))
    names = {o.short_op for o in prof.ops}
    assert {"view", "t", "unsqueeze", "expand", "permute", "slice", "select", "transpose", "unbind"} <= names
    assert all(o.counted and o.total_flops == 0 and o.bytes == 0 for o in prof.ops)
    assert (prof.total_flops, prof.total_bytes, prof.uncounted()) == (0, 0, {})


@pytest.mark.parametrize("fn,op", [(torch.fft.rfft, "aten::_fft_r2c.default"),
                                   (torch.linalg.cholesky, "aten::linalg_cholesky_ex.default")])
def test_an_op_with_no_formula_is_recorded_uncounted(fn, op):
    a = torch.randn(8, 8)
    x = a @ a.T + 8 * torch.eye(8)  # positive definite, for cholesky
    # neither has a formula nor matches a generic rule (not pointwise, not a reduction, not a view)
    assert lookup(getattr(torch.ops.aten, op.split("::")[1].split(".")[0]).default) is None
    prof = count(fn, x)
    (rec,) = [o for o in prof.ops if o.op == op]
    assert not rec.counted and rec.note == "no cost formula"
    assert (rec.total_flops, rec.bytes) == (0, 0)
    assert prof.uncounted() == {op: 1}


# ---------------------------------------------------------------------------- data-dependent ops


def test_data_dependent_ops_work_on_real_tensors():
    x = torch.randn(8, 8)
    mask = torch.ones(8, 8, dtype=torch.bool).tril()  # 36 of 64 true
    nz = only(count(torch.nonzero, mask), "nonzero")
    # read the bool mask 64; write [36, 2] int64 indices 36*2*8 = 576; one test per element (int32)
    assert cost(nz) == ({"int32": 64}, 64, 576)
    ms = only(count(torch.masked_select, x, mask), "masked_select")
    # the 36 selected fp32 elements 144 + the mask 64 -> 208; write 36*4 = 144
    assert cost(ms) == ({}, 208, 144)
    prof = count(lambda t: t.sum().item(), x)
    (item,) = [o for o in prof.ops if o.short_op == "_local_scalar_dense"]
    # .item() reads one element: 4 bytes
    assert cost(item) == ({}, 4, 0)


def test_pin_memory_is_a_host_copy():
    # a DataLoader with pin_memory=True: each batch copied into page-locked host memory; a
    # [64, 128] int64 batch reads 64*128*8 = 65,536 bytes and writes as many, no FLOPs, no link
    from rooflight.costs.model import OpCall

    src, dst = TensorMeta.contiguous((64, 128), "int64"), TensorMeta.contiguous((64, 128), "int64")
    c = lookup(torch.ops.aten._pin_memory.default)(OpCall("aten::_pin_memory.default", (src,), {}, (dst,)))
    assert (dict(c.flops), c.bytes_read, c.bytes_written, c.comm_bytes) == ({}, 65536, 65536, 0)
    assert c.note == "host copy into page-locked memory"


@pytest.mark.gpu
def test_pin_memory_is_counted_where_it_runs():
    batch = torch.randint(0, 100, (64, 128))
    (pin,) = [o for o in count(lambda: batch.pin_memory()).ops if o.short_op == "_pin_memory"]
    assert pin.counted and cost(pin) == ({}, 65536, 65536)


DATA_DEPENDENT = {
    "nonzero": lambda t: torch.nonzero(t > 0),
    "masked_select": lambda t: torch.masked_select(t, t > 0),
    "item": lambda t: t.sum().item(),
}


@pytest.mark.parametrize("name", sorted(DATA_DEPENDENT))
@pytest.mark.parametrize("where", ["meta", "fake"])
def test_data_dependent_ops_on_meta_or_fake_tensors_are_a_count_error(name, where):
    fn = DATA_DEPENDENT[name]
    with pytest.raises(CountError) as err:
        if where == "meta":
            count(fn, torch.randn(8, 8, device="meta"))
        else:
            with FakeTensorMode():
                count(fn, torch.empty(8, 8))
    msg = str(err.value)
    assert "\n" not in msg
    assert "real tensors" in msg and "CPU" in msg
