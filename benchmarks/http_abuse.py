"""Slow HTTP clients against the health server: the server's open files and the probes' latency.

    python -m benchmarks.http_abuse [--clients 3000] [--nofile 1024] [--duration 30]
    python -m benchmarks.http_abuse --port 8000 --pid PID   # a running `qa-worker run`

`--clients` slow clients each open a connection to the server, send the start of a request
(`GET /healthz HTTP/1.1`, then one more header line a second, never the blank line that ends
it) and, once the server drops them, connect again (`--no-reconnect`: once each). Meanwhile a
probe asks `/healthz` and `/readyz` in turn every 0.2 s the way the kubelet does (a new
connection, `Connection: close`), with a 5 s timeout, and the server process's open files are
counted from /proc every 0.5 s.

Without `--port`, the server is a `HealthServer` in a child process of its own, started with
RLIMIT_NOFILE's soft limit at `--nofile` (as `ulimit -n` would set it; default: unchanged) and
the connection bound, timeouts and size limits of the worker's defaults (or of the QA_HTTP_
variables). The child also opens 8 sockets every 0.1 s and closes them again, as the worker's
Kafka client would connect, and reports how many of those failed for want of a file
descriptor, and the ERROR lines its loop logged.

Printed: the server's open files before and at most during the run, how long the slow
connections lasted before the server dropped them, the server's CPU time while probing (a share
of one core), connections the kernel dropped for a full listening queue meanwhile (machine-wide,
from /proc/net/netstat), the probes' latency p50/p99/max and their status codes, and probes
that timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

PROBE_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 5.0
TRICKLE_INTERVAL_S = 1.0
FD_SAMPLE_INTERVAL_S = 0.5
# Connection attempts under way at once while the slow clients ramp up; more would only queue
# in the kernel's accept backlog.
CONNECT_CONCURRENCY = 200
OWN_SOCKETS_PER_ROUND = 8


@dataclass
class SlowClients:
    opened: int = 0
    connect_failures: int = 0
    lifetimes_s: list[float] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0


@dataclass
class Probes:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    errors: int = 0


async def slow_client(
    host: str,
    port: int,
    stats: SlowClients,
    stop: asyncio.Event,
    reconnect: bool,
    gate: asyncio.Semaphore,
) -> None:
    while not stop.is_set():
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout=PROBE_TIMEOUT_S
                )
        except (TimeoutError, OSError):
            stats.connect_failures += 1
            await asyncio.sleep(0.5)
            continue
        stats.opened += 1
        stats.open_now += 1
        stats.most_open = max(stats.most_open, stats.open_now)
        opened_at = time.monotonic()
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
            line = 0
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), timeout=TRICKLE_INTERVAL_S)
                except TimeoutError:
                    line += 1
                    writer.write(f"X-Slow-{line}: x\r\n".encode())
                    continue
                if not data:
                    break
        except OSError:
            pass
        finally:
            stats.open_now -= 1
            if not stop.is_set():
                stats.lifetimes_s.append(time.monotonic() - opened_at)
            writer.transport.abort()
        if not reconnect:
            return


async def probe_once(host: str, port: int, path: str, probes: Probes) -> None:
    began = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.30\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode()
            )
            reply = await reader.read()
    except TimeoutError:
        probes.timeouts += 1
        return
    except OSError:
        probes.errors += 1
        return
    finally:
        if writer is not None:
            writer.transport.abort()
    probes.latencies_s.append(time.monotonic() - began)
    status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/") else "no reply"
    key = f"{path} {status}"
    probes.statuses[key] = probes.statuses.get(key, 0) + 1


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def listen_overflows() -> int:
    """Connections the kernel dropped, machine-wide, because a listening queue was full: each
    makes its client's TCP try again a second or more later (Linux's TcpExt counters)."""
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def probe(host: str, port: int, duration_s: float) -> Probes:
    """`/healthz` and `/readyz` in turn every PROBE_INTERVAL_S for `duration_s`."""
    probes = Probes()
    until = time.monotonic() + duration_s
    paths = ("/healthz", "/readyz")
    turn = 0
    pending: set[asyncio.Task[None]] = set()
    while time.monotonic() < until:
        task = asyncio.create_task(probe_once(host, port, paths[turn % 2], probes))
        pending.add(task)
        task.add_done_callback(pending.discard)
        turn += 1
        await asyncio.sleep(PROBE_INTERVAL_S)
    await asyncio.gather(*pending)
    return probes


def raise_own_file_limit(clients: int) -> None:
    """This process holds a socket per slow client: its soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = clients + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard != resource.RLIM_INFINITY and hard < wanted:
            sys.exit(f"the hard open-file limit {hard} is below the {wanted} this run needs")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def attack(args: argparse.Namespace, host: str, port: int, pid: int) -> dict[str, object]:
    stats = SlowClients()
    stop = asyncio.Event()
    baseline = open_files(pid)
    most_files = baseline
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    began = time.monotonic()
    clients = [
        asyncio.create_task(slow_client(host, port, stats, stop, args.reconnect, gate))
        for _ in range(args.clients)
    ]

    async def sample_files() -> None:
        nonlocal most_files
        while not stop.is_set():
            with contextlib.suppress(OSError):
                most_files = max(most_files, open_files(pid))
            await asyncio.sleep(FD_SAMPLE_INTERVAL_S)

    sampler = asyncio.create_task(sample_files())
    # The probes start once every client has had its first connection attempt answered.
    while stats.opened + stats.connect_failures < args.clients:
        if time.monotonic() - began > args.duration:
            break
        await asyncio.sleep(0.1)
    ramp_s = time.monotonic() - began
    cpu_before = cpu_seconds(pid)
    overflows_before = listen_overflows()
    opened_before = stats.opened
    # The probe runs in a process of its own, as the kubelet does: in this one its timings
    # would include the slow clients' turns of this event loop.
    prober = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.http_abuse",
        "--probe",
        "--host",
        host,
        "--port",
        str(port),
        "--duration",
        str(args.duration),
        stdout=subprocess.PIPE,
    )
    output, _ = await prober.communicate()
    probes = Probes(**json.loads(output))
    server_cpu_s = cpu_seconds(pid) - cpu_before
    overflows = listen_overflows() - overflows_before
    opened_while_probing = stats.opened - opened_before
    open_at_end = stats.open_now
    stop.set()
    sampler.cancel()
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, sampler, return_exceptions=True)
    lifetimes = stats.lifetimes_s
    latencies = probes.latencies_s
    return {
        "clients": args.clients,
        "reconnect": args.reconnect,
        "ramp_s": round(ramp_s, 1),
        "probing_s": args.duration,
        "server_open_files_before": baseline,
        "server_open_files_most": most_files,
        "slow_connections_opened": stats.opened,
        "slow_connections_most_open_at_once": stats.most_open,
        "slow_connections_open_at_end": open_at_end,
        "slow_connect_failures": stats.connect_failures,
        "slow_connection_lifetime_s": {
            "p50": round(statistics.median(lifetimes), 2) if lifetimes else None,
            "max": round(max(lifetimes), 2) if lifetimes else None,
            "dropped": len(lifetimes),
        },
        "server_cpu_share_while_probing": round(server_cpu_s / args.duration, 2),
        "slow_connections_per_s_while_probing": round(opened_while_probing / args.duration),
        "server_cpu_us_per_slow_connection": (
            round(server_cpu_s / opened_while_probing * 1e6) if opened_while_probing else None
        ),
        "listen_overflows_while_probing": overflows,
        "probes": len(latencies) + probes.timeouts + probes.errors,
        "probe_statuses": probes.statuses,
        "probe_timeouts": probes.timeouts,
        "probe_errors": probes.errors,
        "probe_latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 1) if latencies else None,
            "p99": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
            "max": round(max(latencies) * 1000, 1) if latencies else None,
        },
    }


# ---------------------------------------------------------------------------------------------
# The child: a HealthServer, and the worker's own need for file descriptors.


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors = 0
        self.out_of_resource = 0
        self.accept_paused = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith("cannot accept HTTP connections"):
            self.accept_paused += 1
        if record.levelno < logging.ERROR:
            return
        self.errors += 1
        if "out of system resource" in message:
            self.out_of_resource += 1


async def serve(nofile: int | None) -> None:
    from worker.config import Settings
    from worker.observability.http import HealthServer
    from worker.observability.metrics import WorkerMetrics

    if nofile is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    counted = _Count()
    logging.getLogger().addHandler(counted)
    settings = Settings.from_sources(None)
    own_failures = 0
    server = HealthServer.from_settings(
        WorkerMetrics(), lambda: (False, "benchmark"), settings, host="127.0.0.1", port=0
    )
    async with server:
        print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        while not stdin_closed.done():
            held = []
            try:
                for _ in range(OWN_SOCKETS_PER_ROUND):
                    held.append(socket.socket())
            except OSError:
                own_failures += 1
            finally:
                for sock in held:
                    sock.close()
            await asyncio.sleep(0.1)
        report = {
            "nofile_soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "connection_bound": server.connection_bound,
            **dataclasses.asdict(server.stats),
            "own_socket_failures": own_failures,
            "error_lines": counted.errors,
            "out_of_resource_lines": counted.out_of_resource,
            "accept_paused_lines": counted.accept_paused,
        }
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of probing")
    parser.add_argument("--reconnect", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--nofile", type=int, help="the server child's RLIMIT_NOFILE soft limit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running server's port (then give --pid)")
    parser.add_argument("--pid", type=int, help="the process serving --port")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probes = asyncio.run(probe(args.host, args.port, args.duration))
        print(json.dumps(dataclasses.asdict(probes)))
        return
    if args.serve:
        asyncio.run(serve(args.nofile))
        return
    raise_own_file_limit(args.clients)
    if args.port is not None:
        if args.pid is None:
            parser.error("--port needs --pid, the process whose open files are counted")
        print(json.dumps(asyncio.run(attack(args, args.host, args.port, args.pid)), indent=1))
        return
    command = [sys.executable, "-m", "benchmarks.http_abuse", "--serve"]
    if args.nofile is not None:
        command += ["--nofile", str(args.nofile)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        started = json.loads(child.stdout.readline())
        report = asyncio.run(attack(args, args.host, started["port"], started["pid"]))
        child.stdin.close()
        report["server"] = json.loads(child.stdout.readline())
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
