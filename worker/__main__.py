"""`python -m worker` and the `qa-worker` script: stop signals are caught before anything else
is imported (`worker.interrupts`), then the command line runs."""

from __future__ import annotations

from .interrupts import catch_stop_signals, ignore_stop_signals


def run() -> int:
    catch_stop_signals()
    from .cli import main

    try:
        return main()
    finally:
        # The process is exiting: a signal now must not interrupt that with a traceback.
        ignore_stop_signals()


if __name__ == "__main__":
    raise SystemExit(run())
