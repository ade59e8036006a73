"""The lock file (`modelrig-lock/1`): pydantic models, a stable YAML writer and a loader that refuses a bad field
in one line naming the file and the field.

Everything in a lock is sorted (packages by name, files by path, sources by name) and written with a fixed key
order, so two locks of the same setup are byte-identical and a diff of two locks shows only what changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelrig.errors import LockError

SCHEMA = "modelrig-lock/1"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Commit = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Platform(_Strict):
    """The host the lock was taken on: os, arch, accelerator and torch build."""

    os: str
    arch: str
    accelerator: Literal["cuda", "mps", "cpu"]
    torch: str
    torch_variant: str


class Package(_Strict):
    """One installed distribution: `name==version` (or a direct reference) and the sha256 of its wheel(s)."""

    name: str
    version: str
    requirement: str
    hashes: list[Sha256] = Field(min_length=1)
    #: `git+URL@<commit>` for a package installed from git (the ref resolved to a commit).
    git_commit: Commit | None = None


class Env(_Strict):
    """The model env: its key, Python, the indexes it was built from and its exact package set."""

    key: str
    python: str
    backend: str
    index_url: str | None = None
    extra_index_urls: list[str] = []
    find_links: list[str] = []
    torch_index_url: str | None = None
    packages: list[Package]


class LockedFile(_Strict):
    """One file: path relative to its folder, size and sha256."""

    path: str
    size: int = Field(ge=0)
    sha256: Sha256


class Source(_Strict):
    """One fetched weight source at the commit it was fetched at."""

    name: str
    hub: str
    repo: str
    revision: str
    commit: Commit
    files: list[LockedFile]
    #: The files were deleted after the conversion that read them (`--prune-sources`); still listed with their
    #: sha256, fetched again when needed. Written only when true.
    pruned: bool = False


class Conversion(_Strict):
    """One conversion output folder: the stamp's kind, params and key, and each output file."""

    output: str
    kind: str
    key: str
    params: dict[str, Any]
    files: list[LockedFile]


class LaunchFile(_Strict):
    """A rendered launch file, hashed with the data root and env paths replaced by placeholders."""

    entry: str
    path: str
    sha256: Sha256


class RemoteCode(_Strict):
    """A `*.py` file of a fetched repo (code the model runs with trust_remote_code)."""

    source: str
    path: str
    sha256: Sha256


class Lock(_Strict):
    """A whole lock: what `modelrig rebuild` reproduces and `modelrig verify` compares the host with."""

    schema_: Literal["modelrig-lock/1"] = Field(alias="schema")
    model: str
    manifest_sha256: Sha256
    modelrig: str
    platform: Platform
    env: Env
    sources: list[Source]
    conversions: list[Conversion]
    launch: list[LaunchFile]
    remote_code: list[RemoteCode]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def dump_lock(lock: Lock) -> str:
    """The lock as YAML: fixed key order (as the models declare it), every list sorted."""
    data = lock.model_dump(by_alias=True, mode="json")
    data["env"]["packages"].sort(key=lambda p: p["name"])
    for source in data["sources"]:
        source["files"].sort(key=lambda f: f["path"])
        if not source.get("pruned"):
            source.pop("pruned", None)
    data["sources"].sort(key=lambda s: s["name"])
    for conv in data["conversions"]:
        conv["files"].sort(key=lambda f: f["path"])
    data["conversions"].sort(key=lambda c: c["output"])
    data["launch"].sort(key=lambda f: (f["entry"], f["path"]))
    data["remote_code"].sort(key=lambda f: (f["source"], f["path"]))
    header = "# modelrig lock: `modelrig verify --lock FILE` compares a host with it, `modelrig rebuild FILE` " \
             "reproduces it.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200)


def load_lock(path: Path | str) -> Lock:
    """Read and validate a lock; any problem is a `LockError` with one line `FILE: field.path: message`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LockError(f"{path}: lock file not found", path=str(path)) from None
    except yaml.YAMLError as exc:
        raise LockError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}", path=str(path)) from None
    if not isinstance(data, dict):
        raise LockError(f"{path}: expected a mapping with `schema: {SCHEMA}`", path=str(path))
    if data.get("schema") != SCHEMA:
        raise LockError(f"{path}: schema: expected {SCHEMA!r}, found {data.get('schema')!r}", path=str(path),
                        field="schema")
    try:
        return Lock.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        value = err.get("input")
        shown = f" (found {value!r})" if isinstance(value, str | int | float) else ""
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise LockError(f"{path}: {where}: {_message(err)}{shown}{more}", path=str(path), field=where) from None


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "string_pattern_mismatch":
        pattern = str(err.get("ctx", {}).get("pattern", ""))
        return "expected a 64-hex sha256" if "64" in pattern else "expected a 40-hex commit" \
            if "40" in pattern else f"does not match {pattern}"
    return str(err["msg"])
