"""Model files that declare workloads, for `rooflight profile model.py`.

A model file declares builders with the `workload` decorator.  A builder takes parameters
(keyword arguments with defaults; `device` and `dtype` are passed when it accepts them) and
returns what to run: a callable, `(callable, args)`, `(callable, args, kwargs)`, or a `Run`,
which can also carry a reference for the correctness check:

    import rooflight, torch

    @rooflight.workload(sweep={"m": [1, 16, 256, 4096]})
    def linear(m: int = 1, n: int = 4096, k: int = 4096, device="cpu", dtype=torch.bfloat16):
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        return rooflight.Run(torch.nn.functional.linear, (x, w),
                             reference=lambda: x.double() @ w.double().T)

`rooflight profile model.py` builds each workload at its defaults (and over its default sweep),
profiles the callable, and writes one report per point.  `--sweep m=1,8 --param n=8192` choose
other points.  A file with no `@workload` is run as a script instead (see runner.py).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import itertools
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .errors import RooflightError, UsageError

_DECLARED: list["Workload"] = []  # filled while a model file is imported
RUN_OPTIONS = ("cuda_graph", "flush_l2", "warmup", "repeats")  # what Run.options may set


@dataclass(frozen=True)
class Run:
    """What a workload runs: `fn(*args, **kwargs)`, and optionally how to check its result.

    reference: a callable returning the expected output (computed in higher precision);
    check: a callable (output, expected) -> relative error, default ‖out − ref‖ / ‖ref‖;
    tolerance: the largest relative error that passes (default by dtype of the output);
    options: timing options this workload needs, passed to rooflight.timing.profile over the
    command line's (e.g. {"cuda_graph": True}: counted eagerly, timed as a CUDA graph replay).
    """

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    reference: Callable[[], Any] | None = None
    tolerance: float | None = None
    check: Callable[[Any, Any], float] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.options) - set(RUN_OPTIONS)
        if unknown:
            raise UsageError(f"Run options {', '.join(sorted(unknown))}: use {', '.join(RUN_OPTIONS)}")

    def __call__(self) -> Any:
        return self.fn(*self.args, **self.kwargs)


@dataclass(frozen=True)
class Workload:
    name: str
    builder: Callable[..., Any]
    params: Mapping[str, Any]  # defaults, from the builder's signature and the decorator
    sweep: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # swept unless the user says otherwise
    description: str = ""
    source: str = ""  # the file that defines the builder
    module: str = ""  # the module that declared it (a model file may import another one)

    def accepts(self, name: str) -> bool:
        sig = inspect.signature(self.builder)
        return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def workload(fn: Callable | None = None, *, name: str | None = None, params: Mapping[str, Any] | None = None,
             sweep: Mapping[str, Sequence[Any]] | None = None):
    """Declare a workload builder in a model file (see the module docstring)."""
    module = sys._getframe(1).f_globals.get("__name__", "")  # the module declaring it

    def deco(f: Callable) -> Callable:
        sig = inspect.signature(f)
        defaults = {k: p.default for k, p in sig.parameters.items()
                    if p.default is not inspect.Parameter.empty and k not in ("device", "dtype")}
        defaults.update(params or {})
        for key in (sweep or {}):
            if key not in sig.parameters and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                raise UsageError(f"workload {f.__name__}: sweep parameter '{key}' is not an argument of the builder")
        doc = (inspect.getdoc(f) or "").strip().splitlines()
        _DECLARED.append(Workload(name or f.__name__, f, defaults, dict(sweep or {}), doc[0] if doc else "",
                                  inspect.getsourcefile(f) or "", module))
        return f

    return deco(fn) if fn is not None else deco


# ---------------------------------------------------------------------------- model files


def declares_workloads(path: Path) -> bool:
    """Whether a file uses the @workload decorator (read without running it)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise UsageError(f"{path}: not valid Python (line {err.lineno}: {err.msg})") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name == "workload":
                    return True
    return False


class ModelFileError(RooflightError):
    """The user's code raised.  `str()` is the one-line summary; `user_traceback` holds the
    traceback through their files (not rooflight's), which the CLI prints above it."""

    def __init__(self, message: str, user_traceback: str = ""):
        super().__init__(message)
        self.user_traceback = user_traceback


def user_traceback(err: BaseException, files: Iterable[str]) -> str:
    """The traceback of `err` from the first frame in one of `files` on (the user's code)."""
    files = {str(Path(f).resolve()) for f in files}
    tb = traceback.extract_tb(err.__traceback__)
    start = next((i for i, fr in enumerate(tb) if str(Path(fr.filename).resolve()) in files), 0)
    lines = ["Traceback (most recent call last):\n"] + traceback.format_list(tb[start:])
    lines += traceback.format_exception_only(type(err), err)
    return "".join(lines).rstrip()


def import_roots(path: Path) -> list[str]:
    """Where a model file's imports are found: its folder (as Python has it for a script) and, when
    that folder is a package, the folder holding its top package (as pytest has it), so that a
    model file importing a sibling by its package's name (pkg/train.py: `from pkg.common import
    ...`) imports from any working directory."""
    folder = path.resolve().parent
    top = folder
    while (top / "__init__.py").is_file() and top.parent != top:
        top = top.parent
    return [str(folder)] + ([str(top)] if top != folder else [])


def load_model_file(path: str | Path) -> list[Workload]:
    """Import a model file and return the workloads it declares, in order."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    module_name = f"rooflight_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    start = len(_DECLARED)
    roots = import_roots(path)
    sys.path[:0] = roots
    try:
        spec.loader.exec_module(module)
    except SystemExit as err:
        raise ModelFileError(f"{path} called sys.exit({err.code!r}) while being imported; a model file "
                             "should only declare workloads") from None
    except Exception as err:
        raise ModelFileError(f"{path} raised {type(err).__name__} while being imported: {err}",
                             user_traceback(err, [str(path)])) from None
    finally:
        for r in roots:
            sys.path.remove(r)
    # workloads declared by modules the file imported (another model file) are not its own
    found = [w for w in _DECLARED[start:] if w.module in ("", module_name)]
    del _DECLARED[start:]
    if not found:
        raise UsageError(f"{path} declares no @rooflight.workload")
    return found


# ---------------------------------------------------------------------------- parameters


def parse_value(text: str) -> Any:
    """'8' -> 8, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_assignments(items: Iterable[str], *, many: bool) -> dict[str, Any]:
    """['batch=1,8', 'seq=512'] -> {'batch': [1, 8], 'seq': [512]} (many) or {'batch': 1, ...}."""
    out: dict[str, Any] = {}
    flag = "--sweep" if many else "--param"
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"{flag} {item!r}: write NAME=VALUE" + (",VALUE..." if many else ""))
        key = key.strip()
        if key in RESERVED:
            raise UsageError(f"{flag} {key}=...: {key} is chosen with --{key}, not as a workload parameter")
        if key in out:
            raise UsageError(f"{flag} {key} is given twice; give it once"
                             + (f" with every value ({flag} {key}=A,B,C); different names are crossed" if many else ""))
        if many:
            parts = value.split(",")
            if any(not p.strip() for p in parts):
                raise UsageError(f"--sweep {item!r}: an empty value between commas; write {key}=A,B,C")
            values = [parse_value(v) for v in parts]
            if len(set(map(repr, values))) != len(values):
                raise UsageError(f"--sweep {item!r}: a value repeats; give each point once")
            out[key] = values
        else:
            out[key] = parse_value(value)
    return out


# workload arguments the command line sets with its own options, never through --param/--sweep
RESERVED = ("device", "dtype")


def check_param_sweep(params: Mapping[str, Any], sweeps: Mapping[str, Any]) -> None:
    """A name both fixed (--param) and swept (--sweep) is a contradiction, never silently resolved."""
    both = sorted(set(params) & set(sweeps))
    if both:
        raise UsageError(f"{', '.join(both)} is both set (--param) and swept (--sweep): give one of them")


def points(w: Workload, params: Mapping[str, Any], sweeps: Mapping[str, Sequence[Any]], *,
           default_sweep: bool = True) -> list[tuple[dict[str, Any], str]]:
    """The parameter sets to profile, each with its label: defaults, then --param, crossed with
    the sweeps (the workload's own sweep applies to parameters the user did not set).  A point's
    label names its swept values ('seq=128,batch=8'); without a sweep, the parameters set away
    from their defaults ('' for the defaults)."""
    check_param_sweep(params, sweeps)
    for key in (*params, *sweeps):
        if key not in w.params and not w.accepts(key):
            known = ", ".join(w.params) or "none"
            raise UsageError(f"workload {w.name} has no parameter '{key}' (parameters: {known})")
    base = {**w.params, **params}
    axes: dict[str, Sequence[Any]] = {}
    if default_sweep:
        axes.update({k: v for k, v in w.sweep.items() if k not in params and k not in sweeps})
    axes.update(sweeps)
    if not axes:
        return [(base, point_label(base, w))]
    keys = list(axes)
    out = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        out.append(({**base, **dict(zip(keys, combo))}, ",".join(f"{k}={v}" for k, v in zip(keys, combo))))
    return out


TORCH_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
          "fp64": torch.float64, "float64": torch.float64}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    try:
        return TORCH_DTYPES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown dtype '{name}'; use one of {', '.join(sorted(TORCH_DTYPES))}") from None


def build(w: Workload, point: Mapping[str, Any], *, device: str, dtype: torch.dtype | None) -> Run:
    """Call the builder for one parameter set and normalise what it returns to a Run."""
    kwargs = dict(point)
    if w.accepts("device"):
        kwargs["device"] = device
    if dtype is not None:
        if not w.accepts("dtype"):
            raise UsageError(f"workload {w.name} takes no dtype; drop --dtype")
        kwargs["dtype"] = dtype
    result = w.builder(**kwargs)
    if isinstance(result, Run):
        return result
    if callable(result):
        return Run(result)
    if isinstance(result, tuple) and result and callable(result[0]) and len(result) <= 3:
        fn, args, kw = (list(result) + [(), {}])[:3]
        return Run(fn, tuple(args), dict(kw))
    raise UsageError(f"workload {w.name} returned {type(result).__name__}; return a callable, "
                     "(callable, args), (callable, args, kwargs) or a rooflight.Run")


def point_label(point: Mapping[str, Any], w: Workload) -> str:
    """'batch=8,seq=512' for the parameters that differ from the defaults ('' for the defaults)."""
    diff = {k: v for k, v in point.items() if w.params.get(k, object()) != v}
    return ",".join(f"{k}={v}" for k, v in diff.items())


# ---------------------------------------------------------------------------- correctness


DEFAULT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def relative_error(out: Any, ref: Any) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (NaN anywhere gives inf: NaN never passes)."""
    o = out.detach().to(torch.float64).cpu() if isinstance(out, torch.Tensor) else torch.as_tensor(out, dtype=torch.float64)
    r = ref.detach().to(torch.float64).cpu() if isinstance(ref, torch.Tensor) else torch.as_tensor(ref, dtype=torch.float64)
    if o.shape != r.shape:
        raise RooflightError(f"output shape {tuple(o.shape)} does not match the reference's {tuple(r.shape)}")
    if not torch.isfinite(o).all():
        return float("inf")
    denom = r.norm().item()
    return (o - r).norm().item() / (denom if denom > 0 else 1.0)


def check_run(run: Run) -> tuple[float, float] | None:
    """Run once and compare with the reference: (relative error, tolerance); None without one."""
    if run.reference is None:
        return None
    out = run()
    if isinstance(out, (tuple, list)):
        out = out[0]
    ref = run.reference()
    err = run.check(out, ref) if run.check is not None else relative_error(out, ref)
    tol = run.tolerance
    if tol is None:
        tol = DEFAULT_TOLERANCE.get(out.dtype if isinstance(out, torch.Tensor) else torch.float32, 2e-2)
    return err, tol
