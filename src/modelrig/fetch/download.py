"""Downloading one resolved source into its store folder with the client libraries, verified, stamped last."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelrig.errors import FetchError, HashMismatchError
from modelrig.fetch import holder
from modelrig.fetch.compat import hf_download_tmp_dir, hf_incomplete_glob
from modelrig.fetch.remote import Endpoints, hf_errors, ms_api, ms_errors, token_for
from modelrig.fetch.sources import HASH_CHUNK, MAX_WORKERS, RemoteFile, SourcePlan
from modelrig.manifest import FULL_COMMIT, HubRef, WeightSource
from modelrig.progress import bar
from modelrig.stamp import STAMP_NAME, read_stamp, sha256_file, write_stamp

# fetch checks free disk itself before downloading, and a disk that fills up later is one `disk_full` error: the
# client's per-file warning would only repeat it, file after file
warnings.filterwarnings("ignore", message="Not enough free disk space to download the file", category=UserWarning)

LOCK_NAME = ".modelrig-fetch.lock"
#: Written into a store folder when fetch first claims it (empty or new), and kept: the folder is fetch's to clean,
#: even while a download interrupted before its stamp left no stamp behind.
OWNER_NAME = ".modelrig-fetch-owned"
#: Files at least this large are hashed while they download rather than read again afterwards.
_STREAM_HASH_MIN = 1 << 20


class _Progress:
    """An aggregate byte bar that library download bars feed into."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = bar(total, desc)
        self.lock = threading.Lock()

    def add(self, n: float) -> None:
        with self.lock:
            self.bar.update(n)

    def tqdm_class(self) -> type:
        from tqdm.auto import tqdm

        progress = self

        class _Forward(tqdm):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                kwargs.pop("name", None)
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                progress.add(n or 0)
                return None

        return _Forward

    def modelscope_callback(self) -> type:
        from modelscope_hub import ProgressCallback

        progress = self

        class _Forward(ProgressCallback):  # type: ignore[misc]
            def update(self, size: int) -> None:
                progress.add(size)

        return _Forward


def _hash_file(path: Path) -> tuple[str, str]:
    """(sha256, git blob oid) in one read."""
    size = path.stat().st_size
    sha = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\x00" % size)
    with open(path, "rb") as f:
        while block := f.read(HASH_CHUNK):
            sha.update(block)
            git.update(block)
    return sha.hexdigest(), git.hexdigest()


def _check(f: RemoteFile, local: Path) -> tuple[bool, str]:
    """(matches, sha256 of the local file)."""
    if not local.is_file() or local.stat().st_size != f.size:
        return False, ""
    if f.sha256 is None and f.git_oid:
        sha, oid = _hash_file(local)
        return oid == f.git_oid, sha
    sha = sha256_file(local, chunk=HASH_CHUNK)
    return f.sha256 is None or sha == f.sha256, sha


class _StreamHasher:
    """Hashes a file while huggingface_hub downloads it, by following its temporary `.incomplete` file.

    The result counts only when the bytes read came from the very inode that was renamed into place and add up
    to the expected size; otherwise `result()` is None and the caller hashes the finished file instead.
    """

    def __init__(self, target: Path, f: RemoteFile) -> None:
        self.folder, self.pattern = hf_incomplete_glob(target, f.path, f.sha256)
        self.size = f.size
        self.sha = hashlib.sha256()
        self.read = 0
        self.inode: int | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> _StreamHasher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _follow(self) -> None:
        path = None
        while path is None:
            found = sorted(self.folder.glob(self.pattern)) if self.folder.is_dir() else []
            if found:
                path = found[0]
            elif self.done.wait(0.01):
                return
        try:
            handle = open(path, "rb")
        except OSError:
            return
        with handle:
            self.inode = os.fstat(handle.fileno()).st_ino
            while True:
                block = handle.read(HASH_CHUNK)
                if block:
                    self.sha.update(block)
                    self.read += len(block)
                elif self.done.is_set():
                    if not (block := handle.read(HASH_CHUNK)):
                        return
                    self.sha.update(block)
                    self.read += len(block)
                else:
                    time.sleep(0.005)

    def result(self, final: Path) -> str | None:
        """The sha256 of `final`, if it was read in full while downloading."""
        try:
            same = self.inode is not None and final.stat().st_ino == self.inode
        except OSError:
            return None
        return self.sha.hexdigest() if same and self.read == self.size else None


def _download_one(plan: SourcePlan, f: RemoteFile, *, endpoints: Endpoints, force: bool,
                  progress: _Progress) -> str:
    """Download one file into the target folder; return its verified sha256."""
    local = plan.target / f.path
    token = token_for(endpoints, plan.hub)
    if plan.hub == "huggingface":
        from huggingface_hub import hf_hub_download

        follow = f.sha256 is not None and f.size >= _STREAM_HASH_MIN
        with _StreamHasher(plan.target, f) if follow else contextlib.nullcontext() as streamed:
            hf_hub_download(plan.repo, f.path, revision=plan.commit, local_dir=plan.target,
                            endpoint=endpoints.huggingface, token=token or False, force_download=force,
                            tqdm_class=progress.tqdm_class())
        sha = streamed.result(local) if streamed is not None else None
        if sha is not None:
            ok = sha == f.sha256
        else:
            ok, sha = _check(f, local)
    else:
        api = ms_api(endpoints.modelscope, token)
        if force:
            local.unlink(missing_ok=True)
        revision = plan.commit if FULL_COMMIT.match(plan.commit) else plan.revision
        api.downloader.download_file(repo_id=plan.repo, repo_type="model", file_path=f.path, revision=revision,
                                     local_dir=plan.target, expected_sha256=f.sha256, file_size=f.size,
                                     force=force, progress_callbacks=[progress.modelscope_callback()])
        if f.sha256 is not None and local.is_file() and local.stat().st_size == f.size:
            ok, sha = True, f.sha256  # verified by the client while streaming
        else:
            ok, sha = _check(f, local)
    if not ok:
        raise _Mismatch(f.path)
    return sha


class _Mismatch(Exception):
    """A downloaded file's content does not match the hash the hub publishes."""


def _fetch_file(plan: SourcePlan, f: RemoteFile, *, endpoints: Endpoints, progress: _Progress) -> str:
    """Download and verify; a mismatch is deleted and downloaded once more, then reported."""
    for force in (False, True):
        try:
            return _download_one(plan, f, endpoints=endpoints, force=force, progress=progress)
        except _Mismatch:
            pass
        except Exception as exc:
            if not _is_integrity_error(exc):
                raise
        (plan.target / f.path).unlink(missing_ok=True)
    raise HashMismatchError(f"{plan.hub}: {plan.repo}@{plan.commit[:12]}: {f.path}: sha256 does not match the "
                            f"hub's after a second download (expected {f.sha256 or f.git_oid}); the file was deleted",
                            hub=plan.hub, repo_id=plan.repo, commit=plan.commit, path=f.path,
                            expected=f.sha256 or f.git_oid)


def _is_integrity_error(exc: BaseException) -> bool:
    return any(cls.__name__ in ("FileIntegrityError", "FileSizeMismatchError") for cls in type(exc).__mro__)


def download(plan: SourcePlan, *, endpoints: Endpoints, verify: bool = False) -> dict[str, Any]:
    """Bring `plan.target` to exactly the planned files, verified; write the stamp; return the stamp."""
    plan.target.mkdir(parents=True, exist_ok=True)
    claim_store_folder(plan.target)
    (plan.target / STAMP_NAME).unlink(missing_ok=True)
    _clean_target(plan)
    known = _reusable_hashes(plan) if not verify else {}
    todo: list[RemoteFile] = []
    hashes: dict[str, str] = {}
    to_check = []
    for f in plan.files:
        local = plan.target / f.path
        if f.path in known and local.is_file() and local.stat().st_size == f.size:
            hashes[f.path] = known[f.path]
        elif local.is_file():
            to_check.append(f)
        else:
            todo.append(f)
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, os.cpu_count() or 1)) as pool:
        for f, (ok, sha) in zip(to_check, pool.map(lambda f: _check(f, plan.target / f.path), to_check),
                                   strict=True):
            if ok:
                hashes[f.path] = sha
            else:
                todo.append(f)
    progress = _Progress(sum(f.size for f in todo), f"{plan.repo}")
    try:
        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, max(len(todo), 1))) as pool:
            futures = {f.path: pool.submit(_guarded, _fetch_file, plan, f, endpoints=endpoints, progress=progress)
                       for f in todo}
            for path, future in futures.items():
                hashes[path] = future.result()
    finally:
        progress.bar.close()
    stamp = {"key": plan.stamp_key(), "hub": plan.hub, "repo": plan.repo, "revision": plan.revision,
             "ref_kind": plan.ref_kind, "commit": plan.commit, "include": list(plan.include),
             "exclude": list(plan.exclude),
             "files": [{"path": f.path, "size": f.size, "sha256": hashes[f.path]} for f in plan.files],
             "downloaded": [f.path for f in todo], "downloaded_bytes": sum(f.size for f in todo)}
    write_stamp(plan.target, stamp)
    return stamp


def _guarded(fn: Callable[..., str], plan: SourcePlan, f: RemoteFile, **kwargs: Any) -> str:
    ref = HubRef(repo=plan.repo, revision=plan.revision)
    if plan.hub == "huggingface":
        with hf_errors(ref, kwargs["endpoints"].huggingface):
            return fn(plan, f, **kwargs)
    with ms_errors(ref, kwargs["endpoints"].modelscope, ms_api(kwargs["endpoints"].modelscope, None)):
        return fn(plan, f, **kwargs)


def _reusable_hashes(plan: SourcePlan) -> dict[str, str]:
    """Hashes from a previous stamp of this folder (same commit) for files whose size still matches."""
    old = read_stamp(plan.target) or {}
    if old.get("commit") != plan.commit:
        return {}
    return {e["path"]: e["sha256"] for e in old.get("files", []) if e.get("sha256")}


def claim_store_folder(target: Path) -> None:
    """Make `target` fetch's before anything in it is deleted or overwritten: a folder with fetch's stamp or owner
    marker is, an empty one (but for fetch's lock file) becomes so; any other folder is refused in one line
    naming it, and nothing in it is touched."""
    entries = {entry.name for entry in target.iterdir()} - {LOCK_NAME, holder.HOLDER_NAME}
    if OWNER_NAME in entries:
        return
    if entries and STAMP_NAME not in entries:
        raise FetchError(f"{target}: this folder holds files that modelrig fetch did not write (no {STAMP_NAME} or "
                         f"{OWNER_NAME}); fetch would delete or overwrite them, so it stops: move them elsewhere or "
                         "give another --store", code="store_not_ours", path=str(target))
    (target / OWNER_NAME).write_text("This folder is written by `modelrig fetch`; files it did not download are "
                                     "deleted.\n", encoding="utf-8")


def _clean_target(plan: SourcePlan) -> None:
    """Remove files of other revisions and temporary files orphaned by killed runs (the fetch lock is held)."""
    wanted = {f.path for f in plan.files}
    resumable = {f"{p}.incomplete" for p in wanted}
    hf_tmp = hf_download_tmp_dir(plan.target)
    if hf_tmp.is_dir():
        for entry in hf_tmp.rglob("*.incomplete"):
            entry.unlink(missing_ok=True)
    for dirpath, dirnames, filenames in os.walk(plan.target):
        rel_dir = Path(dirpath).relative_to(plan.target)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d != ".cache"]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if rel in wanted or rel in resumable or rel in (STAMP_NAME, LOCK_NAME, OWNER_NAME, holder.HOLDER_NAME):
                continue
            (Path(dirpath) / name).unlink(missing_ok=True)


@contextlib.contextmanager
def locked(target: Path, *, take_over: bool = False,
           log: Callable[[str], None] | None = None) -> Iterator[dict[str, Any] | None]:
    """Hold `target`'s fetch lock while downloading into it; yields the fetch it took over, if any.

    A folder another fetch is downloading into is a `busy` FetchError naming that fetch; with `take_over`, that
    fetch (confirmed by pid and creation time: one an interrupted play left running) is stopped first and this one
    goes on from the files it finished and the partial ones it left."""
    from filelock import FileLock, Timeout

    target.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target / LOCK_NAME))
    taken = None
    try:
        lock.acquire(timeout=0)
    except Timeout:
        held = holder.current(target)
        who = f" ({holder.describe(held)})" if held else ""
        if not (take_over and held):
            raise FetchError(f"{target}: another modelrig fetch{who} is downloading into this folder", code="busy",
                             path=str(target), pid=held and held["pid"]) from None
        (log or (lambda line: None))(f"modelrig: warning: {target}: stopping the fetch still downloading here{who}, "
                                     "left by an interrupted run; its finished files are kept, the rest resumed")
        holder.stop(held)
        try:
            lock.acquire(timeout=30)
        except Timeout:
            raise FetchError(f"{target}: another modelrig fetch{who} is still downloading into this folder",
                             code="busy", path=str(target), pid=held["pid"]) from None
        taken = held
    try:
        holder.record(target)
        yield taken
    finally:
        holder.clear(target)
        lock.release()


def stamp_is_current(target: Path, *, hub: str, ref: HubRef, source: WeightSource) -> dict[str, Any] | None:
    """The stamp of a finished download of this pinned commit with the same patterns, with every file in place."""
    stamp = read_stamp(target)
    if not stamp or stamp.get("hub") != hub or stamp.get("repo") != ref.repo:
        return None
    if not ref.pinned or stamp.get("commit") != ref.revision:
        return None
    if stamp.get("include") != list(source.include) or stamp.get("exclude") != list(source.exclude):
        return None
    for entry in stamp.get("files", []):
        local = target / entry["path"]
        if not local.is_file() or local.stat().st_size != entry["size"]:
            return None
    return stamp


def plan_matches_stamp(plan: SourcePlan) -> dict[str, Any] | None:
    stamp = read_stamp(plan.target)
    if not stamp or stamp.get("key") != plan.stamp_key():
        return None
    for f in plan.files:
        local = plan.target / f.path
        if not local.is_file() or local.stat().st_size != f.size:
            return None
    return stamp
