"""Math classes: which execution units an operation's FLOPs run on.

The class chooses the compute roof: a bf16 matmul runs on tensor cores at ~989 TFLOP/s on an
H100 SXM, an fp32 elementwise op on the vector units at 67.  Spec files key their peak
figures by these names (`[peak_dense] bf16_tensor = ...`).
"""

from __future__ import annotations

from enum import Enum


class MathClass(str, Enum):
    FP64 = "fp64"
    FP64_TENSOR = "fp64_tensor"
    FP32 = "fp32"
    TF32_TENSOR = "tf32_tensor"
    FP16 = "fp16"  # vector (non-tensor) half precision
    BF16 = "bf16"  # vector (non-tensor) bfloat16
    FP16_TENSOR = "fp16_tensor"  # fp16 inputs, fp32 accumulate
    FP16_TENSOR_FP16_ACC = "fp16_tensor_fp16_acc"  # GeForce cards quote this at 2x the fp32-acc rate
    BF16_TENSOR = "bf16_tensor"  # bf16 inputs, fp32 accumulate
    FP8_TENSOR = "fp8_tensor"
    INT8_TENSOR = "int8_tensor"
    INT4_TENSOR = "int4_tensor"
    INT32 = "int32"  # integer / boolean vector work (index arithmetic, comparisons)

    @property
    def is_integer(self) -> bool:
        return self in (MathClass.INT8_TENSOR, MathClass.INT4_TENSOR, MathClass.INT32)

    @property
    def is_tensor(self) -> bool:
        return self.value.endswith("_tensor") or self is MathClass.FP16_TENSOR_FP16_ACC

    def __str__(self) -> str:  # "bf16_tensor", not "MathClass.BF16_TENSOR"
        return self.value


def is_tensor_name(name: str) -> bool:
    """Whether a math class written as a string ("bf16_tensor") runs on tensor cores; False for a
    name that is no MathClass."""
    try:
        return MathClass(name).is_tensor
    except ValueError:
        return False


# Where a chip has no figure for a class, the work runs as the chip would run it:
# e.g. fp8 matmuls on a chip without fp8 are upcast to fp16 tensor math, TF32 on a chip without
# TF32 runs as plain fp32, vector bf16 without a quoted rate runs at the fp32 vector rate.
FALLBACK: dict[MathClass, MathClass] = {
    MathClass.FP64_TENSOR: MathClass.FP64,
    MathClass.TF32_TENSOR: MathClass.FP32,
    MathClass.FP16: MathClass.FP32,
    MathClass.BF16: MathClass.FP32,
    MathClass.INT32: MathClass.FP32,
    MathClass.FP16_TENSOR_FP16_ACC: MathClass.FP16_TENSOR,
    MathClass.BF16_TENSOR: MathClass.FP16_TENSOR,
    MathClass.FP8_TENSOR: MathClass.FP16_TENSOR,
    MathClass.INT4_TENSOR: MathClass.INT8_TENSOR,
    MathClass.INT8_TENSOR: MathClass.FP16_TENSOR,
}
