"""Helpers the integration tests share: a real ``dropr-server`` process and a TLS certificate.

The server is started as its own process (``python -m dropr.cli.server``) on 127.0.0.1, so
the tests exercise exactly what a user runs; it is ready once ``GET /health`` answers.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0

if TYPE_CHECKING:
    from typing_extensions import Self


def soak(full: int) -> int:
    """The size of a ``slow`` soak: ``full`` times ``$DROPR_SOAK`` when that is set, else a
    tenth of ``full``, so that the default run (and CI) still goes through every soak."""
    factor = os.environ.get("DROPR_SOAK")
    return max(1, int(full * float(factor))) if factor else max(1, full // 10)


def queued_files(queue_dir: str | os.PathLike[str]) -> list[Path]:
    """The message files in a spool's bucketed ``queue/``, by name (read without dropr's scan).
    A bucket a running relay removes meanwhile (it removes empty ones only) is passed over."""
    found: list[Path] = []
    for bucket in Path(queue_dir).iterdir():
        try:
            found.extend(bucket.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
    return sorted(found, key=lambda path: path.name)


def open_under(directory: str | os.PathLike[str]) -> int:
    """How many of this process's descriptors are open on ``directory`` or a file under it:
    what a test of its own descriptors counts, whatever other tests' garbage or threads
    open and close meanwhile."""
    top = os.path.realpath(directory)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile, or the listing's own
            continue
        count += target == top or target.startswith(top + os.sep)
    return count


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    [port] = free_ports(1)
    return port


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 that nothing listens on right now: all bound
    at once, since a port just let go of may be handed out again at the next bind."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class ServerProcess:
    """A running ``dropr-server``; a context manager that stops it on exit.

    ``url`` ends with ``/`` (the POST path); ``stderr_text()`` returns what it logged.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        token: str | None = None,
        tls: tuple[str, str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.token = token
        self.tls = tls
        self.cafile = tls[0] if tls else None
        self.port = free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/"
        args = [
            sys.executable,
            "-m",
            "dropr.cli.server",
            "--store",
            str(self.store_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        if token is not None:
            args += ["--token", token]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        args += list(extra_args)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        if env is None:
            env = {k: v for k, v in os.environ.items() if k != "DROPR_TOKEN"}
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr, env=env)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the server's certificate (None over plain HTTP)."""
        return ssl.create_default_context(cafile=self.cafile) if self.cafile else None

    def get(self, path: str) -> tuple[int, bytes]:
        """``(status, body)`` of a GET on this server (4xx/5xx answers included)."""
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10, context=self.ssl_context()) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Return once ``GET /health`` answers; raise with the server's log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dropr-server exited with {self.proc.returncode}:\n{self.stderr_text()}")
            try:
                self.get("health")
                return
            except (OSError, ssl.SSLError):
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"dropr-server not ready after {timeout}s:\n{self.stderr_text()}")

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Graceful stop (SIGTERM by default); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def close(self) -> None:
        try:
            self.kill()
        finally:
            self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_server(
    store_dir: str | os.PathLike[str],
    *,
    token: str | None = None,
    tls: tuple[str, str] | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    attempts: int = 3,
) -> ServerProcess:
    """Launch ``dropr-server`` on a free 127.0.0.1 port and wait until it is ready.

    The environment's ``DROPR_TOKEN`` is not passed on unless ``env`` is given, so a
    token is set only by ``token``. A port taken between the probe and the bind is retried.
    """
    for attempt in range(attempts):
        server = ServerProcess(store_dir, token=token, tls=tls, extra_args=extra_args, env=env)
        try:
            server.wait_ready()
            return server
        except RuntimeError as exc:
            server.close()
            if attempt == attempts - 1 or "in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


def make_tls_cert(directory: str | os.PathLike[str]) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: ``(cert.pem, key.pem)`` paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = Path(directory)
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)
