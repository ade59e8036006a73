"""`modelrig launch MODEL [ENTRY]`, `modelrig stop MODEL [ENTRY]`, `modelrig status [MODEL]`."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.errors import LaunchError, UsageError
from modelrig.launch.render import ENTRY_FILE
from modelrig.result import StageResult, combine


def register(sub: Any) -> None:
    """Add the launch verbs."""
    from modelrig.cli import add_check_flag, add_json_flag

    supervisors = ("auto", "process", "systemd", "launchd")
    p = sub.add_parser("launch", help="start a model's rendered demos and wait until they answer")
    p.add_argument("model", help="model id (its entries are rendered under <data root>/launch/<model>)")
    p.add_argument("entry", nargs="?", help="one launch entry (default: every rendered entry)")
    p.add_argument("--supervisor", choices=supervisors, help="default: serve.supervisor of the host config (auto: "
                   "systemd where it is init, launchd on macOS, else a supervised background process)")
    p.add_argument("--timeout", type=float, help="seconds to wait for the health check (default: per entry)")
    p.add_argument("--no-wait", action="store_true", help="return without waiting for the health check")
    p.add_argument("--launch-dir", type=Path, help="rendered entries folder (default: <data root>/launch/<model>)")
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_launch)

    p = sub.add_parser("stop", help="stop a model's running demos")
    p.add_argument("model")
    p.add_argument("entry", nargs="?")
    p.add_argument("--supervisor", choices=supervisors)
    p.add_argument("--launch-dir", type=Path)
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_stop)

    p = sub.add_parser("status", help="which rendered demos run and answer their health checks")
    p.add_argument("model", nargs="?", help="one model (default: every rendered model)")
    p.add_argument("--supervisor", choices=supervisors)
    add_json_flag(p)
    p.set_defaults(func=_status)


#: A model id and a launch entry name as manifests spell them: neither can name a folder outside `launch/`.
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ENTRY_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def _check_names(model: str | None, entry: str | None) -> None:
    if model is not None and not _MODEL_ID.match(model):
        raise UsageError(f"model {model!r}: not a model id (lowercase letters, digits, '.', '_', '-')")
    if entry is not None and not _ENTRY_NAME.match(entry):
        raise UsageError(f"entry {entry!r}: not a launch entry name (lowercase letters, digits, '_', '-')")


def entry_dirs(ctx: Context, model: str, entry: str | None, launch_dir: Path | None = None) -> list[Path]:
    """The rendered entry folders of a model (one when `entry` is given); a model or entry that is not a name is
    refused before any folder is read."""
    _check_names(model, entry)
    root = launch_dir or ctx.data.launch / model
    if entry:
        folder = root / entry
        if not (folder / ENTRY_FILE).is_file():
            raise LaunchError(f"{folder}: entry {entry!r} of {model} is not rendered; run `modelrig render {model}`")
        return [folder]
    found = sorted(p.parent for p in root.glob(f"*/{ENTRY_FILE}"))
    if not found:
        raise LaunchError(f"nothing rendered for {model} under {root}; run `modelrig render {model}` first")
    return found


def _supervisor(args: argparse.Namespace, ctx: Context) -> str:
    return args.supervisor or ctx.config.serve.supervisor


def _launch(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.launch import check, start

    run_dir = ctx.data.run / args.model
    if args.check:
        try:
            folders = entry_dirs(ctx, args.model, args.entry, args.launch_dir)
        except LaunchError as exc:
            result = StageResult(stage="launch", changed=True, check=True, model=args.model, reasons=[str(exc)],
                                 summary="nothing rendered yet")
            _print(ctx, "launch", args.model, [result])
            return 0
        _print(ctx, "launch", args.model, [check(d, supervisor=_supervisor(args, ctx), run_dir=run_dir)
                                           for d in folders])
        return 0
    results = [start(d, supervisor=_supervisor(args, ctx), run_dir=run_dir, timeout=args.timeout,
                     wait=not args.no_wait)
               for d in entry_dirs(ctx, args.model, args.entry, args.launch_dir)]
    _print(ctx, "launch", args.model, results)
    return 0


def _stop(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.launch import status, stop

    folders = entry_dirs(ctx, args.model, args.entry, args.launch_dir)
    run_dir = ctx.data.run / args.model
    if args.check:
        rows = [status(d, supervisor=_supervisor(args, ctx), run_dir=run_dir) for d in folders]
        results = [StageResult(stage="stop", changed=bool(row["running"]), check=True, model=args.model,
                               summary=f"{row['entry']} {'would be stopped' if row['running'] else 'is not running'}",
                               reasons=[f"{row['entry']}: running (pid {row['pid']})"] if row["running"] else [])
                   for row in rows]
    else:
        results = [stop(d, supervisor=_supervisor(args, ctx), run_dir=run_dir) for d in folders]
    _print(ctx, "stop", args.model, results)
    return 0


def _print(ctx: Context, stage: str, model: str, results: list[StageResult]) -> None:
    if ctx.as_json:
        print(combine(stage, model, results).to_json())
    elif not ctx.quiet:
        for result in results:
            print(result.line())


def _status(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.launch import status

    _check_names(args.model, None)
    models = [args.model] if args.model else sorted(p.name for p in ctx.data.launch.glob("*") if p.is_dir())
    rows = []
    for model in models:
        for folder in sorted(p.parent for p in (ctx.data.launch / model).glob(f"*/{ENTRY_FILE}")):
            rows.append(status(folder, supervisor=_supervisor(args, ctx), run_dir=ctx.data.run / model))
    if ctx.as_json:
        print(json.dumps({"entries": rows}, indent=2))
        return 0
    for row in rows:
        state = "healthy" if row["healthy"] else "running" if row["running"] else "stopped"
        print(f"{row['model']:<28} {row['entry']:<14} {row['kind']:<20} {state:<8} {row['url'] or ''}")
    if not rows and not ctx.quiet:
        print("nothing rendered yet")
    return 0
