"""Typed stage outputs: what each stage hands the next one, what `--json` publishes and what a lock records.

A stage returns a `StageResult` whose `details` is the JSON form of one of these; `read(cls, result)` turns it
back into the dataclass, checking every field is there, so a renamed field breaks at once (and the schema in
`docs/result-json.md` is tested against these classes).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelrig.result import StageResult

T = TypeVar("T")


@dataclass(frozen=True)
class FileRecord:
    """One fetched file: its path in the repo, size and sha256 (as the hub publishes it, verified)."""

    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class FetchedSource:
    """One weight source after fetch: where it came from (hub, repo, revision resolved to a commit) and where it
    is, with every file. `hub` is `local` for user-supplied weights (then repo/revision/commit are None)."""

    name: str
    hub: str
    repo: str | None
    revision: str | None
    commit: str | None
    path: str
    files: list[FileRecord]
    ref_kind: str | None = None
    #: The files were deleted after the conversion that read them (`--prune-sources`); `files` is the stamp's.
    pruned: bool = False


@dataclass(frozen=True)
class FetchOutput:
    """`details` of the fetch stage."""

    sources: list[FetchedSource]
    store: str
    notes: list[str] = field(default_factory=list)
    disk: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvOutput:
    """`details` of the env stage: the env's key (a digest of its spec), folder and interpreter, and what its
    smoke check found (torch build, CUDA/MPS availability, transformers version)."""

    key: str
    path: str
    python: str
    backend: str
    installer: str | None
    warnings: list[str]
    smoke: dict[str, Any] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvertOutput:
    """`details` of the convert stage: the final output folder and each step's (or fused chain's) result."""

    output: str
    steps: list[dict[str, Any]]
    #: With `--prune-sources`: the sources pruned (`name`, `path`, `files`, `bytes`), `freed_bytes`, `summary`.
    pruned: dict[str, Any] | None = None
    #: `modelrig convert`: whether any step ran (or would); unlike `changed`, false when only pruning changed
    #: something (what a restart of the model's services depends on).
    converted: bool | None = None


@dataclass(frozen=True)
class RenderedEntry:
    """One rendered launch entry: its folder, kind, where it listens, which files this run wrote or removed, and
    the 0600 secrets file when it listens beyond loopback."""

    dir: str
    kind: str
    port: int | None
    bind: str
    written: list[str]
    removed: list[str]
    secrets: str | None


@dataclass(frozen=True)
class RenderOutput:
    """`details` of the render stage."""

    entries: dict[str, RenderedEntry]
    out: str


@dataclass(frozen=True)
class LaunchedEntry:
    """One started (or found running) entry of `up`'s launch stage."""

    dir: str
    kind: str
    supervisor: str
    url: str | None
    pid: int | None
    summary: str


@dataclass(frozen=True)
class LaunchOutput:
    """`details` of `up`'s launch stage."""

    entries: dict[str, LaunchedEntry]
    supervisor: str


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value)
    if origin in (list, tuple) and isinstance(value, list):
        (item,) = typing.get_args(tp)[:1]
        return [_convert(item, v) for v in value]
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(tp)
        return {k: _convert(item, v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return from_dict(option, value)
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from its JSON form; extra keys are ignored, a missing required field is a KeyError naming it."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KeyError(f"{cls.__name__}.{f.name}")
    return cls(**values)


def read(cls: type[T], result: StageResult) -> T:
    """The typed output of a stage result (its `details`)."""
    return from_dict(cls, result.details)
