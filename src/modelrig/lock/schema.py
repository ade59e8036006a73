"""The lock file (`modelrig-lock/1`): pydantic models, a stable YAML writer and a loader that refuses a bad field
in one line naming the file and the field.

A lock comes from another host and is trusted with nothing until it passes this schema: every path in it is
relative and stays inside the folder it names, every name that becomes a folder (model id, hub, repo, source,
output, launch entry) matches the pattern of what it names, every requirement is `name==version` with hashes (the
two exceptions spelled out in `Package`), and no string holds a control character.

Everything in a lock is sorted (packages by name, files by path, sources by name) and written with a fixed key
order, so two locks of the same setup are byte-identical and a diff of two locks shows only what changed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelrig.errors import LockError
from modelrig.lock.packages import normalise

SCHEMA = "modelrig-lock/1"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Commit = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
#: A model id: the manifest's `id` pattern (it names `locks/<id>.lock.yaml`, `models/<id>/`, `launch/<id>/`).
MODEL_ID = r"^[a-z0-9][a-z0-9._-]*$"
#: A weight source or conversion output name, as the manifest spells them.
_NAME = r"^[a-z][a-z0-9_]*$"
#: A launch entry name, as the manifest spells it.
_ENTRY = r"^[a-z][a-z0-9_-]*$"
#: A hub repo `org/name` (it names the store folder `<org>--<name>`).
_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
_ENV_KEY = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
#: The characters a direct-reference URL in a requirement may hold: no space, quote, `;`, `#` outside the
#: fragment, or anything a requirements file or a shell reads as syntax.
_URL_CHARS = r"[A-Za-z0-9._~:/@%+=-]"
_PINNED = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[A-Za-z0-9.!+_-]+)$")
_GIT = re.compile(rf"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?) @ git\+(https|http|ssh|git|file)://"
                  rf"{_URL_CHARS}+@(?P<commit>[0-9a-f]{{40}})(#[A-Za-z0-9._/=&-]+)?$")
_LOCAL_WHEEL = re.compile(rf"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?) @ (?P<url>file:///"
                          rf"{_URL_CHARS}+\.whl)$")


def _check_relative(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or "\\" in value or any(part in ("", ".", "..") for part in parts):
        raise ValueError("expected a path relative to its folder and inside it (no leading '/', no '..', '.' or "
                         "empty part, no '\\')")
    return value


def _check_file_name(value: str) -> str:
    if "/" in _check_relative(value):
        raise ValueError("expected a file name (no '/')")
    return value


#: A file path relative to the folder it is listed under, that cannot leave it.
RelativePath = Annotated[str, AfterValidator(_check_relative)]
#: One file name (launch files sit directly in their entry's folder).
FileName = Annotated[str, AfterValidator(_check_file_name)]


def control_character_at(data: Any, where: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """The location of the first string (value or key) in `data` holding a control character (newline, tab, NUL,
    escape, line or paragraph separator), or None."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [(where, data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, str):
            if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
                return loc
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and control_character_at(key) is not None:
                    return (*loc, key)
                stack.append(((*loc, key), item))
        elif isinstance(value, list):
            stack += [((*loc, i), item) for i, item in enumerate(value)]
    return None



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
    """One installed distribution and the sha256 of its wheel(s). `requirement` is one of:

    - `name==version` (a PEP 440 version, a local label such as `+cpu` allowed), with at least one hash;
    - `name @ file:///path/name-version-tag.whl`, a wheel installed from a local file, with at least one hash;
    - `name @ git+URL@<40-hex commit>[#fragment]`, with `git_commit` that commit (hashes optional: a rebuild
      refuses it, `--require-hashes` cannot install from git).

    `name` is the requirement's normalised name and `version` its version (the commit for git, the URL for a local
    wheel). Nothing else reaches the installer: no options, no second line, no environment marker.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]
    version: str
    requirement: str
    hashes: list[Sha256] = []
    #: `git+URL@<commit>` for a package installed from git (the ref resolved to a commit).
    git_commit: Commit | None = None

    @model_validator(mode="after")
    def _requirement_is_pinned(self) -> Package:
        if git := _GIT.match(self.requirement):
            name, version = git["name"], git["commit"]
            if self.git_commit != git["commit"]:
                raise ValueError(f"requirement: a git requirement's commit {git['commit']} must be git_commit")
        elif local := _LOCAL_WHEEL.match(self.requirement):
            name, version = local["name"], local["url"]
        elif pinned := _PINNED.match(self.requirement):
            name, version = pinned["name"], pinned["version"]
            try:
                Version(version)
            except InvalidVersion:
                raise ValueError(f"requirement: {version!r} is not a PEP 440 version") from None
        else:
            raise ValueError("requirement: expected 'name==version', 'name @ file:///...whl' or "
                             "'name @ git+URL@<40-hex commit>' (no options, spaces or markers)")
        if normalise(name) != self.name or version != self.version:
            raise ValueError(f"requirement: {self.requirement!r} is not {self.name} {self.version}")
        if self.git_commit is None and not self.hashes:
            raise ValueError("hashes: a package other than a git one needs at least one sha256")
        if self.git_commit is not None and not git:
            raise ValueError("git_commit: only for a 'name @ git+URL@<commit>' requirement")
        return self


class Env(_Strict):
    """The model env: its key, Python, the indexes it was built from and its exact package set."""

    key: Annotated[str, Field(pattern=_ENV_KEY)]
    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}(\.\d{1,3})?$")]
    backend: str
    index_url: str | None = None
    extra_index_urls: list[str] = []
    find_links: list[str] = []
    torch_index_url: str | None = None
    packages: list[Package]


class LockedFile(_Strict):
    """One file: path relative to its folder, size and sha256."""

    path: RelativePath
    size: int = Field(ge=0)
    sha256: Sha256


class Source(_Strict):
    """One fetched weight source at the commit it was fetched at."""

    name: Annotated[str, Field(pattern=_NAME)]
    hub: Literal["huggingface", "modelscope"]
    repo: Annotated[str, Field(pattern=_REPO)]
    revision: str
    commit: Commit
    files: list[LockedFile]
    #: The files were deleted after the conversion that read them (`--prune-sources`); still listed with their
    #: sha256, fetched again when needed. Written only when true.
    pruned: bool = False


class Conversion(_Strict):
    """One conversion output folder: the stamp's kind, params and key, and each output file."""

    output: Annotated[str, Field(pattern=_NAME)]
    kind: str
    key: str
    params: dict[str, Any]
    files: list[LockedFile]


class LaunchFile(_Strict):
    """A rendered launch file, hashed with the data root and env paths replaced by placeholders."""

    entry: Annotated[str, Field(pattern=_ENTRY)]
    path: FileName
    sha256: Sha256


class RemoteCode(_Strict):
    """A `*.py` file of a fetched repo (code the model runs with trust_remote_code)."""

    source: Annotated[str, Field(pattern=_NAME)]
    path: RelativePath
    sha256: Sha256


class Lock(_Strict):
    """A whole lock: what `modelrig rebuild` reproduces and `modelrig verify` compares the host with."""

    schema_: Literal["modelrig-lock/1"] = Field(alias="schema")
    model: Annotated[str, Field(pattern=MODEL_ID)]
    manifest_sha256: Sha256
    modelrig: str
    platform: Platform
    env: Env
    sources: list[Source]
    conversions: list[Conversion]
    launch: list[LaunchFile]
    remote_code: list[RemoteCode]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _no_control_characters(cls, data: Any) -> Any:
        where = control_character_at(data)
        if where is not None:
            raise ValueError(f"{_dotted(where)}: {_CONTROL}")
        return data


_CONTROL = "control characters (newline, tab, NUL, escape, ...) are not allowed"


def _dotted(where: tuple[str | int, ...]) -> str:
    """`a.0.b`, a key holding a control character shown quoted (escaped), so the line stays one line."""
    return ".".join(repr(part) if isinstance(part, str) and control_character_at(part) is not None else str(part)
                    for part in where)


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
    return header + yaml.dump(data, Dumper=lock_dumper(data), sort_keys=False, default_flow_style=False, width=200)


#: A scalar libyaml's emitter writes byte for byte as PyYAML's Python emitter does (fuzzed: they differ on empty or
#: escaped keys and on long or escaped strings, which fold differently): a short token, no spaces or quotes.
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9/][A-Za-z0-9._/+:@=~-]{0,99}")


def lock_dumper(data: Any) -> type[yaml.SafeDumper]:
    """libyaml's emitter (~10x faster on a lock's thousands of hashes) where every key and string of `data` is a
    plain token it writes identically; PyYAML's Python emitter otherwise. Either way the same bytes."""
    fast = getattr(yaml, "CSafeDumper", None)
    return fast if fast is not None and _all_plain(data) else yaml.SafeDumper


def _all_plain(value: Any) -> bool:
    if isinstance(value, str):
        return _PLAIN_TOKEN.fullmatch(value) is not None
    if isinstance(value, dict):
        return all(_all_plain(k) and _all_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float)


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
    where = control_character_at(data)
    if where is not None:
        raise LockError(f"{path}: {_dotted(where)}: {_CONTROL}", path=str(path), field=_dotted(where))
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
        return _PATTERN_MESSAGES.get(pattern, f"does not match {pattern}")
    return str(err["msg"]).removeprefix("Value error, ")


_PATTERN_MESSAGES = {
    r"^[0-9a-f]{64}$": "expected a 64-hex sha256",
    r"^[0-9a-f]{40}$": "expected a 40-hex commit",
    MODEL_ID: "expected a model id as a manifest spells it (a-z, 0-9, '.', '_', '-', starting with a letter or digit)",
    _NAME: "expected a name as a manifest spells it (a-z, 0-9, '_', starting with a letter)",
    _ENTRY: "expected a launch entry name (a-z, 0-9, '_', '-', starting with a letter)",
    _REPO: "expected a hub repo 'org/name'",
    _ENV_KEY: "expected an env key (letters, digits, '.', '_', '-')",
}
