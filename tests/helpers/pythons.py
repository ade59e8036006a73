"""Python builds in python-build-standalone's layout, made from this machine's pyenv Pythons, and uv's downloads
list naming them: what a Python mirror serves, without the network.

The archive is `python/{bin,lib,include}` (the `install_only` layout) with the interpreter's library path made
relative (`$ORIGIN/../lib`), so it runs wherever uv unpacks it; its file name is the one python-build-standalone
releases use, and the downloads list gives its sha256 (uv refuses an archive whose hash differs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from urllib.parse import quote

from tests.helpers.venvs import CACHE

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
#: The release tag given to the archives made here (uv's own list has none with this date).
BUILD = "20991231"
#: Where python-build-standalone's release downloads are; a mirror replaces this prefix.
DEFAULT_PREFIX = "https://github.com/astral-sh/python-build-standalone/releases/download"


def archive_name(version: str, build: str = BUILD) -> str:
    """`cpython-3.11.7+20991231-x86_64-unknown-linux-gnu-install_only.tar.gz`"""
    return f"cpython-{version}+{build}-x86_64-unknown-linux-gnu-install_only.tar.gz"


def standalone_archive(version: str) -> Path:
    """The archive of pyenv's Python `version` (built once, cached under the test cache)."""
    out = CACHE / "standalone" / archive_name(version)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_file():
            _build(version, out)
    return out


def _build(version: str, out: Path) -> None:
    source = PYENV / version
    minor = ".".join(version.split(".")[:2])
    stage = out.parent / f"stage-{version}"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(source, stage / "python", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "test", "site-packages", "idle_test"))
    (stage / "python" / "lib" / f"python{minor}" / "site-packages").mkdir()
    exe = stage / "python" / "bin" / f"python{minor}"
    old, new = str(source / "lib").encode(), b"$ORIGIN/../lib"
    data = exe.read_bytes()
    assert data.count(old) == 1, f"{exe}: expected one RUNPATH {old!r}"
    exe.write_bytes(data.replace(old, new + b"\0" * (len(old) - len(new))))
    runpath = subprocess.run(["readelf", "-d", str(exe)], capture_output=True, text=True, check=True).stdout
    assert "[$ORIGIN/../lib]" in runpath, runpath
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        tar.add(stage / "python", arcname="python")
    os.replace(partial, out)
    shutil.rmtree(stage)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mirror_folder(root: Path, archive: Path, *, build: str = BUILD, name: str | None = None) -> Path:
    """Lay `archive` out under `root` as a mirror of the release downloads: `<root>/<build>/<name>`."""
    target = root / build / (name or archive.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(archive, target) if archive.stat().st_dev == target.parent.stat().st_dev else shutil.copy(archive, target)
    return target


def downloads_json(path: Path, version: str, *, sha: str, build: str = BUILD) -> Path:
    """Write uv's downloads list (UV_PYTHON_DOWNLOADS_JSON_URL) with one CPython build whose URL is under
    python-build-standalone's release prefix (so a mirror setting applies to it) and whose hash is `sha`."""
    major, minor, patch = (int(x) for x in version.split("."))
    key = f"cpython-{version}-linux-x86_64-gnu"
    path.write_text(json.dumps({key: {
        "name": "cpython", "arch": {"family": "x86_64", "variant": None}, "os": "linux", "libc": "gnu",
        "major": major, "minor": minor, "patch": patch, "prerelease": "", "variant": None, "build": build,
        "url": f"{DEFAULT_PREFIX}/{build}/{quote(archive_name(version, build))}", "sha256": sha}}, indent=2))
    return path


def uv_builtin_url(uv: str, version: str) -> str:
    """The download URL uv's own pinned list gives for CPython `version` on this platform."""
    out = subprocess.run([uv, "python", "list", "--no-config", "--only-downloads", "--all-versions", "--show-urls"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "UV_PYTHON_DOWNLOADS": "manual"})
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == f"cpython-{version}-linux-x86_64-gnu":
            return parts[1]
    raise AssertionError(f"uv lists no download of CPython {version}")
