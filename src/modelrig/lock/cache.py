"""The env's frozen package set and wheel hashes, remembered between locks of an unchanged env.

Freezing an env and finding each wheel's hash on its indexes is most of what `modelrig lock` costs, and Ansible
runs it on every host on every play. The answer is kept in `<data root>/cache/lock/<env key>.json` under a digest
of everything that can change it: the env's interpreter, the name and mtime of every distribution folder in its
site-packages (an install, uninstall, upgrade or reinstall changes them), its `pyvenv.cfg`, the env stamp, the
indexes and find-links (and the wheels in local find-links folders), and this modelrig's version. A cache file
whose key differs, or that is not the shape written here (it is read from disk: checked, never trusted), is
ignored and rewritten; a lock is the same bytes with or without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from modelrig import __version__
from modelrig.envs.install import Indexes
from modelrig.lock.packages import Frozen
from modelrig.stamp import atomic_write_text

SCHEMA = "modelrig-lock-cache/1"
#: Folders in site-packages that describe one installed distribution each.
_DIST_SUFFIXES = (".dist-info", ".egg-info", ".egg-link")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def cache_file(cache_dir: Path, env_key: str) -> Path:
    """Where the packages of env `env_key` are remembered (`<data root>/cache/lock/<key>.json`)."""
    return cache_dir / "lock" / f"{env_key}.json"


def site_packages(env_path: Path) -> list[Path]:
    """The env's site-packages folders (venv and conda layouts, `lib64` links counted once)."""
    found: dict[Path, Path] = {}
    for pattern in ("lib/python*/site-packages", "lib64/python*/site-packages", "Lib/site-packages"):
        for folder in sorted(env_path.glob(pattern)):
            if folder.is_dir():
                found.setdefault(folder.resolve(), folder)
    return sorted(found)


def _distributions(folder: Path) -> list[list[Any]]:
    """`[name, mtime_ns, size]` of every distribution entry directly in `folder`, sorted by name."""
    entries: list[list[Any]] = []
    with os.scandir(folder) as listing:
        for entry in listing:
            if entry.name.endswith(_DIST_SUFFIXES):
                stat = entry.stat()
                entries.append([entry.name, stat.st_mtime_ns, stat.st_size])
    return sorted(entries)


def _local_wheels(indexes: Indexes) -> dict[str, list[list[Any]]]:
    """`[name, size, mtime_ns]` of the wheels in each local find-links folder (their hashes go into a lock)."""
    found: dict[str, list[list[Any]]] = {}
    for link in indexes.find_links:
        folder = Path(link)
        if not folder.is_dir():
            continue
        wheels = []
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name.endswith(".whl"):
                    stat = entry.stat()
                    wheels.append([entry.name, stat.st_size, stat.st_mtime_ns])
        found[link] = sorted(wheels)
    return found


def env_state_key(*, python: Path, env_path: Path, stamp: dict[str, Any], indexes: Indexes) -> str:
    """A digest of everything a freeze and its hashes depend on; any change to the env or the indexes changes it.

    Raises OSError when the env cannot be read (the caller then computes without the cache)."""
    config = env_path / "pyvenv.cfg"
    material = {
        "modelrig": __version__,
        "python": str(python),
        "python_target": os.path.realpath(python),
        "pyvenv_cfg": config.read_text(encoding="utf-8", errors="replace") if config.is_file() else None,
        "site_packages": {str(folder): _distributions(folder) for folder in site_packages(env_path)},
        "stamp": stamp,
        "indexes": dataclasses.asdict(indexes),
        "local_wheels": _local_wheels(indexes),
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_packages(path: Path, key: str) -> tuple[list[Frozen], dict[str, list[str]]] | None:
    """The remembered freeze and hashes when `path` holds a valid cache written under `key`; None otherwise (a
    missing, unreadable, malformed or stale file alike)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or set(data) != {"schema", "key", "frozen", "hashes"}:
        return None
    if data["schema"] != SCHEMA or data["key"] != key:
        return None
    frozen = _frozen(data["frozen"])
    hashes = _hashes(data["hashes"])
    if frozen is None or hashes is None:
        return None
    return frozen, hashes


def _frozen(value: Any) -> list[Frozen] | None:
    """The cached freeze lines, or None when any entry is not exactly what `save_packages` writes."""
    if not isinstance(value, list):
        return None
    found: list[Frozen] = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"name", "version", "requirement", "git_commit"}:
            return None
        if not all(isinstance(item[k], str) and item[k] for k in ("name", "version", "requirement")):
            return None
        commit = item["git_commit"]
        if commit is not None and not (isinstance(commit, str) and _COMMIT.fullmatch(commit)):
            return None
        found.append(Frozen(name=item["name"], version=item["version"], requirement=item["requirement"],
                            git_commit=commit))
    if [f.name for f in found] != sorted(f.name for f in found):
        return None
    return found


def _hashes(value: Any) -> dict[str, list[str]] | None:
    """The cached hashes, or None unless a mapping of names to lists of 64-hex sha256."""
    if not isinstance(value, dict):
        return None
    for name, digests in value.items():
        if not isinstance(name, str) or not isinstance(digests, list):
            return None
        if not all(isinstance(d, str) and _SHA256.fullmatch(d) for d in digests):
            return None
    return {name: list(digests) for name, digests in value.items()}


def save_packages(path: Path, key: str, frozen: list[Frozen], hashes: dict[str, list[str]]) -> None:
    """Remember a freeze and its hashes under `key` (atomically; a cache that cannot be written is skipped: the
    lock does not depend on it)."""
    data = {"schema": SCHEMA, "key": key, "frozen": [dataclasses.asdict(f) for f in frozen],
            "hashes": {name: list(digests) for name, digests in sorted(hashes.items())}}
    try:
        atomic_write_text(path, json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    except OSError:
        pass
