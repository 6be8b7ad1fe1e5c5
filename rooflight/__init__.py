"""rooflight: roofline performance analyzer and bottleneck diagnoser for LLM workloads on GPUs.

    import rooflight
    prof = rooflight.count(model, x)          # FLOPs and bytes of every op, on any device
    prof = rooflight.profile(model, x)        # ... and the measured time of each (GPU, else CPU)
    with rooflight.region("decode"): ...      # mark part of the work
    prof.analyze("h100")                      # labels, evidence, advice; prof.to_html("r.html")
    rooflight.diff("before.json", "after.json")   # what changed between two runs

Names only: the library's pipeline lives in its modules (see rooflight.api for the facade).
"""

from __future__ import annotations

import importlib

from ._version import __version__

# name -> the module that holds it; imported on first use (PEP 562), so `import rooflight` and
# `rooflight --version` do not import torch until something needs it
_NAMES = {
    "advise": "advice",
    "Profile": "api", "analyze": "api", "count": "api", "diff": "api", "load": "api", "profile": "api",
    "project": "api", "write": "api",
    "Capture": "capture",
    "Label": "classify", "breakdown": "classify", "classify": "classify", "predict": "classify", "summary": "classify",
    "OpCall": "costs", "OpCost": "costs", "TensorMeta": "costs", "register_cost": "costs",
    "OpRecord": "profile_data",
    "region": "regions",
    "Run": "workloads", "workload": "workloads",
}


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # once
        return value
    try:  # a submodule: rooflight.check, rooflight.errors, ...
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'rooflight' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


__all__ = ["Capture", "Label", "OpCall", "OpCost", "OpRecord", "Profile", "Run", "TensorMeta", "advise", "analyze",
           "breakdown", "classify", "count", "diff", "errors", "load", "predict", "profile", "project", "region",
           "register_cost", "summary", "workload", "write", "__version__"]
