"""One archive with everything a lock needs (`modelrig bundle`), and provisioning a data root from it with no
network at all (`modelrig rebuild LOCK --bundle FILE`).

Layout of the .tar: `bundle.json` first (the sha256 and size of every other member), `lock.yaml`,
`manifests/<model>.yaml`, `wheels/*.whl` (every locked package, matching the locked hashes), `modelrig/*.whl` (the
toolkit itself, `uv build --wheel`, and its dependencies' wheels) and `store/<hub>/<org>--<name>/...` (the fetched
weights with their fetch stamp). Reading one back is `bundle_reader`'s, which trusts nothing in it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.envs.tools import clean_environ
from modelrig.errors import EnvBuildError, NotReproducedError
from modelrig.fetch.prune import pruned_record
from modelrig.lock.bundle_reader import BUNDLE_SCHEMA, INDEX_NAME, Unpacked, read_bundle
from modelrig.lock.collect import locate
from modelrig.lock.confine import inside
from modelrig.lock.packages import hashed_requirements, index_flags, normalise, uv_or_fail
from modelrig.lock.rebuild import RebuildReport, pinned_manifest, rebuild_env, stopping_on_failure
from modelrig.lock.schema import Lock, load_lock
from modelrig.lock.toolkit_wheels import collect_toolkit_wheels, toolkit_indexes
from modelrig.lock.verify import source_folder
from modelrig.manifest import load_manifest
from modelrig.stamp import STAMP_NAME, atomic_dir, sha256_file


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
    weights: dict[str, list[tuple[str, Path]]] = {}
    for source in lock.sources:  # before any wheel is fetched: a bundle holds the weights themselves
        src = source_folder(source, ctx)
        if pruned_record(src) is not None:
            raise NotReproducedError(f"weights {source.name}: pruned after conversion; run `modelrig fetch "
                                     f"{lock.model} --restore-pruned` first to bundle it", path=str(src))
        weights[source.name] = [(rel, _weight_file(source.name, src, rel))
                                for rel in [*(f.path for f in source.files), STAMP_NAME]]
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
            for rel, found in weights[source.name]:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(found, dst / rel) if _same_device(src, dst) else shutil.copy2(found, dst / rel)
        collect_toolkit_wheels(stage / "modelrig", indexes=toolkit_indexes(ctx.config.pip), cache=ctx.data.cache)
        for extra in (stage / "modelrig").glob("*"):
            if extra.suffix != ".whl":
                extra.unlink()
        files = [p for p in sorted(stage.rglob("*")) if p.is_file()]
        members = {p.relative_to(stage).as_posix(): sha256_file(p) for p in files}
        sizes = {p.relative_to(stage).as_posix(): p.stat().st_size for p in files}
        (stage / INDEX_NAME).write_text(json.dumps({"schema": BUNDLE_SCHEMA, "model": lock.model,
                                                    "members": members, "sizes": sizes}, indent=2,
                                                   sort_keys=True) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(stage / INDEX_NAME, arcname=INDEX_NAME)  # first: a reader plans every other member from it
            for name in members:
                tar.add(stage / name, arcname=name, recursive=False)
        os.replace(partial, out)
    data_bytes = sum(f.size for s in lock.sources for f in s.files)
    return {"model": lock.model, "path": str(out), "members": len(members) + 1, "bytes": out.stat().st_size,
            "weights_bytes": data_bytes}


def _weight_file(name: str, folder: Path, rel: str) -> Path:
    """`folder / rel` when it is a regular file inside `folder` (not a link, not through one out of it)."""
    found = inside(folder, rel)
    if found is None or found.is_symlink():
        raise NotReproducedError(f"weights {name}: {folder / rel} is a link or leads outside {folder}; not packed",
                                 path=str(folder / rel))
    if not found.is_file():
        raise NotReproducedError(f"weights {name}: {folder / rel} missing; run `modelrig verify --full` and "
                                 "`modelrig rebuild` first", path=str(folder / rel))
    return found


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def place_weights(lock: Lock, unpacked: Unpacked, ctx: Context) -> list[str]:
    """Move each locked source from the read bundle into the store (where not already complete and matching);
    returns the sources moved. The bundle reader has hashed every file against the lock already."""
    from modelrig.lock.verify import check_files

    moved: list[str] = []
    for source in lock.sources:
        target = source_folder(source, ctx)
        if (target / STAMP_NAME).is_file() and not check_files("", target, source.files, full=True):
            continue
        folder = unpacked.store(source.hub, source.repo)
        with atomic_dir(target) as tmp:
            for rel in [f.path for f in source.files] + [STAMP_NAME]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(folder / rel, tmp / rel)
                except OSError:  # another file system: copy
                    shutil.copy2(folder / rel, tmp / rel)
            os.utime(tmp / STAMP_NAME)  # stamped after its files were written, as fetch stamps them
        moved.append(source.name)
    return moved


def rebuild_from_bundle(lock_path: Path, bundle: Path, ctx: Context) -> RebuildReport:
    """Provision this data root from a bundle with no network: the bundle is read into a fresh temporary folder
    under the data root and every member checked against the lock (`bundle_reader`), then the env is installed from
    its wheels (`--no-index`), the weights moved into the store, conversions, rendering and launch run; finally the
    host is verified against the lock, and a rebuild that fails stops the services it started."""
    from modelrig.lock.verify import verify
    from modelrig.orchestrate.up import UpOptions, up
    from modelrig.result import StageResult

    begun = time.perf_counter()
    lock = load_lock(lock_path)
    ctx.data.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelrig-unbundle-", dir=ctx.data.cache) as tmp:
        unpacked = read_bundle(bundle, lock, Path(tmp))
        manifest = load_manifest(unpacked.manifest(lock.model))
        report = RebuildReport(model=lock.model)
        where = locate(manifest, ctx, python=lock.env.python, install=True)
        report.results.append(rebuild_env(lock, where, ctx, wheels=unpacked.wheels))
        moved = place_weights(lock, unpacked, ctx)
        report.results.append(StageResult(stage="fetch", changed=bool(moved), model=lock.model,
                                          summary=f"copied {', '.join(moved)} from the bundle" if moved
                                          else "weights in place"))
        entries = sorted({f.entry for f in lock.launch})
        options = UpOptions(offline=True, entries=entries, python=where.build.base_python)
        with stopping_on_failure(lock, ctx):
            ran = up(pinned_manifest(manifest, lock), ctx, options=options)
            report.results += [r for r in ran.results if r.stage not in ("env", "fetch")]
            report.urls = ran.urls
            drift = verify(lock, manifest, ctx, full=True, remote=False).drift
            if drift:
                raise NotReproducedError(drift[0] + (f" (and {len(drift) - 1} more)" if len(drift) > 1 else ""),
                                         drift=drift)
    report.seconds = time.perf_counter() - begun
    return report
