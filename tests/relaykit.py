"""What the relay and end-to-end tests share: a real ``dropr-relay`` process, a server on a
chosen port (to bring a peer back where it was), and checks of what a store holds."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from support import ServerProcess, queued_files, start_server

import dropr
from dropr._codec_py import BUCKET_LEN
from dropr.store import Store

STOP_TIMEOUT = 30.0


def wait_until(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.02) -> None:
    """Return once ``check()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {check}")
        time.sleep(interval)


def relay_command(spool: str | os.PathLike[str], *args: str) -> list[str]:
    return [sys.executable, "-m", "dropr.cli.relay", "--spool", str(spool), *args]


def run_relay(
    spool: str | os.PathLike[str], *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``dropr-relay --spool SPOOL ARGS`` to its end (tests use ``--once``)."""
    return subprocess.run(
        relay_command(spool, *args), capture_output=True, text=True, timeout=timeout, env=env or _env(), check=False
    )


def relay_once(spool: str | os.PathLike[str], peer: str, channel: str, count: int, *relay_args: str) -> None:
    """Put ``count`` messages (b"0", b"1", ...) for ``channel`` into ``spool`` and relay them
    all to ``peer`` (``dropr-relay --once``, with ``relay_args``)."""
    with dropr.Client(spool) as client:
        for i in range(count):
            client.put(b"%d" % i, peer=peer, channel=channel)
    done = run_relay(spool, "--once", "--no-supervise", *relay_args)
    assert done.returncode == 0, done.stderr


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DROPR_TOKEN"}


class RelayProcess:
    """A running ``dropr-relay``; a context manager that kills it on exit."""

    def __init__(self, spool: str | os.PathLike[str], *args: str, env: dict[str, str] | None = None) -> None:
        self.spool = Path(spool)
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            relay_command(spool, *args),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env or _env(),
        )

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def worker_pid(self) -> int:
        """The pid in ``relay.lock`` (the worker's, under a supervisor)."""
        text = (self.spool / "relay.lock").read_text().strip()
        return int(text) if text.isdigit() else 0

    def wait_started(self, timeout: float = 30.0) -> None:
        wait_until(lambda: "relaying" in self.log() or self.proc.poll() is not None, timeout)
        assert self.proc.poll() is None, self.log()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.kill()
        finally:
            self._log.close()


def server_on(store_dir: str | os.PathLike[str], port: int, token: str | None = None) -> ServerProcess:
    """A server on ``port`` exactly: a peer coming back where the relay expects it."""
    args = ["--listen", f"127.0.0.1:{port}"]  # the last --listen wins
    server = ServerProcess(store_dir, token=token, extra_args=args)
    server.port = port
    server.url = f"http://127.0.0.1:{port}/"
    try:
        server.wait_ready()
    except BaseException:
        server.close()
        raise
    return server


@contextlib.contextmanager
def peer_for(transport: str, store: Path) -> Iterator[str]:
    """A peer URL storing into ``store``: a running server's for ``"http"``, else ``file://``."""
    if transport != "http":
        yield store.as_uri()
        return
    with start_server(store) as server:
        yield server.url


def queued(spool: str | os.PathLike[str]) -> list[str]:
    return [path.name for path in queued_files(Path(spool) / "queue") if not path.name.startswith(".")]


def queued_path(spool: str | os.PathLike[str], name: str) -> Path:
    """Where the queued message ``name`` lives: ``queue/BUCKET/NAME``."""
    return Path(spool) / "queue" / name[:BUCKET_LEN] / name


def stored(store_dir: str | os.PathLike[str]) -> dict[str, list[tuple[str, bytes]]]:
    """``{channel: [(id, payload), ...]}`` of a store's queues, in delivery order."""
    if not (Path(store_dir) / "channels").is_dir():
        return {}
    store = Store(store_dir)
    return {ch: [(m.id, m.read()) for m in store.messages(ch)] for ch in store.channels()}


def stored_count(store_dir: str | os.PathLike[str]) -> int:
    """Messages in a store's queues, counted from the directories (cheap enough to poll)."""
    channels = Path(store_dir) / "channels"
    if not channels.is_dir():
        return 0
    return sum(
        len([n for n in os.listdir(ch / "queue") if not n.startswith(".")])
        for ch in channels.iterdir()
        if not ch.name.startswith(".") and (ch / "queue").is_dir()  # not a channel being made
    )


def check_stored_once(stores: Iterable[str | os.PathLike[str]], sent: dict[str, bytes]) -> None:
    """Every message of ``sent`` (id -> payload) is held once, whole, in one of ``stores``."""
    seen: collections.Counter[str] = collections.Counter()
    for store_dir in stores:
        for messages in stored(store_dir).values():
            for msg_id, payload in messages:
                seen[msg_id] += 1
                assert payload == sent.get(msg_id), f"{msg_id}: payload differs (crc {zlib.crc32(payload):08x})"
    twice = [msg_id for msg_id, count in seen.items() if count > 1]
    assert not twice, f"{len(twice)} messages stored twice"
    missing = set(sent) - set(seen)
    assert not missing, f"{len(missing)} of {len(sent)} messages missing"
    assert set(seen) == set(sent)


def in_delivery_order(messages: Sequence[tuple[str, bytes]], priority_of: dict[str, int]) -> bool:
    keys = [(priority_of[msg_id], msg_id) for msg_id, _ in messages]
    return keys == sorted(keys)


def kill_relays_then_drain(spool: Path, store: Path, expected: int, rounds: int) -> None:
    """Up to ``rounds`` times, a relay on ``spool`` is started and killed with SIGKILL at a
    random moment once ``store`` holds more than before (or it stopped); then ``--once``
    delivers the rest, and the queue must be empty. What the store holds is the caller's
    to check."""
    for _ in range(rounds):
        before = stored_count(store)
        if before == expected:
            break
        relay = RelayProcess(spool, "--no-supervise", "--batch-count", "100")
        wait_until(lambda b=before, r=relay: stored_count(store) > b or r.proc.poll() is not None, timeout=60)
        time.sleep(random.uniform(0, 0.05))
        relay.kill()
        relay.__exit__()
    done = run_relay(spool, "--once", "--no-supervise")
    assert done.returncode == 0, done.stderr
    assert queued(spool) == []


def kill_servers_while_relaying(spool: Path, store: Path, port: int, expected: int, rounds: int) -> None:
    """A relay on ``spool`` (backing off briefly) delivers to a server on ``port``, which is
    killed with SIGKILL at a random moment once ``store`` holds more than before and started
    again, up to ``rounds`` times or until ``expected`` are stored; then the queue must
    drain. What the store holds is the caller's to check."""
    config = spool.parent / "kill-servers.toml"
    config.write_text("backoff_min_seconds = 0.05\nbackoff_max_seconds = 0.2\n")
    server = server_on(store, port)
    try:
        with RelayProcess(spool, "--no-supervise", "--config", str(config), "--batch-count", "100") as relay:
            for _ in range(rounds):
                before = stored_count(store)
                if before == expected:
                    break
                wait_until(lambda b=before: stored_count(store) > b, timeout=60)
                time.sleep(random.uniform(0, 0.05))
                server.kill()
                server.close()
                server = server_on(store, port)
            wait_until(lambda: queued(spool) == [], timeout=120)
            assert relay.stop() == 0
    finally:
        server.close()
