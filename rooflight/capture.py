"""Capture: run a callable and record every operation it dispatches, with its cost.

A TorchDispatchMode sees each aten op below autograd (so `linear` arrives as `t` + `addmm`,
`einsum` as the products it decomposes into) on real, meta and fake tensors alike.  Around it:

- a wrapper of nn.Module.__call__ keeps the module path (`layers.3.attn.wo`) of every op;
- the region stack of rooflight.regions gives the user region;
- a TorchFunctionMode catches `scaled_dot_product_attention` before the dispatcher picks a
  backend: one SDPA call reaches different aten ops by device (on CPU the CPU flash kernel, on
  meta the math path), so off the GPU the call is costed as the kernel a GPU would run, and the
  record says which backend it assumed.  On a real CUDA device the aten op that runs is costed,
  and while a model whose weights are on CUDA runs, the function mode is set aside (it would cost
  a Python call for every torch call and tensor attribute there, for nothing).
  Autograd does not carry a function mode into backward, so activation checkpointing's
  recomputation (torch.utils.checkpoint, either kind) gets it back from the capture: off the GPU
  the recomputed forward is counted as the forward was, and saves the same tensors.
- flex attention's higher-order op is costed from its BlockMask (the blocks it really visits);
- `torch.compile`d code runs eagerly during a capture (`set_stance("force_eager")`), so the
  counts are those of the eager op graph.

Data-dependent shapes (nonzero, masked_select, .item()) work on real tensors; on meta or fake
tensors they raise CountError, which says to count on real (CPU) tensors.

Every op of a run passes through here, so the per-op path is kept short (benchmarks/capture_speed.py
measures it): a call's cost is memoised on its arguments' metadata, each op leaves one row and the
OpRecords are built after the run; Python's full garbage collections skip the objects that existed
before the capture (gc.freeze) and are paused while the records are built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import sys
import time
from collections import Counter
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.overrides import TorchFunctionMode
from torch._ops import OpOverload as _OpOverload
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

from ._version import __version__
from . import regions as _regions
from .costs import functions as _fn
from .costs.model import OpCall, OpCost, Settings, TensorMeta, matrix_like
from .costs import registry as _registry
from .costs.registry import lookup, op_key
from .detect import describe_cpu
from .errors import CountError
from .profile_data import OpRecord, Profile, now_iso
from .steps import TopCall, segment

OP_LABEL_PREFIX = "rooflight.op:"

_DATA_DEPENDENT_TAGS = tuple(t for t in (getattr(torch.Tag, "dynamic_output_shape", None),
                                         getattr(torch.Tag, "data_dependent_output", None)) if t is not None)


# ---------------------------------------------------------------------------- settings


def enabled_sdpa_backends() -> tuple[str, ...]:
    """The SDPA backends enabled now (sdpa_kernel contexts included), in torch's priority order."""
    names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
    # Off the GPU, predict for the GPU rooflight is usually pointed at: torch 2.11 on an H100 tries
    # cuDNN first (benchmarks/results/gpu_facts.json), while a CPU-only build reports flash first.
    order = ["cudnn", "flash", "efficient", "math"]
    if torch.cuda.is_available():
        try:
            order = [names.get(int(i), "") for i in torch._C._get_sdp_priority_order()]
        except (AttributeError, RuntimeError):
            pass
    enabled = {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "math": torch.backends.cuda.math_sdp_enabled(),
        "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)(),
    }
    return tuple(b for b in order if enabled.get(b, False))


def tf32_matmul_now() -> bool:
    """Whether fp32 matmuls may run on TF32 tensor cores now (read at each op: a workload may
    call torch.set_float32_matmul_precision inside the run)."""
    if torch.get_float32_matmul_precision() != "highest":
        return True
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except (AttributeError, RuntimeError):
        return False


def snapshot_settings() -> Settings:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf32_mm = torch.get_float32_matmul_precision() != "highest"
        try:
            tf32_mm = tf32_mm or bool(torch.backends.cuda.matmul.allow_tf32)
        except (AttributeError, RuntimeError):
            pass
        try:
            tf32_conv = bool(torch.backends.cudnn.allow_tf32)
        except (AttributeError, RuntimeError):
            tf32_conv = True
    return Settings(allow_tf32_matmul=tf32_mm, allow_tf32_conv=tf32_conv, sdpa_backends=enabled_sdpa_backends())


# ---------------------------------------------------------------------------- helpers


def _is_fake(t: Any) -> bool:
    return isinstance(t, FakeTensor)


def _meta(x: Any, storage: bool = True) -> Any:
    """Tensors -> TensorMeta (inside lists too; with their storage's size or not); other values unchanged."""
    if isinstance(x, torch.Tensor):
        return TensorMeta.of(x, storage)
    if isinstance(x, (list, tuple)):
        return type(x)(_meta(v, storage) for v in x) if not hasattr(x, "_fields") else tuple(
            _meta(v, storage) for v in x)
    return x


def _most_common_device(inputs: list[TensorMeta], outputs: list[TensorMeta]) -> str:
    """The device most of an op's tensors are on (the first seen on a tie); "" for none."""
    first = inputs[0].device if inputs else outputs[0].device if outputs else ""
    if all(t.device == first for t in inputs) and all(t.device == first for t in outputs):
        return first
    return Counter(t.device for t in (*inputs, *outputs)).most_common(1)[0][0]


def _flat_tensors(x: Any, storage: bool = True) -> list[TensorMeta]:
    out: list[TensorMeta] = []
    if isinstance(x, torch.Tensor):
        out.append(TensorMeta.of(x, storage))
    elif isinstance(x, (list, tuple)):
        for v in x:
            out.extend(_flat_tensors(v, storage))
    return out


def _group_size(args: tuple, kwargs: dict, names: tuple[str, ...]) -> int | None:
    values = dict(zip(names, args))
    values.update(kwargs)
    if isinstance(values.get("group_size"), int):
        return values["group_size"]
    for key in ("process_group", "group"):
        pg = values.get(key)
        if pg is not None and not hasattr(pg, "size") and isinstance(pg, torch.ScriptObject):
            try:  # the eager c10d ops (dist.all_reduce) hand over the group boxed as a ScriptObject
                from torch.distributed import ProcessGroup

                pg = ProcessGroup.unbox(pg)
            except Exception:
                pg = None
        if pg is not None and hasattr(pg, "size"):
            try:
                return int(pg.size())
            except Exception:
                pass
    name = values.get("group_name")
    if isinstance(name, str):
        try:
            from torch.distributed.distributed_c10d import _resolve_process_group

            return int(_resolve_process_group(name).size())
        except Exception:
            return None
    return None


def _data_dependent(func: Any, err: BaseException, args: tuple, kwargs: dict) -> bool:
    name = type(err).__name__
    if name in ("DynamicOutputShapeException", "DataDependentOutputException", "GuardOnDataDependentSymNode"):
        return True
    tags = getattr(func, "tags", ())
    dd = any(t in tags for t in _DATA_DEPENDENT_TAGS) or "_local_scalar_dense" in str(func)
    if not dd:
        return False
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    return any(t.device.type == "meta" or _is_fake(t) for t in tensors)


# ---------------------------------------------------------------------------- the recorder


class Recorder:
    """Accumulates OpRecords; shared by the dispatch mode, the function mode and _watch_modules."""

    def __init__(self, settings: Settings, label_ops: bool = False, time_ops: bool = False,
                 distinct: Callable[[bool], None] | None = None):
        self.settings = settings
        self.label_ops = label_ops  # wrap each op in a profiler label so kernels can be joined to it
        self.time_ops = time_ops  # host wall time of each op (CPU timing), by op index
        # the counter pass (rooflight.ncu): distinct(True) before the first op of each distinct call
        # (op and argument metadata) runs, distinct(False) after it; the others only run
        self.distinct = distinct
        self.wraps = label_ops or time_ops or distinct is not None
        self.first_of: dict[Any, int] = {}  # a distinct call's key -> the index of its first op
        self.same_as: dict[int, int] = {}  # op index -> the earlier op that made the same call
        self.times: dict[int, tuple[float, float]] = {}
        # per op, its call's payload and its place (module frame, region, phase): the OpRecords
        # are built from them after the run (`records`), outside the user's code and with the
        # collector paused.  Two lists of objects that already exist (a place is interned), so an
        # op adds no object for Python's garbage collector to walk (a 40k-op run would add 40k)
        self.payloads: list[dict] = []
        self.places: list[tuple] = []
        # the ids of each op's tensors, read into its record's `sources` (which op made each input)
        # when built: one flat list of ints (no object for the collector), per op from its offset
        # in `id_at` (-1: an op recorded from metadata): its inputs' count, its outputs' count,
        # the inputs' ids, the outputs' ids
        self.tensor_ids: list[int] = []
        self.id_at: list[int] = []
        self._sources: list[tuple[int, ...]] = []
        self._producer: dict[int, int] = {}  # tensor id -> the op that last produced it
        self._external: dict[int, int] = {}  # tensor id -> its number (< 0) as a tensor no op made
        self._interned: dict[tuple, tuple] = {}
        self._built: list[OpRecord] = []
        self.regions: list[str] = []
        self._seen_regions: set[str] = set()
        self.suppress = 0
        self.saw_fake = False  # fake tensors: shapes only, whatever device they claim
        self.inner: list[str] = []
        # the module calls running, each as the place of an op in its forward (no user region):
        # ((module id, path, type name), "", "forward")
        self.frames: list[tuple[tuple[int, str, str], str, str]] = []
        # autograd node sequence number -> the module frame whose forward op made the node: a
        # backward op runs inside that node (torch._C._current_autograd_node), so it is placed in
        # the module whose forward it differentiates
        self._node_frames: dict[int, tuple[int, str, str]] = {}
        self._names: dict[int, dict[int, str]] = {}
        self.calls: list[TopCall] = []  # outermost module calls (rooflight.steps)
        self._call_start: tuple[int, str, int] | None = None
        self.ranges: list[tuple[int, int | None]] = []  # torch.cuda.profiler start/stop, as op indexes
        self.optimizer_depth = 0  # inside an optimizer's step()
        # a backward has run since the last outermost module call began: an op in no module now
        # works on the gradients (clip_grad_norm_, GradScaler's unscale), phase "after backward"
        self.after_backward = False
        self._memo: dict[Any, tuple] = {}  # a call's signature -> (op, its payload: _payload)
        self._memo_generation = _registry.GENERATION  # the formulas the memo was filled with
        # the capture's function mode, set aside while a model on the GPU runs (its rules are for
        # tensors off the GPU, and it costs a Python call for every torch call and tensor attribute)
        self.function_mode: TorchFunctionMode | None = None
        self._set_aside = False
        self.recomputing = 0  # inside an activation checkpoint's recomputation (_watch_recomputation)
        self._root_names: dict[int, str] = {}  # module id -> path, in the outermost call running
        self.compiled = False  # a module called was torch.compile'd (an OptimizedModule around it)

    # -- module calls (_watch_modules)
    def enter_module(self, module: torch.nn.Module) -> None:
        if not self.frames and not self.recomputing:
            self.after_backward = False
            self._call_start = (id(module), type(module).__name__, len(self.payloads),
                                torch.is_grad_enabled() and module.training)
            if self.function_mode is not None and not self._set_aside and _on_gpu(module):
                self._set_aside = _set_aside(self.function_mode)
            names = self._names.get(id(module))
            if names is None:
                names = {id(m): n for n, m in module.named_modules(remove_duplicate=False)}
                if any("_orig_mod" in n for n in names.values()):
                    self.compiled = True
                    names = {k: _user_path(n) for k, n in names.items()}
                self._names[id(module)] = names
            self._root_names = names
            path = ""
        else:
            path = self._root_names.get(id(module))
            if path is None:  # called by the model but not one of its modules: named by what it is
                parent = self.frames[-1][0][1] if self.frames else ""
                name = _outside_name(module)
                path = parent if parent.rsplit(".", 1)[-1] == name else f"{parent}.{name}" if parent else name
        self.frames.append(((id(module), path, type(module).__name__), "", "forward"))

    def exit_module(self, module: torch.nn.Module) -> None:
        for i in range(len(self.frames) - 1, -1, -1):
            if self.frames[i][0][0] == id(module):
                del self.frames[i:]
                break
        if not self.frames and self._call_start is not None and self._call_start[0] == id(module):
            mid, mtype, start, grad = self._call_start
            self.calls.append(TopCall(mid, mtype, start, len(self.payloads), grad=grad))
            self._call_start = None
        if not self.frames and not self.recomputing:
            self.restore_function_mode()

    def owned_calls(self) -> list[TopCall]:
        """The outermost calls, each with the module called outermost elsewhere in the run that
        holds it (TopCall.within) and its path there; of several holders, the nearest (where its
        path is shortest)."""
        roots = {c.module_id for c in self.calls}
        out = []
        for c in self.calls:
            holders = [(len(names[c.module_id]), r, names[c.module_id]) for r in roots if r != c.module_id
                       and (names := self._names.get(r)) and names.get(c.module_id)]
            if holders:
                _, r, path = min(holders)
                c = dataclasses.replace(c, within=r, path=path)
            out.append(c)
        return out

    def where_now(self) -> tuple[list, dict[int, str]]:
        """The module calls running and the outermost one's names: what a checkpoint's
        recomputation runs within (recompute_within), taken when its forward runs."""
        return list(self.frames), self._root_names

    @contextlib.contextmanager
    def recompute_within(self, where: tuple[list, dict[int, str]] | None) -> Iterator[None]:
        """A checkpoint's recomputation, in the module calls its forward ran in (`where`: where_now
        then; None: where it is now): its ops are the "recompute" phase, in those modules and the
        ones it calls (a checkpointed function may run outside any module call of its own), and
        module calls made in it are no outermost calls (rooflight.steps)."""
        frames, names = self.frames, self._root_names
        if where is not None:
            self.frames, self._root_names = list(where[0]), where[1]
        self.recomputing += 1
        try:
            yield
        finally:
            self.recomputing -= 1
            self.frames, self._root_names = frames, names

    def restore_function_mode(self) -> None:
        if self._set_aside:
            torch._C._push_on_torch_function_stack(self.function_mode)
            self._set_aside = False

    # -- torch.cuda.profiler's capture range, an optimizer's step
    def profiler_start(self) -> None:
        if not self.ranges or self.ranges[-1][1] is not None:
            self.ranges.append((len(self.payloads), None))

    def profiler_stop(self) -> None:
        if self.ranges and self.ranges[-1][1] is None:
            self.ranges[-1] = (self.ranges[-1][0], len(self.payloads))

    def optimizer_enter(self, *_: Any) -> None:
        self.optimizer_depth += 1

    def optimizer_exit(self, *_: Any) -> None:
        self.optimizer_depth = max(self.optimizer_depth - 1, 0)

    # -- recording
    def next_index(self) -> int:
        return len(self.payloads)

    @contextlib.contextmanager
    def label(self, index: int, key: Any = None) -> Iterator[None]:
        """Around the execution of op `index`: a profiler label and/or a wall-clock span, or (the
        counter pass) the marks around the first op of each distinct call (`key`; None: always
        marked)."""
        if self.distinct is not None:
            first = self.first_of.setdefault(key, index) if key is not None else index
            if first != index:
                self.same_as[index] = first
                yield
                return
            self.distinct(True)
            try:
                yield
            finally:
                self.distinct(False)
        elif self.label_ops:
            with torch.profiler.record_function(f"{OP_LABEL_PREFIX}{index}"):
                yield
        elif self.time_ops:
            t0 = time.perf_counter()
            yield
            self.times[index] = (t0, time.perf_counter())
        else:
            yield

    def _where(self) -> tuple[tuple[int, str, str], str, str]:
        """(module frame, region, phase) of the op running now: one tuple for each place."""
        stack = _regions._STACK
        region = "/".join(stack) if stack else ""
        if region and region not in self._seen_regions:
            for r in _regions.current_paths():
                if r not in self._seen_regions:
                    self._seen_regions.add(r)
                    self.regions.append(r)
        if self.recomputing:
            # a checkpoint's recomputed forward, in the module running it; the nodes it makes (the
            # reentrant kind differentiates them) are that module's, as in a forward
            frame = self.frames[-1][0] if self.frames else _NO_FRAME
            self._node_frames.setdefault(_next_sequence_nr() - 1, frame)
            place = (frame, region, "recompute")
        elif _graph_task_id() != -1:
            node = _current_node()
            frame = self._node_frames.get(node._sequence_nr(), _NO_FRAME) if node is not None else _NO_FRAME
            place = (frame, region, "backward")
            self.after_backward = True
        elif self.frames:
            self._node_frames.setdefault(_next_sequence_nr() - 1, self.frames[-1][0])
            place = (self.frames[-1][0], region, "forward")
        else:
            self._node_frames.setdefault(_next_sequence_nr() - 1, _NO_FRAME)
            place = (_NO_FRAME, region, "optimizer" if self.optimizer_depth else
                     "after backward" if self.after_backward else "forward")
        return self._interned.setdefault(place, place)

    def node_of(self, out: Any) -> None:
        """`out` came from an autograd Function (a predicted backward): its node is the current
        module's, whatever nodes the call made inside it."""
        fn = getattr(out, "grad_fn", None)
        if fn is not None and (_graph_task_id() == -1 or self.recomputing):
            self._node_frames[fn._sequence_nr()] = self.frames[-1][0] if self.frames else _NO_FRAME

    def add(self, op: str, inputs: list[TensorMeta], outputs: list[TensorMeta], cost: OpCost | None,
            note: str = "") -> None:
        self._append(_payload(op, inputs, outputs, cost, note))

    def record_aten(self, func: Any, facts: "_Facts", args: tuple, kwargs: dict, out: Any) -> None:
        """Record one aten op with its cost.  The cost is a pure function of the op, its formula,
        its arguments' metadata and the settings, so it is computed once per distinct call and
        reused (a 32-layer model repeats each call 32 times; a decode loop, once per token).
        This runs for every op of a run: it is written for speed (see benchmarks/capture_speed.py)."""
        values = tf32 = None
        try:
            a = []  # _signature(args), in line
            for v in args:
                tv = type(v)
                if tv in _PLAIN_TENSORS:
                    a.append(_tensor_signature(v))
                elif tv in _PLAIN:
                    a.append(v)
                elif tv is list and v and type(v[0]) is int:  # an int[] (sizes, dims): all ints
                    a.append(tuple(v))
                else:
                    a.append(_signature(v))
            a = tuple(a)
            # an op with a tensor argument: its output's layout, device and storage follow from the
            # arguments' (in the key), its shape and dtype are all that may not (data-dependent
            # shapes: nonzero, a boolean mask's index); a factory's follow from global defaults
            if type(out) in _PLAIN_TENSORS:
                o = (out.shape, out.dtype) if facts.from_inputs else _tensor_signature(out)
            else:
                o = _output_signature(out) if facts.from_inputs else _signature(out)
            if facts.special:
                # only fp32 matrix work reads the TF32 switch: None where it cannot matter
                tf32 = tf32_matmul_now() if facts.matmul_like and _has_fp32(a) else None
                values = _values(facts.key, args, kwargs) if facts.reads_values else None
                sig = (id(func), a, _signature(kwargs) if kwargs else None, o,
                       tuple(values.items()) if values else None, tf32,
                       _storages(args) if facts.storage else None)
            else:
                sig = (id(func), a, _signature(kwargs) if kwargs else None, o)
            hit = self._memo.get(sig)
        except (TypeError, RuntimeError, NotImplementedError):
            # an argument that cannot be hashed, a fake tensor, a tensor with no signature, an
            # output with no shape (a nested tensor's raises): costed every time
            sig, hit = None, None
            if not self.saw_fake and _any_fake(args, kwargs, out):
                self.saw_fake = True
            tf32 = tf32_matmul_now() if facts.matmul_like else None
            values = _values(facts.key, args, kwargs) if facts.reads_values else None
        if hit is None:
            hit = _payload(*self._cost(func, facts.key, facts.arg_names, facts.out_args, facts.formula, args, kwargs,
                                       out, tf32, values, facts.storage))
            if sig is not None:
                self._memo[sig] = (func, hit)  # func: the id in the signature stays its own
        else:
            hit = hit[1]
        at = len(self.tensor_ids)
        _tensor_ids(self.tensor_ids, args, kwargs, facts.out_args, out)
        self._append(hit, at)

    def _append(self, payload: dict, ids_at: int = -1) -> None:
        """One op: its call's payload (_payload) and where it ran now (_where; in line for the
        common case, an op inside a module's forward and no user region); `ids_at`, where its
        tensors' ids begin in `tensor_ids` (-1: an op recorded from metadata has none)."""
        self.payloads.append(payload)
        self.id_at.append(ids_at)
        if _regions._STACK or _graph_task_id() != -1 or not self.frames or self.recomputing:
            self.places.append(self._where())
        else:
            # the autograd node this op made, if any, has the number before the next one; the
            # first op to see a number is the one whose node it is (later ones made no node)
            self._node_frames.setdefault(_next_sequence_nr() - 1, self.frames[-1][0])
            self.places.append(self.frames[-1])

    @property
    def records(self) -> list[OpRecord]:
        """The OpRecords of the ops recorded so far (built once each)."""
        if len(self._built) < len(self.payloads):
            self._built.extend(self.build(len(self._built)))
        return self._built

    def build(self, start: int = 0) -> list[OpRecord]:
        """New OpRecords of the ops from `start` on (nobody else holds them)."""
        at, out = OpRecord.at, []
        payloads, places = self.payloads, self.places
        sources = self.sources()
        for i in range(start, len(payloads)):
            (_, module, module_type), region, phase = places[i]
            out.append(at(payloads[i], i, module, module_type, region, phase, sources[i]))
        return out

    def sources(self) -> list[tuple[int, ...]]:
        """Per op, where each tensor input came from: the index of the op that last produced a
        tensor of that id before it (>= 0), or a number < 0 per tensor no recorded op made (a
        parameter, the model's input); () for an op recorded from metadata.  A tensor's id is
        reused after it is freed, and is its producer's until another op makes a tensor of it."""
        src, producer, external, ids = self._sources, self._producer, self._external, self.tensor_ids
        for i in range(len(src), len(self.id_at)):
            at = self.id_at[i]
            if at < 0:
                src.append(())
                continue
            n_in, n_out = ids[at], ids[at + 1]
            row = []
            for x in ids[at + 2:at + 2 + n_in]:
                p = producer.get(x)
                if p is None:
                    p = external.get(x)
                    if p is None:
                        p = external[x] = -1 - len(external)
                row.append(p)
            for x in ids[at + 2 + n_in:at + 2 + n_in + n_out]:
                producer[x] = i
            src.append(tuple(row))
        return src

    def _cost(self, func, key, arg_names, out_args, formula, args, kwargs, out, tf32: bool | None, values=None,
              storage: bool = True):
        # storage: whether the metadata holds each tensor's storage size (only attention's advice
        # reads it, from its K; the memo key holds it only for the ops that keep it)
        outputs = _flat_tensors(out, storage)
        margs = _meta(tuple(args), storage)
        mkwargs = {k: _meta(v, storage) for k, v in kwargs.items()} if kwargs else {}
        settings = self.settings
        if tf32 is not None and tf32 != settings.allow_tf32_matmul:  # only fp32 matrix work reads it
            settings = dataclasses.replace(settings, allow_tf32_matmul=tf32)
        grouped = "c10d" in key or key in _GROUPED or any(k in _GROUP_ARGS for k in kwargs)
        call = OpCall(key, margs, mkwargs, tuple(outputs), settings, out_args, arg_names,
                      _group_size(args, kwargs, arg_names) if grouped else None, values or {})
        inputs = call.tensor_inputs()
        if formula is None:
            return call.op, inputs, outputs, None, ""
        try:
            return call.op, inputs, outputs, formula(call), ""
        except Exception as err:  # a formula that cannot read these arguments: say so, never zero
            return call.op, inputs, outputs, None, f"formula {formula.__name__} failed: {type(err).__name__}: {err}"


def _call_key(func: Any, facts: "_Facts", args: tuple, kwargs: dict) -> Any:
    """What makes two calls launch the same kernels on the same amounts of data: the op and its
    arguments' metadata; None (measure every call) where the work depends on tensor values (a
    data-dependent op) or an argument has no signature."""
    if any(t in _DATA_DEPENDENT_TAGS for t in getattr(func, "tags", ())) or facts.reads_values:
        return None
    try:
        return (id(func), _signature(args), _signature(kwargs) if kwargs else None)
    except TypeError:
        return None


def _values(key: str, args: tuple, kwargs: dict) -> dict[str, tuple]:
    """The few tensor values a formula needs, read from real tensors only: a grouped GEMM's offs
    (the tokens each expert got; a host read, as the grouped GEMM's own launch needs)."""
    if not key.startswith("aten::_grouped_mm"):
        return {}
    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    if isinstance(offs, torch.Tensor) and offs.device.type != "meta" and not _is_fake(offs):
        return {"offs": tuple(int(v) for v in offs.tolist())}
    return {}


def _tensor_ids(acc: list[int], args: tuple, kwargs: dict, out_args: tuple[str, ...], out: Any) -> None:
    """Onto `acc`: the number of input tensors, of output tensors, the inputs' ids in the order of
    OpCall.tensor_inputs, the outputs' ids (Recorder.sources reads which op made which input)."""
    head = len(acc)
    acc += (0, 0)
    for v in args:
        _ids_into(v, acc)
    if kwargs:
        for k, v in kwargs.items():
            if k not in out_args:
                _ids_into(v, acc)
    acc[head] = len(acc) - head - 2
    _ids_into(out, acc)
    acc[head + 1] = len(acc) - head - 2 - acc[head]


def _ids_into(v: Any, acc: list[int]) -> None:
    if isinstance(v, torch.Tensor):
        acc.append(id(v))
    elif type(v) in (list, tuple):
        for x in v:
            _ids_into(x, acc)


def _payload(op: str, inputs, outputs, cost: OpCost | None, note: str) -> dict:
    """What the OpRecords of a call share, apart from the index and where each ran (OpRecord.shared)."""
    device = _most_common_device(inputs, outputs)
    if cost is None:
        return OpRecord.shared(op, device, tuple(inputs), tuple(outputs), MappingProxyType({}), 0.0, 0.0, 0.0, "",
                               False, note or "no cost formula")
    flops = MappingProxyType({k.value: float(v) for k, v in cost.flops.items()})
    return OpRecord.shared(op, device, tuple(inputs), tuple(outputs), flops, cost.bytes_read, cost.bytes_written,
                           cost.comm_bytes, cost.link, True, "; ".join(x for x in (cost.note, note) if x))


_PLAIN = frozenset((int, float, bool, str, type(None)))
_NO_FRAME = (0, "", "")  # an op outside any module call
_graph_task_id = torch._C._current_graph_task_id  # != -1 inside autograd's backward
_current_node = torch._C._current_autograd_node  # the node autograd's backward is running, or None
_next_sequence_nr = torch._C._autograd._get_sequence_nr  # the number the next autograd node will take


_PLAIN_TENSORS = frozenset((torch.Tensor, torch.nn.Parameter))


def _tensor_signature(x: torch.Tensor) -> tuple:
    if type(x) not in _PLAIN_TENSORS and (isinstance(x, FakeTensor) or x.is_nested):
        # fake: shapes may be symbolic; a jagged nested tensor (a subclass) answers what follows
        raise TypeError("no signature")  # costed every time
    try:  # a sparse, nested or mkldnn tensor has no sizes or strides: it raises here
        # not its storage's size: a valid view never reaches past its storage, so no byte count
        # reads it (only attention's advice, whose ops key it apart: _storages)
        return (_TENSOR, x.shape, x.stride(), x.storage_offset(), x.dtype, x.device)
    except (RuntimeError, NotImplementedError):
        raise TypeError("no signature") from None  # costed every time (rare)


def _storages(args: tuple) -> tuple:
    """The storage sizes of an op's tensor arguments (attention: its K's tells the KV cache reserved)."""
    return tuple([v.untyped_storage().nbytes() for v in args if isinstance(v, torch.Tensor)])


def _signature(x: Any) -> Any:
    """A hashable stand-in for an argument: a tensor by its metadata (never its data)."""
    t = type(x)
    if t in _PLAIN:
        return x
    if t in _PLAIN_TENSORS or isinstance(x, torch.Tensor):
        return _tensor_signature(x)
    if t is tuple or t is list:  # one loop, no generator: this runs for every op's arguments
        out = []
        for v in x:
            tv = type(v)
            out.append(v if tv in _PLAIN else _tensor_signature(v) if tv in _PLAIN_TENSORS else _signature(v))
        return tuple(out)
    if t is dict:
        return tuple([(k, _signature(v)) for k, v in x.items()])
    if isinstance(x, (list, tuple)):
        return tuple(_signature(v) for v in x)
    hash(x)
    return x


def _any_fake(args: tuple, kwargs: dict, out: Any) -> bool:
    """Whether a call's arguments or outputs hold a fake tensor (shapes only)."""
    values = (*args, *kwargs.values(), out)
    return any(isinstance(t, FakeTensor) for t in values) or any(
        isinstance(t, FakeTensor) for v in values if isinstance(v, (list, tuple)) for t in v)


def _output_signature(x: Any) -> Any:
    """An op's outputs, where its tensor arguments fix all but their shapes and dtypes."""
    t = type(x)
    if t in _PLAIN_TENSORS:
        return (x.shape, x.dtype)
    if t is tuple or t is list:
        return tuple([(v.shape, v.dtype) if type(v) in _PLAIN_TENSORS else _signature(v) for v in x])
    return _signature(x)


_TENSOR = object()


def _has_fp32(sig: Any) -> bool:
    """Whether a signature (of an op's arguments) holds an fp32 tensor."""
    if type(sig) is tuple:
        if sig and sig[0] is _TENSOR:
            return sig[4] is _FP32
        for v in sig:
            if type(v) is tuple and _has_fp32(v):
                return True
    return False


_FP32 = torch.float32


# OpOverload.__call__ only calls its _op: call that directly (one Python frame less per op)
_DIRECT = getattr(_OpOverload.__call__, "__code__", None) is not None and _OpOverload.__call__.__code__.co_names == ("_op",)


class _Facts(NamedTuple):
    """What an op's schema says, read once (again after a formula is registered: a user may,
    mid-run)."""

    op: Any  # the op itself: it keeps its id, the cache's key, its own
    key: str | None  # "aten::mm.default"; None for what is not work (profiler labels, prim::device)
    arg_names: tuple[str, ...]  # positional arguments
    out_args: tuple[str, ...]  # out= arguments
    formula: Any  # the cost formula, or None
    matmul_like: bool  # reads the TF32 switch
    reads_values: bool  # its formula reads tensor values (a grouped GEMM's offs)
    generation: int  # the registry's, when read
    call: Any  # what runs it: the op, or its _op past OpOverload's Python wrapper
    from_inputs: bool  # it takes a tensor: its outputs' layouts follow from its arguments (record_aten)
    storage: bool  # attention: its tensors' metadata hold their storage's size (the KV cache reserved)
    special: bool  # matmul_like, reads_values or storage: its cache key holds the TF32 switch, the values
    # read and the storage sizes
    decompose: bool = False  # only a composite kernel: run as the ops it is made of (seen under inference_mode)


# id(op) -> its facts (a cached entry holds the op, so its id is not reused); the dispatch mode reads
# it, and reads an op's schema again (_read_facts) when the entry is another op's or a formula was
# registered since
_FACTS: dict[int, _Facts] = {}
_GROUP_ARGS = ("group_size", "process_group", "group", "group_name")
_GROUPED: set[str] = set()  # ops outside c10d whose schema names a group
_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd  # the dispatch key of an op's composite kernel
_BACKENDS = tuple(getattr(torch._C.DispatchKey, k) for k in ("CPU", "CUDA", "Meta", "CompositeExplicitAutograd"))
_has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key


def _read_facts(func: Any) -> _Facts:
    if func.namespace in ("profiler", "prim"):  # record_function's enter/exit, prim::device: not work
        return _Facts(func, None, (), (), None, False, False, _registry.GENERATION, func, False, False, False)
    schema = func._schema
    arg_names = tuple(a.name for a in schema.arguments if not a.kwarg_only)
    out_args = tuple(a.name for a in schema.arguments
                     if a.kwarg_only and a.alias_info is not None and a.alias_info.is_write)
    key = op_key(func)
    if any(n in _GROUP_ARGS for n in arg_names) and "c10d" not in key:
        _GROUPED.add(key)  # a collective outside c10d's namespaces: read its group from the arguments
    # matrix work reads the TF32 switch (read once per op, from its name)
    matmul_like = matrix_like(key.split("::")[-1].split(".")[0])
    reads_values = key.startswith("aten::_grouped_mm")
    storage = "attention" in key
    # Autograd's dispatch key holds an op's composite kernel (linear -> t + addmm, layer_norm ->
    # native_layer_norm, to -> _to_copy or nothing): under torch.inference_mode that key is skipped
    # and the mode sees the composite op itself.  It runs as what it is made of, as it does outside
    # inference mode (where the mode never sees it), so that what runs is counted: its parts, and
    # nothing for a to() or contiguous() that returns its input (torch.utils.flop_counter decomposes too)
    # An op with a kernel of its own besides the composite (nn.RMSNorm's _fused_rms_norm on CUDA,
    # which the mode sees in grad mode too) runs that kernel, as eager does: never its composite
    name = func.name()
    decompose = _has_kernel(name, _COMPOSITE) and not any(_has_kernel(name, k) for k in _BACKENDS)
    return _Facts(func, key, arg_names, out_args, lookup(func), matmul_like, reads_values, _registry.GENERATION,
                  func._op if _DIRECT and type(func) is _OpOverload else func,
                  any(_is_tensor_type(a.type) for a in schema.arguments), storage,
                  matmul_like or reads_values or storage, decompose)


def _is_tensor_type(t: Any) -> bool:
    """A schema argument that always holds a tensor: Tensor, or Tensor[] (not Tensor?)."""
    if isinstance(t, torch._C.ListType):
        t = t.getElementType()
    return isinstance(t, torch._C.TensorType)


# ---------------------------------------------------------------------------- the modes


class _DispatchMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._disable_dynamo (~1.5 us per op); the
        # capture runs everything eagerly (torch.compiler.set_stance("force_eager")), so there is
        # nothing for it to disable
        return False

    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        rec = self.recorder
        if rec.suppress:
            rec.inner.append(op_key(func))
            return func(*args, **kwargs)
        facts = _FACTS.get(id(func))  # the cache read in place: this runs for every op
        if facts is None or facts.op is not func or facts.generation != _registry.GENERATION:
            facts = _FACTS[id(func)] = _read_facts(func)
            if rec._memo_generation != _registry.GENERATION:  # a formula registered mid-run
                rec._memo.clear()
                rec._memo_generation = _registry.GENERATION
        if facts.key is None:  # not work
            return func(*args, **kwargs)
        if facts.decompose:
            # torch's own C++ composite, as eager runs it (not a Python decomposition a compiler
            # registered: torch._decomp's dropout clones its input where eager returns it)
            with self:  # its parts come back through this mode
                return func._op_dk(_COMPOSITE, *args, **kwargs)
        try:
            if rec.wraps:
                with rec.label(rec.next_index(), _call_key(func, facts, args, kwargs) if rec.distinct else None):
                    out = facts.call(*args, **kwargs)
            else:
                out = facts.call(*args, **kwargs)
        except Exception as err:
            if _data_dependent(func, err, args, kwargs):
                raise CountError(
                    f"{op_key(func)} has a data-dependent output (its shape or value depends on tensor "
                    "contents), which meta/fake tensors do not have: count this workload on real tensors "
                    "(e.g. on the CPU, device='cpu') instead") from None
            raise
        rec.record_aten(func, facts, args, kwargs, out)
        return out


def _outside_name(module: torch.nn.Module) -> str:
    """The name of a module a model calls without holding it: its type's, or for a function that
    Hugging Face's `kernels` package turned into a module (transformers' apply_rotary_pos_emb, a
    `Func` called through a second `Func`), the function's."""
    cls = type(module)
    if cls.__qualname__.endswith("<locals>.Func"):
        for cell in getattr(cls.forward, "__closure__", None) or ():
            fn = cell.cell_contents
            if inspect.isfunction(fn):
                return fn.__name__
    return cls.__name__


def _user_path(name: str) -> str:
    """A module's path as its user wrote it: torch.compile wraps a module in an OptimizedModule
    whose child `_orig_mod` is the user's ("layers.0.attn", not "_orig_mod.layers.0.attn")."""
    return ".".join(p for p in name.split(".") if p != "_orig_mod") if "_orig_mod" in name else name


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


class _FunctionMode(TorchFunctionMode):
    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.recorder.suppress:
            if func is F.scaled_dot_product_attention:
                return _sdpa(self.recorder, func, args, kwargs)
            if func is _RMS_NORM:
                return _rms_norm(self.recorder, func, args, kwargs)
            softmax = SOFTMAXES.get(func)
            if softmax is not None and kwargs.get("dtype") is torch.float32:
                return _half_softmax(self.recorder, func, args, kwargs, softmax[0])
        return func(*args, **kwargs)


# softmax and log_softmax as Python calls them (nn.Softmax calls F.softmax): (log, the position of
# its dtype argument when given positionally)
SOFTMAXES = {F.softmax: (False, 3), torch.softmax: (False, 2), torch.Tensor.softmax: (False, 2),
             F.log_softmax: (True, 3), torch.log_softmax: (True, 2), torch.Tensor.log_softmax: (True, 2)}


def _half_softmax(rec: "Recorder", func: Callable, args: tuple, kwargs: dict, log: bool) -> Any:
    """softmax(x, dim, dtype=float32) of a float16 x off the GPU: a GPU runs one kernel reading
    fp16 and writing fp32 (_softmax with half_to_float; its backward writes fp16), the CPU casts
    first (a copy, then an fp32 softmax): run it here, record the GPU's."""
    x = args[0] if args else None
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if (not isinstance(x, torch.Tensor) or x.dtype is not torch.float16 or not isinstance(dim, int)
            or (x.device.type == "cuda" and not _is_fake(x))):
        return func(*args, **kwargs)
    xm = TensorMeta.of(x)
    index = rec.next_index()
    rec.suppress += 1
    rec.inner = []
    om = None
    try:
        with rec.label(index):
            if _needs_grad(x):
                def backward(grad_out: torch.Tensor, real: Callable | None) -> tuple:
                    grads = _grads(rec, real, (x,))
                    gm = TensorMeta.of(grads[0])
                    op, cost = _fn.softmax_half_to_float_backward(TensorMeta.of(grad_out), om, gm, dim, rec.settings,
                                                                  log)
                    rec.add(op, [TensorMeta.of(grad_out), om], [gm], cost,
                            note="counted as the GPU's backward into float16 (predicted)")
                    return grads

                out = _PredictedBackward.apply(lambda xx: func(xx, *args[1:], **kwargs), backward, x)
                rec.node_of(out)
            else:
                out = func(*args, **kwargs)
    finally:
        rec.suppress -= 1
    om = TensorMeta.of(out)
    op, cost = _fn.softmax_half_to_float(xm, om, dim, rec.settings, log)
    rec.add(op, [xm], [om], cost, note=f"counted as the GPU's one kernel from float16 into float32 (predicted; ran "
                                     f"here on {x.device.type} as {len(rec.inner)} ops)")
    return out


_RMS_NORM = getattr(F, "rms_norm", None)


def _on_gpu(module: torch.nn.Module) -> bool:
    """Whether a module's weights are real CUDA tensors (its first parameter, or buffer); asked
    past the function mode (reading `.device` would be a call to it)."""
    with torch._C.DisableTorchFunction():
        for t in module.parameters():
            return t.device.type == "cuda" and not _is_fake(t)
        for t in module.buffers():
            return t.device.type == "cuda" and not _is_fake(t)
    return False


def _set_aside(mode: TorchFunctionMode) -> bool:
    """Take `mode` off the torch-function mode stack if it is on top (no other mode entered
    since); True if it was.  What the function mode does (_sdpa, _rms_norm) is for tensors off the
    GPU: on CUDA tensors both call straight through, so a model on the GPU runs without it."""
    n = torch._C._len_torch_function_stack()
    if n and torch._C._get_function_stack_at(n - 1) is mode:
        torch._C._pop_torch_function_stack()
        return True
    return False


def _rms_norm(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """F.rms_norm off the GPU: run it, record it as the fused kernel the GPU runs (costs.functions)."""
    x = args[0] if args else kwargs["input"]
    if x.device.type == "cuda" and not _is_fake(x):
        return func(*args, **kwargs)
    p = dict(zip(("input", "normalized_shape", "weight", "eps"), args))
    p.update(kwargs)
    weight = p.get("weight")
    weight = weight if isinstance(weight, torch.Tensor) else None
    xm, wm = TensorMeta.of(x), TensorMeta.of(weight) if weight is not None else None
    shape = list(p["normalized_shape"])
    index = rec.next_index()
    rec.suppress += 1
    rec.inner = []
    try:
        with rec.label(index):
            if _needs_grad(x, weight):
                def backward(grad_out: torch.Tensor, real: Callable | None) -> tuple:
                    grads = _grads(rec, real, (x, weight))
                    outputs = [TensorMeta.of(g) for g in grads if g is not None]
                    inputs, cost = _fn.rms_norm_backward(TensorMeta.of(grad_out), xm, shape, wm, outputs, rec.settings)
                    rec.add(_fn.FUSED_RMS_NORM_BACKWARD, inputs, outputs, cost,
                            note="counted as the GPU's fused backward kernel (predicted)")
                    return grads

                out = _PredictedBackward.apply(lambda xx, ww: func(**{**p, "input": xx, "weight": ww}), backward, x,
                                               weight)
                rec.node_of(out)
            else:
                out = func(*args, **kwargs)
    finally:
        rec.suppress -= 1
    inputs, outputs, cost = _fn.rms_norm_cost(xm, shape, wm, TensorMeta.of(out), rec.settings)
    rec.add(_fn.FUSED_RMS_NORM, inputs, outputs, cost,
            note=f"counted as the GPU's fused kernel (ran here on {x.device.type} as {len(rec.inner)} ops)")
    return out


def _valueless(t: torch.Tensor) -> bool:
    """Meta or fake: a tensor with no values, whose gradient can be an empty tensor of its shape."""
    return t.device.type == "meta" or _is_fake(t)


def _needs_grad(*tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _empty_grads(rec: "Recorder", tensors: tuple, heads_inside: bool = False) -> tuple:
    """Gradients for `tensors` (None for a non-tensor), empty, not recorded: of each one's layout,
    or (heads_inside: attention's dQ, dK, dV) [B, S, H, D] memory, as the GPU's kernels write them."""
    def empty(t: torch.Tensor) -> torch.Tensor:
        if heads_inside and t.ndim >= 3:
            return torch.empty((*t.shape[:-3], t.shape[-2], t.shape[-3], t.shape[-1]), dtype=t.dtype,
                               device=t.device).transpose(-3, -2)
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)

    rec.suppress += 1
    try:
        return tuple(empty(t) if isinstance(t, torch.Tensor) else None for t in tensors)
    finally:
        rec.suppress -= 1


class _PredictedBackward(torch.autograd.Function):
    """The output of a call counted as a GPU's fused kernel whose backward is that kernel's fused
    backward: `backward(grad_out, real)` records it and returns the gradients.  Without it,
    autograd would record the backward of what computed the value here: for SDPA the CPU's own
    kernel's or the math decomposition's, in fp32 with its [B, H, Sq, Sk] scores; for RMSNorm six
    ops' (ops a GPU never runs).

    `make(*inputs)` computes the value.  Off the device (meta or fake tensors, which hold no
    values) `real` is None and the gradients can be empty; on the CPU the call's own graph is kept
    (built beside the outer one) and `real()` computes the true gradients through it, so that a
    training loop counted on the CPU trains as it would without rooflight."""

    @staticmethod
    def forward(ctx, make: Callable[..., torch.Tensor], backward: Callable, *inputs: Any) -> torch.Tensor:
        ctx.backward_of, ctx.local = backward, None
        wants = [isinstance(t, torch.Tensor) and t.requires_grad for t in inputs]
        if not any(w and not _valueless(t) for t, w in zip(inputs, wants)):
            return make(*inputs)
        with torch.enable_grad():
            local = [t.detach().requires_grad_(w) if isinstance(t, torch.Tensor) else t for t, w in zip(inputs, wants)]
            out = make(*local)
        ctx.local = (out, local, wants)
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple:
        real = None
        if ctx.local is not None:
            out, local, wants = ctx.local

            def real() -> tuple:
                got = iter(torch.autograd.grad(out, [t for t, w in zip(local, wants) if w], grad_out, allow_unused=True))
                return tuple(next(got) if w else None for w in wants)
        grads = ctx.backward_of(grad_out, real)
        ctx.local = None
        return (None, None, *grads)


def _grads(rec: "Recorder", real: Callable[[], tuple] | None, tensors: tuple, heads_inside: bool = False) -> tuple:
    """A predicted backward's gradients: the true ones through the call's own graph (`real`, on
    the CPU), or empty ones (meta, fake); what computes them is not recorded either way."""
    if real is None:
        return _empty_grads(rec, tensors, heads_inside=heads_inside)
    rec.suppress += 1
    try:
        return real()
    finally:
        rec.suppress -= 1


def _causal_bias_types() -> tuple[Any, Any]:
    """(CausalBias, CausalVariant) once torch.nn.attention.bias is loaded, else (None, None): a
    CausalBias mask exists only after its maker imported it.  Never imported here: it loads
    torch._dynamo (~1.6 s), which a command that captures nothing (`rooflight --help`) would pay."""
    m = sys.modules.get("torch.nn.attention.bias")
    return (getattr(m, "CausalBias", None), getattr(m, "CausalVariant", None)) if m is not None else (None, None)


def _sdpa(rec: Recorder, func: Callable, args: tuple, kwargs: dict) -> Any:
    """F.scaled_dot_product_attention off the GPU: run it here, record it as the kernel a GPU would
    pick (costs.functions.plan_sdpa); a "math" plan runs the decomposition so its ops are recorded."""
    p = dict(zip(_SDPA_PARAMS, args))
    p.update(kwargs)
    q, k, v = p["query"], p["key"], p["value"]
    if q.device.type == "cuda" and not _is_fake(q):
        return func(*args, **kwargs)  # the dispatcher shows the aten op that really runs
    mask = p.get("attn_mask")
    dropout_p = float(p.get("dropout_p", 0.0) or 0.0)
    is_causal = bool(p.get("is_causal", False))
    enable_gqa = bool(p.get("enable_gqa", False))
    variant = None
    CausalBias, CausalVariant = _causal_bias_types()
    if CausalBias is not None and isinstance(mask, CausalBias):
        variant = "lower_right" if mask.variant == CausalVariant.LOWER_RIGHT else "upper_left"
    mask_meta = TensorMeta.of(mask) if isinstance(mask, torch.Tensor) else None
    settings = _fn.with_backends(rec.settings, enabled_sdpa_backends())
    qm, km, vm = TensorMeta.of(q), TensorMeta.of(k), TensorMeta.of(v)
    plan = _fn.plan_sdpa(qm, km, vm, mask=mask_meta, is_causal=is_causal, causal_variant=variant,
                         dropout_p=dropout_p, enable_gqa=enable_gqa, settings=settings)
    if plan.convert_bool_mask:
        # a GPU's fused kernels take an additive mask: torch converts a boolean one first with one
        # elementwise kernel (where(mask, 0, -inf)); do the same here, so that it is counted
        zero = torch.scalar_tensor(0.0, dtype=q.dtype, device=q.device)
        ninf = torch.scalar_tensor(float("-inf"), dtype=q.dtype, device=q.device)
        mask = torch.where(mask, zero, ninf)
        mask_meta = TensorMeta.of(mask)
        p["attn_mask"] = mask
        args, kwargs = (), p
    if plan.backend == "math":
        # the GPU would materialize the scores too: run the math decomposition so that its bmm,
        # softmax, ... are recorded one by one, as they would run there
        if CausalBias is not None and isinstance(mask, CausalBias):
            mask, is_causal = mask._materialize(q.device), False
        out, _ = torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, mask, dropout_p, is_causal, None, scale=p.get("scale"), enable_gqa=enable_gqa)
        return out
    need_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    index = rec.next_index()
    rec.suppress += 1
    rec.inner = []
    # the kernel is counted as the GPU's; what computes the value here must simply run, whatever
    # backends the user restricted the GPU to (the CPU has only its flash kernel and math)
    here = contextlib.nullcontext()
    if q.device.type == "cpu" and not _is_fake(q):
        here = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
    valueless = _valueless(q)

    def run(qq: torch.Tensor = q, kk: torch.Tensor = k, vv: torch.Tensor = v) -> torch.Tensor:
        out = func(**{**p, "query": qq, "key": kk, "value": vv})
        if valueless:
            # off-device the math path made a [B, H, S, Dv]-contiguous output; GPU kernels write
            # [B, S, H, Dv] memory (the usual transpose back then costs nothing): match them
            # (through differentiable ops when the decomposition's backward is to run)
            b, h, s, dv = out.shape[:-3], out.shape[-3], out.shape[-2], out.shape[-1]
            if out.requires_grad:
                out = out.transpose(-3, -2).contiguous().transpose(-3, -2)
            else:
                out = torch.empty((*b, s, h, dv), dtype=out.dtype, device=out.device).transpose(-3, -2)
        return out

    try:
        with rec.label(index), here:
            if need_lse and not (isinstance(mask, torch.Tensor) and mask.requires_grad):
                # its backward: the GPU's fused backward kernel, not the CPU's or the math
                # decomposition's (`om`, the output's metadata, is set below, before any backward runs)
                def backward(grad_out: torch.Tensor, real: Callable | None) -> tuple:
                    grads = _grads(rec, real, (q, k, v), heads_inside=True)
                    op, inputs, cost = _fn.sdpa_backward(plan, qm, km, vm, om, TensorMeta.of(grad_out), mask=mask_meta)
                    rec.add(op, inputs, [TensorMeta.of(g) for g in grads if g is not None], cost,
                            note=f"counted as the GPU's {plan.backend} backward kernel (predicted)")
                    return grads

                out = _PredictedBackward.apply(run, backward, q, k, v)
                rec.node_of(out)
            else:  # (a mask that wants a gradient keeps the decomposition's backward: it reaches the mask)
                out = run()
    finally:
        rec.suppress -= 1
    om = TensorMeta.of(out)
    cost = _fn.sdpa_cost(plan, qm, km, vm, om, mask=mask_meta, need_lse=need_lse)
    ran_as = rec.inner[0].split("::")[-1] if rec.inner else "decomposed ops"
    where = "fake " + q.device.type if _is_fake(q) else q.device.type
    inputs = [qm, km, vm] + ([mask_meta] if mask_meta is not None else [])
    rec.add(_fn.SDPA, inputs, [om], cost,
            note=f"counted as the GPU's {plan.backend} kernel (predicted; ran here on {where} as {ran_as})")
    return out


def _install_flex_rule() -> None:
    """Cost flex attention's HOP from its block mask when it runs under the capture mode."""
    try:
        from torch._higher_order_ops.flex_attention import flex_attention as flex_hop
    except ImportError:  # pragma: no cover  (torch builds without flex attention)
        return
    if getattr(_DispatchMode, "_flex_installed", False):
        return

    @flex_hop.py_impl(_DispatchMode)
    def _flex(mode, query, key, value, score_mod, block_mask, scale, kernel_options, *rest):
        rec = mode.recorder
        index = rec.next_index()
        with rec.label(index):
            result = flex_hop(query, key, value, score_mod, block_mask, scale, kernel_options, *rest)
        out = result[0] if isinstance(result, (tuple, list)) else result
        qm, km, vm = TensorMeta.of(query), TensorMeta.of(key), TensorMeta.of(value)
        rec.add(_fn.FLEX, [qm, km, vm], [TensorMeta.of(out)], _fn.flex_cost(qm, km, vm, TensorMeta.of(out),
                                                                            block_mask, rec.settings))
        return result

    _DispatchMode._flex_installed = True


@contextlib.contextmanager
def _function_mode_on(rec: "Recorder") -> Iterator[None]:
    """The capture's function mode on the stack for the duration, if the capture still runs and
    the mode is not on it already (autograd runs backward code with an empty stack)."""
    mode = rec.function_mode
    n = torch._C._len_torch_function_stack()
    push = mode is not None and not any(torch._C._get_function_stack_at(i) is mode for i in range(n))
    if push:
        torch._C._push_on_torch_function_stack(mode)
    try:
        yield
    finally:
        n = torch._C._len_torch_function_stack()
        if push and n and torch._C._get_function_stack_at(n - 1) is mode:
            torch._C._pop_torch_function_stack()


def _off_gpu(values: Iterable[Any]) -> bool:
    """No real CUDA tensor among `values` (a model on the GPU needs no function mode: _set_aside)."""
    return not any(isinstance(v, torch.Tensor) and v.device.type == "cuda" and not _is_fake(v) for v in values)


@contextlib.contextmanager
def _recomputing(rec: "Recorder", off_gpu: bool, where: tuple[list, dict[int, str]] | None) -> Iterator[None]:
    """A checkpoint's recomputation running, in the modules its forward ran in (Recorder.
    recompute_within); off the GPU, under the capture's function mode."""
    with rec.recompute_within(where), _function_mode_on(rec) if off_gpu else contextlib.nullcontext():
        yield


class _Recompute:
    """A non-reentrant checkpoint's recompute context, with _recomputing on while it is entered (a
    class, not a generator: torch may enter a recompute context more than once)."""

    def __init__(self, inner: Any, rec: "Recorder", off_gpu: bool):
        self.inner, self.rec, self.off_gpu, self._on = inner, rec, off_gpu, []
        self.where = rec.where_now()  # made as the checkpointed forward starts

    def __enter__(self) -> Any:
        got = self.inner.__enter__()
        on = _recomputing(self.rec, self.off_gpu, self.where)
        on.__enter__()
        self._on.append(on)
        return got

    def __exit__(self, *exc: Any) -> Any:
        self._on.pop().__exit__(*exc)
        return self.inner.__exit__(*exc)


def _watch_recomputation(stack: contextlib.ExitStack, rec: "Recorder") -> None:
    """Activation checkpointing recomputes a forward during backward.  Its ops are marked as such
    (phase "recompute", in the modules they run in, not the backward node that asked for them),
    and off the GPU they run under the capture's function mode, which autograd does not carry into
    backward: the forward ran with it (SDPA and RMSNorm counted as a GPU's fused kernels, their
    tensors saved by _PredictedBackward's graph), a recomputation without it would count other ops
    and save other tensors, which torch.utils.checkpoint refuses ('Recomputed values ... have
    different metadata').  For the capture's duration, the non-reentrant kind's recompute context
    and the reentrant kind's recomputing call (its backward's run_function; the backward it then
    runs is plain backward) are wrapped."""
    import torch.utils.checkpoint as ckpt

    generator = getattr(ckpt, "_checkpoint_without_reentrant_generator", None)
    function = getattr(ckpt, "CheckpointFunction", None)
    if generator is not None:
        def watched(fn, preserve_rng_state=True, context_fn=ckpt.noop_context_fn, *rest, **kwargs):
            users, off_gpu = context_fn, _off_gpu((*rest, *kwargs.values()))

            def context_fn():
                forward_ctx, recompute_ctx = users()
                return forward_ctx, _Recompute(recompute_ctx, rec, off_gpu)
            return generator(fn, preserve_rng_state, context_fn, *rest, **kwargs)

        ckpt._checkpoint_without_reentrant_generator = watched
        stack.callback(setattr, ckpt, "_checkpoint_without_reentrant_generator", generator)
    if function is not None and "backward" in function.__dict__ and "forward" in function.__dict__:
        forward, backward = function.__dict__["forward"], function.__dict__["backward"]

        def forward_watched(ctx, *args):
            ctx.rooflight_where = rec.where_now()
            return forward.__func__(ctx, *args)

        def backward_watched(ctx, *grads):
            run, off_gpu, where = ctx.run_function, _off_gpu(grads), getattr(ctx, "rooflight_where", None)

            def recompute(*args, **kwargs):
                with _recomputing(rec, off_gpu, where):
                    return run(*args, **kwargs)
            ctx.run_function = recompute
            try:
                return backward.__func__(ctx, *grads)
            finally:
                ctx.run_function = run

        function.forward, function.backward = staticmethod(forward_watched), staticmethod(backward_watched)
        stack.callback(setattr, function, "forward", forward)
        stack.callback(setattr, function, "backward", backward)


def _refuse_flex_on_meta(stack: contextlib.ExitStack) -> None:
    """Flex attention validates its inputs' device before any hook runs and rejects meta with a
    ValueError; say what to do instead, for the duration of the capture."""
    try:
        import torch.nn.attention.flex_attention as fa
    except ImportError:  # pragma: no cover
        return
    original = getattr(fa, "_validate_device", None)
    if original is None:
        return

    def validate(query, key, value):
        if query.device.type == "meta":
            raise CountError("flex attention cannot be counted on meta tensors (which blocks it visits is "
                             "data): count it on real tensors, e.g. on the CPU with "
                             "create_block_mask(..., device='cpu')")
        return original(query, key, value)

    fa._validate_device = validate
    stack.callback(setattr, fa, "_validate_device", original)


# ---------------------------------------------------------------------------- the capture


def _watch_modules(stack: contextlib.ExitStack, rec: Recorder) -> None:
    """Every module call enters and leaves the recorder's frames: nn.Module.__call__ wrapped for
    the capture.  (Global module hooks would do the same, but they send every module call down
    nn.Module's slow path: about twice this wrapper's cost per call.)"""
    original = torch.nn.Module.__call__
    enter, leave = rec.enter_module, rec.exit_module

    def call(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        enter(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            leave(self)

    torch.nn.Module.__call__ = call
    stack.callback(setattr, torch.nn.Module, "__call__", original)


def _watch_steps(stack: contextlib.ExitStack, rec: Recorder) -> None:
    """What rooflight.steps reads besides the module calls: torch.cuda.profiler.start()/stop()
    (recorded, then passed on where CUDA exists)."""
    import torch.cuda.profiler as cuda_profiler

    start, stop = cuda_profiler.start, cuda_profiler.stop

    def marked_start() -> None:
        rec.profiler_start()
        if torch.cuda.is_available():
            start()

    def marked_stop() -> None:
        rec.profiler_stop()
        if torch.cuda.is_available():
            stop()

    cuda_profiler.start, cuda_profiler.stop = marked_start, marked_stop
    stack.callback(setattr, cuda_profiler, "start", start)
    stack.callback(setattr, cuda_profiler, "stop", stop)



class Capture:
    """Context manager: record every op run inside it.  `profile()` turns the records into a Profile.

        with Capture() as cap:
            model(x)
        prof = cap.profile(workload="my model")
    """

    def __init__(self, *, settings: Settings | None = None, label_ops: bool = False, time_ops: bool = False,
                 steps: bool = False, select_steps: tuple[int, int | None] | None = None,
                 distinct: Callable[[bool], None] | None = None):
        self.recorder = Recorder(settings or snapshot_settings(), label_ops=label_ops, time_ops=time_ops,
                                 distinct=distinct)
        self.steps = steps  # cut the run into setup, steps and teardown (rooflight.steps)
        self.select_steps = select_steps
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Capture":
        _install_flex_rule()
        st = self._stack
        rec = self.recorder
        _watch_modules(st, rec)
        # ops inside an optimizer's step() get phase "optimizer" (training steps, rooflight.steps)
        st.callback(register_optimizer_step_pre_hook(rec.optimizer_enter).remove)
        st.callback(register_optimizer_step_post_hook(rec.optimizer_exit).remove)
        if self.steps:
            _watch_steps(st, rec)
        if hasattr(torch.compiler, "set_stance"):
            st.enter_context(torch.compiler.set_stance("force_eager"))
        _refuse_flex_on_meta(st)
        rec.function_mode = st.enter_context(_FunctionMode(rec))
        _watch_recomputation(st, rec)
        st.callback(rec.restore_function_mode)  # before the mode is exited (callbacks run last first)
        st.enter_context(_old_objects_frozen())
        st.enter_context(_DispatchMode(rec))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        self.recorder.function_mode = None

    @property
    def records(self) -> list[OpRecord]:
        return self.recorder.records

    def profile(self, *, workload: str = "", mode: str = "count", params: dict | None = None) -> Profile:
        with gc_paused():  # tens of thousands of new records: no full collection halfway through
            return self._profile(workload, mode, params)

    def _profile(self, workload: str, mode: str, params: dict | None) -> Profile:
        rec = self.recorder
        regions, steps, self.notes = tuple(rec.regions), (), ()
        if self.steps:  # this profile's own records, moved to their segments in place
            seg = segment(tuple(rec.build()), regions, rec.owned_calls(), rec.ranges, select=self.select_steps,
                          relabel=_moved)
            ops, regions, steps, self.notes = seg.ops, seg.regions, seg.steps, seg.notes
        else:
            ops = tuple(rec.records)
        device = Counter(o.device for o in ops if o.device).most_common(1)
        device = device[0][0] if device else "cpu"
        return Profile(
            ops=ops, workload=workload, device=device,
            device_name=f"fake {device} (shapes only, no device)" if rec.saw_fake else device_name(device),
            mode=mode,
            torch_version=torch.__version__, rooflight_version=__version__, created=now_iso(),
            settings=rec.settings, regions=regions, params=dict(params or {}), steps=steps, notes=tuple(self.notes),
        )


def _moved(ops: tuple[OpRecord, ...], regions: list[str | None]) -> tuple[OpRecord, ...]:
    """Fresh records (Recorder.build's, held by no one else) moved to their regions in place."""
    for op, region in zip(ops, regions):
        if region is not None:
            op.__dict__["region"] = region
    return ops


_STARTUP_FREEZE = 50_000  # more frozen objects than a start-up holds: a freeze of its own, left as it is


@contextlib.contextmanager
def _old_objects_frozen() -> Iterator[None]:
    """During a capture, the objects that existed before it (torch's, rooflight's, a notebook's) are
    left out of Python's full garbage collections (gc.freeze), which otherwise walk them all each
    time the run's new objects have grown by a quarter (~0.25 s each with a Hugging Face import,
    several times in a 40k-op run).  What the run creates is collected as usual; what existed
    before and became garbage in a cycle is collected after the capture.  A process that froze
    objects itself (a server that froze its imports) keeps its freeze, and the capture goes without;
    a start-up's few (Ubuntu's Python 3.12 starts with 375 frozen) are frozen with the rest and
    thawed with them after."""
    if gc.get_freeze_count() > _STARTUP_FREEZE:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a bounded piece of rooflight's own work that builds
    many objects and no cycles: a full collection walks every object of the process (a Hugging
    Face import holds ~0.5 M), ~0.25 s each time it runs (never around the user's code)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            return torch.cuda.get_device_name(torch.device(device))
        except Exception:
            return device
    if device.startswith("cpu"):
        return describe_cpu().model
    if device.startswith("meta"):
        return "meta (shapes only, no device)"
    return device


def count(fn: Callable[..., Any], *args: Any, workload: str = "", steps: bool = False,
          select_steps: tuple[int, int | None] | None = None, **kwargs: Any) -> Profile:
    """Run `fn(*args, **kwargs)` once and return the costs of every op it ran (no timing).

    Works on CPU, CUDA, meta and fake tensors; on meta tensors nothing is computed, so a 70B
    model's step can be counted on a laptop.  steps=True cuts the run into setup, steps and
    teardown (rooflight.steps), as for a script.
    """
    with Capture(steps=steps, select_steps=select_steps) as cap:
        fn(*args, **kwargs)
    return cap.profile(workload=workload or getattr(fn, "__qualname__", type(fn).__name__), mode="count")


__all__ = ["Capture", "Recorder", "count", "snapshot_settings", "enabled_sdpa_backends"]
