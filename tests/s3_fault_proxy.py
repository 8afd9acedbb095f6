"""A small HTTP proxy that makes a real S3 endpoint fail the way S3 does: storage faults without mocks.

:class:`FaultProxy` listens on 127.0.0.1 and forwards every request to an
upstream S3 endpoint (moto's server in the tests). A :class:`Schedule` decides,
per request, whether it goes through or fails with one of :data:`FAULTS`:

* ``500``: HTTP 500 ``InternalError`` (S3's "we encountered an internal error, try again");
* ``503``: HTTP 503 ``ServiceUnavailable``;
* ``slowdown``: HTTP 503 ``SlowDown`` (S3's throttling);
* ``drop``: the connection is closed without an answer;
* ``truncate``: a GET's answer stops half way through its body, then the connection closes.

Two schedules: :meth:`Schedule.transient` fails the first attempt of every
``every``-th distinct request (method, path, query, byte range), cycling
through the fault kinds — retried requests then succeed, as after a real
hiccup; :meth:`Schedule.puts_fail_after` lets ``n`` PUTs through and then
answers every later PUT with 503 (storage failing for good mid-publish). The
proxy counts what it injected, per kind, so a test can prove faults happened.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("500", "503", "slowdown", "drop", "truncate")
ERROR_ANSWERS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
#: Headers that describe one hop, not the message: never forwarded.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
UPSTREAM_TIMEOUT = 30


@dataclass
class Schedule:
    """Which requests fail, and how (see the module docstring); thread-safe."""

    every: int = 0
    kinds: tuple[str, ...] = FAULTS
    puts_allowed: int | None = None
    _attempts: Counter = field(default_factory=Counter)
    _distinct: int = 0
    _puts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def transient(cls, every: int, kinds: tuple[str, ...] = FAULTS) -> Schedule:
        """The first attempt of every ``every``-th distinct request fails; the kinds take turns."""
        unknown = set(kinds) - set(FAULTS)
        if unknown or every < 1:
            raise ValueError(f"every must be ≥ 1 and kinds among {FAULTS}, got {every}, {sorted(unknown)}")
        return cls(every=every, kinds=kinds)

    @classmethod
    def puts_fail_after(cls, n: int) -> Schedule:
        """``n`` PUTs succeed; every later PUT is answered 503 (and so is each of its retries)."""
        return cls(puts_allowed=n)

    def fault_for(self, method: str, path: str, byte_range: str | None) -> str | None:
        """The fault this request gets, or None to forward it."""
        with self._lock:
            if self.puts_allowed is not None:
                if method != "PUT":
                    return None
                self._puts += 1
                return "503" if self._puts > self.puts_allowed else None
            key = (method, path, byte_range)
            self._attempts[key] += 1
            if self._attempts[key] > 1 or not self.every:
                return None
            self._distinct += 1
            if self._distinct % self.every:
                return None
            kinds = [k for k in self.kinds if k != "truncate" or method == "GET"]
            return kinds[(self._distinct // self.every) % len(kinds)] if kinds else None


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that injects the faults ``schedule`` asks for.

    Use as a context manager: the server thread starts on entry and stops on exit.
    ``endpoint_url`` is the address clients use instead of the upstream's;
    ``injected`` counts the faults by kind, ``forwarded`` the requests passed on.
    """

    def __init__(self, upstream: str, schedule: Schedule) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.schedule = schedule
        self.injected: Counter = Counter()
        self.forwarded = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def count(self, kind: str | None) -> None:
        with self._lock:
            if kind is None:
                self.forwarded += 1
            else:
                self.injected[kind] += 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:  # the test's output stays quiet
                pass

            def _serve(self) -> None:
                body = self._request_body()
                path = urllib.parse.urlsplit(self.path)
                fault = proxy.schedule.fault_for(self.command, f"{path.path}?{path.query}", self.headers.get("Range"))
                proxy.count(fault)
                if fault == "drop":
                    self._drop()
                    return
                if fault in ERROR_ANSWERS:
                    self._error(*ERROR_ANSWERS[fault])
                    return
                status, headers, answer = self._forward(body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                        self.send_header(name, value)
                length = dict((k.lower(), v) for k, v in headers).get("content-length", str(len(answer)))
                self.send_header("Content-Length", length if self.command == "HEAD" else str(len(answer)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "truncate":
                    self.wfile.write(answer[: len(answer) // 2])
                    self._drop()
                    return
                self.wfile.write(answer)

            def _request_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                        timeout=UPSTREAM_TIMEOUT)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    response = connection.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    connection.close()

            def _error(self, status: int, code: str, message: str) -> None:
                answer = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                          f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer)

            def _drop(self) -> None:
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

        return Handler
