"""Wheel folders a test serves as a mirror to hosts that reach nothing else: the toolkit's dependencies (pinned to
this toolkit env) and a model env's package set, each downloaded once into the test cache (pip's own
configuration supplies the local torch wheel)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from modelrig.config import PipSettings
from modelrig.lock.toolkit_wheels import collect_toolkit_wheels, toolkit_indexes, toolkit_pins
from tests.helpers.venvs import CACHE


def _cached(kind: str, key: str, fill) -> Path:  # type: ignore[no-untyped-def]
    folder = CACHE / "wheelhouse" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            fill(partial)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
            done.write_text(key)
    return folder


def toolkit_wheelhouse() -> Path:
    """The wheels of every toolkit dependency (no modelrig wheel: the role builds and copies that one)."""
    def fill(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "modelrig-0-py3-none-any.whl").write_bytes(b"")  # collect_toolkit_wheels wants the toolkit's
        collect_toolkit_wheels(folder, indexes=toolkit_indexes(PipSettings(use_torch_index=False)), cache=CACHE)
        (folder / "modelrig-0-py3-none-any.whl").unlink()

    return _cached("toolkit", "\n".join(toolkit_pins()), fill)


def packages_wheelhouse(requirements: list[str]) -> Path:
    """Every wheel `pip download` resolves for `requirements` on this interpreter's Python."""
    def fill(folder: Path) -> None:
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                              "--only-binary=:all:", "-d", str(folder), *requirements], capture_output=True, text=True,
                             check=False, env={**os.environ, "PIP_CACHE_DIR": str(CACHE / "pip")})
        assert out.returncode == 0, out.stderr[-2000:]

    return _cached("packages", "\n".join(sorted(requirements)), fill)
