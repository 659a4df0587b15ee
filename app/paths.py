"""Where commands write, checked before they do any work (a model load can take minutes)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from solver_ppo.errors import UserError


def writable_dir(path: str | Path, setting: str) -> Path:
    """Create directory `path` (and its parents) and check that a file can be written in it, before
    any model loads: a run must not end after its work for want of a place to write the results.
    `setting` (e.g. "output_dir=DIR") is what the error names as the cause."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"{setting}: cannot write in {path} ({err.strerror or err})") from None
    return path
