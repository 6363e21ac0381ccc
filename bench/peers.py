"""dropr beside the queues it is weighed against, the same end-to-end workload in one run.

Every cell runs one producer process and one consumer process at once: the producer puts
``--count`` messages of ``--size`` bytes, the consumer takes and finishes each; the cell's
time runs from the first put until the last message is done. Peers, in two classes:

- one message per call: dropr (``fastput`` -> relay -> HTTP -> server -> ``claim`` ->
  ``set_processed``, relay and server running), persist-queue (SQLite, WAL), diskcache's
  Deque (SQLite), beanstalkd (binlog; put / reserve / delete), redis (AOF; one ``LPUSH`` /
  ``BRPOP`` per message);
- batches: dropr ``fastput_many`` (when the batch API is there; a claim's messages marked
  processed in one call), redis with pipelines of ``--batch`` (``LPUSH`` pipelined, ``RPOP
  key N``);

each relaxed (what the peer calls its default durability: dropr's put without ``sync``,
SQLite ``synchronous=NORMAL``, beanstalkd's binlog fsync every 50 ms, redis ``appendfsync
everysec``) and durable (``sync=True``; ``synchronous=FULL``; fsync every write;
``appendfsync always``). ``redis-server`` and ``beanstalkd`` are Debian packages; a peer
whose server or client library is missing is left out with a note. Cells alternate peer by
peer, each round in a fresh work directory; the table holds the medians, and ``--chart``
writes them as a PNG (matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import start_server

from dropr._impl import IMPLEMENTATION

START = "print(f'{time.monotonic():.9f}', flush=True)"

# Each peer's producer and consumer: argv is [count, size, batch, durable, *peer arguments].
SCRIPTS: dict[str, tuple[str, str]] = {
    "dropr": (
        f"""
        import dropr
        spool, peer = argv[4], argv[5]
        dropr.Client(spool).close()
        {START}
        for _ in range(count):
            dropr.fastput(payload, peer, spool=spool, sync=durable)
        """,
        """
        from dropr.store import Store
        path = argv[6]
        while not os.path.isdir(os.path.join(path, "channels")):
            time.sleep(0.001)
        store, done = Store(path), 0
        while done < count:
            claimed = store.claim("common", 1000, 60)
            if not claimed:
                time.sleep(0.0005)
            for message in claimed:
                message.read()
                store.set_processed(message)
            done += len(claimed)
        """,
    ),
    "dropr-batch": (
        f"""
        import dropr
        spool, peer = argv[4], argv[5]
        dropr.Client(spool).close()
        {START}
        for _ in range(count // batch):
            dropr.fastput_many([payload] * batch, peer, spool=spool, sync=durable)
        """,
        """
        from dropr.store import Store
        path = argv[6]
        while not os.path.isdir(os.path.join(path, "channels")):
            time.sleep(0.001)
        store, done = Store(path), 0
        while done < count:  # a batch consumer: a claim's messages marked in one call
            claimed = store.claim("common", 1000, 60)
            if not claimed:
                time.sleep(0.0005)
            for message in claimed:
                message.read()
            store.set_processed(*claimed)
            done += len(claimed)
        """,
    ),
    "persist-queue": (
        f"""
        import persistqueue
        queue = persistqueue.SQLiteQueue(argv[4], auto_commit=True, multithreading=True)
        queue._putter.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
        {START}
        for _ in range(count):
            queue.put(payload)
        """,
        """
        import persistqueue
        queue = persistqueue.SQLiteQueue(argv[4], auto_commit=True, multithreading=True)
        queue._getter.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
        done = 0
        while done < count:  # its blocking get waits for a put of this process, in steps of 0.1 s
            try:
                queue.get(block=False)
            except persistqueue.Empty:
                time.sleep(0.0005)
                continue
            done += 1
        """,
    ),
    "diskcache": (
        f"""
        import diskcache
        deque = diskcache.Deque.fromcache(diskcache.Cache(argv[4], sqlite_synchronous=2 if durable else 1))
        {START}
        for _ in range(count):
            deque.append(payload)
        """,
        """
        import diskcache
        deque = diskcache.Deque.fromcache(diskcache.Cache(argv[4], sqlite_synchronous=2 if durable else 1))
        done = 0
        while done < count:
            try:
                deque.popleft()
            except IndexError:
                time.sleep(0.0005)
                continue
            done += 1
        """,
    ),
    "beanstalkd": (
        f"""
        import greenstalk
        client = greenstalk.Client(("127.0.0.1", int(argv[4])), encoding=None)
        {START}
        for _ in range(count):
            client.put(payload)
        """,
        """
        import greenstalk
        client = greenstalk.Client(("127.0.0.1", int(argv[4])), encoding=None)
        for _ in range(count):
            client.delete(client.reserve())
        """,
    ),
    "redis": (
        f"""
        import redis
        client = redis.Redis(port=int(argv[4]))
        {START}
        for _ in range(count):
            client.lpush("q", payload)
        """,
        """
        import redis
        client = redis.Redis(port=int(argv[4]))
        for _ in range(count):
            client.brpop("q")
        """,
    ),
    "redis-pipeline": (
        f"""
        import redis
        client = redis.Redis(port=int(argv[4]))
        {START}
        for _ in range(count // batch):
            pipe = client.pipeline(transaction=False)
            for _ in range(batch):
                pipe.lpush("q", payload)
            pipe.execute()
        """,
        """
        import redis
        client = redis.Redis(port=int(argv[4]))
        done = 0
        while done < count:
            got = client.rpop("q", batch)
            if not got:
                time.sleep(0.0005)
                continue
            done += len(got)
        """,
    ),
}
PRELUDE = """
import os, sys, time
argv = sys.argv[1:]
count, size, batch, durable = int(argv[0]), int(argv[1]), int(argv[2]), argv[3] == "1"
payload = os.urandom(size)
"""
END = "\nprint(f'{time.monotonic():.9f}', flush=True)\n"


@dataclass(frozen=True)
class Peer:
    name: str
    batched: bool
    needs: tuple[str, ...]  # modules and commands
    label: Callable[[bool], str]


def _sqlite(durable: bool) -> str:
    return "FULL" if durable else "NORMAL"


def _beanstalkd(durable: bool) -> str:
    return "every write" if durable else "50 ms"


def _aof(durable: bool) -> str:
    return "always" if durable else "everysec"


PEERS = [
    Peer("dropr", False, (), lambda d: "dropr, sync=True" if d else "dropr"),
    Peer("persist-queue", False, ("persistqueue",), lambda d: f"persist-queue, SQLite WAL {_sqlite(d)}"),
    Peer("diskcache", False, ("diskcache",), lambda d: f"diskcache Deque, SQLite {_sqlite(d)}"),
    Peer("beanstalkd", False, ("greenstalk", "beanstalkd"), lambda d: f"beanstalkd, fsync {_beanstalkd(d)}"),
    Peer("redis", False, ("redis", "redis-server"), lambda d: f"redis, one command, AOF {_aof(d)}"),
    Peer("dropr-batch", True, (), lambda d: "dropr fastput_many" + (", sync=True" if d else "")),
    Peer("redis-pipeline", True, ("redis", "redis-server"), lambda d: f"redis pipelines, AOF {_aof(d)}"),
]


def missing(peer: Peer) -> str:
    for need in peer.needs:
        if "-" in need or need == "beanstalkd":
            if shutil.which(need) is None:
                return f"{need} is not installed"
        elif importlib.util.find_spec(need) is None:
            return f"the Python package {need} is not installed"
    if peer.name == "dropr-batch":
        import dropr

        if not hasattr(dropr, "fastput_many"):
            return "this dropr has no fastput_many"
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def peer_service(peer: Peer, cell: str, durable: bool) -> Iterator[list[str]]:
    """Starts what the peer needs in ``cell``; yields the scripts' peer arguments."""
    if peer.name.startswith("dropr"):
        spool, store = os.path.join(cell, "spool"), os.path.join(cell, "store")
        server = start_server(store)
        relay = subprocess.Popen(
            [sys.executable, "-m", "dropr.cli.relay", "--spool", spool, "--no-supervise", "--parallel", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield [spool, server.url, store]
        finally:
            relay.terminate()
            relay.wait(60)
            server.close()
        return
    if peer.name in ("persist-queue", "diskcache"):
        path = os.path.join(cell, "queue")
        # Made here first: two processes creating one SQLite database at once collide.
        if peer.name == "persist-queue":
            import persistqueue

            persistqueue.SQLiteQueue(path, auto_commit=True)
        else:
            import diskcache

            diskcache.Deque.fromcache(diskcache.Cache(path)).cache.close()
        yield [path]
        return
    port = free_port()
    if peer.name == "beanstalkd":
        os.mkdir(os.path.join(cell, "binlog"))
        argv = ["beanstalkd", "-l", "127.0.0.1", "-p", str(port), "-b", os.path.join(cell, "binlog")]
        argv += ["-f", "0"] if durable else ["-f", "50"]
    else:
        argv = ["redis-server", "--port", str(port), "--dir", cell, "--save", "", "--appendonly", "yes"]
        argv += ["--appendfsync", "always" if durable else "everysec", "--logfile", os.path.join(cell, "redis.log")]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, server)
        yield [str(port)]
    finally:
        server.terminate()
        server.wait(30)


def script(peer: Peer, role: int) -> str:
    body = SCRIPTS[peer.name][role]
    return PRELUDE + textwrap.dedent(body) + (END if role else "")


def cell(peer: Peer, root: str, args: argparse.Namespace, durable: bool) -> float:
    subprocess.run(["sync"], check=True)
    work = tempfile.mkdtemp(prefix=f"{peer.name}-", dir=root)
    count = args.count // args.batch * args.batch if peer.batched else args.count
    common = [str(count), str(args.size), str(args.batch), "1" if durable else "0"]
    with peer_service(peer, work, durable) as extra:
        consumer = subprocess.Popen([sys.executable, "-c", script(peer, 1), *common, *extra], stdout=subprocess.PIPE)
        producer = subprocess.Popen([sys.executable, "-c", script(peer, 0), *common, *extra], stdout=subprocess.PIPE)
        assert producer.stdout is not None and consumer.stdout is not None
        started = float(producer.stdout.readline())
        ended = float(consumer.stdout.readline())
        if producer.wait() or consumer.wait():
            raise RuntimeError(f"{peer.name}: producer or consumer failed")
    shutil.rmtree(work, ignore_errors=True)
    return count / (ended - started)


def chart(path: str, rows: list[tuple[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    labels, rates = zip(*rows, strict=True)
    colours = ["tab:orange" if label.startswith("dropr") else "tab:grey" for label in labels]
    ax.barh(range(len(rows)), rates, color=colours)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("messages per second, end to end (median; log scale)")
    ax.set_title("One producer and one consumer process at once, same run")
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="messages per cell (default 20000)")
    parser.add_argument("--durable-count", type=int, default=3000, help="messages per durable cell (default 3000)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    parser.add_argument("--batch", type=int, default=100, help="messages per batch of the batched peers (default 100)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="peer names to run (default: all)")
    parser.add_argument("--relaxed-only", action="store_true", help="leave out the durable cells")
    parser.add_argument("--chart", metavar="PNG", help="also draw the table as a bar chart")
    parser.add_argument("--dir", default=None, help="where work directories go (default: temp dir)")
    args = parser.parse_args()
    peers = [peer for peer in PEERS if not args.only or peer.name in args.only]
    for peer in list(peers):
        why = missing(peer)
        if why:
            print(f"left out {peer.name}: {why}")
            peers.remove(peer)
    modes = [False] if args.relaxed_only else [False, True]
    rates: dict[tuple[str, bool], list[float]] = {(p.name, d): [] for p in peers for d in modes}
    root = tempfile.mkdtemp(prefix="dropr-peers-", dir=args.dir)
    try:
        for round_no in range(args.rounds):
            for durable in modes:
                sized = argparse.Namespace(**{**vars(args), "count": args.durable_count if durable else args.count})
                for peer in peers:
                    rates[peer.name, durable].append(cell(peer, root, sized, durable))
            print(f"round {round_no + 1}: " + ", ".join(f"{n}{'/sync' if d else ''} {v[-1]:,.0f}/s"
                                                       for (n, d), v in rates.items()), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"settings: {args.count} messages ({args.durable_count} durable) of {args.size} bytes per cell, "
          f"batches of {args.batch}, {args.rounds} rounds, dropr hot path {IMPLEMENTATION}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    rows: list[tuple[str, float]] = []
    print("| peer, end to end | class | msg/s (median) |")
    print("| --- | --- | --- |")
    for peer in peers:
        for durable in modes:
            median = statistics.median(rates[peer.name, durable])
            rows.append((peer.label(durable), median))
            print(f"| {peer.label(durable)} | {'batches' if peer.batched else 'one per call'} | {median:,.0f} |")
    if args.chart:
        chart(args.chart, rows)
        print(f"\nchart: {args.chart}")


if __name__ == "__main__":
    main()
