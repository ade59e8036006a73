"""A folder served over HTTP on loopback (a wheel folder or a Python mirror, as mirror-only networks have them),
recording every path requested."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Served:
    """A running folder server: its base URL (no trailing slash) and the request paths seen so far."""

    url: str
    requests: list[str] = field(default_factory=list)


@contextmanager
def serve_folder(folder: Path, *, host: str = "127.0.0.1") -> Iterator[Served]:
    """Serve `folder` (directory listings included, as `python -m http.server` does) on a free port of `host`."""
    served = Served(url="")

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def send_head(self):  # type: ignore[no-untyped-def]
            served.requests.append(self.path)
            return super().send_head()

    server = ThreadingHTTPServer((host, 0), functools.partial(Handler, directory=str(folder)))
    served.url = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
