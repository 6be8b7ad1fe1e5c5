"""User registration of cost formulas: custom ops, overriding a built-in, duplicates, and a
formula that fails (recorded uncounted, never zero, never a crash)."""

from __future__ import annotations

import pytest
import torch

from rooflight.capture import count
from rooflight.costs import OpCall, OpCost, lookup, register_cost, unregister_cost
from rooflight.costs.registry import aten
from rooflight.math_class import MathClass


@torch.library.custom_op("rooflight_test::scaled_square", mutates_args=())
def scaled_square(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x * x * scale


@scaled_square.register_fake
def _(x, scale):
    return torch.empty_like(x)


@torch.library.custom_op("rooflight_test::broken", mutates_args=())
def broken(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@broken.register_fake
def _(x):
    return torch.empty_like(x)


def square_cost(call: OpCall) -> OpCost:
    # x * x * scale: 2 FLOPs per element; read x, write the output
    x = call.arg(0)
    return OpCost({MathClass.FP32: 2 * x.numel}, x.bytes, call.out.bytes, note="user formula")


@pytest.fixture
def registered():
    register_cost("rooflight_test::scaled_square")(square_cost)
    yield
    unregister_cost("rooflight_test::scaled_square")


def test_a_custom_op_is_uncounted_until_it_has_a_formula():
    prof = count(scaled_square, torch.randn(4, 8), 0.5)
    (rec,) = prof.ops
    # the custom op is opaque: its inner mul ops are not recorded, and it has no formula
    assert rec.op == "rooflight_test::scaled_square.default"
    assert not rec.counted and prof.uncounted() == {"rooflight_test::scaled_square.default": 1}


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_custom_op_is_counted_through_its_registered_formula(registered, device):
    prof = count(scaled_square, torch.randn(4, 8, device=device), 0.5)
    (rec,) = prof.ops
    # [4,8] fp32: 2*32 = 64 FLOPs; read 128, write 128
    assert rec.counted and rec.note == "user formula"
    assert (dict(rec.flops), rec.bytes_read, rec.bytes_written) == ({"fp32": 64}, 128, 128)


def test_registering_twice_without_override_is_an_error(registered):
    with pytest.raises(ValueError, match="already registered.*override=True"):
        register_cost("rooflight_test::scaled_square")(lambda call: OpCost())
    with pytest.raises(ValueError, match="aten::mm"):
        register_cost(aten.mm)(lambda call: OpCost())


def test_override_replaces_a_built_in_formula_and_can_be_restored():
    builtin = lookup(torch.ops.aten.mm.default)
    a, b = torch.randn(4, 8), torch.randn(8, 2)

    @register_cost(aten.mm, override=True)
    def mm_as_dot_products(call: OpCall) -> OpCost:
        return OpCost({MathClass.FP32: 1}, 0, 0, note="overridden")

    try:
        (rec,) = count(torch.mm, a, b).ops
        assert rec.note == "overridden" and rec.total_flops == 1
    finally:
        register_cost(aten.mm, override=True)(builtin)
    (rec,) = count(torch.mm, a, b).ops
    # restored: 2*4*2*8 = 128
    assert rec.total_flops == 128 and lookup(torch.ops.aten.mm.default) is builtin


def test_a_formula_that_raises_gives_an_uncounted_record_that_says_so():
    @register_cost("rooflight_test::broken")
    def needs_a_bias(call: OpCall) -> OpCost:
        return OpCost({}, call.arg(1).bytes, 0)  # there is no argument 1

    try:
        prof = count(broken, torch.randn(4, 8))
    finally:
        unregister_cost("rooflight_test::broken")
    (rec,) = prof.ops
    assert not rec.counted
    assert rec.note.startswith("formula needs_a_bias failed: AttributeError")
    assert prof.uncounted() == {"rooflight_test::broken.default": 1}
