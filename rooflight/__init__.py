"""rooflight: roofline performance analyzer and bottleneck diagnoser for LLM workloads on GPUs.

    import rooflight
    prof = rooflight.count(model, x)          # FLOPs and bytes of every op, on any device
    with rooflight.region("decode"): ...      # mark part of the work
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .capture import Capture, count  # noqa: E402
from .costs import OpCall, OpCost, TensorMeta, register_cost  # noqa: E402
from .profile import OpRecord, Profile  # noqa: E402
from .regions import region  # noqa: E402

__all__ = ["Capture", "OpCall", "OpCost", "OpRecord", "Profile", "TensorMeta", "count", "errors", "region",
           "register_cost", "__version__"]
