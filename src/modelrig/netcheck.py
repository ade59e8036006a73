"""Small network checks with short timeouts, and the hints that go with their failures.

Used by `modelrig demo` (is loopback up before a local hub is served), fetch errors and `modelrig doctor`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
import urllib.parse
from dataclasses import dataclass

#: What to do when loopback is down: a fresh network namespace (`unshare -n`) starts with `lo` down.
LOOPBACK_HINT = ("loopback is down (a new network namespace such as `unshare -n` starts with it down): bring it up "
                 "first, e.g. `unshare -n sh -c 'ip link set lo up && make demo-engine'`")
#: Where hub downloads can come from when the public hubs are blocked or slow.
MIRROR_HINT = ("use a mirror: `hub.hf_endpoint: https://hf-mirror.com` in the host config (or --hf-endpoint, "
               "HF_ENDPOINT), ModelScope (--hub modelscope, hub.modelscope_endpoint), or a local "
               "`modelrig hub serve DIR`")


def is_loopback(host: str | None) -> bool:
    """True for `localhost` and addresses in 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_up(timeout: float = 2.0) -> bool:
    """True when a connection to a listening socket on 127.0.0.1 succeeds (False inside a bare `unshare -n`)."""
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=timeout):
                return True
    except OSError:
        return False


@dataclass(frozen=True)
class Probe:
    """The result of one TCP connection attempt to a URL's host and port."""

    url: str
    ok: bool
    seconds: float
    #: Why it failed ("connection refused", "name not resolved", "timed out after 3s", ...); "" when ok.
    error: str = ""
    #: errno of the failure, when there was one.
    errno: int | None = None


def probe_url(url: str, *, timeout: float = 3.0) -> Probe:
    """Open (and close) a TCP connection to the URL's host and port; a `file:` URL is checked on disk instead.

    Never raises: DNS failures, refusals and timeouts become `ok=False` with a short reason.
    """
    parts = urllib.parse.urlparse(url)
    start = time.perf_counter()
    if parts.scheme == "file":
        from pathlib import Path

        exists = Path(urllib.parse.unquote(parts.path)).exists()
        return Probe(url, exists, time.perf_counter() - start, "" if exists else "no such folder")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Probe(url, True, time.perf_counter() - start)
    except socket.gaierror:
        return Probe(url, False, time.perf_counter() - start, "name not resolved")
    except TimeoutError:
        return Probe(url, False, time.perf_counter() - start, f"timed out after {timeout:g}s", errno.ETIMEDOUT)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Probe(url, False, time.perf_counter() - start, reason.lower(), exc.errno)


def unreachable_hint(url: str, error_text: str) -> str:
    """The hint for a failed connection to `url`: loopback down, or a mirror for a public endpoint."""
    host = urllib.parse.urlparse(url).hostname
    if is_loopback(host):
        if "unreachable" in error_text.lower() or not loopback_up():
            return LOOPBACK_HINT
        return "nothing listens there: start it (e.g. `modelrig hub serve DIR`) or fix the URL"
    return MIRROR_HINT
