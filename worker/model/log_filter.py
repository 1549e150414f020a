"""Dropping a library's known, unhelpful log lines while it runs (torch's export, the quantizers).

Shared by `export` and `calibration`, which both call ONNX Runtime's quantizers and both keep
its repeated pre-processing advice out of the worker's logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["dropping_logs"]


@contextmanager
def dropping_logs(logger_name: str, prefix: str) -> Iterator[None]:
    """Drops the records of one logger whose message starts with `prefix`, for a while."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    logger = logging.getLogger(logger_name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
