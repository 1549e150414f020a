"""Progress bars on stderr for long work: downloads, export steps, answering a file.

Shown when stderr is a terminal, or when asked (`--progress`, QA_PROGRESS=true); never otherwise,
so logs, pipes and tests see no carriage-return noise.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Redraws at most this often: a bar must not cost time on fast loops.
REDRAW_S = 0.2
WIDTH = 30


def progress_wanted(asked: bool | None, stream: TextIO | None = None) -> bool:
    if asked is not None:
        return asked
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """One line, redrawn in place: `label [#####.....] done/total unit, rate/s, elapsed`."""

    def __init__(
        self,
        label: str,
        total: int,
        enabled: bool,
        unit: str = "",
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.enabled = enabled
        self.unit = unit
        self.done = 0
        self._stream = stream or sys.stderr
        self._began = time.monotonic()
        self._drawn = 0.0

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def advance(self, count: int = 1, step: str | None = None) -> None:
        self.done = min(self.done + count, self.total) if self.total else self.done + count
        if step is not None:
            self.label = step
        self._draw(force=step is not None)

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self._stream.write("\n")
            self._stream.flush()
            self.enabled = False

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW_S:
            return
        self._drawn = now
        elapsed = now - self._began
        share = self.done / self.total if self.total else 0.0
        filled = int(share * WIDTH)
        unit = f" {self.unit}" if self.unit else ""
        rate = f", {self.done / elapsed:.1f}/s" if self.unit and elapsed > 0 else ""
        self._stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
            f"{self.done}/{self.total}{unit}{rate}, {elapsed:.0f} s\033[K"
        )
        self._stream.flush()
