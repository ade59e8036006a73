"""The request handling of the hub's connections that no request text can break: a request stream that knows when
a connection went idle, was closed to make room or stalled past its read deadline; malformed requests answered
with their status and one escaped log line; request bodies read and dropped; answers that reach the client before
its connection closes."""

from __future__ import annotations

import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, BinaryIO

from modelrig.hub.wire import header_safe

#: A request body up to this size is read and dropped (keeping the connection); a larger one closes it.
MAX_DISCARDED_BODY = 1 << 20
#: A logged error message is cut to this many characters (a request line can be 64 KiB).
_LOGGED_CHARS = 200


class _IdleAwareReader:
    """The request stream of a connection: the first data after an idle wait marks the connection busy, a
    connection closed to make room reads as ended, and one closed for stalling past its read deadline raises
    TimeoutError (the handler answers nothing more and closes it)."""

    def __init__(self, stream: BinaryIO, handler: GuardedHandler) -> None:
        self._stream = stream
        self._handler = handler

    def readline(self, limit: int = -1) -> bytes:
        line = self._stream.readline(limit)
        self._raise_if_stalled()
        return line if self._handler.server.mark_busy(self._handler) else b""

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._raise_if_stalled()
        return data

    def _raise_if_stalled(self) -> None:
        if self._handler.stalled:
            raise TimeoutError(f"the request did not arrive within {self._handler.server.read_deadline:g} s")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class GuardedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 request handling for a server that tracks its connections (`mark_idle`, `mark_busy`,
    `done_reading`, `forget`, `read_deadline`, `access_log`: the hub's HubServer)."""

    server: Any
    protocol_version = "HTTP/1.1"
    timeout = 60
    evicted = False
    stalled = False

    def setup(self) -> None:
        super().setup()
        self.rfile = _IdleAwareReader(self.rfile, self)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        self.server.mark_idle(self)
        super().handle_one_request()

    def finish(self) -> None:
        self.server.forget(self)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet unless the access log is on: clients probe optional files, and 404s are normal."""
        if self.server.access_log:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:
        """One line on stderr, access log or not (a malformed or stalled request): escaped and cut short."""
        message = header_safe(format % args)
        if len(message) > _LOGGED_CHARS:
            message = message[:_LOGGED_CHARS] + "..."
        sys.stderr.write(f"{self.address_string()} - - [{self.log_date_time_string()}] {message}\n")

    def send_response(self, code: int, message: str | None = None) -> None:
        self.server.done_reading(self)
        super().send_response(code, message)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request the server cannot parse (400, 414, 431, 505, 501) with its standard reason phrase and
        a JSON body, close the connection, and log one line with what was wrong; no request text is echoed."""
        self.server.done_reading(self)
        phrase = self.responses.get(code, ("Error",))[0]
        self.log_error("%d %s: %s", code, phrase, message or phrase)
        self.close_connection = True
        if self.request_version in ("", "HTTP/0.9"):
            self.request_version = "HTTP/1.0"  # a line that is not HTTP still gets a status line
        body = json.dumps({"error": phrase}).encode()
        self.send_response_only(code, phrase)
        for key, value in (("Server", self.version_string()), ("Date", self.date_time_string()),
                           ("Content-Type", "application/json; charset=utf-8"), ("Connection", "close"),
                           ("Content-Length", str(len(body)))):
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._linger()

    def _linger(self) -> None:
        """Send the answer, then read and drop what the client still sends (at most MAX_DISCARDED_BODY, for at most
        a second) before the connection closes: closing with unread input would reset it and lose the answer."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            ends, left = time.monotonic() + 1.0, MAX_DISCARDED_BODY
            while left > 0 and time.monotonic() < ends:
                block = self.connection.recv(min(left, 1 << 16))
                if not block:
                    break
                left -= len(block)
        except OSError:
            pass

    def _discard_body(self) -> None:
        """Read and drop the request body, so that the next request on a keep-alive connection starts where it
        should; a body that cannot be skipped that way (chunked, larger than MAX_DISCARDED_BODY, a malformed or
        repeated length, or cut short) closes the connection after the answer instead."""
        if self.headers.get("Transfer-Encoding") or len(self.headers.get_all("Content-Length") or []) > 1:
            self.close_connection = True
            return
        length = (self.headers.get("Content-Length") or "").strip()
        if not length:
            return
        if not length.isdigit() or int(length) > MAX_DISCARDED_BODY:
            self.close_connection = True
            return
        left = int(length)
        while left > 0:
            block = self.rfile.read(min(left, 1 << 16))
            if not block:
                self.close_connection = True
                return
            left -= len(block)
