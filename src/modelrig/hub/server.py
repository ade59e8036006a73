"""`modelrig hub serve`: a read-only, loopback-by-default HTTP server over a hub directory (Hub + ModelScope).

Safety: only GET and HEAD are answered (other methods get 405, their body read and dropped); every path is
resolved inside the directory and every served file inside its own repo's folder (`..`, absolute paths, hidden
metadata and symlinks leaving it are refused); at most `max_connections` requests are handled at once, while idle
keep-alive connections hold no slot (at most `max_open` connections stay open; past that the longest-idle one is
closed); a request must arrive whole (request line, headers and any body it sends) within `read_deadline` seconds
of its first byte, or its connection is closed, so clients that stall anywhere in a request cannot keep places;
a malformed request (bad request line, unsupported HTTP version, an over-long header line, too many headers) is
answered 400, 505 or 431 and logged in one line; a non-loopback bind address is refused unless
`allow_remote=True`; gated repos need a Bearer token listed in the token file. No request text reaches a response
header or the log unescaped: control and non-ASCII characters are written as backslash escapes, and a malformed
`Host` header is not used for redirects.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

from modelrig.errors import UsageError
from modelrig.hub import hf_routes, ms_routes
from modelrig.hub.guarded import GuardedHandler
from modelrig.hub.layout import HubPathError, open_file
from modelrig.hub.protocol import Request, Response, json_response
from modelrig.hub.pull_routes import PullThrough
from modelrig.hub.upstream import Upstream
from modelrig.hub.wire import header_safe, parse_range, read_tokens, request_token

DEFAULT_MAX_CONNECTIONS = 32
#: Open connections allowed per request slot (at least MIN_OPEN): room for clients' idle keep-alive pools.
OPEN_PER_SLOT = 4
MIN_OPEN = 16
#: Seconds a request may take to arrive, from its first byte to the end of its headers (and of a body it sends).
READ_DEADLINE = 10.0
_CHUNK = 1 << 20
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class HubServer(ThreadingHTTPServer):
    """A threading HTTP server handling at most `max_connections` requests at once.

    A connection takes a request slot only while a request on it is being answered. Open connections are capped
    at `max_open` (default: OPEN_PER_SLOT per slot, at least MIN_OPEN); when a new connection arrives at the cap,
    the connection idle for longest (waiting for its next request) is closed to make room, and when none is idle
    the new one waits. A connection whose request has not fully arrived `read_deadline` seconds after its first
    byte is closed (checked on every poll of the serving loop and while a new connection waits for a place).
    """

    daemon_threads = True
    allow_reuse_address = True
    #: Connections the kernel queues while all places are taken (socketserver's 5 drops a burst's SYNs).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], root: Path, *, tokens: frozenset[str] = frozenset(),
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, max_open: int | None = None,
                 throttle_bps: int = 0, access_log: bool = False, read_deadline: float = READ_DEADLINE,
                 pull: PullThrough | None = None) -> None:
        self.root = root.resolve()
        self.read_deadline = read_deadline
        #: In pull-through mode, what answers requests (from its store, filled from its upstream).
        self.pull = pull
        self.access_log = access_log
        self.tokens = tokens
        self.throttle_bps = throttle_bps
        self.max_connections = max_connections
        self.max_open = max_open if max_open is not None else max(OPEN_PER_SLOT * max_connections, MIN_OPEN)
        if max_connections < 1 or self.max_open < 1:
            raise ValueError(f"max_connections ({max_connections}) and max_open ({self.max_open}) must be at least 1")
        self._requests = threading.BoundedSemaphore(max_connections)
        self._open = threading.BoundedSemaphore(self.max_open)
        self._lock = threading.Lock()
        self._idle: dict[_Handler, float] = {}
        #: Connections whose request is arriving, with the time by which it must have arrived.
        self._reading: dict[_Handler, float] = {}
        self._closing = False
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._wait_for_open_place():
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._open.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._open.release()

    def _wait_for_open_place(self) -> bool:
        """Take a place among the `max_open` connections, closing idle ones to make room; False on shutdown."""
        while not self._open.acquire(blocking=False):
            if self._closing:
                return False
            self.close_stalled()
            self._close_longest_idle()
            if self._open.acquire(timeout=0.05):
                break
        return True

    def shutdown(self) -> None:
        self._closing = True
        super().shutdown()

    def service_actions(self) -> None:
        super().service_actions()
        self.close_stalled()

    def close_stalled(self) -> None:
        """Close every connection whose request did not arrive whole by its deadline."""
        now = time.monotonic()
        with self._lock:
            late = [handler for handler, deadline in self._reading.items() if deadline <= now]
            for handler in late:
                del self._reading[handler]
                handler.stalled = True
        for handler in late:
            _shut(handler.connection)

    @contextmanager
    def request_slot(self) -> Iterator[None]:
        """Hold one of the `max_connections` request slots (waiting for one) while a request is answered."""
        with self._requests:
            yield

    def mark_idle(self, handler: _Handler) -> None:
        """The handler's connection is waiting for its next request: it may be closed to make room."""
        with self._lock:
            self._idle[handler] = time.monotonic()

    def mark_busy(self, handler: _Handler) -> bool:
        """The handler's connection received data; False when it was already closed to make room. The first data
        after an idle wait starts the request's read deadline."""
        with self._lock:
            if handler.evicted:
                return False
            if self._idle.pop(handler, None) is not None:
                self._reading[handler] = time.monotonic() + self.read_deadline
            return True

    def done_reading(self, handler: _Handler) -> None:
        """The handler's request has arrived (or is being answered): its read deadline no longer applies."""
        with self._lock:
            self._reading.pop(handler, None)

    def forget(self, handler: _Handler) -> None:
        """The handler's connection is closing: it is no longer a candidate to close."""
        with self._lock:
            self._idle.pop(handler, None)
            self._reading.pop(handler, None)

    def _close_longest_idle(self) -> None:
        with self._lock:
            if not self._idle:
                return
            handler = min(self._idle, key=self._idle.__getitem__)
            del self._idle[handler]
            handler.evicted = True
        _shut(handler.connection)

    @property
    def url(self) -> str:
        """The base URL clients use (`http://127.0.0.1:PORT`)."""
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{port}"


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(GuardedHandler):
    server: HubServer
    server_version = "modelrig-hub"
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _refuse(self) -> None:
        self._discard_body()
        self.server.done_reading(self)
        with self.server.request_slot():
            self._send(json_response(405, {"error": "this hub is read-only"}, {"Allow": "GET, HEAD"}), head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One access-log line per request, with the Range asked for (shows resumed downloads)."""
        self.log_message('"%s" %s range=%s', header_safe(self.requestline), code, self.headers.get("Range", "-"))

    def _dispatch(self, *, head: bool) -> None:
        self._discard_body()
        self.server.done_reading(self)
        with self.server.request_slot():
            self._answer(head=head)

    def _answer(self, *, head: bool) -> None:
        parts = urlsplit(self.path)
        segments = tuple(unquote(s) for s in parts.path.split("/") if s)
        host = self.headers.get("Host") or ""
        req = Request(method="HEAD" if head else "GET", segments=segments,
                      query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                      host=host if _HOST.fullmatch(host) else self.server.url.split("//", 1)[1],
                      token=request_token(self.headers.get("Authorization"), self.headers.get("Cookie")),
                      root=self.server.root)
        try:
            pull = self.server.pull
            response = ((pull.handle(req, self.server.tokens) if pull else None)
                        or ms_routes.handle(req, self.server.tokens) or hf_routes.handle(req, self.server.tokens)
                        or json_response(404, {"error": "not found"}))
        except Exception as exc:  # a bug must not take the server down; answer 500 and keep serving
            response = json_response(500, {"error": f"{type(exc).__name__}: {exc}"})
        self._send(response, head=head)

    def _send_headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, header_safe(value))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, response: Response, *, head: bool) -> None:
        if response.stream is not None:
            self._send_arriving(response, head=head)
            return
        if response.file is None:
            self._send_headers(response.status, {**response.headers, "Content-Length": str(len(response.body))})
            if not head:
                self.wfile.write(response.body)
            return
        try:
            f = open_file(response.file)
        except (HubPathError, OSError):
            self._send(json_response(404, {"error": f"{response.file.path} cannot be served"},
                                     {"X-Error-Code": "EntryNotFound",
                                      "X-Error-Message": f"{response.file.path} cannot be served"}), head=head)
            return
        with f:
            self._send_file(response, f, head=head)

    def _send_file(self, response: Response, f: BinaryIO, *, head: bool) -> None:
        span = self._send_content_headers(response, f.seek(0, 2))
        if span is None or head or span[1] < span[0]:
            return
        self._stream(f, span[0], span[1] - span[0] + 1)

    def _send_content_headers(self, response: Response, size: int) -> tuple[int, int] | None:
        """Send the headers of a file answer of `size` bytes (206 for a Range); the inclusive span to send, or
        None after a 416."""
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range") if response.ranges else None
        if wanted:
            parsed = parse_range(wanted, size)
            if parsed is None:
                self._send_headers(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                return None
            start, end = parsed
            status = 206
        headers = dict(response.headers)
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(max(end - start + 1, 0))})
        self._send_headers(status, headers)
        return start, end

    def _send_arriving(self, response: Response, *, head: bool) -> None:
        """Send a file still arriving (pull-through mode); a transfer that fails midway cuts the connection, so
        the client sees a short body, never a complete one."""
        assert response.stream is not None
        span = self._send_content_headers(response, response.size)
        if span is None or head or span[1] < span[0]:
            return
        try:
            for block in response.stream(span[0], span[1] + 1):
                self.wfile.write(block)
        except Exception:  # the transfer failed or the client left: either way this answer ends here
            self.close_connection = True

    def _stream(self, f: Any, offset: int, count: int) -> None:
        rate = self.server.throttle_bps
        try:
            if not rate:
                self.connection.sendfile(f, offset, count)
                return
            f.seek(offset)
            began = time.monotonic()
            sent = 0
            while sent < count:
                block = f.read(min(_CHUNK, count - sent, max(rate // 10, 1)))
                if not block:
                    break
                self.wfile.write(block)
                sent += len(block)
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def make_server(root: Path, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False,
                token_file: Path | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                throttle_bps: int = 0, access_log: bool = False, upstream: Upstream | None = None) -> HubServer:
    """A bound (not yet serving) hub server over `root` (with `upstream`: a pull-through hub keeping what it fetches
    in `root`); refuses a non-loopback `host` unless `allow_remote`, and
    a port outside 0-65535, fewer than one connection or a negative throttle (named by their `hub serve` flags)."""
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: a port is between 0 (any free port) and 65535", flag="--port", value=port)
    if max_connections < 1:
        raise UsageError(f"--max-connections {max_connections}: at least 1 request must be handled at once",
                         flag="--max-connections", value=max_connections)
    if throttle_bps < 0:
        raise UsageError(f"--throttle {throttle_bps}: a rate in bytes per second is 0 (unlimited) or more",
                         flag="--throttle", value=throttle_bps)
    if not allow_remote and not _is_loopback(host):
        raise UsageError(f"refusing to listen on {host}: not a loopback address; pass --allow-remote to serve "
                         "other machines")
    try:
        return HubServer((host, port), root, tokens=read_tokens(token_file), max_connections=max_connections,
                         throttle_bps=throttle_bps, access_log=access_log,
                         pull=PullThrough(root, upstream) if upstream else None)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve_in_thread(root: Path, *, port: int = 0, host: str = "127.0.0.1", token_file: Path | None = None,
                    throttle_bps: int = 0, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                    upstream: Upstream | None = None) -> tuple[str, Callable[[], None]]:
    """Serve `root` from a background thread; returns (base URL, stop function)."""
    server = make_server(root, host=host, port=port, token_file=token_file, throttle_bps=throttle_bps,
                         max_connections=max_connections, upstream=upstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                              name="modelrig-hub")
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server.url, stop


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
