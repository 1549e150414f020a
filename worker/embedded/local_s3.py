"""A local S3 server (moto) for an embedded broker whose storage must outlive the broker.

`EmbeddedBroker(storage=LocalS3)` keeps topics, records and committed offsets in a bucket of this
server instead of the broker's memory, so the broker can be killed and restarted with nothing
lost, as a real cluster's storage would be:

    async with LocalS3() as s3, EmbeddedBroker(storage=s3) as broker:
        ...
        await broker.kill()
        await broker.restart()

moto's server comes with `moto[server]` (the dev extra); it serves on loopback only.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import urllib.error
import urllib.request
from typing import IO

from ..errors import BrokerError
from ..lifecycle import AsyncLifecycle
from .process import HOST, file_tail, free_port, stop_process_group

__all__ = ["LocalS3"]

_OUTPUT_TAIL_LINES = 20
_STOP_TIMEOUT_S = 10.0


class LocalS3(AsyncLifecycle):
    """A moto S3 server on a free loopback port, with one bucket made for the broker."""

    def __init__(self, bucket: str = "tansu", start_timeout: float = 30.0) -> None:
        self.bucket = bucket
        self.start_timeout = start_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._output: IO[bytes] | None = None
        self._port: int | None = None

    @property
    def endpoint(self) -> str:
        if self._port is None:
            raise BrokerError("The S3 server is not running: call `await s3.start()` first.")
        return f"http://{HOST}:{self._port}"

    @property
    def storage_url(self) -> str:
        """tansu's `--storage-engine` for this bucket."""
        return f"s3://{self.bucket}/"

    def environment(self) -> dict[str, str]:
        """What tansu's S3 client reads: the endpoint, plain HTTP allowed, any credentials."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    async def start(self) -> None:
        if self._process is not None:
            raise BrokerError("The S3 server is already running.")
        port = free_port()
        self._output = tempfile.TemporaryFile(prefix="moto-")  # noqa: SIM115 (closed by stop())
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "moto.server",
            "-H",
            HOST,
            "-p",
            str(port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._output,
            stderr=asyncio.subprocess.STDOUT,
            process_group=0,
        )
        self._port = port
        try:
            await self._create_bucket()
        except BaseException:
            await self.stop()
            raise

    async def _create_bucket(self) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        while True:
            if self._process.returncode is not None:
                raise BrokerError(
                    f"moto's S3 server exited with code {self._process.returncode}: "
                    f"{self._output_tail()}"
                )
            try:
                await asyncio.to_thread(urllib.request.urlopen, request, timeout=2)
                return
            except (urllib.error.URLError, OSError):
                if loop.time() >= deadline:
                    raise BrokerError(
                        f"moto's S3 server did not answer on {self.endpoint} within "
                        f"{self.start_timeout:.0f}s (is moto[server] installed?): "
                        f"{self._output_tail()}"
                    ) from None
            await asyncio.sleep(0.1)

    def _output_tail(self) -> str:
        if self._output is None:
            return "(no output captured)"
        return file_tail(self._output, _OUTPUT_TAIL_LINES) or "(no output)"

    async def stop(self) -> None:
        process, self._process, self._port = self._process, None, None
        if process is not None:
            await stop_process_group(process, _STOP_TIMEOUT_S)
        if self._output is not None:
            self._output.close()
            self._output = None
