"""Files in and out: nothing half-written ever replaces a good file; a file that cannot be read
is one line naming it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, then rename it over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def read_text(path: str | Path, error: type[Exception], what: str = "file") -> str:
    """The text of `path` (UTF-8), or `error` with one line naming it: missing, or unreadable."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{p}: cannot read ({err})") from None
