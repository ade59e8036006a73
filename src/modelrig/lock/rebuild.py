"""Rebuilding exactly what a lock says (`modelrig rebuild LOCK`), from scratch or over a partial data root.

The env is installed with `uv pip install --require-hashes --no-deps` of the locked set (then smoke-checked and
stamped as `modelrig env` does), the weights are fetched at the locked commits, conversions, rendering and
launch are `modelrig up`'s own stages; finally the host is verified against the lock (every file re-hashed), and
anything that differs stops the rebuild with one line naming it, expected vs found. A second rebuild changes
nothing: each stage finds its stamped output current.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.envs.build import ENV_STAMP_VERSION, installer_environ, run_logged
from modelrig.envs.smoke import smoke_check
from modelrig.errors import EnvBuildError, NotReproducedError
from modelrig.lock.collect import Located, locate
from modelrig.lock.packages import hashed_requirements, index_flags, uv_or_fail
from modelrig.lock.schema import Lock
from modelrig.lock.verify import check_conversions, check_packages, check_weights, verify
from modelrig.manifest import Manifest
from modelrig.result import StageResult
from modelrig.stamp import sha256_file, write_stamp


@dataclass
class RebuildReport:
    """The stages a rebuild ran, and the lock's verification afterwards."""

    model: str
    results: list[StageResult] = field(default_factory=list)
    seconds: float = 0.0
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when any stage changed something."""
        return any(r.changed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` result."""
        return {"ok": True, "stage": "rebuild", "model": self.model, "changed": self.changed,
                "seconds": round(self.seconds, 3), "urls": dict(self.urls),
                "stages": [r.to_dict() for r in self.results]}


def pinned_manifest(manifest: Manifest, lock: Lock) -> Manifest:
    """`manifest` with each locked hub source's revision replaced by its locked commit."""
    weights = dict(manifest.weights)
    for source in lock.sources:
        weight = weights.get(source.name)
        ref = getattr(weight, source.hub, None) if weight is not None else None
        if weight is None or ref is None:
            raise NotReproducedError(f"weights {source.name}: {source.hub} {source.repo} is in the lock, not in the "
                                     f"manifest of {manifest.id}", source=source.name)
        weights[source.name] = weight.model_copy(update={source.hub: ref.model_copy(
            update={"revision": source.commit})})
    return manifest.model_copy(update={"weights": weights})


def rebuild_env(lock: Lock, where: Located, ctx: Context, *, wheels: Path | None = None) -> StageResult:
    """Install exactly the locked package set into the planned env folder; unchanged when it already matches.

    `wheels` (a bundle's wheel folder) installs with no index at all.
    """
    begun = time.perf_counter()
    build = where.build
    if build.key != lock.env.key:
        raise NotReproducedError(f"env: key {lock.env.key} expected, this host plans {build.key} (Python "
                                 f"{build.spec.get('python_version')}, lock: Python {lock.env.python})",
                                 expected=lock.env.key, found=build.key)
    if where.stamp is not None and not check_packages(lock, build.python):
        return StageResult(stage="env", changed=False, model=lock.model, seconds=time.perf_counter() - begun,
                           summary=f"env {build.key} matches the lock ({len(lock.env.packages)} packages)")
    if any(p.git_commit for p in lock.env.packages):
        name = next(p.name for p in lock.env.packages if p.git_commit)
        raise NotReproducedError(f"package {name}: a git requirement cannot be installed with --require-hashes; "
                                 "build it with `modelrig env` and lock again", package=name)
    ctx.data.envs.mkdir(parents=True, exist_ok=True)
    if build.path.exists():
        shutil.rmtree(build.path)
    log = ctx.data.envs / f"{build.key}.log"
    log.write_text("", encoding="utf-8")
    proc_env = installer_environ(ctx.data)
    try:
        run_logged(build.commands[0], env=proc_env, log=log, what="create the env")
        reqs = build.path / "modelrig-lock-requirements.txt"
        reqs.write_text(hashed_requirements([(p.requirement, p.hashes) for p in lock.env.packages]),
                        encoding="utf-8")
        if build.constraints:
            (build.path / "modelrig-constraints.txt").write_text("\n".join(build.constraints) + "\n",
                                                                 encoding="utf-8")
        source = ["--offline", "--no-index", "--find-links", str(wheels)] if wheels else index_flags(where.indexes)
        try:
            run_logged([uv_or_fail(), "pip", "install", "--no-config", "--python", str(build.python),
                        "--require-hashes", "--no-deps", *source, "-r", str(reqs)],
                       env={**proc_env, "VIRTUAL_ENV": str(build.path)}, log=log,
                       what="uv pip install --require-hashes of the locked packages")
        except EnvBuildError as exc:  # a locked wheel missing or with another hash: not reproducible here
            raise NotReproducedError(f"packages: {exc}", log=str(log)) from None
        smoke = smoke_check(build.python, env_vars=build.spec["plan"].get("env_vars"))
    except BaseException:
        shutil.rmtree(build.path, ignore_errors=True)
        raise
    drift = check_packages(lock, build.python)
    if drift:
        shutil.rmtree(build.path, ignore_errors=True)
        raise NotReproducedError(drift[0], drift=drift)
    write_stamp(build.path, {"key": build.key, "version": ENV_STAMP_VERSION, "spec": build.spec,
                             "installer": "uv", "python": str(build.python), "smoke": smoke, "locked": True,
                             "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return StageResult(stage="env", changed=True, model=lock.model, seconds=time.perf_counter() - begun,
                       summary=f"installed {len(lock.env.packages)} locked packages into env {build.key}"
                       + (" from the bundle" if wheels else ""), details={"path": str(build.path)})


def rebuild(lock: Lock, manifest: Manifest, ctx: Context, *, manifest_path: Path) -> RebuildReport:
    """Reproduce `lock` on this host; `NotReproducedError` names the first thing that differs."""
    from modelrig.orchestrate.up import UpOptions, convert_stage, fetch_stage, up

    begun = time.perf_counter()
    found = sha256_file(manifest_path)
    if found != lock.manifest_sha256:
        raise NotReproducedError(f"manifest {manifest_path}: sha256 {lock.manifest_sha256} expected, found {found}",
                                 expected=lock.manifest_sha256, found=found)
    report = RebuildReport(model=lock.model)
    where = locate(manifest, ctx, python=lock.env.python, install=True)
    report.results.append(rebuild_env(lock, where, ctx))
    pinned = pinned_manifest(manifest, lock)
    # sources the lock records as pruned (or the host config says to prune) are pruned again once converted
    options = UpOptions(entries=sorted({f.entry for f in lock.launch}), python=where.build.base_python,
                        prune_sources=any(s.pruned for s in lock.sources) or ctx.config.convert.prune_sources)
    early: list[StageResult] = []
    if not any(source.model is not None for source in manifest.weights.values()):
        # weights and conversions are checked against the lock before anything is rendered or started
        early.append(fetch_stage(pinned, ctx, options=options))
        _stop_on(check_weights(lock, manifest, ctx, full=True))
        if manifest.convert:
            early.append(convert_stage(pinned, ctx, fetched=early[0], options=options))
            _stop_on(check_conversions(lock, manifest, ctx, full=True))
    with stopping_on_failure(lock, ctx):
        ran = up(pinned, ctx, options=options)
        done = {r.stage for r in early}
        report.results += [r for r in ran.results if r.stage == "plan"] + early + \
            [r for r in ran.results if r.stage not in ("env", "plan", *done)]
        report.urls = ran.urls
        _stop_on(verify(lock, manifest, ctx, full=True, remote=False).drift)
    report.seconds = time.perf_counter() - begun
    return report


def _running(lock: Lock, ctx: Context) -> dict[str, Any]:
    """The pid (or True where the supervisor gives none) of each of the lock's launch entries running now."""
    from modelrig.launch import status

    supervisor = _supervisor(lock, ctx)
    found: dict[str, Any] = {}
    for entry in sorted({f.entry for f in lock.launch}):
        folder = ctx.data.launch / lock.model / entry
        if (folder / "entry.json").is_file():
            with contextlib.suppress(Exception):
                info = status(folder, supervisor=supervisor, run_dir=ctx.data.run / lock.model)
                if info.get("running"):
                    found[entry] = info.get("pid") or True
    return found


def _supervisor(lock: Lock, ctx: Context) -> str:
    from modelrig.orchestrate.up import read_state

    return str(read_state(ctx, lock.model).get("supervisor", ctx.config.serve.supervisor))


@contextlib.contextmanager
def stopping_on_failure(lock: Lock, ctx: Context) -> Iterator[None]:
    """Run the block (start and verify); when it fails, stop each of the lock's entries that it started (not
    running before, or running under another pid now), so a rebuild that did not reproduce its lock leaves nothing
    listening; entries that were running before, untouched, keep running. The block's error is raised."""
    from modelrig.launch import stop

    before = _running(lock, ctx)
    try:
        yield
    except BaseException:
        supervisor = _supervisor(lock, ctx)
        for entry, pid in _running(lock, ctx).items():
            if before.get(entry) != pid:
                with contextlib.suppress(Exception):
                    stop(ctx.data.launch / lock.model / entry, supervisor=supervisor, run_dir=ctx.data.run / lock.model)
        raise


def _stop_on(drift: list[str]) -> None:
    """Raise `NotReproducedError` with the first difference (and how many more) when there is any."""
    if drift:
        raise NotReproducedError(drift[0] + (f" (and {len(drift) - 1} more)" if len(drift) > 1 else ""),
                                 drift=drift)
