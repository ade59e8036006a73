"""The fetch stage: download a manifest's weight sources from the Hub or ModelScope at a resolved commit, verified.

Each hub source lands in `<store>/<hub>/<org>--<name>/` (the store defaults to `<data root>/store`). The folder
is complete only when its stamp (`.modelrig-stamp.json`) matches: the stamp records hub, repo, revision, commit,
the include/exclude patterns and every file's path, size and sha256, and is written last. A re-run whose stamp
matches downloads nothing and hashes nothing (`verify=True` re-hashes everything).

Downloads go through `huggingface_hub.hf_hub_download` and ModelScope's `HubApi.download_file`, one call per file
in a small thread pool. Both write to a temporary file and rename it into place, so a partial file is never
taken for a complete one. ModelScope resumes a partial file with Range; huggingface_hub (>= 1.18) restarts an
interrupted file from zero, so resume there is per file: finished files are kept, the interrupted one is
downloaded again, and its orphaned temporary file is removed by the next run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.config import Context, HostConfig
from modelrig.errors import DiskSpaceError, FetchError, UsageError
from modelrig.manifest import FULL_COMMIT, HubRef, Manifest, WeightSource
from modelrig.progress import bar
from modelrig.result import StageResult, timed
from modelrig.stamp import STAMP_NAME, digest, read_stamp, sha256_file, write_json, write_stamp

HUBS = ("huggingface", "modelscope")
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"
#: Free disk kept beyond the download itself, unless the caller asks for another amount.
DEFAULT_HEADROOM = 1 << 30
MAX_WORKERS = 8
_LOCK_NAME = ".modelrig-fetch.lock"
_HASH_CHUNK = 8 << 20
#: Files at least this large are hashed while they download rather than read again afterwards.
_STREAM_HASH_MIN = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file of a repo at a commit, as the hub lists it."""

    path: str
    size: int
    #: sha256 the hub publishes (LFS files on the Hub, every file on ModelScope); None when it has none.
    sha256: str | None = None
    #: The git blob id (Hub files not in LFS), checked when no sha256 is published.
    git_oid: str | None = None


@dataclass(frozen=True)
class Endpoints:
    """Where each hub is, and the token for gated repos (never printed or written)."""

    huggingface: str
    modelscope: str
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SourcePlan:
    """One hub source resolved: which hub, commit and files, and where they go."""

    name: str
    hub: str
    repo: str
    revision: str
    commit: str
    #: What `revision` names: "commit", "branch" (moving: warned about) or "tag".
    ref_kind: str
    files: tuple[RemoteFile, ...]
    target: Path
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        """Size of every selected file."""
        return sum(f.size for f in self.files)

    def stamp_key(self) -> str:
        """The digest that identifies this exact download."""
        return digest({"hub": self.hub, "repo": self.repo, "commit": self.commit, "include": self.include,
                       "exclude": self.exclude, "files": [(f.path, f.size, f.sha256) for f in self.files]})


# ---------------------------------------------------------------------------------------------------------
# Pure planning helpers


def select_files(files: list[RemoteFile], *, include: list[str], exclude: list[str]) -> list[RemoteFile]:
    """Files matching any `include` glob (all when empty) and no `exclude` glob; a pattern ending in `/` is a
    folder."""
    def norm(patterns: list[str]) -> list[str]:
        return [p + "*" if p.endswith("/") else p for p in patterns]

    inc, exc = norm(include), norm(exclude)
    chosen = [f for f in files if (not inc or any(fnmatch.fnmatch(f.path, p) for p in inc))
              and not any(fnmatch.fnmatch(f.path, p) for p in exc)]
    return sorted(chosen, key=lambda f: f.path)


def hub_order(source: WeightSource, *, requested: str, prefer: str) -> list[tuple[str, HubRef]]:
    """The hubs to try for a source: only `requested` when it names one, else the manifest's or host's preferred
    hub first."""
    refs = source.hubs
    if requested in HUBS:
        chosen = [(n, r) for n, r in refs if n == requested]
        if not chosen:
            have = ", ".join(n for n, _ in refs)
            raise UsageError(f"--hub {requested}: this source is only on {have}")
        return chosen
    if source.prefer is None and prefer in HUBS:
        refs = sorted(refs, key=lambda item: item[0] != prefer)
    return refs


def needed_bytes(plan: SourcePlan) -> int:
    """Bytes still to download: files absent or of the wrong size in the target folder."""
    missing = 0
    for f in plan.files:
        local = plan.target / f.path
        if not (local.is_file() and local.stat().st_size == f.size):
            missing += f.size
    return missing


def parse_size(text: str) -> int:
    """`512MiB`, `1GB`, `0` and the like as a byte count."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
             "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "PIB": 1 << 50}
    value = text.strip().upper().replace(" ", "")
    number = value.rstrip("KMGTPIB")
    unit = value[len(number):]
    try:
        return int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise UsageError(f"not a size: {text!r} (expected e.g. 512MiB or 2GB)") from None


def human(n: float) -> str:
    """Bytes as a short human string."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---------------------------------------------------------------------------------------------------------
# Settings: endpoints and tokens


def endpoints_for(config: HostConfig, *, hf_endpoint: str | None = None,
                  modelscope_endpoint: str | None = None) -> Endpoints:
    """Endpoints from the run's flags, else the host config, else the environment, else the public hubs; the token
    from HF_TOKEN / MODELSCOPE_API_TOKEN or the host config's token file."""
    hf = (hf_endpoint or config.hub.hf_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT)
    ms = (modelscope_endpoint or config.hub.modelscope_endpoint or os.environ.get("MODELSCOPE_ENDPOINT")
          or DEFAULT_MODELSCOPE_ENDPOINT)
    return Endpoints(huggingface=hf.rstrip("/"), modelscope=ms.rstrip("/"), token=_read_token(config))


def token_for(endpoints: Endpoints, hub: str) -> str | None:
    """The token to send to `hub`: its own environment variable first, then the shared token file."""
    return os.environ.get("HF_TOKEN" if hub == "huggingface" else "MODELSCOPE_API_TOKEN") or endpoints.token


def _read_token(config: HostConfig) -> str | None:
    path = config.hub.token_file
    if not path:
        return None
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").split()
    except OSError as exc:
        raise UsageError(f"hub.token_file {path}: cannot read it: {exc.strerror}") from None
    return lines[0] if lines else None


# ---------------------------------------------------------------------------------------------------------
# Resolving a source: commit and file listing from the hub


class _Unreachable(Exception):
    """The endpoint could not be reached at all (connection refused, DNS, timeout): another hub may work."""


def resolve_source(name: str, hub: str, ref: HubRef, source: WeightSource, *, endpoints: Endpoints,
                   store: Path) -> SourcePlan:
    """Ask `hub` for the commit `ref.revision` points at and the files there, filtered by the source's patterns."""
    token = token_for(endpoints, hub)
    if hub == "huggingface":
        commit, kind, files = _resolve_hf(ref, endpoint=endpoints.huggingface, token=token)
    else:
        commit, kind, files = _resolve_ms(ref, endpoint=endpoints.modelscope, token=token)
    chosen = select_files(files, include=source.include, exclude=source.exclude)
    if not chosen:
        raise FetchError(f"{hub}: {ref.repo}@{ref.revision}: no file matches include {source.include} / "
                         f"exclude {source.exclude}")
    return SourcePlan(name=name, hub=hub, repo=ref.repo, revision=ref.revision, commit=commit,
                      ref_kind=kind, files=tuple(chosen), target=store / hub / ref.repo.replace("/", "--"),
                      include=tuple(source.include), exclude=tuple(source.exclude))


def _resolve_hf(ref: HubRef, *, endpoint: str, token: str | None) -> tuple[str, str, list[RemoteFile]]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token or False)
    with _hf_errors(ref, endpoint):
        info = api.model_info(ref.repo, revision=ref.revision, files_metadata=True)
        commit = str(info.sha)
        files = [RemoteFile(path=e.rfilename, size=int(e.size or 0), sha256=e.lfs.sha256 if e.lfs else None,
                            git_oid=None if e.lfs else e.blob_id) for e in info.siblings or []]
        kind = "commit"
        if not ref.pinned:
            tags = {t.name for t in api.list_repo_refs(ref.repo).tags}
            kind = "tag" if ref.revision in tags else "branch"
    return commit, kind, files


def _resolve_ms(ref: HubRef, *, endpoint: str, token: str | None) -> tuple[str, str, list[RemoteFile]]:
    api = _ms_api(endpoint, token)
    with _ms_errors(ref, endpoint, api):
        raw = api.legacy.list_repo_files(ref.repo, "model", revision=ref.revision, recursive=True)
        kind = "commit"
        if not ref.pinned:
            _branches, tags = api.legacy.list_revisions_detail(ref.repo, "model")
            kind = "tag" if ref.revision in {t.get("Revision") for t in tags} else "branch"
    files, commits = [], set()
    for entry in raw:
        if entry.get("Type", "blob") != "blob":
            continue
        files.append(RemoteFile(path=str(entry["Path"]), size=int(entry.get("Size") or 0),
                                sha256=entry.get("Sha256") or None))
        if FULL_COMMIT.match(str(entry.get("Revision", ""))):
            commits.add(str(entry["Revision"]))
    commit = commits.pop() if len(commits) == 1 else ref.revision
    return commit, kind, files


def _ms_api(endpoint: str, token: str | None) -> Any:
    from modelscope_hub import HubApi

    return HubApi(endpoint=endpoint, token=token)


@contextlib.contextmanager
def _hf_errors(ref: HubRef, endpoint: str) -> Iterator[None]:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise FetchError(f"huggingface: {ref.repo} is gated: set HF_TOKEN or hub.token_file in the host config to "
                         "a token that has been granted access") from None
    except RepositoryNotFoundError:
        raise FetchError(f"huggingface: repo {ref.repo} not found at {endpoint} (or it is private and no valid "
                         "token was given)") from None
    except RevisionNotFoundError:
        raise FetchError(f"huggingface: revision {ref.revision!r} not found in {ref.repo}") from None
    except EntryNotFoundError as exc:
        raise FetchError(f"huggingface: {ref.repo}@{ref.revision}: {_first_line(exc)}") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and status >= 500:
            raise _Unreachable(f"{endpoint} answered HTTP {status}") from None
        raise FetchError(f"huggingface: {ref.repo}: {_first_line(exc)}") from None
    except Exception as exc:
        if _is_connection_error(exc):
            raise _Unreachable(f"cannot reach {endpoint}: {_first_line(exc)}") from None
        raise


@contextlib.contextmanager
def _ms_errors(ref: HubRef, endpoint: str, api: Any) -> Iterator[None]:
    from modelscope_hub import errors as ms

    try:
        yield
    except (ms.AuthenticationError, ms.PermissionDeniedError):
        raise FetchError(f"modelscope: {ref.repo} needs a token with access: set MODELSCOPE_API_TOKEN or "
                         "hub.token_file in the host config") from None
    except ms.NotExistError:
        try:
            api.legacy.list_revisions(ref.repo, "model")
        except ms.NotExistError:
            raise FetchError(f"modelscope: repo {ref.repo} not found at {endpoint}") from None
        except Exception:  # the follow-up probe is only for a better message
            pass
        raise FetchError(f"modelscope: revision {ref.revision!r} not found in {ref.repo}") from None
    except ms.ServerError as exc:
        raise _Unreachable(f"{endpoint} failed: {_first_line(exc)}") from None
    except ms.APIError as exc:
        raise FetchError(f"modelscope: {ref.repo}: {_first_line(exc)}") from None
    except Exception as exc:
        if _is_connection_error(exc):
            raise _Unreachable(f"cannot reach {endpoint}: {_first_line(exc)}") from None
        raise


def _is_connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    connection = {"ConnectError", "ConnectTimeout", "TransportError", "TimeoutException", "NetworkError",
                  "ConnectionError", "Timeout", "OfflineModeIsEnabled", "RequestTimeoutError",
                  "LocalEntryNotFoundError", "ProxyError", "SSLError"}
    return bool(names & connection) or isinstance(exc, (ConnectionError, TimeoutError))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# Downloading and verifying


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
        from modelscope_hub._download import ProgressCallback

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
        while block := f.read(_HASH_CHUNK):
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
    sha = sha256_file(local, chunk=_HASH_CHUNK)
    return f.sha256 is None or sha == f.sha256, sha


class _StreamHasher:
    """Hashes a file while huggingface_hub downloads it, by following its temporary `.incomplete` file.

    The result counts only when the bytes read came from the very inode that was renamed into place and add up
    to the expected size; otherwise `result()` is None and the caller hashes the finished file instead.
    """

    def __init__(self, target: Path, f: RemoteFile) -> None:
        self.folder = (target / ".cache" / "huggingface" / "download" / f.path).parent
        self.pattern = f"*.{f.sha256}.*.incomplete"
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
                block = handle.read(_HASH_CHUNK)
                if block:
                    self.sha.update(block)
                    self.read += len(block)
                elif self.done.is_set():
                    if not (block := handle.read(_HASH_CHUNK)):
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
        api = _ms_api(endpoints.modelscope, token)
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
    try:
        return _download_one(plan, f, endpoints=endpoints, force=False, progress=progress)
    except _Mismatch:
        pass
    except Exception as exc:
        if not _is_integrity_error(exc):
            raise
    (plan.target / f.path).unlink(missing_ok=True)
    try:
        return _download_one(plan, f, endpoints=endpoints, force=True, progress=progress)
    except _Mismatch:
        pass
    except Exception as exc:
        if not _is_integrity_error(exc):
            raise
    (plan.target / f.path).unlink(missing_ok=True)
    raise FetchError(f"{plan.hub}: {plan.repo}@{plan.commit[:12]}: {f.path}: sha256 does not match the hub's "
                     f"after a second download (expected {f.sha256 or f.git_oid}); the file was deleted")


def _is_integrity_error(exc: BaseException) -> bool:
    return any(cls.__name__ in ("FileIntegrityError", "FileSizeMismatchError") for cls in type(exc).__mro__)


def download(plan: SourcePlan, *, endpoints: Endpoints, verify: bool = False) -> dict[str, Any]:
    """Bring `plan.target` to exactly the planned files, verified; write the stamp; return the stamp."""
    plan.target.mkdir(parents=True, exist_ok=True)
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
        with _hf_errors(ref, kwargs["endpoints"].huggingface):
            return fn(plan, f, **kwargs)
    with _ms_errors(ref, kwargs["endpoints"].modelscope, _ms_api(kwargs["endpoints"].modelscope, None)):
        return fn(plan, f, **kwargs)


def _reusable_hashes(plan: SourcePlan) -> dict[str, str]:
    """Hashes from a previous stamp of this folder (same commit) for files whose size still matches."""
    old = read_stamp(plan.target) or {}
    if old.get("commit") != plan.commit:
        return {}
    return {e["path"]: e["sha256"] for e in old.get("files", []) if e.get("sha256")}


def _clean_target(plan: SourcePlan) -> None:
    """Remove files of other revisions and temporary files orphaned by killed runs (the fetch lock is held)."""
    wanted = {f.path for f in plan.files}
    resumable = {f"{p}.incomplete" for p in wanted}
    hf_tmp = plan.target / ".cache" / "huggingface" / "download"
    if hf_tmp.is_dir():
        for entry in hf_tmp.rglob("*.incomplete"):
            entry.unlink(missing_ok=True)
    for dirpath, dirnames, filenames in os.walk(plan.target):
        rel_dir = Path(dirpath).relative_to(plan.target)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d != ".cache"]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if rel in wanted or rel in resumable or rel in (STAMP_NAME, _LOCK_NAME):
                continue
            (Path(dirpath) / name).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    from filelock import FileLock, Timeout

    target.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target / _LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FetchError(f"{target}: another modelrig fetch is downloading into this folder") from None
    try:
        yield
    finally:
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


def _plan_matches_stamp(plan: SourcePlan) -> dict[str, Any] | None:
    stamp = read_stamp(plan.target)
    if not stamp or stamp.get("key") != plan.stamp_key():
        return None
    for f in plan.files:
        local = plan.target / f.path
        if not local.is_file() or local.stat().st_size != f.size:
            return None
    return stamp


# ---------------------------------------------------------------------------------------------------------
# Local sources


def hash_local_tree(path: Path, *, cache_file: Path) -> list[dict[str, Any]]:
    """Path, size and sha256 of every file under `path`; unchanged files (same size and mtime) are not re-hashed."""
    old: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(cache_file.read_text(encoding="utf-8"))
    files, cache = [], {}
    for local in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = local.relative_to(path).as_posix()
        stat = local.stat()
        key = f"{rel}:{stat.st_size}:{stat.st_mtime_ns}"
        sha = old.get(key) or sha256_file(local, chunk=_HASH_CHUNK)
        cache[key] = sha
        files.append({"path": rel, "size": stat.st_size, "sha256": sha})
    write_json(cache_file, cache)
    return files


# ---------------------------------------------------------------------------------------------------------
# The stage


@dataclass
class FetchOptions:
    """What `modelrig fetch` was asked to do."""

    hub: str = "auto"
    store: Path | None = None
    dry_run: bool = False
    verify: bool = False
    hf_endpoint: str | None = None
    modelscope_endpoint: str | None = None
    local: dict[str, str] = field(default_factory=dict)
    headroom: int = DEFAULT_HEADROOM
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


def fetch_model(manifest: Manifest, ctx: Context, *, options: FetchOptions) -> StageResult:
    """Download every hub source of `manifest` (verified), check its local sources, and report what it did."""
    endpoints = endpoints_for(ctx.config, hf_endpoint=options.hf_endpoint,
                              modelscope_endpoint=options.modelscope_endpoint)
    store = (options.store or ctx.data.store).expanduser().absolute()
    notes: list[str] = []
    sources: list[dict[str, Any]] = []
    with timed() as clock:
        current: list[tuple[str, dict[str, Any]]] = []
        plans: list[SourcePlan] = []
        for name, source in manifest.weights.items():
            if source.model is not None:
                notes.append(f"{name}: output of model {source.model}, produced by its own pipeline")
                continue
            if source.local is not None:
                sources.append(_local_source(name, source, ctx, options, notes))
                continue
            done = _current_stamp(name, source, store, options)
            if done is not None:
                current.append((name, done))
                continue
            plans.append(_plan_with_fallback(name, source, store, endpoints, options,
                                             prefer=ctx.config.hub.prefer))
        for plan in plans:
            if plan.ref_kind == "branch":
                options.log(f"modelrig: warning: {plan.name}: {plan.hub} revision {plan.revision!r} of {plan.repo} "
                            f"is a branch (a moving ref), resolved to {plan.commit}; pin that commit in the manifest")
        pending = [p for p in plans if _plan_matches_stamp(p) is None or options.verify]
        need = sum(needed_bytes(p) for p in pending)
        free = shutil.disk_usage(_existing_parent(store)).free
        disk = {"needed_bytes": need, "headroom_bytes": options.headroom, "free_bytes": free,
                "ok": free >= need + options.headroom}
        if options.dry_run:
            return _dry_run_result(manifest, plans, current, disk, notes, sources, clock)
        if pending and not disk["ok"]:
            raise DiskSpaceError(f"{store}: {human(free)} free, the download needs {human(need)} plus "
                                 f"{human(options.headroom)} headroom; free space or pass --store on a larger disk")
        downloaded_files = downloaded_bytes = 0
        for name, stamp in current:
            if options.verify:
                plan = _plan_from_stamp(name, stamp, store)
                stamp = _locked_download(plan, endpoints, verify=True)
                downloaded_files += len(stamp["downloaded"])
                downloaded_bytes += stamp["downloaded_bytes"]
            sources.append(_source_record(name, stamp, store))
        for plan in plans:
            stamp = _plan_matches_stamp(plan)
            if stamp is None or options.verify:
                stamp = _locked_download(plan, endpoints, verify=options.verify)
                downloaded_files += len(stamp["downloaded"])
                downloaded_bytes += stamp["downloaded_bytes"]
            sources.append(_source_record(plan.name, stamp, store))
    changed = downloaded_files > 0
    hub_sources = [s for s in sources if s.get("hub") in HUBS]
    total_files = sum(len(s["files"]) for s in hub_sources)
    rate = downloaded_bytes / clock["seconds"] / 1e6 if clock["seconds"] > 0 else 0.0
    verb = "re-verified" if options.verify else "verified"
    if changed:
        summary = (f"downloaded {downloaded_files} files ({human(downloaded_bytes)}, {rate:.0f} MB/s) of "
                   f"{len(hub_sources)} sources, {total_files} files {verb}")
    else:
        summary = f"{len(hub_sources)} sources, {total_files} files in place" + (", all re-verified"
                                                                                  if options.verify else "")
    return StageResult(stage="fetch", changed=changed, summary=summary, model=manifest.id,
                       seconds=clock["seconds"],
                       details={"sources": sources, "notes": notes, "disk": disk, "store": str(store)})


def _current_stamp(name: str, source: WeightSource, store: Path, options: FetchOptions) -> dict[str, Any] | None:
    """A matching stamp for a pinned source on any hub it may come from: such a re-run needs no network."""
    try:
        order = hub_order(source, requested=options.hub, prefer="auto")
    except UsageError:
        return None
    for hub, ref in order:
        stamp = stamp_is_current(store / hub / ref.repo.replace("/", "--"), hub=hub, ref=ref, source=source)
        if stamp is not None:
            return stamp
    return None


def _plan_with_fallback(name: str, source: WeightSource, store: Path, endpoints: Endpoints,
                        options: FetchOptions, *, prefer: str) -> SourcePlan:
    order = hub_order(source, requested=options.hub, prefer=prefer)
    failures: list[str] = []
    for index, (hub, ref) in enumerate(order):
        try:
            plan = resolve_source(name, hub, ref, source, endpoints=endpoints, store=store)
        except _Unreachable as exc:
            failures.append(f"{hub}: {exc}")
            if index + 1 < len(order):
                options.log(f"modelrig: warning: {name}: {hub} unreachable ({exc}); falling back to "
                            f"{order[index + 1][0]}")
            continue
        return plan
    raise FetchError(f"{name}: no hub reachable: " + "; ".join(failures))


def _locked_download(plan: SourcePlan, endpoints: Endpoints, *, verify: bool) -> dict[str, Any]:
    with _locked(plan.target):
        try:
            return download(plan, endpoints=endpoints, verify=verify)
        except _Unreachable as exc:
            raise FetchError(f"{plan.name}: {plan.hub}: {exc}; files finished so far are kept, run again to "
                             "continue") from None


def _plan_from_stamp(name: str, stamp: dict[str, Any], store: Path) -> SourcePlan:
    files = tuple(RemoteFile(path=e["path"], size=e["size"], sha256=e["sha256"]) for e in stamp["files"])
    return SourcePlan(name=name, hub=stamp["hub"], repo=stamp["repo"], revision=stamp["revision"],
                      commit=stamp["commit"], ref_kind="commit", files=files,
                      target=store / stamp["hub"] / stamp["repo"].replace("/", "--"),
                      include=tuple(stamp.get("include", [])), exclude=tuple(stamp.get("exclude", [])))


def _source_record(name: str, stamp: dict[str, Any], store: Path) -> dict[str, Any]:
    return {"name": name, "hub": stamp["hub"], "repo": stamp["repo"], "revision": stamp["revision"],
            "ref_kind": stamp.get("ref_kind", "commit"), "commit": stamp["commit"],
            "path": str(store / stamp["hub"] / stamp["repo"].replace("/", "--")),
            "files": stamp["files"]}


def _local_source(name: str, source: WeightSource, ctx: Context, options: FetchOptions,
                  notes: list[str]) -> dict[str, Any]:
    assert source.local is not None
    var = source.local.var
    given = options.local.get(var) or ctx.config.local.get(var) or source.local.path
    if not given:
        raise FetchError(f"{name}: local weights {var!r} not given: pass --local {var}=PATH or set local.{var} in "
                         "the host config")
    path = Path(given).expanduser()
    if not path.is_dir():
        raise FetchError(f"{name}: local weights {var}={path}: not a directory")
    files = hash_local_tree(path, cache_file=ctx.data.store / "local" / f"{var}.json")
    if not files:
        raise FetchError(f"{name}: local weights {var}={path}: the folder is empty")
    return {"name": name, "hub": "local", "repo": None, "revision": None, "commit": None, "path": str(path),
            "files": files}


def _dry_run_result(manifest: Manifest, plans: list[SourcePlan], current: list[tuple[str, dict[str, Any]]],
                    disk: dict[str, Any], notes: list[str], sources: list[dict[str, Any]],
                    clock: dict[str, float]) -> StageResult:
    for name, stamp in current:
        sources.append({**{k: stamp[k] for k in ("hub", "repo", "revision", "commit", "files")}, "name": name,
                        "state": "in place"})
    for plan in plans:
        sources.append({"name": plan.name, "hub": plan.hub, "repo": plan.repo, "revision": plan.revision,
                        "commit": plan.commit, "path": str(plan.target),
                        "state": "in place" if _plan_matches_stamp(plan) else "to download",
                        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in plan.files]})
    total = sum(f["size"] for s in sources if s.get("hub") in HUBS for f in s["files"])
    state = "enough" if disk["ok"] else "NOT enough"
    summary = (f"dry run: {sum(len(s['files']) for s in sources if s.get('hub') in HUBS)} files, {human(total)} in "
               f"all, {human(disk['needed_bytes'])} to download; {human(disk['free_bytes'])} free ({state} with "
               f"{human(disk['headroom_bytes'])} headroom)")
    return StageResult(stage="fetch", changed=False, summary=summary, model=manifest.id, seconds=clock["seconds"],
                       details={"sources": sources, "notes": notes, "disk": disk, "dry_run": True})


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path
