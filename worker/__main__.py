"""`python -m worker` and the `qa-worker` script: stop signals are caught before anything else
is imported (`worker.interrupts`), then the command line runs."""

from __future__ import annotations

import sys

from .interrupts import Interrupted, catch_stop_signals, ignore_stop_signals, report


def run() -> int:
    catch_stop_signals()
    try:
        from .cli import main

        return main()
    except Interrupted as stop:
        command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
        return report(stop, command)
    finally:
        # The process is exiting: a signal now must not interrupt that with a traceback.
        ignore_stop_signals()


if __name__ == "__main__":
    raise SystemExit(run())
