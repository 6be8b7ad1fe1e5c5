"""The cost model: FLOPs by math class and device-memory bytes of every operator.

Importing this package registers the built-in formulas (one module per family).
"""

from . import attention, comm, fastpath, matmul, movement, pointwise, training  # noqa: F401  (register formulas)
from .model import DTYPES, OpCall, OpCost, Settings, TensorMeta
from .registry import lookup, op_key, register_cost, unregister_cost

__all__ = ["DTYPES", "OpCall", "OpCost", "Settings", "TensorMeta", "lookup", "op_key", "register_cost",
           "unregister_cost"]
