"""Progress bars of the long commands (`eval`, `score`, `make-data`): done/total, rate and ETA on
stderr when it is a terminal, nothing at all when it is a file or a pipe (logs stay clean)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr; `disable=None` is tqdm's "only on a terminal"."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True)
