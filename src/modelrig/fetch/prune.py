"""Fetched sources pruned after a verified conversion: the record in the fetch stamp, and the deletion itself.

A pruned store folder keeps only its stamp. The stamp still lists every file (path, size, sha256) and gains
`pruned: {"at", "bytes", "by"}`, so the lock still names each file, a conversion's idempotency key is computed
from the recorded digests, and `modelrig fetch` knows the files are gone on purpose (not a broken download).
Restoring a pruned source is an ordinary download of the same commit, which writes a stamp without the record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from modelrig.fetch.sources import SourcePlan, stamp_on_any_hub
from modelrig.humansize import format_size
from modelrig.manifest import HubRef, WeightSource
from modelrig.stamp import read_stamp, write_stamp

PRUNED_KEY = "pruned"


def pruned_record(directory: Path) -> dict[str, Any] | None:
    """The `pruned` record of a store folder's stamp, or None when it was never pruned (or has no stamp)."""
    stamp = read_stamp(directory)
    record = stamp.get(PRUNED_KEY) if stamp else None
    return record if isinstance(record, dict) else None


def recorded_files(directory: Path) -> dict[str, tuple[str, int]]:
    """Path -> (sha256, size) of every file a pruned folder's stamp lists; {} for a folder not pruned."""
    stamp = read_stamp(directory)
    if not stamp or not isinstance(stamp.get(PRUNED_KEY), dict):
        return {}
    return {e["path"]: (e["sha256"], e["size"]) for e in stamp.get("files", [])
            if isinstance(e, dict) and e.get("path") and e.get("sha256")}


def is_pruned_path(path: Path) -> bool:
    """Whether `path` is a pruned folder, or a file a pruned folder above it records (and that is gone)."""
    path = Path(path)
    if pruned_record(path) is not None:
        return True
    for parent in path.parents:
        files = recorded_files(parent)
        if files:
            return path.relative_to(parent).as_posix() in files and not path.exists()
    return False


def pruned_stamp(target: Path, *, hub: str, ref: HubRef, source: WeightSource,
                 commit: str | None = None) -> dict[str, Any] | None:
    """The stamp of `target` when it is a pruned fetch of this source: same hub, repo and patterns, at `commit`
    (default: the manifest's pinned revision; a branch or tag needs the commit it resolves to)."""
    stamp = read_stamp(target)
    if not stamp or not isinstance(stamp.get(PRUNED_KEY), dict):
        return None
    if stamp.get("hub") != hub or stamp.get("repo") != ref.repo:
        return None
    want = commit or (ref.revision if ref.pinned else None)
    if want is None or stamp.get("commit") != want:
        return None
    if stamp.get("include") != list(source.include) or stamp.get("exclude") != list(source.exclude):
        return None
    return stamp


def present_bytes(directory: Path) -> int:
    """Bytes of the stamp's files still on disk in `directory` (what pruning it would free)."""
    stamp = read_stamp(directory) or {}
    return sum((directory / e["path"]).stat().st_size for e in stamp.get("files", [])
               if (directory / e["path"]).is_file())


def prune_folder(directory: Path, *, by: str) -> tuple[int, int]:
    """Delete every file `directory`'s fetch stamp lists, after recording `pruned` in that stamp (so that an
    interruption leaves a folder known to be pruned); `by` names what consumed it. Returns (files, bytes) deleted;
    (0, 0) for a folder already pruned. The caller holds the folder's fetch lock."""
    stamp = read_stamp(directory)
    if stamp is None:
        return 0, 0
    record = stamp.get(PRUNED_KEY) if isinstance(stamp.get(PRUNED_KEY), dict) else {}
    present = [directory / e["path"] for e in stamp.get("files", []) if (directory / e["path"]).is_file()]
    if not present and record:
        return 0, 0
    freed = sum(p.stat().st_size for p in present)
    consumers = sorted({*record.get("by", []), by})
    stamp[PRUNED_KEY] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": consumers,
                         "bytes": int(record.get("bytes", 0)) + freed}
    write_stamp(directory, stamp)
    for path in present:
        path.unlink(missing_ok=True)
    for folder in sorted({p.parent for p in present}, key=lambda p: len(p.parts), reverse=True):
        while folder != directory and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return len(present), freed


def pinned_pruned_stamp(source: WeightSource, store: Path, *, requested: str) -> dict[str, Any] | None:
    """The pruned stamp of a source pinned to a commit, on any hub it may come from (no network needed)."""
    return stamp_on_any_hub(source, store, requested=requested, accept=pruned_stamp)


def plan_pruned_stamp(plan: SourcePlan) -> dict[str, Any] | None:
    """The stamp of `plan.target` when it records a pruned fetch of exactly this plan (same key)."""
    stamp = read_stamp(plan.target)
    if stamp and isinstance(stamp.get(PRUNED_KEY), dict) and stamp.get("key") == plan.stamp_key():
        return stamp
    return None


def pruned_note(name: str, stamp: dict[str, Any], model: str) -> str:
    """One line for a source left pruned by fetch."""
    record = stamp[PRUNED_KEY]
    return (f"{name}: pruned after conversion ({len(stamp.get('files', []))} files, {format_size(record['bytes'])} "
            f"freed {record['at']}); not downloaded again while its conversion is current (`modelrig fetch "
            f"{model} --restore-pruned` downloads it)")
