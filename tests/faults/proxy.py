"""A fault-injecting reverse proxy for S3, on loopback, in front of the moto server.

Object stores fail in ordinary ways: 503 SlowDown under load, 500 InternalError, connections cut in the middle of a
response body, slow answers. :class:`FaultProxy` reproduces them in front of any S3 endpoint so that the storage
layer and the jobs can be tested against them with real clients (boto3, s3fs/aiobotocore, pyarrow's AWS SDK all
go through it when ``AWS_ENDPOINT_URL`` or ``S3Options.endpoint_url`` names it).

What happens to a request is decided by a :class:`FaultPlan` and is reproducible from its seed regardless of
thread interleaving: the decision is a hash of (seed, method, path and query without the bucket name, Range
header, how many times this same request was seen before). A retry of a faulted request is therefore a new draw, and the same sequence of
requests meets the same faults in every run.

- ``error_rate``: the request is answered, without reaching the store, with ``503 SlowDown`` or
  ``500 InternalError`` (half each) and S3's XML error body. The request body is drained first, so the
  connection stays usable (keep-alive), as S3 does.
- ``cut_rate``: a GET answered 200/206 with a body is forwarded, and the connection dies after the headers and a
  part of the body (a reset, RST, or a plain close, FIN: half each), as when a load balancer drops a connection.
- ``latency_s``: every request waits a uniform random time in ``[0, latency_s]`` first.
- ``slow_write_path`` / ``slow_write_s``: writes (PUT, POST) whose path and query match the regular expression
  ``slow_write_path`` (``re.search``) wait ``slow_write_s`` first: a store slow to take those objects (a big
  checkpoint on a busy link).
- ``max_faults_per_request``: the same request is faulted at most this many times in a row, so that a client
  retrying a few times always gets through; the tests stay bounded in time whatever the seed.

The proxy streams both ways (request bodies as they arrive, ``Content-Length`` or chunked; response bodies in
64 KiB pieces), keeps client and upstream connections alive, times idle connections out, and :meth:`stop` closes
every connection so that no thread outlives it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_PIECE = 64 << 10
# Connection-level headers are between one client and one server; they are not forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
}
_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
}


@dataclass(frozen=True)
class FaultPlan:
    """What the proxy does to the requests it forwards (all rates are fractions of requests, 0..1)."""

    seed: int = 0
    """Seed of every decision; the same seed and requests give the same faults."""
    error_rate: float = 0.0
    """Fraction of requests answered 503 SlowDown or 500 InternalError (half each) without reaching the store."""
    cut_rate: float = 0.0
    """Fraction of GET responses with a body whose connection is cut (RST or FIN) part-way through the body."""
    latency_s: float = 0.0
    """Upper bound of a uniform random delay added before every request."""
    max_faults_per_request: int = 3
    """The same request (method, path, range) is faulted at most this many times in a row."""
    ignore_conditional_writes: bool = False
    """Drop ``If-None-Match``/``If-Match`` from PUTs, as S3-compatible stores without conditional writes do."""
    slow_write_path: str = ""
    """Writes (PUT, POST) whose path and query match this regular expression (``re.search``) wait ``slow_write_s``
    before they are forwarded ("": none)."""
    slow_write_s: float = 0.0
    """The wait of those writes."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, proxy: FaultProxy):
        self.proxy = proxy
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self):
        sock, addr = super().get_request()
        with self.live_lock:
            self.live.add(sock)
        return sock, addr

    def shutdown_request(self, request):
        with self.live_lock:
            self.live.discard(request)
        super().shutdown_request(request)


class _Cut(Exception):
    """The response was cut on purpose: the client connection is gone."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked request bodies
    timeout = 60  # an idle or stuck client connection is dropped after this long
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("fault proxy: " + format, *args)

    def do_GET(self):
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    # -- request side --------------------------------------------------------------------------------------------
    def _body_pieces(self):
        """The request body exactly as the client sent it (chunked framing included), piece by piece."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                yield line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        trailer = self.rfile.readline(65537)
                        yield trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                left = size
                while left:
                    data = self.rfile.read(min(left, _PIECE))
                    if not data:
                        raise ConnectionError("client closed the connection inside a chunk")
                    left -= len(data)
                    yield data
                yield self.rfile.readline(65537)  # the CRLF after the chunk
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, _PIECE))
                if not data:
                    raise ConnectionError("client closed the connection inside the body")
                left -= len(data)
                yield data

    # -- response side -------------------------------------------------------------------------------------------
    def _send_error_response(self, status: int) -> None:
        code, message = _ERRORS[status]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{self.path.split('?', 1)[0]}</Resource><RequestId>{uuid.uuid4().hex[:16]}</RequestId>"
            "</Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _cut(self, rst: bool) -> None:
        """Kill the client connection now: with an RST (``SO_LINGER`` 0) or a plain close (FIN)."""
        sock = self.connection
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        self.close_connection = True
        raise _Cut

    def _proxy(self) -> None:
        proxy = self.server.proxy
        fault = proxy._decide(self.command, self.path, self.headers.get("Range", ""))
        if fault.delay:
            time.sleep(fault.delay)
        try:
            if fault.error:
                for _ in self._body_pieces():  # drained, so the connection can carry the next request
                    pass
                self._send_error_response(fault.error)
                return
            self._forward(fault)
        except _Cut:
            pass
        except (ConnectionError, TimeoutError, OSError) as err:
            log.debug("fault proxy: %s %s: %s", self.command, self.path, err)
            self._drop_upstream()
            self.close_connection = True

    def _upstream_conn(self) -> http.client.HTTPConnection:
        conn = getattr(self, "_upstream", None)
        if conn is None:
            host, port = self.server.proxy._upstream_addr
            conn = self._upstream = http.client.HTTPConnection(host, port, timeout=self.timeout)
        return conn

    def _drop_upstream(self) -> None:
        conn = getattr(self, "_upstream", None)
        if conn is not None:
            conn.close()
            self._upstream = None

    def _forward(self, fault: _Fault) -> None:
        for attempt in range(
            2
        ):  # an upstream keep-alive connection may have been closed by the store meanwhile
            conn = self._upstream_conn()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                drop_conditions = self.command == "PUT" and self.server.proxy.plan.ignore_conditional_writes
                for name, value in self.headers.items():
                    if drop_conditions and name.lower() in ("if-none-match", "if-match"):
                        continue
                    if name.lower() not in _HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.endheaders()
                break
            except (ConnectionError, http.client.HTTPException):
                self._drop_upstream()
                if attempt:
                    raise
        for piece in self._body_pieces():
            conn.send(piece)
        try:
            resp = conn.getresponse()
        except (ConnectionError, http.client.HTTPException, TimeoutError) as err:
            self._drop_upstream()
            log.debug("fault proxy: upstream failed for %s %s: %s", self.command, self.path, err)
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response_only(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        has_body = self.command != "HEAD" and resp.status not in (204, 304) and not 100 <= resp.status < 200
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "transfer-encoding":
                self.send_header(name, value)
        chunked = has_body and length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()  # the client connection stays alive even if the store closes its own
        cut_at = None
        if (
            fault.cut_fraction is not None
            and has_body
            and self.command == "GET"
            and resp.status in (200, 206)
            and length is not None
            and int(length) >= 2
        ):
            cut_at = max(1, min(int(length) - 1, int(int(length) * fault.cut_fraction)))
        sent = 0
        while has_body:
            piece = resp.read(_PIECE)
            if not piece:
                break
            if cut_at is not None and sent + len(piece) >= cut_at:
                self.wfile.write(piece[: cut_at - sent])
                self._drop_upstream()  # its response was not read to the end
                proxy = self.server.proxy
                with proxy._lock:
                    proxy.counts["cut_rst" if fault.rst else "cut_fin"] += 1
                self._cut(fault.rst)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        if resp.will_close:
            self._drop_upstream()

    def finish(self):
        super().finish()
        self._drop_upstream()


@dataclass(frozen=True)
class _Fault:
    error: int | None  # 503 or 500: answered without reaching the store
    cut_fraction: float | None  # cut a GET body at this fraction of its length
    rst: bool  # cut with an RST rather than a FIN
    delay: float


class FaultProxy:
    """A reverse proxy on 127.0.0.1 that forwards to ``upstream`` (``http://host:port``) and injects faults.

    Use as a context manager or with :meth:`start`/:meth:`stop`; :attr:`endpoint_url` is where clients go.
    :attr:`plan` can be changed while it runs (:meth:`set_plan`); :attr:`counts` says what was injected
    (``requests``, ``error_503``, ``error_500``, ``cut_rst``, ``cut_fin``).
    """

    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream {upstream!r}: an http://host:port URL is needed")
        self._upstream_addr = (parts.hostname, parts.port or 80)
        self.plan = plan or FaultPlan()
        self.counts: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fault proxy is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_plan(self, plan: FaultPlan | None = None, **changes) -> None:
        """Replace the plan (or change some of its fields); the request history restarts, and so do the counts."""
        with self._lock:
            self.plan = replace(plan or self.plan, **changes)
            self._seen.clear()
            self._faulted.clear()
            self.counts.clear()

    @property
    def faults(self) -> int:
        """How many faults were injected since the plan was set (errors and cut bodies)."""
        with self._lock:
            return sum(v for k, v in self.counts.items() if k.startswith(("error_", "cut_")))

    def seen(self, method: str, contains: str) -> int:
        """How many ``method`` requests whose path contains ``contains`` reached the proxy since the plan was set."""
        with self._lock:
            return sum(n for key, n in self._seen.items() if key.startswith(f"{method} ") and contains in key)

    def _decide(self, method: str, path: str, range_header: str) -> _Fault:
        # Without the bucket (tests make randomly named ones), so that a test's faults are the same in every run.
        _, _, in_bucket = path.lstrip("/").partition("/")
        key = f"{method} /{in_bucket} {range_header}"
        with self._lock:
            plan = self.plan
            nth = self._seen[key]
            self._seen[key] += 1
            self.counts["requests"] += 1
            digest = hashlib.sha256(f"{plan.seed}\0{key}\0{nth}".encode()).digest()
            rng = random.Random(digest)
            draw_error, draw_code, draw_cut, cut_fraction, draw_rst, draw_delay = (
                rng.random() for _ in range(6)
            )
            may_fault = self._faulted[key] < plan.max_faults_per_request
            error = None
            if may_fault and draw_error < plan.error_rate:
                error = 503 if draw_code < 0.5 else 500
                self.counts[f"error_{error}"] += 1
            cut = may_fault and error is None and method == "GET" and draw_cut < plan.cut_rate
            if error or cut:
                self._faulted[key] += 1
            else:
                self._faulted[key] = 0
        slow = plan.slow_write_path and method in ("PUT", "POST") and re.search(plan.slow_write_path, path)
        return _Fault(
            error=error,
            cut_fraction=0.05 + 0.9 * cut_fraction if cut else None,
            rst=draw_rst < 0.5,
            delay=draw_delay * plan.latency_s + (plan.slow_write_s if slow else 0.0),
        )

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close every open connection (so no handler thread stays blocked) and wait briefly."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.live_lock:
            live = list(server.live)
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
