"""The child processes the embedded broker and its S3 server run as: ports, output, shutdown.

Both `broker` and `local_s3` start a server as a child process in its own process group on a
free loopback port, keep its output in a file to quote when it fails, and stop its whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from typing import IO

__all__ = ["HOST", "file_tail", "free_port", "stop_process_group"]

HOST = "127.0.0.1"


def file_tail(file: IO[bytes], count: int) -> str:
    """The last `count` lines a child process wrote to `file` (decoded leniently), or ""."""
    file.seek(0)
    lines = file.read().decode(errors="replace").splitlines()
    return "\n".join(lines[-count:])


def free_port() -> int:
    """A loopback port free at the moment of asking (another process may take it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def stop_process_group(process: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM a child started with `process_group=0` (its pid is its group id), then SIGKILL
    after `timeout`; does nothing when it has already exited."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
