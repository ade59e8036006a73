"""This machine's local wheel folders served over HTTP on loopback, as a mirror-only network serves wheels.

`served_wheels(folder)` links every wheel of pip's find-links folders (`tests/helpers/venvs.pip_find_links`: torch's
CPU build among them) into `folder` and serves it with `python3 -m http.server` on 127.0.0.1 at a free port; it
yields the URL, which pip and uv take as a `--find-links` URL (they read the directory listing's links).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.venvs import pip_find_links


def link_wheels(folder: Path, sources: list[str] | None = None) -> list[str]:
    """Symlink every *.whl of `sources` (default: pip's find-links folders) into `folder`; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for source in sources if sources is not None else pip_find_links():
        for wheel in sorted(Path(source).glob("*.whl")):
            target = folder / wheel.name
            if not target.exists():
                target.symlink_to(wheel)
            names.append(wheel.name)
    if not names:
        raise FileNotFoundError(f"no wheels in {sources if sources is not None else pip_find_links()}")
    return sorted(set(names))


@contextmanager
def served_wheels(folder: Path, *, address: str = "127.0.0.1") -> Iterator[str]:
    """Serve the linked wheel folder over HTTP on loopback; yields its URL (with a trailing slash)."""
    link_wheels(folder)
    with socket.socket() as sock:
        sock.bind((address, 0))
        port = int(sock.getsockname()[1])
    log = open(folder.parent / f"{folder.name}-http.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", address, "--directory", str(folder),
                             str(port)], stdout=log, stderr=log)
    log.close()
    url = f"http://{address}:{port}/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the wheel server on {url} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
