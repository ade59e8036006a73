"""Reading a `modelrig bundle` archive that trusts nothing in it: the members a lock allows are planned first, then
each is checked (name, type, size) before a byte of it is written, and hashed as it is written.

tarfile is used only to parse headers and to read a member's bytes; nothing is extracted with it, so its
extraction filters (not enforced in full by every Python, CVE-2025-4517) play no part. A bundle is:

- an uncompressed tar (a compressed one is refused before it is decompressed: no bomb can land);
- `bundle.json` first: `schema`, `model`, `members` (name: sha256) and `sizes` (name: bytes) of every other
  member;
- regular files only (folders are skipped, every other type is refused), each named exactly once in
  `bundle.json`, at exactly its declared size, in the layout below, and nothing else:
  `lock.yaml`; `manifests/<model>.yaml` with the lock's `manifest_sha256`; `wheels/*.whl` each with a sha256 the lock
  lists for a package; `modelrig/*.whl` (the toolkit); `store/<hub>/<org>--<name>/<path>` for every file of every
  locked source, at the lock's size and sha256, plus the source's fetch stamp.

Everything is written into a fresh folder (the caller's temporary folder under the data root) with files created
exclusively and never through a link; the caller moves weights into place only after `read_bundle` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrig.config import store_folder
from modelrig.errors import BundleError, DiskSpaceError, NotReproducedError
from modelrig.lock.schema import Lock
from modelrig.stamp import STAMP_NAME

BUNDLE_SCHEMA = "modelrig-bundle/2"
INDEX_NAME = "bundle.json"
#: Folders of wheels in a bundle: the locked packages' (each must have a locked hash) and the toolkit's own.
WHEEL_FOLDERS = ("wheels", "modelrig")
#: The most bytes a `bundle.json` or a fetch stamp may hold.
MAX_INDEX_BYTES = 16 * 1024 * 1024
#: Free space kept on the data root's disk beyond what the bundle's members take.
DISK_HEADROOM = 256 * 1024 * 1024
_WHEEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.whl$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Leading bytes of the compressed formats tarfile would decompress on its own.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
               b"\x5d\x00\x00": "lzma"}
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Member:
    """One member a bundle may hold: its declared size and sha256, and what it is for."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Unpacked:
    """A bundle read into `folder`, every member checked against `bundle.json` and the lock."""

    folder: Path
    index: dict[str, Any]

    @property
    def wheels(self) -> Path:
        """The locked packages' wheels."""
        return self.folder / "wheels"

    def manifest(self, model: str) -> Path:
        """The manifest the lock was taken from."""
        return self.folder / "manifests" / f"{model}.yaml"

    def store(self, hub: str, repo: str) -> Path:
        """A locked source's files (with its fetch stamp)."""
        return store_folder(self.folder / "store", hub, repo)


def _shown(name: str) -> str:
    """A member name as a message shows it: quoted and escaped when it holds a control character."""
    return name if name.isprintable() else ascii(name)


def _fail(bundle: Path, what: str, **fields: Any) -> BundleError:
    return BundleError(f"--bundle {bundle}: {what}", bundle=str(bundle), **fields)


def parse_index(raw: bytes, bundle: Path) -> dict[str, Member]:
    """The members `bundle.json` declares (bytes as read from the archive); `BundleError` naming the field for any
    other shape."""
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _fail(bundle, f"{INDEX_NAME}: not JSON") from None
    if not isinstance(index, dict):
        raise _fail(bundle, f"{INDEX_NAME}: expected a mapping, found {type(index).__name__}")
    if index.get("schema") != BUNDLE_SCHEMA:
        raise _fail(bundle, f"{INDEX_NAME}: schema: expected {BUNDLE_SCHEMA!r}, found {index.get('schema')!r} "
                    "(`modelrig bundle` the lock again with this modelrig)")
    members, sizes = index.get("members"), index.get("sizes")
    if not isinstance(members, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA256.match(v)
                                                for k, v in members.items()):
        raise _fail(bundle, f"{INDEX_NAME}: members: expected a mapping of member name to 64-hex sha256")
    if not isinstance(sizes, dict) or sizes.keys() != members.keys() or \
            not all(type(v) is int and v >= 0 for v in sizes.values()):
        raise _fail(bundle, f"{INDEX_NAME}: sizes: expected a mapping of every member name to its size in bytes")
    return {name: Member(name, sizes[name], sha) for name, sha in members.items()}


def plan_members(declared: dict[str, Member], lock: Lock, *, model: Any, bundle: Path) -> dict[str, Member]:
    """The members a bundle of `lock` must hold, checked against the lock before anything is read: every name in
    the bundle layout, the manifest and each weight file at the lock's sha256 (and size), each package wheel with a
    locked hash; every locked file present. `BundleError` names the first member that is not."""
    if model != lock.model:
        raise _fail(bundle, f"{INDEX_NAME}: model: a bundle of {model!r}, the lock is of {lock.model!r}")
    store: dict[str, Any] = {}
    for source in lock.sources:
        base = store_folder(Path("store"), source.hub, source.repo).as_posix()
        store.update({f"{base}/{f.path}": f for f in source.files})
        store[f"{base}/{STAMP_NAME}"] = None
    hashes = {h for p in lock.env.packages for h in p.hashes}
    manifest = f"manifests/{lock.model}.yaml"
    for name, member in sorted(declared.items()):
        folder, _, rest = name.partition("/")
        if name in store:
            locked = store[name]
            if locked is not None and (member.sha256, member.size) != (locked.sha256, locked.size):
                raise NotReproducedError(f"bundle {bundle}: member {name}: sha256 {locked.sha256} ({locked.size} "
                                         f"bytes) in the lock, {member.sha256} ({member.size} bytes) in {INDEX_NAME}",
                                         member=name, expected=locked.sha256, found=member.sha256)
            if locked is None and member.size > MAX_INDEX_BYTES:
                raise _fail(bundle, f"member {_shown(name)}: a fetch stamp of {member.size} bytes", member=name)
        elif name == manifest:
            if member.sha256 != lock.manifest_sha256:
                raise NotReproducedError(f"bundle {bundle}: {manifest} differs from the lock's manifest_sha256 "
                                         f"{lock.manifest_sha256}", member=name, expected=lock.manifest_sha256,
                                         found=member.sha256)
        elif folder in WHEEL_FOLDERS and _WHEEL.match(rest):
            if folder == "wheels" and member.sha256 not in hashes:
                raise _fail(bundle, f"member {name}: a wheel whose sha256 {member.sha256} no locked package has",
                            member=name)
        elif name != "lock.yaml":
            raise _fail(bundle, f"member {_shown(name)}: not a file the lock names (a bundle holds lock.yaml, "
                        f"{manifest}, wheels/*.whl, modelrig/*.whl and the locked sources' files under store/)",
                        member=name)
    for name in sorted([*store, manifest, "lock.yaml"]):
        if name not in declared:
            raise _fail(bundle, f"member {_shown(name)}: missing from {INDEX_NAME} (the lock needs it)", member=name)
    return declared


def _open(bundle: Path) -> tarfile.TarFile:
    """The bundle as an uncompressed tar; a compressed file is refused before anything is decompressed."""
    if not bundle.is_file():
        raise _fail(bundle, "file not found")
    with bundle.open("rb") as head:
        magic = head.read(6)
    kind = next((name for prefix, name in _COMPRESSED.items() if magic.startswith(prefix)), None)
    if kind is not None:
        raise _fail(bundle, f"{kind}-compressed; a bundle is an uncompressed .tar (as `modelrig bundle` writes it), "
                    "so that nothing expands beyond its own size")
    try:
        return tarfile.open(bundle, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise _fail(bundle, f"not an uncompressed tar ({' '.join(str(exc).split())})") from None


def _describe(member: tarfile.TarInfo) -> str:
    kinds = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
             tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "contiguous file",
             tarfile.GNUTYPE_SPARSE: "sparse file", tarfile.DIRTYPE: "folder no declared member is in"}
    return kinds.get(member.type, f"member of type {member.type.decode('latin-1')!r}")


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> str:
    """Write one checked member to `target` (created here, never through a link); its sha256."""
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - a regular member always has a file object
        raise OSError(f"{member.name}: no data")
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        left = member.size
        while left:
            chunk = source.read(min(_CHUNK, left))
            if not chunk:
                raise tarfile.ReadError(f"{member.name}: the archive ends inside it")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _mkdirs(root: Path, name: str) -> Path:
    """Create the folders of member `name` under `root` one by one (real folders made here only)."""
    folder = root
    for part in name.split("/")[:-1]:
        folder = folder / part
        if not folder.is_dir():
            folder.mkdir(mode=0o755)  # FileExistsError where a member file has this name
    return folder / name.rsplit("/", 1)[-1]


def read_bundle(bundle: Path, lock: Lock, into: Path) -> Unpacked:
    """Read `bundle` into the empty folder `into`, checking every member against its `bundle.json` and `lock`.

    Refused (`BundleError`, nothing used) before a byte of the offending member is written: a compressed file, a
    first member other than `bundle.json`, a link, device or sparse member, a name `bundle.json` does not declare
    or the lock does not allow, a duplicate, a size other than the declared one, a missing member. A member whose
    bytes do not hash to the declared sha256 is `NotReproducedError`. Fetch stamps must name the lock's commit and
    files.
    """
    with _open(bundle) as tar:
        try:
            first = tar.next()
            if first is None or first.name != INDEX_NAME or first.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise _fail(bundle, f"{INDEX_NAME}: missing (it must be the first member)", member=INDEX_NAME)
            if first.size > MAX_INDEX_BYTES:
                raise _fail(bundle, f"{INDEX_NAME}: {first.size} bytes, at most {MAX_INDEX_BYTES}", member=INDEX_NAME)
            handle = tar.extractfile(first)
            raw = handle.read(first.size) if handle is not None else b""
            declared = parse_index(raw, bundle)
            index = json.loads(raw)
            expected = plan_members(declared, lock, model=index.get("model"), bundle=bundle)
            total = sum(m.size for m in expected.values())
            if total > bundle.stat().st_size:
                raise _fail(bundle, f"{INDEX_NAME}: declares {total} bytes of members in a {bundle.stat().st_size}-"
                            "byte file")
            free = shutil.disk_usage(into).free
            if free < total + DISK_HEADROOM:
                raise DiskSpaceError(f"--bundle {bundle}: its members need {total} bytes, {free} free at {into}",
                                     path=str(into), needed=total, free=free)
            folders = {name.rsplit("/", 1)[0] for name in expected if "/" in name}
            folders |= {f.rsplit("/", i)[0] for f in list(folders) for i in range(1, f.count("/") + 1)}
            seen: set[str] = set()
            while (member := tar.next()) is not None:
                name = member.name
                if member.type == tarfile.DIRTYPE and name.rstrip("/") in folders:
                    continue
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise _fail(bundle, f"member {_shown(name)}: a {_describe(member)}; a bundle holds only "
                                "regular files and their folders", member=name)
                if name not in expected:
                    raise _fail(bundle, f"member {_shown(name)}: not declared in {INDEX_NAME}", member=name)
                if name in seen:
                    raise _fail(bundle, f"member {_shown(name)}: appears twice", member=name)
                if member.size != expected[name].size:
                    raise _fail(bundle, f"member {_shown(name)}: {member.size} bytes, {INDEX_NAME} declares "
                                f"{expected[name].size}", member=name)
                seen.add(name)
                try:
                    found = _copy_member(tar, member, _mkdirs(into, name))
                except OSError as exc:
                    raise _fail(bundle, f"member {_shown(name)}: cannot be written ({exc.strerror or exc})",
                                member=name) from None
                if found != expected[name].sha256:
                    raise NotReproducedError(f"bundle {bundle}: member {_shown(name)}: sha256 {expected[name].sha256} "
                                             f"expected, found {found}", member=name,
                                             expected=expected[name].sha256, found=found)
        except tarfile.TarError as exc:
            raise _fail(bundle, f"not a readable tar ({' '.join(str(exc).split())})") from None
    missing = sorted(expected.keys() - seen)
    if missing:
        raise _fail(bundle, f"member {_shown(missing[0])}: declared in {INDEX_NAME}, not in the archive",
                    member=missing[0])
    unpacked = Unpacked(folder=into, index=index)
    for source in lock.sources:
        _check_fetch_stamp(unpacked.store(source.hub, source.repo) / STAMP_NAME, source, bundle)
    return unpacked


def _check_fetch_stamp(path: Path, source: Any, bundle: Path) -> None:
    """A bundled fetch stamp must be of the locked repo and commit and list exactly the locked files."""
    name = f"{path.parent.parent.name}/{path.parent.name}/{STAMP_NAME}"
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise _fail(bundle, f"member store/{name}: not a JSON fetch stamp", member=f"store/{name}") from None
    files = stamp.get("files") if isinstance(stamp, dict) else None
    entries = [f for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)] \
        if isinstance(files, list) else []
    locked = {f.path: f for f in source.files}
    same = isinstance(files, list) and len(entries) == len(files) == len(locked) and \
        {f.get("path") for f in entries} == locked.keys() and \
        all(f.get("size") == locked[f["path"]].size and f.get("sha256") in (None, locked[f["path"]].sha256)
            for f in entries)
    if not isinstance(stamp, dict) or (stamp.get("hub"), stamp.get("repo"), stamp.get("commit")) != \
            (source.hub, source.repo, source.commit) or not same:
        raise _fail(bundle, f"member store/{name}: not the fetch stamp of {source.repo}@{source.commit} with the "
                    "lock's files", member=f"store/{name}")
