"""`modelrig hub serve`: a read-only, loopback-by-default HTTP server over a hub directory (Hub + ModelScope).

Safety: only GET and HEAD are answered (other methods get 405); every path is resolved inside the directory
(`..`, absolute paths, hidden metadata and symlinks leaving it are refused); at most `max_connections` requests
are handled at once; a non-loopback bind address is refused unless `allow_remote=True`; gated repos need a
Bearer token listed in the token file.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from modelrig.errors import UsageError
from modelrig.hub import hf_routes, ms_routes
from modelrig.hub.protocol import Request, Response, json_response

DEFAULT_MAX_CONNECTIONS = 32
_CHUNK = 1 << 20


class HubServer(ThreadingHTTPServer):
    """A threading HTTP server that handles at most `max_connections` connections at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], root: Path, *, tokens: frozenset[str] = frozenset(),
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, throttle_bps: int = 0,
                 access_log: bool = False) -> None:
        self.root = root.resolve()
        self.access_log = access_log
        self.tokens = tokens
        self.throttle_bps = throttle_bps
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        """The base URL clients use (`http://127.0.0.1:PORT`)."""
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "modelrig-hub"
    sys_version = ""
    timeout = 60

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse(self) -> None:
        self._send(json_response(405, {"error": "this hub is read-only"}, {"Allow": "GET, HEAD"}), head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet unless the access log is on: clients probe optional files, and 404s are normal."""
        if self.server.access_log:
            super().log_message(format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One access-log line per request, with the Range asked for (shows resumed downloads)."""
        self.log_message('"%s" %s range=%s', self.requestline, code, self.headers.get("Range", "-"))

    def _answer(self, *, head: bool) -> None:
        parts = urlsplit(self.path)
        segments = tuple(unquote(s) for s in parts.path.split("/") if s)
        req = Request(method="HEAD" if head else "GET", segments=segments,
                      query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                      host=self.headers.get("Host") or f"{self.server.url.split('//', 1)[1]}",
                      token=_token(self.headers.get("Authorization"), self.headers.get("Cookie")),
                      root=self.server.root)
        try:
            response = (ms_routes.handle(req, self.server.tokens) or hf_routes.handle(req, self.server.tokens)
                        or json_response(404, {"error": "not found"}))
        except Exception as exc:  # a bug must not take the server down; answer 500 and keep serving
            response = json_response(500, {"error": f"{type(exc).__name__}: {exc}"})
        self._send(response, head=head)

    def _send(self, response: Response, *, head: bool) -> None:
        if response.file is None:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, _header_safe(value))
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if not head:
                self.wfile.write(response.body)
            return
        local, size = response.file.local, local_size(response.file.local)
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range")
        if wanted:
            parsed = _parse_range(wanted, size)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        self.send_response(status)
        for key, value in response.headers.items():
            self.send_header(key, _header_safe(value))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(max(end - start + 1, 0)))
        self.end_headers()
        if head or end < start:
            return
        with open(local, "rb") as f:
            self._stream(f, start, end - start + 1)

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


def _header_safe(value: str) -> str:
    """Header values go out as latin-1: escape anything else (file names in error messages can be any text)."""
    return value.encode("ascii", "backslashreplace").decode("ascii")


def local_size(path: Path) -> int:
    """The size of the file as it is on disk (what is actually streamed)."""
    return path.stat().st_size


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=A-B`, `bytes=A-` or `bytes=-N` as an inclusive (start, end); None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            count = int(last)
            return (max(size - count, 0), size - 1) if count > 0 and size else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _token(authorization: str | None, cookie: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    for item in (cookie or "").split(";"):
        key, _, value = item.strip().partition("=")
        if key == "m_session_id" and value:
            return value
    return None


def read_tokens(token_file: Path | None) -> frozenset[str]:
    """Accepted tokens: one per non-empty line of the token file."""
    if token_file is None:
        return frozenset()
    try:
        return frozenset(line.strip() for line in token_file.read_text(encoding="utf-8").splitlines()
                         if line.strip())
    except OSError as exc:
        raise UsageError(f"{token_file}: cannot read the token file: {exc.strerror}") from None


def make_server(root: Path, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False,
                token_file: Path | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                throttle_bps: int = 0, access_log: bool = False) -> HubServer:
    """A bound (not yet serving) hub server over `root`; refuses a non-loopback `host` unless `allow_remote`."""
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory")
    if not allow_remote and not _is_loopback(host):
        raise UsageError(f"refusing to listen on {host}: not a loopback address; pass --allow-remote to serve "
                         "other machines")
    try:
        return HubServer((host, port), root, tokens=read_tokens(token_file), max_connections=max_connections,
                         throttle_bps=throttle_bps, access_log=access_log)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve_in_thread(root: Path, *, port: int = 0, host: str = "127.0.0.1", token_file: Path | None = None,
                    throttle_bps: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve `root` from a background thread; returns (base URL, stop function)."""
    server = make_server(root, host=host, port=port, token_file=token_file, throttle_bps=throttle_bps)
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
