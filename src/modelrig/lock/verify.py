"""Comparing a host with its lock (`modelrig verify`), changing nothing.

Fast mode compares packages (`uv pip freeze`), weight and converted files by size and by mtime against their
stamps (a file written after its folder was stamped was changed since), launch files by hash (they are small)
and whether each service runs. `full` re-hashes every weight and converted file; `remote` asks the hub which
commit each source's revision points at now and compares remote code with the lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.errors import EnvBuildError, ModelrigError
from modelrig.fetch.prune import recorded_files
from modelrig.lock.collect import (
    UNLOCKED_LAUNCH_FILES,
    conversion_folders,
    locate,
    normalised_text,
    source_folders,
)
from modelrig.lock.confine import inside
from modelrig.lock.packages import freeze
from modelrig.lock.schema import Lock, LockedFile
from modelrig.manifest import Manifest
from modelrig.stamp import STAMP_NAME, sha256_file


@dataclass
class VerifyReport:
    """What `verify` found: one line per difference, and how much it checked."""

    model: str
    mode: str
    drift: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: One line per source pruned after its conversion (not drift: its files are gone on purpose).
    pruned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` result of a clean verify."""
        return {"ok": not self.drift, "stage": "verify", "model": self.model, "mode": self.mode,
                "drift": list(self.drift), "checked": dict(self.checked), "pruned": list(self.pruned),
                "seconds": round(self.seconds, 3)}


def verify(lock: Lock, manifest: Manifest, ctx: Context, *, full: bool = False, remote: bool | None = None,
           services: bool = True) -> VerifyReport:
    """Every difference between this host and `lock`; touches nothing. `remote` (default: `full`) asks the hub."""
    import time

    begun = time.perf_counter()
    report = VerifyReport(model=lock.model, mode="full" if full else "fast")
    try:  # the env was built on exactly the lock's Python; a host without it is drift, found below
        where = locate(manifest, ctx, python=lock.env.python)
    except EnvBuildError as exc:
        if exc.code != "python_missing":
            raise
        where = locate(manifest, ctx)
    report.drift += check_packages(lock, where.build.python if where.stamp else None)
    report.checked["packages"] = len(lock.env.packages)
    total = sum(f.size for s in lock.sources for f in s.files) + sum(f.size for c in lock.conversions
                                                                      for f in c.files)
    from modelrig.progress import bar

    with bar(total, "verify --full") if full else contextlib.nullcontext() as progress:
        report.drift += check_weights(lock, manifest, ctx, full=full, progress=progress, pruned=report.pruned)
        report.drift += check_conversions(lock, manifest, ctx, full=full, progress=progress)
    report.checked["files"] = sum(len(s.files) for s in lock.sources) + sum(len(c.files) for c in lock.conversions)
    report.drift += check_launch(lock, ctx, env_path=where.build.path)
    report.checked["launch_files"] = len(lock.launch)
    if services:
        report.drift += check_services(lock, ctx)
    if full if remote is None else remote:
        report.drift += check_remote(lock, manifest, ctx)
    report.seconds = time.perf_counter() - begun
    return report


def check_weights(lock: Lock, manifest: Manifest, ctx: Context, *, full: bool, progress: Any = None,
                  pruned: list[str] | None = None) -> list[str]:
    """Each locked source not fetched, at another commit, or with a file that differs. A source pruned after its
    conversion is compared by the sha256 and size its fetch stamp records (its files are gone on purpose) and
    named in `pruned`."""
    drift: list[str] = []
    folders = source_folders(manifest, ctx)
    for source in lock.sources:
        folder = folders.get(source.name)
        if folder is None:
            drift.append(f"weights {source.name}: {source.repo}@{source.commit[:12]} expected, not fetched")
            continue
        stamp = _stamp(folder)
        if stamp.get("commit") != source.commit:
            drift.append(f"weights {source.name}: commit {source.commit} expected, found {stamp.get('commit')}")
        recorded = recorded_files(folder)
        if recorded:
            drift += _check_recorded(source, recorded)
            if pruned is not None:
                pruned.append(f"weights {source.name}: {len(source.files)} files pruned after conversion, their "
                              f"sha256 recorded in {folder / STAMP_NAME}")
            gone = [f for f in source.files if (p := inside(folder, f.path)) is not None and not p.exists()]
            if progress is not None:
                progress.update(sum(f.size for f in gone))
            present = [f for f in source.files if f not in gone]
            drift += check_files(f"weight {source.name}", folder, present, full=full, progress=progress)
            continue
        drift += check_files(f"weight {source.name}", folder, source.files, full=full, progress=progress)
    return drift


def check_conversions(lock: Lock, manifest: Manifest, ctx: Context, *, full: bool,
                      progress: Any = None) -> list[str]:
    """Each locked conversion output not built, built from other inputs (another key), or with a file that
    differs."""
    drift: list[str] = []
    converted = conversion_folders(manifest, ctx)
    for conv in lock.conversions:
        folder = converted.get(conv.output) or ctx.data.output_dir(manifest.id, conv.output)
        if conv.output not in converted:
            drift.append(f"converted {conv.output}: expected ({conv.kind}), not built at {folder}")
            continue
        key = str(_stamp(folder).get("key"))
        if key != conv.key:
            drift.append(f"converted {conv.output}: key {conv.key[:12]} expected, found {key[:12]}")
        drift += check_files(f"converted {conv.output}", folder, conv.files, full=full, progress=progress)
    return drift


def _check_recorded(source: Any, recorded: dict[str, tuple[str, int]]) -> list[str]:
    """Locked files of a pruned source whose recorded sha256 or size differs from the lock, or not recorded."""
    drift = []
    for locked in source.files:
        sha, size = recorded.get(locked.path, (None, None))
        if sha is None:
            drift.append(f"weight {source.name}: {locked.path} not recorded in its pruned fetch stamp")
        elif (sha, size) != (locked.sha256, locked.size):
            drift.append(f"weight {source.name}: {locked.path} recorded as sha256 {sha} ({size} bytes) when pruned, "
                         f"{locked.sha256} ({locked.size} bytes) expected")
    return drift


def _stamp(folder: Path) -> dict[str, Any]:
    from modelrig.stamp import read_stamp

    return read_stamp(folder) or {}


def check_packages(lock: Lock, python: Path | None) -> list[str]:
    """Packages added, removed or changed in the env, from `uv pip freeze`."""
    if python is None or not python.exists():
        return [f"env {lock.env.key}: expected (Python {lock.env.python}, {len(lock.env.packages)} packages), "
                "not built"]
    found = {f.name: f for f in freeze(python)}
    locked = {p.name: p for p in lock.env.packages}
    drift = [f"package {name}: {locked[name].version} expected, not installed"
             for name in sorted(locked.keys() - found.keys())]
    drift += [f"package {name}: not in the lock, found {found[name].version} installed"
              for name in sorted(found.keys() - locked.keys())]
    drift += [f"package {name}: {locked[name].version} expected, found {found[name].version}"
              for name in sorted(locked.keys() & found.keys()) if locked[name].version != found[name].version]
    return drift


def check_files(what: str, folder: Path, files: list[LockedFile], *, full: bool, progress: Any = None) -> list[str]:
    """Missing, resized, or (fast) modified-after-stamp / (full) re-hashed-different files of one folder."""
    drift: list[str] = []
    stamp_file = folder / STAMP_NAME
    stamped_at = stamp_file.stat().st_mtime_ns if stamp_file.exists() else None
    for locked in files:
        path = inside(folder, locked.path)
        if path is None:
            drift.append(f"{what}: {locked.path} leads outside {folder} (a symbolic link); not read")
            continue
        if not path.is_file():
            drift.append(f"{what}: {locked.path} missing (expected {locked.size} bytes, sha256 {locked.sha256})")
            continue
        size = path.stat().st_size
        if size != locked.size:
            drift.append(f"{what}: {locked.path} has {size} bytes, {locked.size} expected"
                         + (" (truncated)" if size < locked.size else ""))
        elif full:
            found = sha256_file(path)
            if found != locked.sha256:
                drift.append(f"{what}: {locked.path} sha256 {locked.sha256} expected, found {found}")
        elif stamped_at is not None and path.stat().st_mtime_ns > stamped_at:
            drift.append(f"{what}: {locked.path} was modified after it was stamped (same size; "
                         "`modelrig verify --full` compares hashes)")
        if progress is not None:
            progress.update(locked.size)
    return drift


def check_launch(lock: Lock, ctx: Context, *, env_path: Path) -> list[str]:
    """Launch files edited by hand, missing, or not in the lock."""
    folder = ctx.data.launch / lock.model
    drift: list[str] = []
    seen: set[tuple[str, str]] = set()
    for locked in lock.launch:
        path = inside(folder, f"{locked.entry}/{locked.path}")
        seen.add((locked.entry, locked.path))
        if path is None:
            drift.append(f"launch {locked.entry}/{locked.path}: leads outside {folder} (a symbolic link); not read")
            continue
        if not path.is_file():
            drift.append(f"launch {locked.entry}/{locked.path}: missing")
            continue
        found = hashlib.sha256(normalised_text(path.read_bytes(), data_root=ctx.data.root,
                                               env_path=env_path)).hexdigest()
        if found != locked.sha256:
            drift.append(f"launch {locked.entry}/{locked.path}: edited (sha256 {locked.sha256} expected, "
                         f"found {found})")
    entries = {e for e, _ in seen}
    for entry in sorted(entries):
        for path in sorted((folder / entry).glob("*")):
            if path.is_file() and path.name not in UNLOCKED_LAUNCH_FILES and (entry, path.name) not in seen:
                drift.append(f"launch {entry}/{path.name}: not in the lock")
    return drift


def check_services(lock: Lock, ctx: Context) -> list[str]:
    """Each locked launch entry that is not running (per `modelrig.launch.status`)."""
    from modelrig.launch import status
    from modelrig.orchestrate.up import read_state

    state = read_state(ctx, lock.model)
    drift: list[str] = []
    for entry in sorted({f.entry for f in lock.launch}):
        folder = ctx.data.launch / lock.model / entry
        if not (folder / "entry.json").is_file():
            continue
        info = status(folder, supervisor=state.get("supervisor", ctx.config.serve.supervisor),
                      run_dir=ctx.data.run / lock.model)
        if not info["running"]:
            drift.append(f"service {entry}: running expected, found stopped")
    return drift


def check_remote(lock: Lock, manifest: Manifest, ctx: Context) -> list[str]:
    """Each source whose revision now points at another commit on its hub, or whose remote code changed there."""
    from modelrig.fetch.remote import endpoints_for, resolve_source

    endpoints = endpoints_for(ctx.config)
    drift: list[str] = []
    for source in lock.sources:
        weight = manifest.weights.get(source.name)
        ref = dict(weight.hubs).get(source.hub) if weight is not None else None
        if weight is None or ref is None:
            drift.append(f"remote {source.name}: {source.hub} {source.repo} is no longer in the manifest")
            continue
        try:
            plan = resolve_source(source.name, source.hub, ref, weight, endpoints=endpoints, store=ctx.data.store)
        except ModelrigError as exc:
            drift.append(f"remote {source.name}: cannot resolve {source.repo}@{source.revision}: {exc}")
            continue
        if plan.commit != source.commit:
            drift.append(f"remote {source.name}: {source.repo}@{source.revision} is commit {source.commit} in the "
                         f"lock, now {plan.commit} upstream")
        locked_code = {c.path: c.sha256 for c in lock.remote_code if c.source == source.name}
        fetch = functools.partial(_download_sha256, source.repo, commit=plan.commit, endpoints=endpoints,
                                  hub=source.hub)
        upstream = {f.path: _upstream_sha256(f, source.files, folder=source_folder(source, ctx), fetch=fetch)
                    for f in plan.files if f.path.endswith(".py")}
        for path in sorted(locked_code.keys() | upstream.keys()):
            if locked_code.get(path) != upstream.get(path):
                drift.append(f"remote code {source.name}/{path}: sha256 {locked_code.get(path) or 'absent'} "
                             f"expected, upstream {upstream.get(path) or 'absent'}")
    return drift


def source_folder(source: Any, ctx: Context) -> Path:
    """Where fetch keeps a locked source: `<store>/<hub>/<org>--<name>`."""
    return ctx.data.store_dir(source.hub, source.repo)


def _download_sha256(repo: str, path: str, *, commit: str, endpoints: Any, hub: str) -> str:
    """The sha256 of one file of `repo` at `commit` on the Hugging Face Hub, downloaded into a temporary folder."""
    import tempfile

    from huggingface_hub import hf_hub_download

    from modelrig.fetch.remote import token_for

    with tempfile.TemporaryDirectory(prefix="modelrig-verify-") as tmp:
        local = hf_hub_download(repo, path, revision=commit, endpoint=endpoints.huggingface,
                                token=token_for(endpoints, hub) or False, local_dir=tmp)
        return sha256_file(Path(local))


def _upstream_sha256(remote: Any, locked: list[LockedFile], *, folder: Path, fetch: Any) -> str | None:
    """The sha256 the hub publishes for a file; for a file it publishes only a git blob id for (small non-LFS
    files on the Hub): the locked sha256 when that blob id is the locked content's, else the downloaded file's."""
    if remote.sha256:
        return str(remote.sha256)
    entry = next((f for f in locked if f.path == remote.path), None)
    local = inside(folder, remote.path)
    if entry is not None and local is not None and local.is_file():
        data = local.read_bytes()
        if hashlib.sha256(data).hexdigest() == entry.sha256:
            oid = hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
            if oid == remote.git_oid:
                return entry.sha256
    return str(fetch(remote.path))
