"""Health of a launched entry: the HTTP probe, waiting for it, and proving the answering process is ours."""

from __future__ import annotations

import contextlib
import errno
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from modelrig.errors import HealthCheckError, LaunchError, PortBusyError


def probe(info: dict[str, Any]) -> bool:
    """One health check: an HTTP GET of the entry's health URL answering 2xx."""
    health = info.get("health") or {}
    if health.get("type") != "http":
        return True
    try:
        with urllib.request.urlopen(health["url"], timeout=3) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_holders(port: int) -> list[int]:
    """Pids listening on TCP `port` (any address); empty when none, or when the OS does not let us see them."""
    with contextlib.suppress(psutil.Error, OSError):
        return sorted({c.pid for c in psutil.net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid})
    return []


def port_in_use(bind: str, port: int) -> bool:
    """Whether binding `bind:port` would fail because something already listens there."""
    host = "0.0.0.0" if bind in ("", "0.0.0.0") else bind
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def entry_of_process(pid: int) -> tuple[Path, dict[str, Any]] | None:
    """The rendered entry folder (and its entry.json) that process `pid` or one of its parents runs in, if any:
    every supervisor starts an entry's `start.sh` in its folder."""
    import json

    from modelrig.launch.render import ENTRY_FILE

    try:
        chain = [psutil.Process(pid), *psutil.Process(pid).parents()]
    except psutil.Error:
        return None
    for proc in chain:
        try:
            folder = Path(proc.cwd())
            info = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
        except (psutil.Error, OSError, ValueError):
            continue
        if isinstance(info, dict):
            return folder, info
    return None


def stop_command(folder: Path, info: dict[str, Any]) -> str:
    """The `modelrig stop` command line for the entry rendered in `folder` (`<data root>/launch/<model>/<entry>`
    names its data root; a folder elsewhere is named with --launch-dir)."""
    model, entry = info.get("model"), info.get("entry")
    if folder.parent.parent.name == "launch" and folder.parent.name == model and folder.name == entry:
        return f"modelrig --data-root {folder.parents[2]} stop {model} {entry}"
    return f"modelrig stop {model} {entry} --launch-dir {folder.parent}"


def ensure_port_free(info: dict[str, Any]) -> None:
    """Refuse to start an entry whose port is taken (PortBusyError naming the port and, when visible, the pid)."""
    port = info.get("port")
    if not port or not port_in_use(info.get("bind") or "127.0.0.1", int(port)):
        return
    holders = port_holders(int(port))
    who = f" by pid {', '.join(map(str, holders))}" if holders else ""
    for pid in holders:
        if found := entry_of_process(pid):
            folder, other = found
            who += (f", the modelrig demo {other.get('model')}/{other.get('entry')} rendered in {folder} (stop it: "
                    f"{stop_command(folder, other)})")
            break
    raise PortBusyError(f"{info['model']}/{info['entry']}: port {port} is already in use{who}; stop that process "
                        f"or give the entry another port (launch[].port in the manifest, or `serve.ports: "
                        f"{{{info['model']}/{info['entry']}: PORT}}` in the host config)", port=int(port), pids=holders,
                        model=info["model"], entry=info["entry"])


def owns_port(pid: int, port: int) -> bool | None:
    """Whether `pid` or one of its descendants listens on `port`; None when the OS hides the answer."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None
    hidden = False
    for proc in family:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            hidden = True
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
    return None if hidden else False


def wait_healthy(info: dict[str, Any], *, timeout: float | None = None, pid: int | None = None,
                 exited: Callable[[], int | None] | None = None, log: Path | None = None,
                 journal: Callable[[], str] | None = None) -> float:
    """Wait until the entry answers its health check; return the seconds waited.

    `exited()` returns the exit status once the started process has ended (None while it runs): then the wait
    stops at once with the log's tail (or `journal()`, the service manager's last lines of it). When `pid` is given, the port must be held by that process or one of its
    children: an answer from some other server on the same port is a `HealthCheckError`. Entries without a
    health endpoint (batch jobs) count as healthy while their process runs.
    """
    health = info.get("health") or {}
    limit = timeout if timeout is not None else float(health.get("timeout_s", 900))
    started = time.monotonic()
    name = f"{info['model']}/{info['entry']}"

    def last_lines() -> str:
        return tail(log) or (journal() if journal is not None else "")

    if health.get("type") != "http":
        # a job (batch captioning): started when its process survives its first second, or finished cleanly
        while exited is not None and time.monotonic() - started < 1.0:
            code = exited()
            if code is not None:
                if code != 0:
                    raise LaunchError(f"{name} exited with status {code}{last_lines()}", code="job_failed",
                                      exit_status=code)
                break
            time.sleep(0.1)
        return time.monotonic() - started
    while True:
        code = exited() if exited is not None else None
        if code is not None:
            raise HealthCheckError(f"{name} exited (status {code}) before it became healthy{last_lines()}",
                                   exit_status=code, url=health.get("url"))
        if probe(info):
            if pid is not None and info.get("port") and owns_port(pid, int(info["port"])) is False:
                raise HealthCheckError(f"{name}: {health.get('url')} answers, but not from the process modelrig "
                                       f"started (pid {pid}); another server holds port {info['port']}{last_lines()}",
                                       url=health.get("url"), pid=pid, port=int(info["port"]))
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise HealthCheckError(f"{name} did not answer {health.get('url')} within {limit:.0f}s{last_lines()}",
                                   url=health.get("url"), timeout_s=limit)
        time.sleep(0.25)


def tail(log: Path | None, lines: int = 15) -> str:
    """The last lines of a log, as a suffix for an error message (empty without a log)."""
    if log is None or not log.is_file():
        return ""
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n" + "\n".join(text)
