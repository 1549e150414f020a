"""`python -m worker` and the `qa-worker` script: stop signals are held from the first line of
`run()`, before anything else is imported, until `worker.interrupts` catches them; then the
command line runs.

Nothing is imported at the top: the script (`from worker.__main__ import run`) and `-m` both run
this module's body before `run()`, and a stop signal during an import there would end in a
traceback (SIGINT) or no line at all (SIGTERM). Not even `from __future__ import annotations`,
which imports a module too.
"""


def run() -> int:
    import signal

    # Blocked, a stop signal waits (pending) while the handlers' module and what it needs are
    # imported; catch_stop_signals() lets it through to them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    from .interrupts import catch_stop_signals, ignore_stop_signals

    catch_stop_signals()
    from .cli import main

    try:
        return main()
    finally:
        # The process is exiting: a signal now must not interrupt that with a traceback.
        ignore_stop_signals()


if __name__ == "__main__":
    raise SystemExit(run())
