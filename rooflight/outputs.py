"""Writing a run's outputs: reports, charts, profiles, tables, into one directory.

Nothing the user wrote is overwritten without being asked: a directory rooflight writes into
keeps a manifest (`.rooflight-manifest.json`) of the files it wrote, and only those may be
replaced (or any file, with force=True).  Every file is written atomically, and all of a run's
files are written only after the whole run has finished, so an interrupted run leaves the
previous reports as they were.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .io import write_bytes_atomic, write_text_atomic

MANIFEST = ".rooflight-manifest.json"
FORMATS = ("html", "json", "png", "svg", "csv")


def parse_formats(text: str) -> tuple[str, ...]:
    fmts = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"--format {text!r}: choose from {', '.join(FORMATS)} (comma-separated)")
    return fmts


def slug(text: str) -> str:
    """A file-name-safe form of a workload name or a parameter point."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("=", "-").replace(",", "_")).strip("._")
    return s[:120] or "run"


@dataclass
class OutputDir:
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

    def check(self) -> None:
        """Refuse, before anything is written, to replace a file rooflight did not write."""
        ours = self._manifest()
        for target in self.pending:
            if target.exists() and not self.force and target.name not in ours:
                raise UsageError(f"{target} exists and was not written by rooflight; pass --force to overwrite it "
                                 "or choose another --out directory")

    def commit(self) -> list[Path]:
        self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        written = []
        ours = self._manifest()
        for target, data in self.pending.items():
            written.append(write_bytes_atomic(target, data))
            ours.add(target.name)
        write_text_atomic(self.path / MANIFEST, json.dumps({"writer": "rooflight", "files": sorted(ours)}, indent=1))
        self.pending.clear()
        return written
