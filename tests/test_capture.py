"""Capture and profile: a Llama-style block counted against its hand-derived formula, on the CPU,
the meta device and fake CUDA tensors alike; module and region attribution; the JSON round-trip."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import rooflight
from llama import LlamaConfig, build, decode_one_token, prefill
from rooflight.capture import Capture, count
from rooflight.costs.attention import causal_pairs
from rooflight.profile_data import Profile, ProfileFormatError
from rooflight.regions import current_region, region

CFG = LlamaConfig(n_layers=1, dim=64, n_heads=4, n_kv_heads=2, intermediate=128, vocab=100, max_seq=256)


def block_flops(cfg: LlamaConfig, b: int, s: int) -> tuple[float, float]:
    """(tensor FLOPs, fp32 vector FLOPs) of one decoder block's prefill over s new tokens."""
    n, d, h, hk, hd, i = b * s, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.intermediate
    pairs = causal_pairs(s, s, "upper_left", (128, 128))  # s <= 128: one tile, computed in full
    tensor = (2 * n * d * h * hd          # wq
              + 2 * 2 * n * d * hk * hd   # wk, wv
              + 2 * n * h * hd * d        # wo
              + 4 * b * h * pairs * hd    # QK^T and PV of the fused attention
              + 3 * 2 * n * d * i)        # w1, w3, w2
    rmsnorm = 4 * n * d + 2 * n           # pow, mean, *rsqrt, *weight per element; +eps, rsqrt per row
    vector = (2 * rmsnorm
              + 3 * n * h * hd + 3 * n * hk * hd  # RoPE on q and k: 6 ops on half of each head
              + 5 * b * h * pairs                 # online softmax: 5 per score
              + 2 * n * d                         # two residual adds
              + 4 * n * i + n * i)                # silu (4 per element), gate multiply
    return tensor, vector


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_llama_block_total_equals_hand_derived_formula(device):
    b, s = 2, 16
    model = build(CFG, batch=b, device=device, dtype=torch.bfloat16)
    block = model.layers[0]
    x = torch.randn(b, s, CFG.dim, dtype=torch.bfloat16, device=device)
    cos, sin = model.rope_cos.narrow(0, 0, s), model.rope_sin.narrow(0, 0, s)
    prof = count(block, x, 0, cos, sin)
    tensor, vector = block_flops(CFG, b, s)
    by_class = prof.flops_by_class()
    assert by_class.pop("bf16_tensor") == tensor
    assert by_class.pop("fp32") == vector
    assert by_class.pop("int32", 0) == 0
    assert not by_class, by_class
    assert prof.uncounted() == {}


def test_whole_model_counts_agree_on_cpu_meta_and_fake_cuda():
    totals = []
    for device in ("cpu", "meta", "fake-cuda"):
        if device == "fake-cuda":
            with FakeTensorMode():
                m = build(CFG, batch=2, device="cuda")
                toks = torch.zeros(2, 32, dtype=torch.long, device="cuda")
                p = count(prefill, m, toks)
                d = count(decode_one_token, m, toks.narrow(1, 0, 1), 32)
        else:
            m = build(CFG, batch=2, device=device)
            toks = torch.zeros(2, 32, dtype=torch.long, device=device)
            p = count(prefill, m, toks)
            d = count(decode_one_token, m, toks.narrow(1, 0, 1), 32)
        totals.append((p.flops_by_class(), p.total_bytes, d.flops_by_class(), d.total_bytes, len(p.ops)))
        if device == "fake-cuda":
            assert p.device == "cuda:0" and p.device_name.startswith("fake cuda:0")
    assert totals[0] == totals[1] == totals[2]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_inference_mode_counts_what_no_grad_counts(device):
    """Under torch.inference_mode the dispatcher skips autograd's key, where composite ops
    (linear, layer_norm, dropout) decompose: the mode saw aten::linear and aten::layer_norm and
    counted them as ops with no formula (a GPT-2 decode loop read 'linear x6 uncounted').  They
    run as what they are made of, as under no_grad: the same ops, FLOPs and bytes."""
    lin, ln = nn.Linear(64, 32, device=device), nn.LayerNorm(64, device=device)
    x = torch.randn(4, 64, device=device)

    def step():
        # to() and contiguous() of a tensor already so return it: no op runs
        return lin(F.dropout(ln(x.to(torch.float32).contiguous()), 0.1, training=False))

    with torch.inference_mode():
        inf = count(step)
    with torch.no_grad():
        ng = count(step)
    assert [o.op for o in inf.ops] == [o.op for o in ng.ops] == [
        "aten::native_layer_norm.default", "aten::t.default", "aten::addmm.default"]  # dropout(eval): no op
    assert all(o.counted for o in inf.ops)
    assert inf.flops_by_class() == ng.flops_by_class() and inf.total_bytes == ng.total_bytes
    (mm,) = [o for o in inf.ops if o.short_op == "addmm"]
    assert mm.total_flops == 2 * 4 * 64 * 32 + 4 * 32  # 16,384 multiply-adds x2, plus the bias: 16,512
    # and a whole model: our Llama's prefill and decode step
    m = build(CFG, batch=2, device=device)
    toks = torch.zeros(2, 32, dtype=torch.long, device=device)
    with torch.inference_mode():
        a = (count(prefill, m, toks), count(decode_one_token, m, toks.narrow(1, 0, 1), 32))
    with torch.no_grad():
        b = (count(prefill, m, toks), count(decode_one_token, m, toks.narrow(1, 0, 1), 32))
    for p, q in zip(a, b):
        assert p.flops_by_class() == q.flops_by_class() and p.total_bytes == q.total_bytes
        assert not p.uncounted()


def test_an_op_with_a_kernel_of_its_own_besides_its_composite_runs_that_kernel():
    # nn.RMSNorm's aten::_fused_rms_norm has a composite (pow, mean, rsqrt, mul ...) and, on CUDA,
    # a fused kernel; the mode sees it in grad mode too.  The capture ran the composite, so a user's
    # GPU ran six kernels where eager runs one.  An op with a kernel for its device runs that kernel,
    # under inference_mode or not: here a library op whose CPU kernel doubles and composite triples
    from rooflight.costs import register_cost, unregister_cost
    from rooflight.costs.model import OpCost

    lib = torch.library.Library("rooflight_test", "FRAGMENT")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CPU")
    lib.impl("twice", lambda x: x * 3, "CompositeImplicitAutograd")
    op = torch.ops.rooflight_test.twice.default
    register_cost(op)(lambda call: OpCost({"fp32": call.out.numel}, call.arg(0).bytes, call.out.bytes))
    try:
        x = torch.ones(8)
        for mode in (torch.inference_mode, torch.no_grad):
            out = {}
            with mode():
                prof = count(lambda: out.setdefault("y", op(x)))
            assert torch.equal(out["y"], torch.full((8,), 2.0))  # its CPU kernel, as eager runs it
            assert [o.op for o in prof.ops] == ["rooflight_test::twice.default"] and not prof.uncounted()
    finally:
        unregister_cost(op)
        del lib


def test_a_compiled_module_keeps_its_users_paths():
    # torch.compile wraps a module in an OptimizedModule whose child `_orig_mod` is the user's:
    # ops are attributed to the user's paths, whether the whole model or one layer is compiled
    # (backend="eager": torch.compile's wrapper without inductor's C++ build)
    inner = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
    model = nn.Sequential(torch.compile(inner, backend="eager"), nn.Linear(16, 4))
    x = torch.randn(2, 16)
    with torch.no_grad():
        mods = [o.module for o in count(torch.compile(model, backend="eager"), x).ops if o.short_op in ("addmm", "relu")]
    assert mods == ["0.0", "0.1", "1"]


def _func_module(fn):
    # what Hugging Face's `kernels` package makes of a function (transformers' apply_rotary_pos_emb):
    # a module class Func, local to a factory, whose forward calls the function
    class Func(nn.Module):
        def forward(self, *args):
            return fn(*args)

    return Func()


def test_a_module_the_model_calls_but_does_not_hold_is_named_by_what_it_is():
    # transformers with `kernels` installed calls apply_rotary_pos_emb as a Func module through a
    # second Func (the attention's copy): named by the function, once ("self_attn.Func.Func" before)
    def apply_rotary_pos_emb(q):
        return q * 2.0

    inner = _func_module(apply_rotary_pos_emb)

    def through(q):
        return inner(q)

    through.__name__ = "apply_rotary_pos_emb"
    outer = _func_module(through)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return outer(self.proj(x)) + nn.ReLU()(x)  # and a module built on the fly: its type's name

    model = nn.Sequential(Attention())
    with torch.no_grad():
        ops = count(model, torch.randn(2, 8)).ops
    assert {o.short_op: o.module for o in ops if o.short_op in ("addmm", "mul", "relu")} == {
        "addmm": "0.proj", "mul": "0.apply_rotary_pos_emb", "relu": "0.ReLU"}


def test_per_module_totals_add_up_to_the_whole():
    m = build("tiny", batch=1, device="meta")
    p = count(prefill, m, torch.zeros(1, 64, dtype=torch.long, device="meta"))
    layers = [f"layers.{i}" for i in range(m.cfg.n_layers)]
    parts = [p.select(module=name) for name in layers + ["tok_embeddings", "norm", "output"]]
    rest = [o for o in p.ops if o.module == ""]  # ops of the root module itself (slices, views)
    assert sum(o.total_flops for part in parts for o in part) + sum(o.total_flops for o in rest) == p.total_flops
    assert sum(o.bytes for part in parts for o in part) + sum(o.bytes for o in rest) == p.total_bytes
    # children add up to their parent
    attn = p.select(module="layers.0.attention")
    children = sum(o.total_flops for c in ("wq", "wk", "wv", "wo") for o in p.select(module=f"layers.0.attention.{c}"))
    own = sum(o.total_flops for o in attn if o.module == "layers.0.attention")
    assert children + own == sum(o.total_flops for o in attn)


def test_module_paths_and_types_are_recorded():
    m = build("tiny", batch=1, device="meta")
    p = count(decode_one_token, m, torch.zeros(1, 1, dtype=torch.long, device="meta"), 5)
    wo = [o for o in p.ops if o.module == "layers.1.attention.wo" and o.short_op == "mm"]
    assert len(wo) == 1 and wo[0].module_type == "Linear"
    assert any(o.short_op == "scaled_dot_product_attention" and o.module == "layers.1.attention" for o in p.ops)


def test_regions_nest_and_label_ops():
    m = build("tiny", batch=1, device="meta")
    toks = torch.zeros(1, 8, dtype=torch.long, device="meta")
    tok = toks.narrow(1, 0, 1)

    def generate():
        with region("prefill"):
            prefill(m, toks)
        with region("decode"):
            for pos in range(8, 10):
                with region("step"):
                    decode_one_token(m, tok, pos)

    p = count(generate)
    assert p.regions == ("prefill", "decode", "decode/step")
    assert {o.region for o in p.ops} == {"prefill", "decode/step"}
    assert len(p.select(region="decode")) == 2 * len(p.select(region="prefill"))
    assert current_region() == ""


def test_region_validates_its_name_and_works_outside_capture():
    with region("outer"):
        with region("inner"):
            assert current_region() == "outer/inner"
    with pytest.raises(rooflight.errors.UsageError):
        with region(""):
            pass
    # names may hold anything, '/' too: nesting comes from the regions opened, not from splitting
    x = torch.randn(2, 2)
    with Capture() as cap:
        with region("<script>alert(1)</script>"):
            x + x
    assert cap.profile().regions == ("<script>alert(1)</script>",)

    @region("as-decorator")
    def f():
        return current_region()

    assert f() == "as-decorator"


def test_backward_ops_are_marked():
    lin = nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    p = count(lambda: lin(x).sum().backward())
    phases = {o.phase for o in p.ops}
    assert phases == {"forward", "backward"}
    back = [o for o in p.ops if o.phase == "backward" and o.short_op == "mm"]
    assert back, "the weight and input gradients are matrix products"


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_backward_ops_sit_in_the_module_they_differentiate(device):
    """Each backward op is placed in the module whose forward made its autograd node (the node
    autograd runs it in), so a training step's backward groups by layer as its forward does; the
    loss's backward, outside every module, stays outside; a predicted fused backward (SDPA) sits
    in its attention module."""
    from rooflight.groups import group_ops

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            q = self.up(x).view(2, 8, 4, 8).transpose(1, 2)
            return self.down(F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(2, 8, 32))

    with torch.device(device):
        net = nn.Sequential(nn.Embedding(50, 16), Block(), Block())
        ids = torch.randint(0, 50, (2, 8))
    p = count(lambda: F.cross_entropy(net(ids).flatten(0, 1), (ids % 16).flatten()).backward())
    by = {}
    for o in p.ops:
        if o.phase == "backward" and (o.total_flops or o.bytes):
            by.setdefault(o.short_op, set()).add(o.module)
    # dX and dW of each linear layer: in that layer (the first block's up needs no dX: still its dW)
    assert by["mm"] == {"1.up", "1.down", "2.up", "2.down"}
    assert by["embedding_dense_backward"] == {"0"}
    attention = [k for k in by if "attention_backward" in k]
    assert attention and all(by[k] == {"1", "2"} for k in attention)
    assert "" in by["nll_loss_backward"]  # the loss ran outside the model
    names = [g.name for g in group_ops(p)]
    assert any(n.startswith("*.down (backward) mm") for n in names), names


def test_profile_json_round_trip(tmp_path):
    m = build("tiny", batch=1, device="meta")
    with region("prefill"):
        p = count(prefill, m, torch.zeros(1, 16, dtype=torch.long, device="meta"))
    path = p.save(tmp_path / "run.json")
    q = Profile.load(path)
    assert q == p
    assert q.to_json() == p.to_json()
    d = json.loads(path.read_text())
    assert d["schema"] == "rooflight.profile" and d["version"] == 1


def test_profile_dataframe_has_one_row_per_op():
    m = build("tiny", batch=1, device="meta")
    p = count(prefill, m, torch.zeros(1, 16, dtype=torch.long, device="meta"))
    df = p.df
    assert len(df) == len(p.ops)
    for col in ("module", "region", "op", "shapes", "dtype", "flops", "bytes", "intensity"):
        assert col in df.columns
    mm = df[df.op == "mm"]
    assert (mm.intensity == mm.flops / mm.bytes).all()
    assert df.flops.sum() == p.total_flops


@pytest.mark.parametrize("text,message", [
    ("not json", "not valid JSON"),
    ('{"schema": "something.else"}', "not a rooflight profile"),
    ('{"schema": "rooflight.profile", "version": 99, "ops": []}', "version 99 is not supported"),
    ('{"schema": "rooflight.profile", "version": 1, "ops": [{"index": 0}]}', "corrupt"),
    ('{"schema": "rooflight.profile", "version": 1}', "corrupt"),
])
def test_bad_profile_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ProfileFormatError, match=message) as err:
        Profile.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_capture_context_manager_and_top_level_api():
    x = torch.randn(4, 4)
    with Capture() as cap:
        y = x @ x
        z = y.relu()
    prof = cap.profile(workload="two ops")
    assert [o.short_op for o in prof.ops] == ["mm", "relu"]
    assert prof.mode == "count" and prof.torch_version == torch.__version__
    # 2*4*4*4 = 128 FLOPs of fp32 matrix math (no TF32 by default)
    assert prof.ops[0].flops == {"fp32": 128.0}
    assert rooflight.count(lambda: x @ x).total_flops == 128
    assert math.isfinite(prof.intensity)


# ---------------------------------------------------------------------------- what the capture costs


class _Attention(nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _function_modes() -> int:
    return torch._C._len_torch_function_stack()


def test_a_model_on_the_gpu_runs_without_the_function_mode_and_gets_it_back(monkeypatch):
    """The function mode's rules (SDPA, rms_norm) are for tensors off the GPU; while a model whose
    weights are on CUDA runs, the capture takes it off the stack.  Here the CPU stands in for the
    GPU (capture._on_gpu answers yes): inside the model call the SDPA is the aten op that ran (as
    on CUDA); outside it, the capture still predicts the GPU's kernel; the stack is whole after."""
    import rooflight.capture as cap_mod

    monkeypatch.setattr(cap_mod, "_on_gpu", lambda module: True)
    attn = _Attention()
    q = k = v = torch.randn(1, 2, 16, 8)
    before = _function_modes()
    with Capture() as cap:
        attn(q, k, v)
        inside = _function_modes()
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ops = [o.op for o in cap.records]
    assert ops == ["aten::_scaled_dot_product_flash_attention_for_cpu.default", "aten::scaled_dot_product_attention"]
    assert inside == before + 1 and _function_modes() == before


def test_the_function_mode_comes_back_when_the_model_raises(monkeypatch):
    import rooflight.capture as cap_mod

    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("user bug")

    monkeypatch.setattr(cap_mod, "_on_gpu", lambda module: True)
    before = _function_modes()
    with pytest.raises(ValueError, match="user bug"):
        with Capture():
            Broken()(torch.randn(2))
    assert _function_modes() == before
    # and a capture whose model raised mid-call leaves it right for the next one
    x = torch.randn(1, 2, 16, 8)
    with Capture() as cap:
        torch.nn.functional.scaled_dot_product_attention(x, x, x)
    assert [o.op for o in cap.records] == ["aten::scaled_dot_product_attention"]


def test_the_model_on_the_cpu_keeps_the_function_mode():
    attn, x = _Attention(), torch.randn(1, 2, 16, 8)
    with Capture() as cap:
        attn(x, x, x)
    assert [o.op for o in cap.records] == ["aten::scaled_dot_product_attention"]  # predicted for the GPU


def test_the_collector_is_left_as_it_was():
    import gc

    assert gc.get_freeze_count() == 0 and gc.isenabled()
    with Capture():
        torch.randn(4) + 1
        frozen_inside = gc.get_freeze_count()
    assert frozen_inside > 0  # what existed before the capture is out of its full collections
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    gc.freeze()  # someone else's freeze stays theirs
    try:
        n = gc.get_freeze_count()
        with Capture():
            torch.randn(4) + 1
        assert gc.get_freeze_count() == n
    finally:
        gc.unfreeze()
    gc.disable()  # and a disabled collector stays disabled
    try:
        count(torch.add, torch.randn(4), 1)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_repeated_calls_reuse_a_cost_only_where_the_output_is_the_same():
    # the cost memo keys an op with tensor arguments on its outputs' shapes and dtypes only:
    # same-shaped masks with different True counts are different calls
    x = torch.arange(8.0)

    def run():
        torch.masked_select(x, x < 2)  # 2 elements out
        torch.masked_select(x, x < 5)  # 5 elements out
        torch.zeros(4)  # a factory: its dtype is the global default's
        torch.set_default_dtype(torch.float64)
        try:
            torch.zeros(4)
        finally:
            torch.set_default_dtype(torch.float32)

    ops = [o for o in count(run).ops if o.short_op in ("masked_select", "zeros", "zero_", "fill_", "empty")]
    selects = [o for o in ops if o.short_op == "masked_select"]
    assert [o.outputs[0].shape for o in selects] == [(2,), (5,)]
    # bytes written: 2 and 5 float32 elements (8 and 20 bytes)
    assert [o.bytes_written for o in selects] == [8.0, 20.0]
    made = [o.outputs[0].dtype for o in ops if o.short_op != "masked_select"]
    assert "float32" in made and "float64" in made


def test_attention_keeps_its_kvs_storage_size_and_other_ops_leave_it_out():
    # the same K/V views (shapes, strides, offsets) into a 2048-element and a 4096-element buffer:
    # the aten attention op (what runs on the GPU, past the function mode) is two calls, each with
    # its own storage size (the advice reads the KV cache reserved from it); an add keys no storage
    q = torch.randn(1, 2, 1, 8)
    small, big = (torch.randn(2048), torch.randn(2048)), (torch.randn(4096), torch.randn(4096))

    def run():
        for ks, vs in (small, big):
            k, v = ks[:256].view(1, 2, 16, 8), vs[:256].view(1, 2, 16, 8)  # 16 positions used
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
            torch.add(k, 1)

    ops = count(run).ops
    attn = [o for o in ops if "attention" in o.op]
    assert [o.inputs[1].storage_numel for o in attn] == [2048, 4096]
    adds = [o for o in ops if o.short_op == "add"]
    assert len(adds) == 2 and all(o.inputs[0].storage_numel is None for o in adds)
    # the bytes do not need it: 16 positions of 2 heads of 8 floats (1 KiB), whichever the buffer
    assert [o.inputs[0].bytes for o in adds] == [16 * 2 * 8 * 4] * 2


def test_a_repeated_op_adds_no_object_for_the_garbage_collector():
    # each op's record is a reference to its call's payload and to an interned place, so 2000
    # repeats of one call leave the collector's generations as they were (40k ops would otherwise
    # add 40k tuples for every collection to walk)
    x = torch.randn(4)
    with Capture() as cap:
        x + 1
        gc.collect()
        before = len(gc.get_objects())
        for _ in range(2000):
            x + 1
        after = len(gc.get_objects())
    assert len(cap.records) == 2001
    assert after - before < 50, after - before


def test_a_start_up_freeze_does_not_keep_the_capture_from_freezing():
    # Ubuntu's Python 3.12 starts with a few hundred frozen objects: the capture still freezes the
    # rest (and thaws all after); a process's own large freeze is left alone (the test above)
    script = textwrap.dedent("""
        import gc
        gc.freeze()  # at start-up: a few objects
        import torch
        from rooflight.capture import Capture
        small = gc.get_freeze_count()
        assert 0 < small < 50_000, small
        with Capture():
            torch.randn(4) + 1
            inside = gc.get_freeze_count()
        print(small, inside, gc.get_freeze_count())
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    small, inside, after = map(int, r.stdout.split())
    assert inside > 100_000 > small and after == 0


def test_a_formula_registered_mid_run_applies_from_the_next_op():
    from rooflight.costs import OpCost, register_cost
    from rooflight.costs.registry import lookup
    from rooflight.math_class import MathClass

    a, b = torch.randn(4, 8), torch.randn(8, 2)
    builtin = lookup(torch.ops.aten.mm.default)
    with Capture() as cap:
        torch.mm(a, b)

        @register_cost(torch.ops.aten.mm, override=True)
        def one(call):
            return OpCost({MathClass.FP32: 1}, 0, 0, note="overridden")

        try:
            torch.mm(a, b)  # the same call: the memo must not answer with the old formula
        finally:
            register_cost(torch.ops.aten.mm, override=True)(builtin)
        torch.mm(a, b)
    # 2*4*2*8 = 128 FLOPs by the built-in formula; 1 by the override
    assert [o.total_flops for o in cap.records] == [128, 1, 128]


@pytest.mark.gpu
def test_on_cuda_a_model_call_goes_past_no_function_mode(monkeypatch):
    import rooflight.capture as cap_mod

    calls = []
    original = cap_mod._FunctionMode.__torch_function__

    def counting(self, func, types, args=(), kwargs=None):
        calls.append(func)
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(cap_mod._FunctionMode, "__torch_function__", counting)
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(64, 64)

        def forward(self, x):
            h = self.proj(x)
            return torch.nn.functional.scaled_dot_product_attention(h, h, h, is_causal=True)

    model = Block().cuda()
    x = torch.randn(1, 2, 16, 64, device="cuda")
    before = _function_modes()
    with Capture() as cap:
        model(x)
        model(x)
    assert calls == [] and _function_modes() == before
    assert any("scaled_dot_product" in o.op and o.op != "aten::scaled_dot_product_attention" for o in cap.records)


def test_a_capture_gives_the_same_profile_twice():
    # each profile() builds its own records and moves them to their steps in place: the second
    # profile is not moved twice, and the recorder's own records keep the regions the run gave
    model, x = nn.Linear(8, 8), torch.randn(2, 8)
    with Capture(steps=True) as cap:
        model(x)
        model(x)
    a, b = cap.profile(), cap.profile()
    assert [o.region for o in a.ops] == [o.region for o in b.ops]
    assert {o.region for o in a.ops} == {"step 1", "step 2"} and a.steps == b.steps
    assert {o.region for o in cap.records} == {""}


def test_each_inputs_source_is_recorded_and_round_trips():
    # which op made each input: op indexes for tensors the run made (through a view and an in-place
    # op), one negative number per tensor it did not (x read twice keeps its number)
    x = torch.randn(8, 8)

    def run():
        a = x + 1
        b = a.view(64)  # a view: recorded, moves nothing, made by the add
        b.mul_(2)  # in place: now the mul_ made it
        return b.sum() + x.sum()

    prof = count(run)
    ops = [(o.short_op, o.sources) for o in prof.ops]
    assert ops == [("add", (-1,)), ("view", (0,)), ("mul_", (1,)), ("sum", (2,)), ("sum", (-1,)),
                   ("add", (3, 4))]
    back = Profile.from_json(prof.to_json())
    assert [o.sources for o in back.ops] == [o.sources for o in prof.ops]
    bad = json.loads(prof.to_json())
    bad["ops"][0]["sources"] = ["x"]
    with pytest.raises(ProfileFormatError, match="sources is not a list of op indexes"):
        Profile.from_json(json.dumps(bad))


def _softmax_records(device: str):
    torch.manual_seed(0)
    x = torch.randn(4, 8, 64, device=device).half().requires_grad_(True)
    gy, gz = torch.randn(4, 8, 64, device=device), torch.randn(4, 8, 64, device=device)

    def run():
        y = torch.softmax(x, -1, dtype=torch.float32)
        z = F.log_softmax(x, dim=-1, dtype=torch.float32)
        torch.autograd.backward([y, z], [gy, gz])

    prof = count(run)
    return [(o.short_op, tuple(t.dtype for t in o.inputs), tuple(t.dtype for t in o.outputs), o.bytes_read,
             o.bytes_written) for o in prof.ops if "softmax" in o.short_op]


def test_a_float16_softmax_into_float32_counts_as_the_gpus_one_kernel():
    # x [4, 8, 64] fp16 = 2,048 elements: 4,096 B read, 8,192 B written as fp32, by one kernel
    # (_softmax with half_to_float), not a cast (4,096 + 8,192) and an fp32 softmax (8,192 + 8,192);
    # backward: dy and y read in fp32 (8,192 + 8,192), dx written in fp16 (4,096)
    f16, f32 = "float16", "float32"
    assert _softmax_records("cpu") == [
        ("_softmax", (f16,), (f32,), 4096, 8192), ("_log_softmax", (f16,), (f32,), 4096, 8192),
        ("_log_softmax_backward_data", (f32, f32), (f16,), 16384, 4096),
        ("_softmax_backward_data", (f32, f32), (f16,), 16384, 4096)]


@pytest.mark.gpu
def test_a_float16_softmax_into_float32_is_predicted_as_the_gpu_runs_it():
    assert _softmax_records("cpu") == _softmax_records("cuda")
