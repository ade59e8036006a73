"""The on-disk layout of a local hub directory: repos, revisions, commit ids and file hashes.

```
DIR/<org>/<name>/                      a repository
DIR/<org>/<name>/<revision>/...        one folder per branch or tag, holding that revision's files
DIR/<org>/<name>/.modelrig-hub.yaml    optional: {gated: true, default: main, tags: [v1.0]}
DIR/<org>/<name>/.modelrig-hub-index.json   optional: recorded size/sha256 of every file, per revision
```

A revision folder not listed under `tags` is a branch. Symlinks are resolved and confined: a repo is a folder
two levels under DIR once resolved (its own settings, so its own gate, apply to it), a revision folder and every
file served resolve inside the repo's own folder and never to its hidden metadata, and folders symlinked inside a
revision are not followed. The commit id of a revision is a sha1 derived from its
files' paths and content hashes, so it is stable for the same content and changes when any file changes.
The index records hashes the way a hub records them at commit time: when present it is authoritative (a file
altered on disk afterwards is served with its recorded hash, and clients that verify will notice).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_mode
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import yaml

REPO_CONFIG = ".modelrig-hub.yaml"
REPO_INDEX = ".modelrig-hub-index.json"
#: Names never served: hub metadata, VCS folders, client caches left by a download into the folder.
_HIDDEN = (".modelrig", ".git", ".cache")
#: File types a hub stores in LFS (by extension); anything at least LFS_MIN_SIZE bytes is LFS too.
LFS_SUFFIXES = frozenset({
    ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".model", ".gguf", ".onnx", ".npy",
    ".npz", ".pkl", ".tflite", ".ot", ".zip", ".gz", ".tar", ".7z", ".arrow", ".parquet",
})
LFS_MIN_SIZE = 10 << 20
_HASH_CACHE: dict[tuple[str, int, int], tuple[str, str]] = {}
_HASH_LOCK = threading.Lock()


class HubPathError(Exception):
    """A requested name is not a repo, revision or file inside the hub directory (or tries to leave it)."""


@dataclass(frozen=True)
class HubFile:
    """One file of a revision, as a hub describes it."""

    path: str
    size: int
    sha256: str
    #: The git blob id: of the file itself, or of its LFS pointer for LFS files.
    oid: str
    lfs: bool
    #: The resolved file on disk.
    local: Path
    #: The resolved folder of the repo the file belongs to: what is opened must still be inside it.
    repo_folder: Path


@dataclass(frozen=True)
class Revision:
    """A resolved revision: its name (branch or tag), commit id and files."""

    repo: str
    name: str
    kind: str
    commit: str
    files: tuple[HubFile, ...]

    def file(self, path: str) -> HubFile | None:
        """The file at `path`, or None."""
        for entry in self.files:
            if entry.path == path:
                return entry
        return None


@dataclass(frozen=True)
class HubRepo:
    """A repository folder and its settings."""

    repo: str
    folder: Path
    gated: bool
    default: str
    tags: frozenset[str]

    def revision_names(self) -> list[str]:
        """Every revision folder's name, sorted; a symlink resolving outside the repo's folder is not one."""
        return sorted(p.name for p in self.folder.iterdir()
                      if not _hidden(p.name) and p.is_dir() and _confined(p.resolve(), self.folder))

    def revision_folder(self, name: str) -> Path:
        """The resolved folder of revision `name`; HubPathError when it is not one or resolves outside the repo."""
        if _hidden(name) or "/" in name or name in ("", ".", ".."):
            raise HubPathError(f"invalid revision name {name!r}")
        folder = (self.folder / name).resolve()
        if not _confined(folder, self.folder) or not folder.is_dir():
            raise HubPathError(f"revision {name!r} is not a folder inside {self.repo}")
        return folder


def safe_join(root: Path, *parts: str) -> Path:
    """`root/parts...` resolved, refusing `..`, absolute parts, hidden names and symlinks that leave `root`."""
    real_root = root.resolve()
    rel = PurePosixPath(*parts) if parts else PurePosixPath()
    for part in rel.parts:
        if part in ("", ".", "..") or part.startswith("/") or "\\" in part or "\x00" in part or _hidden(part):
            raise HubPathError(f"invalid path component {part!r}")
    candidate = (real_root / rel).resolve()
    if candidate != real_root and real_root not in candidate.parents:
        raise HubPathError("path leaves the hub directory")
    return candidate


def open_repo(root: Path, repo: str) -> HubRepo:
    """The repo `org/name` under `root`; HubPathError when there is none.

    A repo folder that is a symlink must resolve to another repo folder (two levels under `root`, no hidden
    names): its settings, the gate included, are read from the folder that is actually served, and a link into
    a repo's revision (which would serve that revision's subfolders as revisions of an ungated repo) is refused.
    """
    parts = repo.split("/")
    if len(parts) != 2:
        raise HubPathError(f"repo id must be org/name: {repo!r}")
    folder = safe_join(root, *parts)
    if not _is_repo_folder(folder, root.resolve()) or not folder.is_dir():
        raise HubPathError(f"no repo {repo!r}")
    settings: dict[str, Any] = {}
    config = folder / REPO_CONFIG
    if config.is_file():
        settings = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    return HubRepo(repo=repo, folder=folder, gated=bool(settings.get("gated", False)),
                   default=str(settings.get("default", "main")), tags=frozenset(settings.get("tags", []) or []))


def list_repos(root: Path) -> list[str]:
    """Every `org/name` under `root`."""
    found = []
    real_root = root.resolve()
    for org in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)):
        for name in sorted(p for p in org.iterdir() if p.is_dir() and not _hidden(p.name)):
            if _is_repo_folder(name.resolve(), real_root):
                found.append(f"{org.name}/{name.name}")
    return sorted(found)


def resolve_revision(repo: HubRepo, revision: str | None) -> Revision:
    """A branch, tag or commit id of `repo` (None: the default branch; ModelScope's `master` maps to it)."""
    names = repo.revision_names()
    wanted = revision or repo.default
    if wanted not in names and wanted == "master" and repo.default in names:
        wanted = repo.default
    if wanted in names:
        return _load_revision(repo, wanted)
    if len(wanted) == 40 and all(c in "0123456789abcdef" for c in wanted):
        for name in names:
            rev = _load_revision(repo, name)
            if rev.commit == wanted:
                return rev
    raise HubPathError(f"revision {revision!r} not found in {repo.repo}")


def write_index(repo_folder: Path) -> Path:
    """Record the size and sha256 of every file of every revision in the repo's index file."""
    repo = HubRepo(repo=repo_folder.parent.name + "/" + repo_folder.name, folder=repo_folder.resolve(),
                   gated=False, default="main", tags=frozenset())
    index: dict[str, dict[str, dict[str, Any]]] = {}
    for name in repo.revision_names():
        rev = _scan(repo.revision_folder(name), repo_folder=repo.folder, recorded={})
        index[name] = {f.path: {"size": f.size, "sha256": f.sha256} for f in rev}
    target = repo_folder / REPO_INDEX
    target.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return target


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file a hub stores in place of a large file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(path: str, size: int) -> bool:
    """Whether a hub would keep this file in LFS."""
    return size >= LFS_MIN_SIZE or PurePosixPath(path).suffix.lower() in LFS_SUFFIXES


def open_file(hub_file: HubFile) -> BinaryIO:
    """Open a listed file for serving, checking again what is opened: it must still resolve inside its repo's
    folder (not to hidden metadata) and be a regular file, so a symlink swapped in since the listing is refused
    with HubPathError rather than followed out of the repo or past its gate."""
    real = Path(os.path.realpath(hub_file.local))
    if not _confined(real, hub_file.repo_folder):
        raise HubPathError(f"{hub_file.path} now resolves outside its repo")
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            raise HubPathError(f"{hub_file.path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _hidden(name: str) -> bool:
    return name.startswith(_HIDDEN)


def _confined(resolved: Path, folder: Path) -> bool:
    """Whether a resolved path lies strictly inside the resolved `folder`, through no hidden name."""
    if folder not in resolved.parents:
        return False
    return not any(_hidden(part) for part in resolved.relative_to(folder).parts)


def _is_repo_folder(resolved: Path, real_root: Path) -> bool:
    """Whether a resolved folder is a repo folder of the hub: exactly `org/name` under it, no hidden names."""
    return _confined(resolved, real_root) and len(resolved.relative_to(real_root).parts) == 2


def _load_revision(repo: HubRepo, name: str) -> Revision:
    recorded: dict[str, dict[str, Any]] = {}
    index = repo.folder / REPO_INDEX
    if index.is_file():
        recorded = json.loads(index.read_text(encoding="utf-8")).get(name, {})
    files = _scan(repo.revision_folder(name), repo_folder=repo.folder, recorded=recorded)
    tree = "\n".join(f"{f.path}\x00{f.oid}" for f in files).encode()
    commit = hashlib.sha1(b"modelrig-hub-commit\x00" + tree).hexdigest()
    return Revision(repo=repo.repo, name=name, kind="tag" if name in repo.tags else "branch", commit=commit,
                    files=tuple(files))


def _scan(folder: Path, *, repo_folder: Path, recorded: dict[str, dict[str, Any]]) -> list[HubFile]:
    """The files of a resolved revision `folder`: folder symlinks are not followed, and a file symlink counts only
    when it resolves to a regular file inside the resolved `repo_folder` (never to its hidden metadata)."""
    files: list[HubFile] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and not os.path.islink(os.path.join(dirpath, d)))
        for fname in sorted(filenames):
            if _hidden(fname):
                continue
            local = Path(dirpath) / fname
            resolved = local.resolve()
            if not _confined(resolved, repo_folder) or not resolved.is_file():
                continue  # a symlink out of the repo's own folder, or to its metadata, is never served
            rel = local.relative_to(folder).as_posix()
            stat = resolved.stat()
            if rel in recorded:
                size, sha256 = int(recorded[rel]["size"]), str(recorded[rel]["sha256"])
            else:
                size, sha256 = stat.st_size, _hashes(resolved, stat)[0]
            lfs = is_lfs(rel, size)
            oid = git_blob_oid(lfs_pointer(sha256, size)) if lfs else _hashes(resolved, stat)[1]
            files.append(HubFile(path=rel, size=size, sha256=sha256, oid=oid, lfs=lfs, local=resolved,
                                 repo_folder=repo_folder))
    files.sort(key=lambda f: f.path)
    return files


def _hashes(path: Path, stat: os.stat_result) -> tuple[str, str]:
    """(sha256, git blob oid) of a file, cached by path, size and mtime."""
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    sha = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\x00" % stat.st_size)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            sha.update(block)
            git.update(block)
    value = (sha.hexdigest(), git.hexdigest())
    with _HASH_LOCK:
        _HASH_CACHE[key] = value
    return value
