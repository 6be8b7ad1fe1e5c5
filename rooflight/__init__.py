"""rooflight: roofline performance analyzer and bottleneck diagnoser for LLM workloads on GPUs.

    import rooflight
    prof = rooflight.count(model, x)          # FLOPs and bytes of every op, on any device
    prof = rooflight.profile(model, x)        # ... and the measured time of each (GPU, else CPU)
    with rooflight.region("decode"): ...      # mark part of the work
    prof.analyze("h100")                      # labels, evidence, advice; prof.to_html("r.html")
    rooflight.diff("before.json", "after.json")   # what changed between two runs

Names only: the library's pipeline lives in its modules (see rooflight.api for the facade).
"""

from . import errors
from ._version import __version__
from .advice import advise
from .api import Profile, analyze, count, diff, load, profile, project, write
from .capture import Capture
from .classify import Label, breakdown, classify, predict, summary
from .costs import OpCall, OpCost, TensorMeta, register_cost
from .profile_data import OpRecord
from .regions import region
from .workloads import Run, workload

__all__ = ["Capture", "Label", "OpCall", "OpCost", "OpRecord", "Profile", "Run", "TensorMeta", "advise", "analyze",
           "breakdown", "classify", "count", "diff", "errors", "load", "predict", "profile", "project", "region",
           "register_cost", "summary", "workload", "write", "__version__"]
