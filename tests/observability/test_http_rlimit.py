"""With a low open-file limit, HTTP clients never take the worker's process to EMFILE.

The server runs in a child process whose RLIMIT_NOFILE soft limit is set low with
`resource.setrlimit` before the server starts; the child also opens sockets every 10 ms, as the
worker's Kafka client connects, and counts its open files. The child's lines on stdout are JSON
objects; it reads commands from stdin: `report`, `fill` (open files until none is left, as if
something else in the process had taken them), `free` (close those again).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.worker_process import run_qa_worker
from worker.errors import ConfigError
from worker.preflight import MIN_OPEN_FILES, check_open_file_limit

OPEN_FILE_LIMIT = 128
# The bound the server takes by default: half the limit.
BOUND = OPEN_FILE_LIMIT // 2
OWN_SOCKETS = 8

CHILD = f"""
import asyncio, json, logging, os, resource, socket, sys

resource.setrlimit(
    resource.RLIMIT_NOFILE, ({OPEN_FILE_LIMIT}, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
)

from worker.observability.http import HealthServer
from worker.observability.metrics import WorkerMetrics

def say(**fields):
    print(json.dumps(fields), flush=True)

class Counted(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.errors = []
        self.accept_warnings = 0
    def emit(self, record):
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage()[:200])
        elif record.getMessage().startswith("cannot accept HTTP connections"):
            self.accept_warnings += 1
            say(event="accept-paused", message=record.getMessage())

async def main():
    counted = Counted()
    logging.getLogger().addHandler(counted)
    logging.getLogger().setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    commands = asyncio.Queue()
    def read_commands():
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")
    loop.run_in_executor(None, read_commands)
    server = HealthServer(WorkerMetrics(), lambda: (False, "not yet"), "127.0.0.1", 0)
    async with server:
        say(event="started", port=server.port, bound=server.connection_bound)
        own_failures, most_files, filler = 0, 0, []
        while True:
            if not filler:
                held = []
                try:
                    for _ in range({OWN_SOCKETS}):
                        held.append(socket.socket())
                    most_files = max(most_files, len(os.listdir("/proc/self/fd")))
                except OSError:
                    own_failures += 1
                finally:
                    for sock in held:
                        sock.close()
            try:
                command = await asyncio.wait_for(commands.get(), 0.01)
            except asyncio.TimeoutError:
                continue
            if command == "report":
                say(
                    event="report",
                    own_failures=own_failures,
                    most_files=most_files,
                    open_connections=server.open_connections,
                    errors=counted.errors,
                    accept_warnings=counted.accept_warnings,
                    **vars(server.stats),
                )
            elif command == "fill":
                try:
                    while True:
                        filler.append(open(os.devnull))
                except OSError:
                    say(event="filled")
            elif command == "free":
                for file in filler:
                    file.close()
                filler = []
                say(event="freed")
            elif command == "stop":
                break

asyncio.run(main())
"""


class Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, event: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The child's next line of `event` (others before it are skipped)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.process.stdout.readline()
                assert raw, "the child ended"
                fields: dict[str, Any] = json.loads(raw)
                if fields["event"] == event:
                    return fields

    def command(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")


@pytest.fixture
async def child() -> AsyncIterator[Child]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    yield Child(process)
    if process.returncode is None:
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def probe(port: int, path: str = "/healthz") -> tuple[int, float]:
    """A kubelet-like probe: its status and how long it took."""
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
        reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.transport.abort()
    return int(reply.split(b" ")[1]), time.monotonic() - began


async def test_slow_clients_three_times_the_bound_leave_the_process_its_files(
    child: Child,
) -> None:
    started = await child.line("started")
    port = started["port"]
    assert started["bound"] == BOUND
    slow: list[asyncio.StreamWriter] = []
    try:
        for _ in range(3 * BOUND):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
            slow.append(writer)
        for path, status in [("/healthz", 200), ("/readyz", 503)] * 5:
            answered, took = await probe(port, path)
            assert answered == status
            assert took < 1.0
        child.command("report")
        report = await child.line("report")
    finally:
        for writer in slow:
            writer.transport.abort()
    assert report["own_failures"] == 0
    assert report["errors"] == []
    assert report["open_connections"] <= BOUND
    # Everything the process had open at its fullest: the bound's connections (and the one
    # accepted before the oldest is closed), the worker's own sockets and Python's own files.
    assert report["most_files"] < OPEN_FILE_LIMIT
    assert report["evicted"] >= 2 * BOUND


async def test_out_of_files_for_another_reason_the_server_pauses_then_serves_again(
    child: Child,
) -> None:
    started = await child.line("started")
    port = started["port"]
    child.command("fill")
    await child.line("filled")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
    # Accepting fails for want of a file descriptor: the server stops accepting, says so, and
    # tries again a second later.
    paused = await child.line("accept-paused")
    assert "Too many open files" in paused["message"]
    child.command("free")
    await child.line("freed")
    try:
        reply = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.transport.abort()
    assert reply.startswith(b"HTTP/1.1 200 ")
    child.command("report")
    report = await child.line("report")
    # asyncio's own accept loop logged an error per attempt here, thousands a second.
    assert report["errors"] == []
    assert report["accept_warnings"] == 1
    assert (await probe(port))[0] == 200


@pytest.mark.parametrize("idle", [1, 3])
async def test_out_of_files_with_idle_connections_open_the_oldest_makes_room_for_a_probe(
    child: Child, idle: int
) -> None:
    """Idle clients holding connections while the process is out of file descriptors cannot
    keep a probe out: each accept that fails for want of one closes the oldest connection."""
    started = await child.line("started")
    port = started["port"]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(idle)]
    child.command("report")
    assert (await child.line("report"))["open_connections"] == idle
    child.command("fill")
    await child.line("filled")
    try:
        status, _ = await probe(port)
        assert status == 200
        child.command("report")
        report = await child.line("report")
        assert report["evicted"] == 1
        assert report["open_connections"] == idle - 1
        assert report["errors"] == [] and report["accept_warnings"] == 0
        # The oldest one was the one closed: the server reset it.
        oldest_reader, _ = held[0]
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(oldest_reader.read(), 5)
    finally:
        child.command("free")
        await child.line("freed")
        for _, writer in held:
            writer.transport.abort()


@pytest.mark.parametrize(
    ("soft_limit", "refused"),
    [(MIN_OPEN_FILES - 1, True), (MIN_OPEN_FILES, False), (resource.RLIM_INFINITY, False)],
)
def test_run_refuses_an_open_file_limit_below_what_the_worker_needs(
    soft_limit: int, refused: bool
) -> None:
    if refused:
        with pytest.raises(
            ConfigError, match=rf"open-file limit is {soft_limit} \(RLIMIT_NOFILE\)"
        ):
            check_open_file_limit(soft_limit)
    else:
        check_open_file_limit(soft_limit)


def test_run_under_a_low_open_file_limit_exits_2_in_one_line() -> None:
    """Before: a Kafka client's thread died with EMFILE and the worker neither joined its group
    nor exited, or a traceback ended it."""

    def low_limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, hard))

    finished = run_qa_worker(
        "run",
        "--broker",
        "127.0.0.1:1",
        timeout=60,
        preexec_fn=low_limit,
        env={key: value for key, value in os.environ.items() if not key.startswith("QA_")},
    )
    assert finished.returncode == 2, finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and "open-file limit is 32 (RLIMIT_NOFILE)" in lines[0], lines
