"""The cost model's vocabulary: tensor metadata, one operator call, and its cost.

## The bytes model

`bytes_read + bytes_written` of an op is the MINIMUM device-memory traffic of the op as issued:

1. every tensor input is read once and every tensor output written once;
2. a tensor counts the elements its view really touches: a dimension with stride 0
   (a broadcast, `expand`) counts once, a slice counts only its own elements, never the rest of
   the storage; an overlapping view (`unfold`, `as_strided`) never counts more than the span
   from its first to its last address, nor more than its storage holds past its offset;
3. an in-place op (`add_`) reads its `self` and writes it back; an `out=` argument is written,
   not read; `copy_`/`fill_`/`zero_` write their destination without reading it;
4. ops that index (embedding, gather, index_select, scatter, index_put) touch the rows/elements
   they address, not the whole table (an embedding lookup of n ids into a V-row table reads
   min(n, V) rows: repeated ids can be served from cache);
5. fused kernels (SDPA on a GPU, flex attention) read q, k, v once and write the output once:
   the score matrix never reaches device memory.  A materializing (math) attention is counted
   op by op and so pays for the score matrix it writes and reads back;
6. caches are ignored: data left in L2 by the previous kernel is still counted as a DRAM read.
   This is why the model is a floor for a cold cache and can overstate the traffic of a chain
   of small ops whose operands stay in L2 (Nsight Compute's `dram__bytes_read.sum` is the
   ground truth it is checked against);
7. the count describes the op as a GPU runs it, whatever device counts it: where a CPU or meta
   kernel returns something else (layer norm's per-row mean and rstd in bf16 on the CPU, float32
   on a GPU), the GPU's outputs are counted.

FLOPs count a fused multiply-add as 2, as Nsight Compute's tensor counters do, and are split by
math class (the class picks the compute roof): a matrix product on the matrix class of its
input dtype, elementwise work (a GEMM's bias epilogue included) on the fp32 vector class for
half-precision tensors, as PyTorch and cuBLAS compute it.  Communication is separate:
`comm_bytes` are the bytes each rank sends over a link (`link` names which), with no FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping

from ..math_class import MathClass
from ..roofline import intensity

# dtype name -> (bytes per element, math class of vector work, math class of matrix work)
DTYPES: dict[str, tuple[float, MathClass, MathClass]] = {
    "float64": (8, MathClass.FP64, MathClass.FP64_TENSOR),
    "float32": (4, MathClass.FP32, MathClass.FP32),  # matrix: TF32 when allowed (see OpCall)
    "float16": (2, MathClass.FP16, MathClass.FP16_TENSOR),
    "bfloat16": (2, MathClass.BF16, MathClass.BF16_TENSOR),
    "float8_e4m3fn": (1, MathClass.FP16, MathClass.FP8_TENSOR),
    "float8_e5m2": (1, MathClass.FP16, MathClass.FP8_TENSOR),
    "float8_e4m3fnuz": (1, MathClass.FP16, MathClass.FP8_TENSOR),
    "float8_e5m2fnuz": (1, MathClass.FP16, MathClass.FP8_TENSOR),
    "float8_e8m0fnu": (1, MathClass.FP16, MathClass.FP8_TENSOR),
    "complex64": (8, MathClass.FP32, MathClass.FP32),
    "complex128": (16, MathClass.FP64, MathClass.FP64),
    "int64": (8, MathClass.INT32, MathClass.INT32),
    "int32": (4, MathClass.INT32, MathClass.INT32),
    "int16": (2, MathClass.INT32, MathClass.INT32),
    "int8": (1, MathClass.INT32, MathClass.INT8_TENSOR),
    "uint8": (1, MathClass.INT32, MathClass.INT8_TENSOR),
    "uint16": (2, MathClass.INT32, MathClass.INT32),
    "uint32": (4, MathClass.INT32, MathClass.INT32),
    "uint64": (8, MathClass.INT32, MathClass.INT32),
    "bool": (1, MathClass.INT32, MathClass.INT32),
    "quint4x2": (0.5, MathClass.INT32, MathClass.INT4_TENSOR),
}


# Words in an op's name that mark matrix work (GEMMs, convolutions, attention, grouped GEMMs).
MATRIX_WORDS = ("mm", "matmul", "linear", "conv", "attention", "einsum", "addmv", "dot", "mv", "grouped")


def matrix_like(name: str) -> bool:
    """Whether an op's short name ("mm", "_grouped_mm", "convolution") says it may do matrix work."""
    return any(w in name for w in MATRIX_WORDS)


_DTYPE_NAMES: dict[Any, str] = {}
_DEVICE_NAMES: dict[Any, str] = {}


def dtype_name(dtype: Any) -> str:
    """'bfloat16' for torch.bfloat16 (and for the string itself)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        name = _DTYPE_NAMES[dtype] = str(dtype).replace("torch.", "")
        return name


@dataclass(frozen=True)
class TensorMeta:
    """What the cost model may know about a tensor: never its data."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    device: str = "cpu"
    storage_offset: int = 0
    storage_numel: int | None = None  # elements in the underlying storage, when known

    @classmethod
    def of(cls, t: Any, storage: bool = True) -> "TensorMeta":
        """From a torch.Tensor (real, meta or fake); reads shapes and strides only (and the size
        of its storage, unless storage=False: then storage_numel is None)."""
        try:
            shape = tuple(t.shape)
            stride = tuple(t.stride())
            offset = t.storage_offset()
            if not (all(type(s) is int for s in shape) and all(type(s) is int for s in stride)
                    and type(offset) is int):  # symbolic sizes (fake tensors under a shape env)
                shape, stride, offset = tuple(int(s) for s in shape), tuple(int(s) for s in stride), int(offset)
        except (RuntimeError, NotImplementedError):  # sparse / nested / opaque layouts
            shape = tuple(int(s) for s in t.shape)
            stride, offset = _contiguous_stride(shape), 0
        storage_numel = None
        if storage:
            try:
                itemsize = t.element_size()
                storage_numel = int(t.untyped_storage().nbytes() // itemsize) if itemsize else None
            except (RuntimeError, NotImplementedError, AttributeError, TypeError):
                pass
        device = t.device
        name = _DEVICE_NAMES.get(device)
        if name is None:
            name = _DEVICE_NAMES[device] = str(device)
        return cls(shape, stride, dtype_name(t.dtype), name, offset, storage_numel)

    @classmethod
    def contiguous(cls, shape: tuple[int, ...], dtype: str = "float32", device: str = "cpu") -> "TensorMeta":
        shape = tuple(int(s) for s in shape)
        return cls(shape, _contiguous_stride(shape), dtype_name(dtype), device, 0, math.prod(shape))

    @cached_property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> float:
        return DTYPES.get(self.dtype, (4,))[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @cached_property
    def touched_elements(self) -> int:
        """Distinct elements the view addresses: stride-0 dims count once (bytes model, rule 2)."""
        if any(s == 0 for s in self.shape):
            return 0
        n = math.prod(s for s, st in zip(self.shape, self.stride) if st != 0)
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(self.shape, self.stride))  # first..last address
        n = min(n, span)
        if self.storage_numel is not None:
            n = min(n, max(self.storage_numel - self.storage_offset, 0))
        return n

    @cached_property
    def bytes(self) -> float:
        """Bytes this view touches in device memory."""
        return self.touched_elements * self.itemsize

    @property
    def vector_class(self) -> MathClass:
        return DTYPES.get(self.dtype, (4, MathClass.FP32))[1]

    def matrix_class(self, allow_tf32: bool = False) -> MathClass:
        cls = DTYPES.get(self.dtype, (4, MathClass.FP32, MathClass.FP32))[2]
        if cls is MathClass.FP32 and allow_tf32 and self.dtype == "float32":
            return MathClass.TF32_TENSOR
        return cls

    def short(self) -> str:
        return "[" + ",".join(str(s) for s in self.shape) + "]"


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(stride))


@dataclass(frozen=True)
class Settings:
    """Global switches that change what kernel an op becomes; snapshotted at capture time."""

    allow_tf32_matmul: bool = False
    allow_tf32_conv: bool = True
    sdpa_backends: tuple[str, ...] = ("cudnn", "flash", "efficient", "math")  # enabled, in priority order
    attention_tile: tuple[int, int] = (128, 128)  # (query rows, key columns) of a fused attention tile


@dataclass(frozen=True)
class OpCall:
    """One call of an operator, as the cost formulas see it: tensors replaced by TensorMeta."""

    op: str  # "aten.mm.default"
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[TensorMeta, ...] = ()
    settings: Settings = field(default_factory=Settings)
    out_args: tuple[str, ...] = ()  # keyword-only arguments the op writes without reading (out=)
    arg_names: tuple[str, ...] = ()  # schema names of positional args, when known
    group_size: int | None = None  # ranks in the process group, for collectives
    values: Mapping[str, Any] = field(default_factory=dict)  # small integer tensors' values a formula may read
                                                             # (a grouped GEMM's offs), from real tensors only

    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        """Positional argument i, or keyword `name`, or `default`."""
        if i < len(self.args):
            return self.args[i]
        if name is not None and name in self.kwargs:
            return self.kwargs[name]
        if name is not None and name in self.arg_names:
            j = self.arg_names.index(name)
            if j < len(self.args):
                return self.args[j]
        return default

    def tensors(self) -> list[TensorMeta]:
        """Every tensor argument (also inside lists), in order."""
        out: list[TensorMeta] = []
        for a in (*self.args, *self.kwargs.values()):
            _collect(a, out)
        return out

    def tensor_inputs(self) -> list[TensorMeta]:
        """Tensor arguments that are read: all except out= arguments (bytes model, rule 3)."""
        out: list[TensorMeta] = []
        for name, a in self.named_args():
            if name in self.out_args:
                continue
            _collect(a, out)
        return out

    def named_args(self):
        """(schema name, value) of every argument; positional ones past arg_names are 'argN'."""
        for i, a in enumerate(self.args):
            yield (self.arg_names[i] if i < len(self.arg_names) else f"arg{i}"), a
        yield from self.kwargs.items()

    @property
    def out(self) -> TensorMeta:
        return self.outputs[0]


def _collect(a: Any, out: list[TensorMeta]) -> None:
    if isinstance(a, TensorMeta):
        out.append(a)
    elif isinstance(a, (list, tuple)):
        for x in a:
            _collect(x, out)


class Traffic:
    """Totals and intensity of anything with `flops` (by math class), `bytes_read` and
    `bytes_written`: an op's cost here, a profile's op record (rooflight.profile_data.OpRecord)."""

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """FLOP per byte of device-memory traffic (inf for work on data that moves no bytes)."""
        return intensity(self.total_flops, self.bytes)


@dataclass(frozen=True)
class OpCost(Traffic):
    """FLOPs by math class, device-memory bytes, and bytes sent over a link, of one op call."""

    flops: Mapping[MathClass, float] = field(default_factory=dict)
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    comm_bytes: float = 0.0
    link: str = ""  # "pcie" (host<->device), "peer" (GPU<->GPU collectives), "" (none)
    note: str = ""  # what the formula assumed, e.g. the attention backend

    def __post_init__(self) -> None:
        flops = {MathClass(k): float(v) for k, v in dict(self.flops).items() if v}
        object.__setattr__(self, "flops", MappingProxyType(flops))

    def plus(self, other: "OpCost") -> "OpCost":
        flops = dict(self.flops)
        for k, v in other.flops.items():
            flops[k] = flops.get(k, 0.0) + v
        note = "; ".join(n for n in (self.note, other.note) if n)
        return OpCost(flops, self.bytes_read + other.bytes_read, self.bytes_written + other.bytes_written,
                      self.comm_bytes + other.comm_bytes, self.link or other.link, note)


ZERO = OpCost()
