"""Files in and out, and the one overwrite policy for every file rooflight writes.

- Writes are atomic: a temporary file beside the target, renamed over it in one step, so nothing
  half-written ever replaces a good file.
- A file that cannot be read is one line naming it (`read_text`).
- Nothing the user wrote is overwritten without being asked: every directory rooflight writes
  into keeps a manifest (`.rooflight-manifest.json`) of the files it wrote there, and only those
  may be replaced (any file with force=True).  All of a command's files are queued in an
  `OutputDir` and written only at `commit()`, after the work has finished, so an interrupted run
  leaves the previous outputs as they were.  `rooflight profile`, `report`, `project`, `llm` and
  `baseline` all write through it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import RooflightError, UsageError

CACHE_ENV = "ROOFLIGHT_CACHE_DIR"


def cache_dir() -> Path:
    """The folder of rooflight's caches (it need not exist yet)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rooflight"


MANIFEST = ".rooflight-manifest.json"


class OutputError(RooflightError):
    """The results could not be written (a full disk, a vanished directory)."""
FORMATS = ("html", "json", "png", "svg", "csv")


def _stage(path: Path, data: bytes) -> str:
    """`data` written in full to a temporary file beside `path` (nothing replaced yet); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp makes the file 0600: give it the mode a plain open() would (the file's own, when
        # it is replaced; else 0666 less the umask), so a teammate or a web server can read it
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
    except BaseException:
        _drop(tmp)
        raise
    return tmp


def _drop(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, then rename it over `path` in one step."""
    path = Path(path)
    tmp = _stage(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _drop(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def parse_formats(text: str) -> tuple[str, ...]:
    fmts = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"--format {text!r}: choose from {', '.join(FORMATS)} (comma-separated)")
    return fmts


@dataclass
class OutputDir:
    """Files queued for one directory, written together by `commit()` under the manifest policy."""

    path: Path
    force: bool = False
    pending: dict[Path, bytes] = field(default_factory=dict)

    def _manifest(self) -> set[str]:
        try:
            return set(json.loads((self.path / MANIFEST).read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def add(self, name: str, data: bytes | str) -> Path:
        """Queue a file; `commit` writes them all."""
        target = self.path / name
        self.pending[target] = data.encode("utf-8") if isinstance(data, str) else data
        return target

    def check(self, names: Iterable[str] | None = None) -> None:
        """Refuse, before anything is written, to replace a file rooflight did not write (the
        queued files, or the `names` given)."""
        ours = self._manifest()
        targets = list(self.pending) if names is None else [self.path / n for n in names]
        for target in targets:
            if target.exists() and not self.force and target.name not in ours:
                raise UsageError(f"{target} exists and was not written by rooflight; pass --force to overwrite it "
                                 "or choose another output")

    def preflight(self) -> None:
        """Before any work: the destination is a directory (or can become one) rooflight may write
        into, and none of the queued files is one rooflight did not write."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"{self.path} is a file, not a directory: give -o a directory (it is created)")
        probe = self.path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise UsageError(f"{probe} is a file, so {self.path} cannot be created: give -o another directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into {probe} (permission denied): give -o a directory you can write to")
        self.check()

    def commit(self) -> list[Path]:
        """Every queued file, as one transaction: all are written in full beside their targets
        first, then renamed into place, then the manifest.  A failure or Ctrl-C before the renames
        leaves every earlier file as it was (and no temporary file behind)."""
        self.preflight()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create {self.path} ({err.strerror}): nothing was written") from None
        staged: list[tuple[str, Path]] = []
        try:
            for target, data in self.pending.items():
                staged.append((_stage(target, data), target))
        except OSError as err:
            for tmp, _ in staged:
                _drop(tmp)
            raise OutputError(f"could not write {target} ({err.strerror or err}): nothing was written, the files already "
                              f"in {self.path} are untouched") from None
        except BaseException:
            for tmp, _ in staged:
                _drop(tmp)
            raise
        ours = self._manifest()
        written = []
        for tmp, target in staged:
            os.replace(tmp, target)
            written.append(target)
            ours.add(target.name)
        write_text_atomic(self.path / MANIFEST, json.dumps({"writer": "rooflight", "files": sorted(ours)}, indent=1))
        self.pending.clear()
        return written


def html_target(out: Path, name: str, what: str = "report") -> Path:
    """Where `-o OUT` puts an HTML report named `name` by default: into OUT when it is a directory,
    ends in a slash or has no suffix (created if missing, as `profile -o DIR` is), else OUT itself,
    which must then end in .html (a report written to `x.png` would be clobbered by its own chart)."""
    if out.is_dir() or str(out).endswith(("/", os.sep)) or not out.suffix:
        return out / name
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {out}: the {what} is HTML; name it {out.with_suffix('.html').name}, or give a "
                         "directory to put it in")
    return out


def check_files(paths: Iterable[str | Path], *, force: bool = False) -> None:
    """Refuse, before any work is done, to replace any of `paths` that rooflight did not write."""
    by_dir: dict[Path, list[str]] = {}
    for p in map(Path, paths):
        by_dir.setdefault(p.parent, []).append(p.name)
    for d, names in by_dir.items():
        OutputDir(d, force=force).check(names)


def write_files(files: dict[Path, bytes | str], *, force: bool = False) -> list[Path]:
    """Write files that may lie in several directories (e.g. `report -o x.html` and its PNG), each
    directory under the manifest policy; every destination is checked before anything is written."""
    dirs: dict[Path, OutputDir] = {}
    for path, data in files.items():
        path = Path(path)
        od = dirs.setdefault(path.parent, OutputDir(path.parent, force=force))
        od.add(path.name, data)
    for od in dirs.values():
        od.check()
    written: list[Path] = []
    for od in dirs.values():
        written += od.commit()
    return written
