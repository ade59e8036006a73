"""`modelrig fetch MODEL`: download a model's weights at a resolved commit into the store, verified."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelrig.catalog import load_model
from modelrig.cli import parse_pairs
from modelrig.config import Context
from modelrig.fetch import DEFAULT_HEADROOM, FetchOptions, fetch_model, human, parse_size


def register(sub: Any) -> None:
    """Add `fetch`."""
    from modelrig.cli import add_check_flag, add_json_flag

    p = sub.add_parser("fetch", help="download a model's weights (pinned, verified, resumable)")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    p.add_argument("--hub", choices=("auto", "huggingface", "modelscope"), default="auto",
                   help="which hub to download from (auto: the manifest's or host's preferred one that is reachable)")
    p.add_argument("--store", type=Path, help="store folder (default: <data root>/store)")
    p.add_argument("--dry-run", action="store_true", help="list files, total size and the disk check; download "
                   "nothing")
    p.add_argument("--verify", action="store_true", help="re-hash every file, even when the stamp says it is in "
                   "place")
    p.add_argument("--hf-endpoint", help="Hugging Face Hub endpoint for this run (a mirror or `modelrig hub serve`)")
    p.add_argument("--modelscope-endpoint", help="ModelScope endpoint for this run")
    p.add_argument("--local", action="append", default=[], metavar="NAME=PATH",
                   help="path of user-supplied weights named by a manifest's local: var (repeatable)")
    p.add_argument("--headroom", default=None, metavar="SIZE",
                   help=f"free disk to keep beyond the download (default {human(DEFAULT_HEADROOM)})")
    p.add_argument("--take-over", action="store_true",
                   help="stop a fetch of this user still downloading into the same folder (one an interrupted run "
                   "left) and go on from what it left, instead of failing busy")
    p.add_argument("--restore-pruned", action="store_true",
                   help="download sources pruned after conversion again (done by itself when the conversion that "
                   "read them is no longer current)")
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.orchestrate.prune import restore_needed

    manifest = load_model(args.model)
    local = parse_pairs(args.local, "--local")
    quiet_log = (lambda line: None) if ctx.quiet else None
    options = FetchOptions(hub=args.hub, store=args.store, dry_run=args.dry_run, verify=args.verify,
                           hf_endpoint=args.hf_endpoint, modelscope_endpoint=args.modelscope_endpoint, local=local,
                           headroom=parse_size(args.headroom) if args.headroom else DEFAULT_HEADROOM,
                           check=args.check, take_over=args.take_over, restore_pruned=args.restore_pruned
                           or restore_needed(manifest, ctx, store=args.store, local=local))
    if quiet_log is not None:
        options.log = quiet_log
    result = fetch_model(manifest, ctx, options=options)
    if ctx.as_json:
        print(result.to_json())
        return 0
    if args.dry_run:
        for source in result.details["sources"]:
            where = f"{source['hub']}:{source['repo']}@{(source.get('commit') or '')[:12]}"
            print(f"{source['name']}: {where} ({source.get('state', 'checked')})")
            for f in source["files"]:
                print(f"  {f['path']}  {human(f['size'])}")
    for note in result.details.get("notes", []):
        if not ctx.quiet:
            print(f"note: {note}")
    print(result.line())
    return 0
