"""Helpers the kernels/ tests share: a Run checked against its reference, a Run counted."""

from __future__ import annotations

import rooflight
from rooflight.workloads import check_run


def checked(run: rooflight.Run) -> float:
    """The run's relative error against its reference, asserted within its tolerance."""
    err, tol = check_run(run)
    assert err <= tol, f"relative error {err:.3g} > {tol:.3g}"
    return err


def counted(run: rooflight.Run):
    """The run's counted profile (no timing)."""
    return rooflight.count(run.fn, *run.args, **run.kwargs)
