"""Taking a lock of a provisioned model (`modelrig lock MODEL`): env, weights, conversions, launch files, remote
code, each read from what the stages stamped (and hashed where a stamp holds no hash)."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrig import __version__
from modelrig.config import Context
from modelrig.envs.build import EnvBuildPlan, env_is_complete, prepare_env_build
from modelrig.envs.install import Indexes, indexes_for
from modelrig.errors import LockError
from modelrig.lock.cache import cache_file, env_state_key, load_packages, save_packages
from modelrig.lock.packages import Frozen, freeze, hashes_for
from modelrig.lock.schema import (
    Conversion,
    Env,
    LaunchFile,
    Lock,
    LockedFile,
    Package,
    Platform,
    RemoteCode,
    Source,
)
from modelrig.manifest import Manifest
from modelrig.plan import plan_model
from modelrig.stamp import STAMP_NAME, read_stamp, sha256_file

#: Rendered files never locked: secrets are per host and never leave it; the stamp holds host paths.
UNLOCKED_LAUNCH_FILES = ("secrets.env", STAMP_NAME)
DATA_PLACEHOLDER = "${MODELRIG_DATA_ROOT}"
ENV_PLACEHOLDER = "${MODELRIG_ENV}"
USER_PLACEHOLDER = b"${MODELRIG_USER}"
#: The login user a launchd plist runs as (its UserName): another host's login user renders the same setup.
_PLIST_USER = re.compile(rb"(<key>UserName</key>\s*<string>)[^<]*(</string>)")


@dataclass(frozen=True)
class Located:
    """Where a model's pieces are on this host: the env build plan and the indexes the env was built from."""

    build: EnvBuildPlan
    indexes: Indexes
    stamp: dict[str, Any] | None


def locate(manifest: Manifest, ctx: Context, *, python: str | None = None, install: bool = False) -> Located:
    """The model's env on this host (planned as `modelrig up` plans it) and its stamp, if built.

    `python` (a lock's full version, e.g. "3.11.7") plans the env on exactly that interpreter; with `install`, one
    the host lacks is installed with uv first (host config `python:`), as a rebuild needs.
    """
    plan = plan_model(manifest, ctx, env_only=True)
    build = prepare_env_build(plan.env, data=ctx.data, config=ctx.config, exact_python=python,
                              install_python=install)
    return Located(build=build, indexes=indexes_for(plan.env, ctx.config.pip), stamp=env_is_complete(build))


def take_lock(manifest: Manifest, ctx: Context, *, manifest_path: Path) -> Lock:
    """The lock of `manifest` as provisioned on this host; `LockError` when a stage has not run yet."""
    where = locate(manifest, ctx)
    if where.stamp is None:
        raise LockError(f"{manifest.id}: no built env at {where.build.path}: run `modelrig up {manifest.id}` first",
                        code="not_provisioned", model=manifest.id)
    frozen, hashes = env_packages(where.build, where.indexes, stamp=where.stamp, cache_dir=ctx.data.cache,
                                  model=manifest.id)
    packages = [Package(name=f.name, version=f.version, requirement=f.requirement, hashes=hashes.get(f.name, []),
                        git_commit=f.git_commit) for f in frozen]
    smoke = where.stamp.get("smoke", {})
    spec = where.stamp.get("spec", {})
    env = Env(key=where.build.key, python=str(spec.get("python_version") or smoke.get("python")),
              backend=where.build.backend, index_url=where.indexes.index_url,
              extra_index_urls=list(where.indexes.extra_index_urls), find_links=list(where.indexes.find_links),
              torch_index_url=where.indexes.torch_index_url, packages=packages)
    accel = "cuda" if smoke.get("cuda_available") else "mps" if smoke.get("mps_available") else "cpu"
    host = Platform(os=platform.system().lower(), arch=platform.machine(), accelerator=accel,
                    torch=str(smoke.get("torch")),
                    torch_variant=str(spec.get("plan", {}).get("torch", {}).get("variant", "unknown")))
    sources = fetched_sources(manifest, ctx)
    return Lock.model_validate({
        "schema": "modelrig-lock/1", "model": manifest.id, "manifest_sha256": sha256_file(manifest_path),
        "modelrig": __version__, "platform": host, "env": env, "sources": sources,
        "conversions": conversions(manifest, ctx), "launch": launch_files(manifest, ctx, env_path=where.build.path),
        "remote_code": [RemoteCode(source=s.name, path=f.path, sha256=f.sha256)
                        for s in sources for f in s.files if f.path.endswith(".py")]})


def env_packages(build: EnvBuildPlan, indexes: Indexes, *, stamp: dict[str, Any], cache_dir: Path,
                 model: str) -> tuple[list[Frozen], dict[str, list[str]]]:
    """The env's frozen packages and their wheel hashes: remembered from the last lock while nothing that can
    change them has changed (`modelrig.lock.cache`), else frozen and hashed again (and remembered)."""
    try:
        key: str | None = env_state_key(python=build.python, env_path=build.path, stamp=stamp, indexes=indexes)
    except OSError:  # an unreadable site-packages: no cache, the freeze below says what is wrong
        key = None
    path = cache_file(cache_dir, build.key)
    if key is not None and (cached := load_packages(path, key)) is not None:
        return cached
    frozen = freeze(build.python)
    hashes = hashes_for(frozen, python=build.python, indexes=indexes)
    missing = [f.requirement for f in frozen if f.git_commit is None and not hashes.get(f.name)]
    if missing:
        raise LockError(f"{model}: no wheel hash found for {missing[0]} on the env's indexes/find-links",
                        code="not_provisioned", package=missing[0])
    if key is not None:
        save_packages(path, key, frozen, hashes)
    return frozen, hashes


def source_folders(manifest: Manifest, ctx: Context) -> dict[str, Path]:
    """The store folder of every hub source that has been fetched (local and model sources are not locked here)."""
    from modelrig.fetch.locate import NotOnDisk, source_dir

    found: dict[str, Path] = {}
    for name, source in manifest.weights.items():
        if source.local is not None or source.model is not None:
            continue
        try:
            found[name] = source_dir(name, source, ctx)
        except NotOnDisk:
            continue
    return found


def fetched_sources(manifest: Manifest, ctx: Context) -> list[Source]:
    """Every fetched hub source from fetch's stamps: hub, repo, revision, commit and each file's size and sha256."""
    sources: list[Source] = []
    folders = source_folders(manifest, ctx)
    for name, source in manifest.weights.items():
        if source.local is not None or source.model is not None:
            continue
        folder = folders.get(name)
        stamp = read_stamp(folder) if folder else None
        if folder is None or stamp is None:
            raise LockError(f"{manifest.id}: weight source {name} is not fetched: run `modelrig up {manifest.id}` "
                            "first", code="not_provisioned", source=name)
        files = [LockedFile(path=f["path"], size=f["size"], sha256=f.get("sha256") or sha256_file(folder / f["path"]))
                 for f in stamp.get("files", [])]
        # the revision the manifest asks for (a rebuild fetches at the locked commit, which its stamp records)
        ref = dict(source.hubs).get(folder.parent.name)
        sources.append(Source(name=name, hub=folder.parent.name, repo=stamp["repo"],
                              revision=ref.revision if ref else stamp["revision"], commit=stamp["commit"],
                              files=files, pruned=isinstance(stamp.get("pruned"), dict)))
    return sources


def conversion_folders(manifest: Manifest, ctx: Context) -> dict[str, Path]:
    """Every conversion output folder of `manifest` that holds a finished stamp (a fused chain stamps only its
    last output)."""
    folders = {step.output_name: ctx.data.output_dir(manifest.id, step.output_name) for step in manifest.convert}
    return {name: path for name, path in folders.items() if read_stamp(path) is not None}


def conversions(manifest: Manifest, ctx: Context) -> list[Conversion]:
    """Each conversion output: the stamp's kind, params, key and every output file (size from disk)."""
    found: list[Conversion] = []
    for name, folder in conversion_folders(manifest, ctx).items():
        stamp = read_stamp(folder) or {}
        files = [LockedFile(path=rel, size=(folder / rel).stat().st_size, sha256=digest)
                 for rel, digest in sorted(stamp.get("outputs", {}).items())]
        found.append(Conversion(output=name, kind=str(stamp.get("kind")), key=str(stamp.get("key")),
                                params=stamp.get("params", {}), files=files))
    return found


def normalised_text(data: bytes, *, data_root: Path, env_path: Path) -> bytes:
    """A rendered file with the env path, the data root and a plist's login user replaced by placeholders, so
    that the same setup under another data root or login user hashes the same."""
    data = data.replace(str(env_path).encode(), ENV_PLACEHOLDER.encode()) \
        .replace(str(data_root).encode(), DATA_PLACEHOLDER.encode())
    return _PLIST_USER.sub(rb"\g<1>" + USER_PLACEHOLDER + rb"\g<2>", data)


def launch_files(manifest: Manifest, ctx: Context, *, env_path: Path) -> list[LaunchFile]:
    """Every rendered launch file of the model (not secrets.env or the stamp), hashed on normalised content."""
    import hashlib

    folder = ctx.data.launch / manifest.id
    found: list[LaunchFile] = []
    if not folder.is_dir():
        return found
    for entry in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(p for p in entry.iterdir() if p.is_file() and p.name not in UNLOCKED_LAUNCH_FILES):
            text = normalised_text(path.read_bytes(), data_root=ctx.data.root, env_path=env_path)
            found.append(LaunchFile(entry=entry.name, path=path.name, sha256=hashlib.sha256(text).hexdigest()))
    return found
