"""What a fetch will do, worked out without I/O: files a hub lists, which are selected, hub order, sizes."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrig import humansize
from modelrig.config import store_folder
from modelrig.errors import UsageError
from modelrig.humansize import format_size
from modelrig.manifest import HubRef, WeightSource
from modelrig.stamp import digest

HUBS = ("huggingface", "modelscope")
#: Free disk kept beyond the download itself, unless the caller asks for another amount.
DEFAULT_HEADROOM = 1 << 30
#: Files downloaded (or re-hashed) at once.
MAX_WORKERS = 8
HASH_CHUNK = 8 << 20


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

    def stamp_key(self) -> str:
        """The digest that identifies this exact download."""
        return digest({"hub": self.hub, "repo": self.repo, "commit": self.commit, "include": self.include,
                       "exclude": self.exclude, "files": [(f.path, f.size, f.sha256) for f in self.files]})


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


def stamp_on_any_hub(source: WeightSource, store: Path, *, requested: str,
                     accept: Callable[..., dict[str, Any] | None]) -> dict[str, Any] | None:
    """The first stamp `accept(folder, hub=, ref=, source=)` returns among the store folders `source` may have
    been fetched into, in hub order; None when none is accepted or `requested` names a hub the source is not on.
    Reads only the store: no network."""
    try:
        order = hub_order(source, requested=requested, prefer="auto")
    except UsageError:
        return None
    for hub, ref in order:
        stamp = accept(store_folder(store, hub, ref.repo), hub=hub, ref=ref, source=source)
        if stamp is not None:
            return stamp
    return None


def needed_bytes(plan: SourcePlan) -> int:
    """Bytes still to download: files absent or of the wrong size in the target folder."""
    missing = 0
    for f in plan.files:
        local = plan.target / f.path
        if not (local.is_file() and local.stat().st_size == f.size):
            missing += f.size
    return missing


def parse_size(text: str) -> int:
    """A size given on the command line (`--headroom 2GB`); a usage error naming the value otherwise."""
    try:
        return humansize.parse_size(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def human(n: float) -> str:
    """Bytes as a short human string (`modelrig.humansize.format_size`, the one convention of human output)."""
    return format_size(n)
