"""An S3-compatible server on loopback for tests: moto's S3 behind a switch that can fail
a share of requests the way S3 does under load (500 InternalError, 503 SlowDown)."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

_Start = Callable[[str, list[tuple[str, str]]], Any]
_App = Callable[[dict[str, Any], _Start], Iterable[bytes]]

_FAULTS = (
    ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
    ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
)


@dataclass
class FaultInjector:
    """WSGI middleware: with ``every = n`` (n > 0) every n-th request is answered with a
    5xx error before it reaches S3 (so it changes nothing there); ``every = 0`` passes all.
    ``injected`` counts the errors sent, so a test can show faults happened."""

    app: _App
    every: int = 0
    injected: int = 0
    _count: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: _Start) -> Iterable[bytes]:
        with self._lock:
            n = next(self._count)
            fail = self.every > 0 and n % self.every == self.every - 1
            if fail:
                self.injected += 1
        if not fail:
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)  # drain the body: keep the connection usable
        status, code, message = _FAULTS[n % len(_FAULTS)]
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        if environ["REQUEST_METHOD"] == "HEAD":
            body = b""  # S3 answers a HEAD with the status alone
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]


@dataclass
class S3Server:
    """A running loopback server: its endpoint, and the fault switch in front of it."""

    endpoint: str
    faults: FaultInjector

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client (or a subprocess) needs to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name (one per test keeps tests apart)."""
        import boto3

        name = f"test-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)
        return name


def start_s3_server() -> tuple[S3Server, Callable[[], None]]:
    """Start moto's S3 on a free loopback port in a thread; returns the server and the
    function that stops it. (moto keeps its buckets per process: two such servers in one
    process hold the same buckets.)"""
    from moto.server import DomainDispatcherApplication, create_backend_app

    faults = FaultInjector(DomainDispatcherApplication(create_backend_app))
    endpoint, stop = _serve(faults)
    return S3Server(endpoint, faults), stop


@dataclass
class RefusingServer:
    """An S3 endpoint that refuses every request (403 AccessDenied, which no client
    retries) and counts them: where a request must not go."""

    requests: int = 0

    def __call__(self, environ: dict[str, Any], start_response: _Start) -> Iterable[bytes]:
        self.requests += 1
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)
        body = b"" if environ["REQUEST_METHOD"] == "HEAD" else _ACCESS_DENIED
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        start_response("403 Forbidden", headers)
        return [body]


_ACCESS_DENIED = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"


def start_refusing_server() -> tuple[str, RefusingServer, Callable[[], None]]:
    """Start a ``RefusingServer`` on loopback; returns its endpoint, itself, and stop."""
    refusing = RefusingServer()
    endpoint, stop = _serve(refusing)
    return endpoint, refusing, stop


def _serve(app: _App) -> tuple[str, Callable[[], None]]:
    """Serve the WSGI ``app`` on a free loopback port in a thread: (endpoint, stop)."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop
