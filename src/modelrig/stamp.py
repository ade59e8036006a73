"""Atomic outputs and idempotency stamps shared by every stage (fetch, convert, env, render)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STAMP_NAME = ".modelrig-stamp.json"
_TMP_MARK = ".modelrig-tmp-"


def digest(value: Any) -> str:
    """A stable sha256 of a JSON-serialisable value (keys sorted), used to key stamps and envs."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path: Path, *, chunk: int = 8 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def cached_sha256(files: list[Path], *, cache: Path | None, persist: bool = True) -> dict[str, str]:
    """sha256 of each file (keyed by `str(file)`), re-using the digest cache `cache` (JSON: resolved path ->
    size, mtime, inode and sha256), so a file unchanged since any stage hashed it is not read again.

    Fetch (local weights) and convert (inputs) share one cache per data root. With `persist=False` the cache is
    read but never written (check mode). A damaged cache is ignored and rewritten.
    """
    known: dict[str, Any] = {}
    if cache is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(cache.read_text(encoding="utf-8"))
            known = loaded if isinstance(loaded, dict) else {}
    out: dict[str, str] = {}
    changed = False
    for f in files:
        st = f.stat()
        ident = str(f.resolve())
        fp = [st.st_size, st.st_mtime_ns, st.st_ino]
        entry = known.get(ident)
        if isinstance(entry, dict) and entry.get("fp") == fp and isinstance(entry.get("sha256"), str):
            out[str(f)] = entry["sha256"]
            continue
        out[str(f)] = sha256_file(f)
        known[ident] = {"fp": fp, "sha256": out[str(f)]}
        changed = True
    if cache is not None and changed and persist:
        atomic_write_text(cache, json.dumps(known, sort_keys=True))
    return out


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write `text` to `path` via a temporary sibling and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(_temporary_name(path.name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode if mode is not None else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """Atomically write a JSON document (sorted keys, trailing newline)."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_stamp(directory: Path) -> dict[str, Any] | None:
    """The stamp of a finished output directory, or None when absent or unreadable."""
    try:
        return json.loads((directory / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_stamp(directory: Path, stamp: dict[str, Any]) -> None:
    """Mark `directory` finished; only call this once everything in it is in place."""
    write_json(directory / STAMP_NAME, stamp)


def stamp_matches(directory: Path, key: str) -> bool:
    """True when `directory` holds a finished output stamped with the same input key."""
    stamp = read_stamp(directory)
    return stamp is not None and stamp.get("key") == key


def _temporary_name(name: str) -> str:
    """`.modelrig-tmp-<pid>-<random>-<name>`: the pid tells later runs whether its writer is still alive."""
    return f"{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"


def temporaries_of(path: Path) -> list[Path]:
    """The temporary siblings `atomic_write_text` made for `path`, whoever wrote them (finished or not)."""
    return sorted(path.parent.glob(f"{_TMP_MARK}*-{path.name}")) if path.parent.is_dir() else []


def _writer_alive(entry_name: str) -> bool:
    pid = entry_name[len(_TMP_MARK):].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(parent: Path) -> list[Path]:
    """Delete temporary siblings in `parent` left by interrupted runs (writers no longer alive); return them.

    Temporaries of writers that are still running (another conversion sharing the folder) are left alone.
    """
    removed: list[Path] = []
    if parent.is_dir():
        for entry in parent.iterdir():
            if entry.name.startswith(_TMP_MARK) and not _writer_alive(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to fill; on success it replaces `final`, on error it is deleted.

    An interrupted run leaves only a `.modelrig-tmp-*` sibling (cleaned by the next run), never a `final`
    that looks finished. An existing `final` is replaced only after the new one is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = final.with_name(_temporary_name(final.name))
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.with_name(_temporary_name(f"old-{final.name}"))
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
