"""`modelrig lock`, `modelrig verify`, `modelrig rebuild` and `modelrig bundle`: reproducible rebuilds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modelrig.config import Context


def register(sub: Any) -> None:
    """Add the lock/verify/rebuild/bundle verbs."""
    from modelrig.cli import add_json_flag

    p = sub.add_parser("lock", help="write a lock of a provisioned model: env packages with hashes, weights, "
                       "conversions, launch files, remote code")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    p.add_argument("--out", type=Path, help="lock file to write (default: <data root>/locks/<model>.lock.yaml)")
    add_json_flag(p)
    p.set_defaults(func=_lock)

    p = sub.add_parser("verify", help="compare this host with a lock, changing nothing; exit 9 on any drift")
    p.add_argument("model", nargs="?", help="model id (its lock in <data root>/locks/), or a lock file as rebuild "
                   "and bundle take it")
    p.add_argument("--lock", type=Path, help="lock file to compare with")
    p.add_argument("--full", action="store_true", help="re-hash every weight and converted file and check remote "
                   "code upstream")
    p.add_argument("--remote", action="store_true", help="check the sources' revisions and remote code upstream")
    add_json_flag(p)
    p.set_defaults(func=_verify)

    p = sub.add_parser("rebuild", help="rebuild exactly what a lock says (env, weights, conversions, launch) and "
                       "start it")
    p.add_argument("lock", type=Path, help="lock file")
    p.add_argument("--bundle", type=Path, help="a `modelrig bundle` archive: provision from it with no network")
    add_json_flag(p)
    p.set_defaults(func=_rebuild)

    p = sub.add_parser("bundle", help="pack everything a lock needs (wheels, modelrig, weights, manifest) into "
                       "one .tar for an offline host")
    p.add_argument("lock", type=Path, help="lock file")
    p.add_argument("--out", type=Path, required=True, help="the .tar archive to write")
    add_json_flag(p)
    p.set_defaults(func=_bundle)


def default_lock_path(ctx: Context, model: str) -> Path:
    """Where `modelrig lock MODEL` writes and `modelrig verify MODEL` reads by default."""
    return ctx.data.root / "locks" / f"{model}.lock.yaml"


def _lock(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.catalog import load_model, resolve_model
    from modelrig.lock.collect import take_lock
    from modelrig.lock.schema import dump_lock
    from modelrig.stamp import atomic_write_text

    manifest = load_model(args.model)
    lock = take_lock(manifest, ctx, manifest_path=resolve_model(args.model))
    out = (args.out or default_lock_path(ctx, manifest.id)).expanduser().absolute()
    atomic_write_text(out, dump_lock(lock))
    files = sum(len(s.files) for s in lock.sources) + sum(len(c.files) for c in lock.conversions)
    if ctx.as_json:
        print(json.dumps({"ok": True, "stage": "lock", "model": manifest.id, "path": str(out),
                          "packages": len(lock.env.packages), "files": files, "launch_files": len(lock.launch)},
                         indent=2))
    else:
        print(f"locked {manifest.id}: {len(lock.env.packages)} packages, {files} weight/converted files, "
              f"{len(lock.launch)} launch files -> {out}")
    return 0


def _load(ctx: Context, model: str | None, lock_file: Path | None) -> tuple[Any, Any, Path]:
    from modelrig.catalog import load_model, resolve_model
    from modelrig.errors import UsageError
    from modelrig.lock.schema import load_lock

    if lock_file is None and not model:
        raise UsageError("verify: give a MODEL or --lock FILE")
    if lock_file is None and model and _names_a_file(model):  # `verify ./host.lock.yaml`, as rebuild takes it
        lock_file, model = Path(model), None
    lock = load_lock(lock_file or default_lock_path(ctx, str(model)))
    if model and model != lock.model:
        raise UsageError(f"--lock {lock_file}: the lock is of {lock.model}, not {model}")
    return lock, load_model(lock.model), resolve_model(lock.model)


def _names_a_file(value: str) -> bool:
    """True for a path to a file (a model id is never a path: it has no '/' and no YAML suffix)."""
    return ("/" in value or value.endswith((".yaml", ".yml"))) and Path(value).is_file()


def _verify(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.errors import DriftError
    from modelrig.lock.verify import verify

    lock, manifest, _ = _load(ctx, args.model, args.lock)
    report = verify(lock, manifest, ctx, full=args.full, remote=args.full or args.remote)
    if not ctx.as_json:
        for line in report.pruned:
            print(f"pruned: {line}")
    if report.drift:
        if not ctx.as_json:
            for line in report.drift:
                print(f"drift: {line}")
        raise DriftError(f"{lock.model}: {len(report.drift)} difference(s) from its lock: {report.drift[0]}",
                         drift=report.drift, model=lock.model)
    if ctx.as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{lock.model}: matches its lock ({report.mode}: {report.checked.get('packages', 0)} packages, "
              f"{report.checked.get('files', 0)} files, {report.checked.get('launch_files', 0)} launch files; "
              f"{report.seconds:.1f}s)")
    return 0


def _rebuild(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.lock.rebuild import rebuild

    if args.bundle:
        from modelrig.lock.bundle import rebuild_from_bundle

        report = rebuild_from_bundle(args.lock, args.bundle, ctx)
    else:
        lock, manifest, path = _load(ctx, None, args.lock)
        report = rebuild(lock, manifest, ctx, manifest_path=path)
    if ctx.as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        for result in report.results:
            print(result.line())
        state = "rebuilt" if report.changed else "already matches its lock, nothing changed"
        print(f"{report.model}: {state} ({report.seconds:.1f}s)")
        for name, url in report.urls.items():
            print(f"  {name:<8} {url}")
    return 0


def _bundle(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.lock.bundle import make_bundle

    made = make_bundle(args.lock, args.out.expanduser().absolute(), ctx)
    if ctx.as_json:
        print(json.dumps({"ok": True, "stage": "bundle", **made}, indent=2))
    else:
        print(f"bundled {made['model']}: {made['members']} members, {made['bytes']} bytes -> {made['path']}")
    return 0
