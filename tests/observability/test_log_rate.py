"""Repeated warnings are cut to one line per cause per interval, with the count of the rest."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.support.clock import FakeClock
from worker.observability.log_rate import MAX_CAUSES, RepeatFilter, cause_of, quiet_repeats


def record(
    message: str, *args: object, name: str = "aiokafka.conn", level: int = 30
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_one_line_per_cause_per_interval_then_the_count_of_the_rest() -> None:
    clock = FakeClock(0.0)
    repeats = RepeatFilter(interval_s=10.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    assert repeats.filter(record(template, 1, "refused"))
    passed = []
    for step in range(1, 60):
        clock.now = step * 0.25  # 4 a second for just under 15 s
        line = record(template, 1, "refused")
        if repeats.filter(line):
            passed.append((clock.now, line.getMessage()))
    # The first pass is the one at or just after 10 s, counting every line dropped before it.
    [(at, message)] = passed
    assert at == 10.0
    assert message == "Unable connect to node with id 1: refused (39 more like this in 10 s)"


def test_just_under_the_interval_is_dropped_and_at_it_passes() -> None:
    clock = FakeClock(0.0)
    repeats = RepeatFilter(interval_s=10.0, clock=clock)
    assert repeats.filter(record("lost"))
    clock.now = 9.999
    assert not repeats.filter(record("lost"))
    clock.now = 10.0
    assert repeats.filter(record("lost"))
    # No repeats since: the next line after the interval passes unchanged.
    clock.now = 20.0
    line = record("lost")
    assert repeats.filter(line) and line.getMessage() == "lost"


@pytest.mark.parametrize("causes", [MAX_CAUSES - 1, MAX_CAUSES, MAX_CAUSES + 1])
def test_the_causes_remembered_are_bounded_and_the_stalest_is_forgotten(causes: int) -> None:
    clock = FakeClock(0.0)
    repeats = RepeatFilter(interval_s=10.0, clock=clock)
    # Messages carrying values of their own (an f-string, say) are a cause each.
    for n in range(causes):
        clock.now = n * 0.001
        assert repeats.filter(record(f"offset {n} failed"))
    assert repeats.causes == min(causes, MAX_CAUSES)
    # The first cause, passed last of all again just now, moves to the end of the table.
    clock.now = 10.0
    assert repeats.filter(record("offset 0 failed"))
    assert repeats.filter(record("one more"))
    assert repeats.causes == min(causes + 1, MAX_CAUSES)
    # Still remembered (within its interval): dropped. The second one was forgotten when full.
    assert not repeats.filter(record("offset 0 failed"))
    assert repeats.filter(record("offset 1 failed")) == (causes >= MAX_CAUSES)


def test_causes_are_told_apart_by_logger_level_and_template() -> None:
    repeats = RepeatFilter(interval_s=10.0, clock=FakeClock(0.0))
    assert repeats.filter(record("lost %s", 1))
    assert not repeats.filter(record("lost %s", 2))
    assert repeats.filter(record("lost %s", 1, name="faust.transport"))
    assert repeats.filter(record("lost %s", 1, level=logging.ERROR))
    assert repeats.filter(record("other %s", 1))


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (logging.DEBUG, "aiokafka.conn"),
        (logging.INFO, "worker"),
        (logging.INFO, "worker.stream.worker"),
        (logging.CRITICAL, "aiokafka.conn"),
    ],
)
def test_debug_critical_and_the_workers_own_info_lines_always_pass(level: int, name: str) -> None:
    repeats = RepeatFilter(interval_s=10.0, clock=FakeClock(0.0))
    assert all(repeats.filter(record("same", level=level, name=name)) for _ in range(5))


@pytest.mark.parametrize("name", ["mode.timers", "faust.transport", "workers", "workerx.y"])
def test_info_lines_of_other_packages_are_one_per_cause_per_interval(name: str) -> None:
    clock = FakeClock(0.0)
    repeats = RepeatFilter(interval_s=10.0, clock=clock)
    template = "Timer %s woke up too late, with a drift of +%s runtime=%s sleeptime=%s"
    passed = []
    for second in range(21):
        clock.now = float(second)
        passed.append(
            repeats.filter(record(template, "commit", 1.5, 0.1, 2.0, level=20, name=name))
        )
    assert [second for second, ok in enumerate(passed) if ok] == [0, 10, 20]


def test_quiet_repeats_installs_one_filter_per_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers = [logging.NullHandler(), logging.NullHandler()]
    monkeypatch.setattr(root, "handlers", handlers)
    quiet_repeats()
    quiet_repeats()
    filters = [[f for f in h.filters if isinstance(f, RepeatFilter)] for h in handlers]
    assert [len(found) for found in filters] == [1, 1]
    assert filters[0][0] is not filters[1][0]


def test_lines_that_differ_only_in_the_objects_they_name_are_one_cause() -> None:
    first = (
        "Exception in callback BaseSelectorEventLoop._start_serving(<function "
        "Server.__init__.<locals>.<lambda> at 0x7f3a2c1d5e40>, <socket.socket fd=6, family=2, "
        "type=1, proto=0, laddr=('0.0.0.0', 8000)>, None, <Server sockets=(...)>, 100)\n"
        "handle: <TimerHandle when=5306.123 BaseSelectorEventLoop._start_serving(...)>"
    )
    second = (
        first.replace("0x7f3a2c1d5e40", "0x7f3a2c1d9a10")
        .replace("fd=6", "fd=17")
        .replace("5306.123", "5307.9")
    )
    assert cause_of(first) == cause_of(second)
    assert "when=# " in cause_of(first)
    assert cause_of("object at 0x7f3a2c1d5e40 lost") == "object at 0x? lost"
    # Numbers outside object representations still tell causes apart, and nesting is followed.
    assert cause_of(first) != cause_of(first.replace(", 100)", ", 101)"))
    assert cause_of("lost partition 3") != cause_of("lost partition 4")
    assert cause_of("<Task name='Task-12' coro=<f() at x.py:3>> 5") == (
        "<Task name='Task-#' coro=<f() at x.py:#>> 5"
    )
    assert cause_of("a < 3 and b > 4") == "a < 3 and b > 4"


async def test_asyncio_errors_naming_a_new_handle_each_are_one_cause() -> None:
    # What asyncio logged thousands of times a second when accept() ran out of file descriptors.
    clock = FakeClock(0.0)
    repeats = RepeatFilter(interval_s=10.0, clock=clock)
    passed: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            passed.append(record)

    keep = Keep()
    keep.addFilter(repeats)
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(keep)
    loop = asyncio.get_running_loop()
    try:
        for step in range(100):
            clock.now = step * 0.01
            handle = loop.call_later(1000 + step * 0.37, print)
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                    "handle": handle,
                }
            )
            handle.cancel()
        clock.now = 10.0
        handle = loop.call_later(2000, print)
        loop.call_exception_handler(
            {"message": "socket.accept() out of system resource", "handle": handle}
        )
        handle.cancel()
    finally:
        asyncio_log.removeHandler(keep)
    assert len(passed) == 2
    assert passed[1].getMessage().endswith("(99 more like this in 10 s)")
