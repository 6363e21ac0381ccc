"""A real NATS JetStream cluster of three ``nats-server`` processes on 127.0.0.1 for the tests.

The tests write each node's configuration, start the nodes, wait until JetStream has a
meta leader, and create the stream dropr publishes to. Nodes can be killed with SIGKILL and
started again on the same ports and store directories, as a crash and a restart would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from support import free_ports

if TYPE_CHECKING:
    from typing_extensions import Self

STREAM = "DROPR"
T = TypeVar("T")


def retried(make: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """``run(make())``, tried again every half second while it fails, for ``timeout``
    seconds (a cluster still forming); the last failure is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return run(make())
        except Exception:  # noqa: BLE001 (whatever a forming cluster says)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Cluster:
    """JetStream nodes (three by default) clustered over routes; ``url`` is the relay's peer
    for all of them. With ``user``, clients must log in (the test client does)."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        user: str | None = None,
        password: str = "",
        tls: tuple[str, str] | None = None,
    ) -> None:
        if shutil.which("nats-server") is None:
            raise RuntimeError("nats-server is not installed (apt-get install nats-server; .ci/run does)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * size)
        self.ports, self.route_ports, self.monitor_ports = ports[:size], ports[size : 2 * size], ports[2 * size :]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.logs = [root / f"n{i}.log" for i in range(size)]
        self.credentials: dict[str, Any] = {"user": user, "password": password} if user else {}
        if tls:  # clients must use TLS: a self-signed (cert, key), the cert its own CA
            self.credentials["tls"] = ssl.create_default_context(cafile=tls[0])
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.route_ports)
        cluster = f"cluster {{ name: dropr-test, listen: 127.0.0.1:{{route}}, routes: [{routes}] }}" if size > 1 else ""
        auth = f'authorization {{ user: "{user}", password: "{password}" }}' if user else ""
        auth += f'\ntls {{ cert_file: "{tls[0]}", key_file: "{tls[1]}" }}' if tls else ""
        for i in range(size):
            (root / f"n{i}.conf").write_text(
                f"""
server_name: n{i}
listen: 127.0.0.1:{self.ports[i]}
http: 127.0.0.1:{self.monitor_ports[i]}
jetstream {{ store_dir: "{root / f"n{i}-data"}" }}
{cluster.replace("{route}", str(self.route_ports[i]))}
{auth}
"""
            )

    def serving(self, client_name: str) -> int | None:
        """The node the client connection named ``client_name`` is on (None: on none)."""
        for i, port in enumerate(self.monitor_ports):
            if self.procs[i] is None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz", timeout=5) as answer:
                    connections = json.load(answer).get("connections") or []
            except OSError:
                continue
            if any(connection.get("name") == client_name for connection in connections):
                return i
        return None

    @property
    def url(self) -> str:
        return "nats://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def servers(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports]

    def start(self, i: int) -> None:
        log = open(self.logs[i], "ab")  # noqa: SIM115 (kept by the process)
        self.procs[i] = subprocess.Popen(
            ["nats-server", "-c", str(self.root / f"n{i}.conf")], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def start_all(self) -> None:
        for i in range(len(self.ports)):
            self.start(i)

    def kill_all(self) -> None:
        for i in range(len(self.ports)):
            self.kill(i)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once JetStream answers through the cluster (a meta leader is elected)."""
        run(self._wait_ready(timeout))

    async def _wait_ready(self, timeout: float) -> None:
        import nats

        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                nc = await nats.connect(
                    servers=self.servers(), connect_timeout=1, max_reconnect_attempts=1, error_cb=_quiet,
                    **self.credentials,
                )  # fmt: skip
                try:
                    await nc.jetstream(timeout=2).account_info()
                    return
                finally:
                    await nc.close()
            except Exception as exc:  # noqa: BLE001 (not ready yet, whatever it says)
                last = exc
                await asyncio.sleep(0.2)
        raise RuntimeError(f"JetStream cluster not ready after {timeout}s: {last!r}\n{self.log_text()}")

    def add_stream(self, replicas: int = 3, subjects: tuple[str, ...] = ("dropr.>",), timeout: float = 30.0) -> None:
        """Create the stream, tried again while the cluster has not seen every node yet
        ("insufficient resources" for a stream of three replicas)."""

        async def add() -> None:
            import nats

            nc = await nats.connect(servers=self.servers(), error_cb=_quiet, **self.credentials)
            try:
                await nc.jetstream(timeout=10).add_stream(
                    name=STREAM, subjects=list(subjects), num_replicas=replicas, duplicate_window=600
                )
            finally:
                await nc.close()

        retried(add, timeout)  # not every node known yet

    def messages(self, timeout: float = 60.0) -> list[Any]:
        """Every message the stream holds, in stream order (read with a pull consumer of one
        replica in memory; tried again while the cluster is still electing leaders)."""

        async def read() -> list[Any]:
            import nats
            import nats.errors
            from nats.js.api import ConsumerConfig

            nc = await nats.connect(servers=self.servers(), error_cb=_quiet, **self.credentials)
            try:
                js = nc.jetstream(timeout=10)
                total = (await js.stream_info(STREAM)).state.messages
                config = ConsumerConfig(num_replicas=1, mem_storage=True)
                sub = await js.pull_subscribe(">", stream=STREAM, config=config)
                got: list[Any] = []
                while len(got) < total:
                    try:
                        batch = await sub.fetch(min(1000, total - len(got)), timeout=5)
                    except nats.errors.TimeoutError:
                        break
                    for msg in batch:
                        await msg.ack()
                    got.extend(batch)
                return got
            finally:
                await nc.close()

        return retried(read, timeout)  # a leader not elected yet

    def log_text(self) -> str:
        return "\n".join(f"--- n{i}\n" + (log.read_text() if log.exists() else "") for i, log in enumerate(self.logs))

    def __enter__(self) -> Self:
        self.start_all()
        self.wait_ready()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill_all()


async def _quiet(exc: Exception) -> None:
    """nats-py's report of a node that is down (the tests kill nodes on purpose)."""
