"""What a pull-through hub keeps: upstream snapshots by commit, branch names' last commits, and verified files.

```
DIR/.modelrig-pull/meta/<hf|ms>/<org>/<name>/commits/<commit>.json   a snapshot (files, sizes, digests, gate)
DIR/.modelrig-pull/meta/<hf|ms>/<org>/<name>/refs/<revision>         the commit a branch or tag named last
DIR/.modelrig-pull/meta/<hf|ms>/<org>/<name>/raw/<key>.json          a forwarded answer (repo info, revisions)
DIR/.modelrig-pull/blobs/<sha256|gitsha1>/<digest>                   a verified file
DIR/.modelrig-pull/blobs/<sha256|gitsha1>/<digest>.partial           a download under way or interrupted
```

A file is fetched from upstream by one `Transfer` however many clients ask for it: it appends to the `.partial`
(resuming an interrupted one with a Range request), hashes as it writes, and renames it to its digest only when
size and digest match. Readers follow the `.partial` as it grows, but are never given its last byte before the
file is verified, so no client can complete a file that turns out wrong; on a mismatch the partial is deleted and
every reader's transfer is cut short.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modelrig.hub.upstream import FileEntry, Snapshot, UpstreamError

STORE = ".modelrig-pull"
#: Seconds after an upstream sent a file's wrong bytes during which Range requests for it get the whole file:
#: a client resuming may hold a prefix of those bytes.
REFUSED_TTL = 24 * 3600
#: Seconds after such a refusal during which the file is not asked for again (clients get 502 and Retry-After).
REFUSED_BACKOFF = 30
_BLOCK = 1 << 20


class TransferFailed(Exception):
    """The upstream transfer of a file failed (unreachable, cut short, or the wrong bytes)."""


class PullStore:
    """The pull-through hub's folder: snapshots, refs, forwarded answers and verified files."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve() / STORE
        self.blobs = self.root / "blobs"
        self._transfers: dict[str, Transfer] = {}
        self._question_locks: dict[tuple[str, ...], threading.Lock] = {}
        self._lock = threading.Lock()

    # -- metadata -----------------------------------------------------------------------------------------------
    def _repo_dir(self, protocol: str, repo: str) -> Path:
        return self.root / "meta" / protocol / repo

    def snapshot(self, protocol: str, repo: str, commit: str) -> Snapshot | None:
        """The stored snapshot of `commit`, or None."""
        path = self._repo_dir(protocol, repo) / "commits" / f"{commit}.json"
        try:
            return Snapshot.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def ref(self, protocol: str, repo: str, revision: str) -> tuple[str, float] | None:
        """(commit, seconds since it was recorded) that `revision` named last, or None."""
        path = self._repo_dir(protocol, repo) / "refs" / quote(revision, safe="")
        try:
            return path.read_text(encoding="utf-8").strip(), time.time() - path.stat().st_mtime
        except OSError:
            return None

    def save(self, snap: Snapshot, revision: str) -> None:
        """Record a snapshot under its commit, and that `revision` names it."""
        folder = self._repo_dir(snap.protocol, snap.repo)
        _write_atomic(folder / "commits" / f"{snap.commit}.json", json.dumps(snap.to_json()).encode())
        if revision != snap.commit:
            _write_atomic(folder / "refs" / quote(revision, safe=""), snap.commit.encode())

    def raw(self, protocol: str, repo: str, key: str) -> tuple[bytes, float] | None:
        """(a forwarded answer, seconds since it was kept), or None."""
        path = self._repo_dir(protocol, repo) / "raw" / f"{quote(key, safe='')}.json"
        try:
            return path.read_bytes(), time.time() - path.stat().st_mtime
        except OSError:
            return None

    def lock(self, *key: str) -> threading.Lock:
        """The lock of one metadata question, so that clients asking it at once cause one upstream request."""
        with self._lock:
            return self._question_locks.setdefault(key, threading.Lock())

    def save_raw(self, protocol: str, repo: str, key: str, body: bytes) -> None:
        _write_atomic(self._repo_dir(protocol, repo) / "raw" / f"{quote(key, safe='')}.json", body)

    # -- files --------------------------------------------------------------------------------------------------
    def blob(self, entry: FileEntry) -> Path:
        """Where the verified file of `entry` is (or will be) kept."""
        return self.blobs / entry.algo / entry.digest

    def refused_since(self, entry: FileEntry) -> float | None:
        """Seconds since the upstream last sent wrong bytes for `entry`, or None."""
        try:
            return time.time() - _refused_marker(self.blob(entry)).stat().st_mtime
        except OSError:
            return None

    def transfer(self, entry: FileEntry, opener: Callable[[int], tuple[Any, int]], log: Callable[[str], None]
                 ) -> Transfer:
        """The transfer fetching `entry`: the one under way, or a new one started with `opener(offset)`."""
        key = f"{entry.algo}/{entry.digest}"
        with self._lock:
            running = self._transfers.get(key)
            if running is not None and not running.finished:
                return running
            started = Transfer(self.blob(entry), entry, opener, log, on_end=lambda: self._forget(key))
            self._transfers[key] = started
        started.start()
        return started

    def _forget(self, key: str) -> None:
        with self._lock:
            self._transfers.pop(key, None)


class Transfer:
    """One upstream download of one file into `<blob>.partial`, followed by any number of readers."""

    def __init__(self, final: Path, entry: FileEntry, opener: Callable[[int], tuple[Any, int]],
                 log: Callable[[str], None], *, on_end: Callable[[], None]) -> None:
        self.final = final
        self.partial = final.with_name(final.name + ".partial")
        self.entry = entry
        self._opener = opener
        self._log = log
        self._on_end = on_end
        self._cond = threading.Condition()
        self.written = 0
        self.finished = False
        self.error: str | None = None
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.partial.touch()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name=f"pull-{self.entry.digest[:12]}").start()

    def _run(self) -> None:
        try:
            self._download()
        except (UpstreamError, TransferFailed, OSError) as exc:
            self._end(f"{self.entry.path}: {exc}")
        except Exception as exc:  # a bug must not leave readers waiting forever
            self._end(f"{self.entry.path}: {type(exc).__name__}: {exc}")

    def _download(self) -> None:
        entry = self.entry
        hasher = hashlib.sha256() if entry.algo == "sha256" else hashlib.sha1(b"blob %d\x00" % entry.size)
        with open(self.partial, "r+b") as out:
            have = min(out.seek(0, 2), entry.size)
            out.truncate(have)
            out.seek(0)
            left = have
            while left:
                block = out.read(min(_BLOCK, left))
                hasher.update(block)
                left -= len(block)
            stream, start = self._opener(have)
            if start != have:  # the upstream sent the whole file: start over
                out.truncate(0)
                have = 0
                hasher = hashlib.sha256() if entry.algo == "sha256" else hashlib.sha1(b"blob %d\x00" % entry.size)
            self._log(f"upstream {entry.path} from byte {have} of {entry.size}")
            out.seek(have)
            with self._cond:
                self.written = have
                self._cond.notify_all()
            with stream:
                while have < entry.size:
                    block = stream.read(min(_BLOCK, entry.size - have))
                    if not block:
                        raise TransferFailed(f"the upstream ended the file at byte {have} of {entry.size}")
                    out.write(block)
                    out.flush()
                    hasher.update(block)
                    have += len(block)
                    with self._cond:
                        self.written = have
                        self._cond.notify_all()
                if stream.read(1):
                    raise TransferFailed(f"the upstream sent more than the {entry.size} bytes listed")
            os.fsync(out.fileno())
        got = hasher.hexdigest()
        if got != entry.digest:
            self.partial.unlink(missing_ok=True)
            _refused_marker(self.final).touch()
            raise TransferFailed(f"refused: the upstream's bytes have {entry.algo} {got}, its listing says "
                                 f"{entry.digest}")
        with self._cond:
            os.replace(self.partial, self.final)
            self.finished = True
        self._end(None)

    def _end(self, error: str | None) -> None:
        if error:
            self._log(f"upstream transfer failed: {error}")
        with self._cond:
            self.error = error
            self.finished = True
            self._cond.notify_all()
        self._on_end()

    def read(self, start: int, stop: int) -> Iterator[bytes]:
        """Bytes `start` to `stop` (exclusive) as they arrive; the file's last byte only once it is verified.
        Raises TransferFailed when the transfer fails before they are all given."""
        with self._cond:
            if self.error:
                raise TransferFailed(self.error)
            f = open(self.final if self.finished else self.partial, "rb")
        with f:
            pos = start
            while pos < stop:
                with self._cond:
                    while True:
                        if self.error:
                            raise TransferFailed(self.error)
                        ready = self.entry.size if self.finished else min(self.written, self.entry.size - 1)
                        if ready > pos:
                            break
                        self._cond.wait(timeout=1)
                block = os.pread(f.fileno(), min(_BLOCK, ready - pos, stop - pos), pos)
                if not block:
                    raise TransferFailed(f"{self.entry.path}: the partial file shrank")
                yield block
                pos += len(block)


def _refused_marker(final: Path) -> Path:
    return final.with_name(final.name + ".refused")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
