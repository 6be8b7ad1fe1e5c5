"""rooflight: roofline performance analyzer and bottleneck diagnoser for LLM workloads on GPUs.

    import rooflight
    prof = rooflight.count(model, x)          # FLOPs and bytes of every op, on any device
    prof = rooflight.profile(model, x)        # ... and the measured time of each (GPU, else CPU)
    with rooflight.region("decode"): ...      # mark part of the work
    prof.analyze("h100")                      # labels, evidence, advice; prof.to_html("r.html")
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .advice import advise  # noqa: E402
from .analysis import analyze  # noqa: E402
from .capture import Capture, count  # noqa: E402
from .classify import Label, breakdown, classify, predict, summary  # noqa: E402
from .costs import OpCall, OpCost, TensorMeta, register_cost  # noqa: E402
from .profile import OpRecord, Profile  # noqa: E402
from .regions import region  # noqa: E402
from .timing import profile  # noqa: E402
from .workloads import Run, workload  # noqa: E402

__all__ = ["Capture", "Label", "OpCall", "OpCost", "OpRecord", "Profile", "Run", "TensorMeta", "advise", "analyze",
           "breakdown", "classify", "count", "errors", "predict", "profile", "region", "register_cost", "summary",
           "workload", "__version__"]
