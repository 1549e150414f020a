"""Progress bars on stderr for long work: downloads, export steps, answering a file.

Shown when stderr is a terminal, or when asked (`--progress`, QA_PROGRESS=true); never otherwise,
so logs, pipes and tests see no carriage-return noise. The bars are tqdm's, the library
huggingface_hub draws its download bars with.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

# Redraws at most this often: a bar must not cost time on fast loops.
REDRAW_S = 0.2


def progress_wanted(asked: bool | None, stream: TextIO | None = None) -> bool:
    if asked is not None:
        return asked
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(
    label: str, total: int, enabled: bool, unit: str = "it", stream: TextIO | None = None
) -> tqdm:
    """A bar of `total` steps on `stream` (stderr), or one that draws nothing when not enabled.

    `set_description` names the current step, `update(n)` counts; leave it with `with` or
    `close()`, which ends the line.
    """
    return tqdm(
        total=max(total, 0),
        desc=label,
        unit=unit,
        file=stream or sys.stderr,
        disable=not enabled,
        mininterval=REDRAW_S,
        # Stays on screen once done, as a record of what ran and how long it took.
        leave=True,
        dynamic_ncols=True,
    )
