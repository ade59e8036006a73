"""One archive with everything a lock needs (`modelrig bundle`), and provisioning a data root from it with no
network at all (`modelrig rebuild LOCK --bundle FILE`).

Layout of the .tar: `lock.yaml`, `manifests/<model>.yaml`, `wheels/*.whl` (every locked package, matching the
locked hashes), `modelrig/*.whl` (the toolkit itself, `uv build --wheel`, and its dependencies' wheels),
`store/<hub>/<org>--<name>/...` (the fetched weights with their fetch stamp) and `bundle.json`, the sha256 of
every other member.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.envs.tools import clean_environ
from modelrig.errors import EnvBuildError, NotReproducedError, UsageError
from modelrig.fetch.prune import pruned_record
from modelrig.lock.collect import locate
from modelrig.lock.packages import hashed_requirements, index_flags, normalise, uv_or_fail
from modelrig.lock.rebuild import RebuildReport, pinned_manifest, rebuild_env
from modelrig.lock.schema import Lock, load_lock
from modelrig.lock.toolkit_wheels import collect_toolkit_wheels, toolkit_indexes
from modelrig.lock.verify import source_folder
from modelrig.manifest import load_manifest
from modelrig.stamp import STAMP_NAME, atomic_dir, sha256_file

BUNDLE_SCHEMA = "modelrig-bundle/1"


def _project_root() -> Path | None:
    """The source checkout modelrig runs from (holding pyproject.toml), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else None


def collect_wheels(lock: Lock, folder: Path, *, indexes: Any, cache: Path) -> None:
    """Every locked package's wheel into `folder`: from the find-links folders when one matches a locked hash,
    the rest with `pip download --no-deps --require-hashes`."""
    folder.mkdir(parents=True, exist_ok=True)
    rest = []
    for package in lock.env.packages:
        local = _find_local(package.name, package.version, set(package.hashes), indexes.find_links)
        if local is not None:
            shutil.copy2(local, folder / local.name)
        else:
            rest.append(package)
    if not rest:
        return
    reqs = folder.parent / "bundle-requirements.txt"
    reqs.write_text(hashed_requirements([(p.requirement, p.hashes) for p in rest]), encoding="utf-8")
    version = "".join(lock.env.python.split(".")[:2])
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--require-hashes",
           "--only-binary=:all:", "--python-version", version, "-d", str(folder), "-r", str(reqs),
           *[flag for flag in index_flags(indexes) if flag not in ("--index-strategy", "unsafe-best-match")]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         env=clean_environ({"PIP_CACHE_DIR": str(cache / "pip")}))
    if out.returncode != 0:
        last = next((x for x in reversed(out.stderr.splitlines()) if x.strip()), "no output")
        raise EnvBuildError(f"pip download of the locked wheels failed: {last.strip()}")
    reqs.unlink()


def _find_local(name: str, version: str, hashes: set[str], find_links: list[str]) -> Path | None:
    for link in find_links:
        for wheel in sorted(Path(link).glob("*.whl")) if Path(link).is_dir() else []:
            base, _, rest = wheel.name.partition("-")
            if normalise(base) == name and rest.split("-", 1)[0] == version and sha256_file(wheel) in hashes:
                return wheel
    return None


def make_bundle(lock_path: Path, out: Path, ctx: Context) -> dict[str, Any]:
    """Write the bundle of `lock_path` to `out`; returns its path, member count and size."""
    from modelrig.catalog import load_model, resolve_model

    lock = load_lock(lock_path)
    manifest = load_model(lock.model)
    where = locate(manifest, ctx)
    for source in lock.sources:  # before any wheel is fetched: a bundle holds the weights themselves
        src = source_folder(source, ctx)
        if pruned_record(src) is not None:
            raise NotReproducedError(f"weights {source.name}: pruned after conversion; run `modelrig fetch "
                                     f"{lock.model} --restore-pruned` first to bundle it", path=str(src))
    ctx.data.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelrig-bundle-", dir=ctx.data.cache) as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        shutil.copy2(lock_path, stage / "lock.yaml")
        (stage / "manifests").mkdir()
        shutil.copy2(resolve_model(lock.model), stage / "manifests" / f"{lock.model}.yaml")
        collect_wheels(lock, stage / "wheels", indexes=where.indexes, cache=ctx.data.cache)
        if (root := _project_root()) is not None:
            built = subprocess.run([uv_or_fail(), "build", "--wheel", "--no-config", "--out-dir",
                                    str(stage / "modelrig"), str(root)], capture_output=True, text=True,
                                   env=clean_environ(), check=False)
            if built.returncode != 0:
                raise EnvBuildError(f"uv build --wheel of modelrig failed: {built.stderr.strip().splitlines()[-1:]}")
        for source in lock.sources:
            src = source_folder(source, ctx)
            dst = stage / "store" / source.hub / src.name
            dst.mkdir(parents=True)
            for item in [*source.files, None]:
                rel = item.path if item else STAMP_NAME
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                if not (src / rel).is_file():
                    raise NotReproducedError(f"weights {source.name}: {src / rel} missing; run `modelrig verify "
                                             "--full` and `modelrig rebuild` first", path=str(src / rel))
                os.link(src / rel, dst / rel) if _same_device(src, dst) else shutil.copy2(src / rel, dst / rel)
        collect_toolkit_wheels(stage / "modelrig", indexes=toolkit_indexes(ctx.config.pip), cache=ctx.data.cache)
        for extra in (stage / "modelrig").glob("*"):
            if extra.suffix != ".whl":
                extra.unlink()
        members = {p.relative_to(stage).as_posix(): sha256_file(p) for p in sorted(stage.rglob("*")) if p.is_file()}
        (stage / "bundle.json").write_text(json.dumps({"schema": BUNDLE_SCHEMA, "model": lock.model,
                                                       "members": members}, indent=2, sort_keys=True) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(stage / "bundle.json", arcname="bundle.json")
            for name in members:
                tar.add(stage / name, arcname=name)
        os.replace(partial, out)
    data_bytes = sum(f.size for s in lock.sources for f in s.files)
    return {"model": lock.model, "path": str(out), "members": len(members) + 1, "bytes": out.stat().st_size,
            "weights_bytes": data_bytes}


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def safe_extract(tar: tarfile.TarFile, into: Path, bundle: Path) -> None:
    """Extract only plain files and folders that stay inside `into` (what the "data" filter allows of a bundle);
    any other member (a link, a device, an absolute or `..` path) is refused naming it."""
    root = into.resolve()
    members = tar.getmembers()
    for member in members:
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or \
                (target != root and root not in target.parents):
            raise UsageError(f"--bundle {bundle}: member {member.name}: not a plain file or folder inside the bundle")
    tar.extractall(into, members=members)


def unpack(bundle: Path, into: Path) -> dict[str, Any]:
    """Extract `bundle` into `into` and check every member against `bundle.json`."""
    if not bundle.is_file():
        raise UsageError(f"--bundle {bundle}: file not found")
    try:
        with tarfile.open(bundle) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
            else:  # Python before 3.10.12 / 3.11.4 has no extraction filters
                safe_extract(tar, into, bundle)
    except tarfile.TarError as exc:
        raise UsageError(f"--bundle {bundle}: not a modelrig bundle ({exc})") from None
    try:
        index = json.loads((into / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"--bundle {bundle}: bundle.json missing or unreadable") from None
    if index.get("schema") != BUNDLE_SCHEMA:
        raise UsageError(f"--bundle {bundle}: bundle.json: schema: expected {BUNDLE_SCHEMA!r}")
    for name, expected in sorted(index.get("members", {}).items()):
        path = into / name
        found = sha256_file(path) if path.is_file() else "missing"
        if found != expected:
            raise NotReproducedError(f"bundle {bundle}: member {name}: sha256 {expected} expected, found {found}",
                                     member=name, expected=expected, found=found)
    return index


def place_weights(lock: Lock, unpacked: Path, ctx: Context) -> list[str]:
    """Copy each locked source from the bundle into the store (where not already complete), verifying every file
    against the lock; returns the sources copied."""
    from modelrig.lock.verify import check_files

    copied: list[str] = []
    for source in lock.sources:
        target = source_folder(source, ctx)
        if (target / STAMP_NAME).is_file() and not check_files("", target, source.files, full=True):
            continue
        with atomic_dir(target) as tmp:
            shutil.copytree(unpacked / "store" / source.hub / target.name, tmp, dirs_exist_ok=True)
            drift = check_files(f"weight {source.name}", tmp, source.files, full=True)
            if drift:
                raise NotReproducedError(drift[0], drift=drift)
        copied.append(source.name)
    return copied


def rebuild_from_bundle(lock_path: Path, bundle: Path, ctx: Context) -> RebuildReport:
    """Provision this data root from a bundle with no network: env from its wheels (`--no-index`), weights copied
    into the store and verified, then conversions, rendering and launch; finally verified against the lock."""
    import time

    from modelrig.lock.verify import verify
    from modelrig.orchestrate.up import UpOptions, up
    from modelrig.result import StageResult

    begun = time.perf_counter()
    lock = load_lock(lock_path)
    ctx.data.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelrig-unbundle-", dir=ctx.data.cache) as tmp:
        unpacked = Path(tmp)
        index = unpack(bundle, unpacked)
        if index.get("model") != lock.model:
            raise UsageError(f"--bundle {bundle}: a bundle of {index.get('model')}, the lock is of {lock.model}")
        manifest_path = unpacked / "manifests" / f"{lock.model}.yaml"
        if sha256_file(manifest_path) != lock.manifest_sha256:
            raise NotReproducedError(f"bundle {bundle}: manifests/{lock.model}.yaml differs from the lock's "
                                     f"manifest_sha256 {lock.manifest_sha256}")
        manifest = load_manifest(manifest_path)
        report = RebuildReport(model=lock.model)
        where = locate(manifest, ctx, python=lock.env.python, install=True)
        report.results.append(rebuild_env(lock, where, ctx, wheels=unpacked / "wheels"))
        copied = place_weights(lock, unpacked, ctx)
        report.results.append(StageResult(stage="fetch", changed=bool(copied), model=lock.model,
                                          summary=f"copied {', '.join(copied)} from the bundle" if copied
                                          else "weights in place"))
        entries = sorted({f.entry for f in lock.launch})
        options = UpOptions(offline=True, entries=entries, python=where.build.base_python)
        ran = up(pinned_manifest(manifest, lock), ctx, options=options)
        report.results += [r for r in ran.results if r.stage not in ("env", "fetch")]
        report.urls = ran.urls
    drift = verify(lock, manifest, ctx, full=True, remote=False).drift
    if drift:
        raise NotReproducedError(drift[0] + (f" (and {len(drift) - 1} more)" if len(drift) > 1 else ""), drift=drift)
    report.seconds = time.perf_counter() - begun
    return report
