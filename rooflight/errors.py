"""The errors rooflight raises on purpose.

Each carries a one-line message that names the problem and the fix; the CLI prints it on
stderr (no traceback) and exits with `exit_code`.
"""

from __future__ import annotations


class RooflightError(Exception):
    """A problem the user can fix. `str(err)` is one line: what is wrong and what to do."""

    exit_code = 1


class UsageError(RooflightError):
    """The command line or API call asks for something that does not exist or does not fit."""

    exit_code = 2


class SpecError(RooflightError):
    """A hardware-spec file is malformed: names the file and the field."""


class UnknownHardwareError(UsageError):
    """A GPU name that matches no spec, or several."""


class CountError(RooflightError):
    """An operation could not be counted (e.g. a data-dependent shape on meta tensors)."""


class NoGPUError(RooflightError):
    """GPU work was asked for on a machine without one."""
