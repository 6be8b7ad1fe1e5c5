"""One registry of cost formulas, keyed by operator, filled by a decorator.

    @register_cost(aten.mm)
    def mm(call: OpCall) -> OpCost:
        # a: [M, K] @ b: [K, N] -> [M, N]
        ...

A formula is a pure function of an OpCall (shapes, dtypes, arguments, the settings snapshot).
Keys are aten overload packets (`aten.mm`: every overload), single overloads (`aten.mm.out`),
or the string of any operator ("mylib::fused_rmsnorm"), so users can cost their own custom ops
and the Triton kernels they wrap with torch.library.  Registering a key twice is an error unless
`override=True`, which is how a user replaces a built-in formula.

Lookup order for an op: its overload, its packet, then the generic rules: view and metadata ops
cost nothing; ops tagged pointwise use the elementwise formula.  Anything else is uncounted:
the capture records it as such and reports it, never as a silent zero.
"""

from __future__ import annotations

from typing import Any, Callable

from .model import OpCall, OpCost

Formula = Callable[[OpCall], OpCost]

_FORMULAS: dict[str, Formula] = {}
_GENERIC: list[tuple[Callable[[Any], bool], Formula, str]] = []  # (matches op object, formula, name)


class OpName:
    """`aten.mm` -> the key "aten::mm", `aten.where.self` -> "aten::where.self", without touching
    torch.ops: an op that this torch version lacks is simply never looked up, not an import error."""

    def __init__(self, namespace: str, name: str | None = None):
        self._ns, self._name = namespace, name

    def __getattr__(self, item: str):
        if item.startswith("__"):
            raise AttributeError(item)
        if self._name is None:
            return OpName(self._ns, item)
        return f"{self._ns}::{self._name}.{item}"

    @property
    def key(self) -> str:
        return f"{self._ns}::{self._name}"

    def __repr__(self) -> str:
        return self.key


aten = OpName("aten")


def op_key(op: Any) -> str:
    """'aten::mm' for a packet, 'aten::mm.out' for an overload, strings normalized likewise."""
    if isinstance(op, str):
        s = op.strip()
        if "::" not in s and s.count(".") >= 1:  # "aten.mm" / "aten.mm.default"
            ns, rest = s.split(".", 1)
            s = f"{ns}::{rest}"
        return s
    if isinstance(op, OpName):
        return op.key
    name = getattr(op, "_qualified_op_name", None)  # OpOverloadPacket: "aten::mm"
    if name is not None:
        return name
    schema = getattr(op, "_schema", None)  # OpOverload
    if schema is not None:
        overload = schema.overload_name or "default"
        return f"{schema.name}.{overload}"
    raise TypeError(f"cannot use {op!r} as an operator key: give an aten op, an overload or 'ns::name'")


def register_cost(*ops: Any, override: bool = False) -> Callable[[Formula], Formula]:
    """Decorator: make `fn(call) -> OpCost` the cost formula of each op in `ops`."""
    if not ops:
        raise TypeError("register_cost needs at least one operator")
    keys = [op_key(op) for op in ops]

    def deco(fn: Formula) -> Formula:
        for key in keys:
            if key in _FORMULAS and not override and _FORMULAS[key] is not fn:
                raise ValueError(f"a cost formula for {key} is already registered "
                                 f"({_FORMULAS[key].__module__}.{_FORMULAS[key].__name__}); "
                                 "pass override=True to replace it")
            _FORMULAS[key] = fn
        _changed()
        return fn

    return deco


def unregister_cost(op: Any) -> None:
    _FORMULAS.pop(op_key(op), None)
    _changed()


def register_generic(name: str, matches: Callable[[Any], bool]) -> Callable[[Formula], Formula]:
    """A rule for a family of ops recognised by a predicate on the op object (tags, schema)."""

    def deco(fn: Formula) -> Formula:
        _GENERIC.append((matches, fn, name))
        _changed()
        return fn

    return deco


# op object -> its formula (or None), filled by `lookup`; cleared whenever a formula is registered
_MEMO: dict[Any, Formula | None] = {}
# bumped whenever a formula is registered or removed: what caches a lookup (the capture) compares it
GENERATION = 0


def _changed() -> None:
    global GENERATION
    _MEMO.clear()
    GENERATION += 1


def lookup(op: Any) -> Formula | None:
    """The formula for an op object (OpOverload) or key string, or None if it is uncounted."""
    if not isinstance(op, str):
        try:
            return _MEMO[op]
        except (KeyError, TypeError):
            pass
        found = _lookup(op)
        try:
            _MEMO[op] = found
        except TypeError:  # an unhashable op object: look it up each time
            pass
        return found
    return _lookup(op)


def _lookup(op: Any) -> Formula | None:
    if isinstance(op, str):
        key = op_key(op)
        return _FORMULAS.get(key) or _FORMULAS.get(key.rsplit(".", 1)[0])
    key = op_key(op)
    if key in _FORMULAS:
        return _FORMULAS[key]
    packet = getattr(op, "overloadpacket", None)
    if packet is not None and op_key(packet) in _FORMULAS:
        return _FORMULAS[op_key(packet)]
    for matches, fn, _ in _GENERIC:
        try:
            if matches(op):
                return fn
        except Exception:
            continue
    return None
