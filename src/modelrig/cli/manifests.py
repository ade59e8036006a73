"""`modelrig list`, `modelrig show MODEL`, `modelrig validate [FILES...]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from modelrig.catalog import load_model, manifest_paths, validate_files
from modelrig.config import Context
from modelrig.errors import ManifestError


def register(sub: Any) -> None:
    """Add the manifest verbs."""
    from modelrig.cli import add_json_flag

    p = sub.add_parser("list", help="list the known models")
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="show one model's manifest, validated and with defaults filled in")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    add_json_flag(p)
    p.set_defaults(func=_show)

    p = sub.add_parser("validate", help="validate manifests (all shipped ones when no file is given)")
    p.add_argument("files", nargs="*", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_validate)


def _list(args: argparse.Namespace, ctx: Context) -> int:
    good, problems = validate_files(manifest_paths())
    rows = [{"id": m.id, "title": m.title, "params_b": m.resources.params_b,
             "launch": [e.kind for e in m.launch]} for m in good]
    if ctx.as_json:
        print(json.dumps({"models": rows, "invalid": problems}, indent=2))
    else:
        width = max((len(r["id"]) for r in rows), default=10)
        for r in rows:
            print(f"{r['id']:<{width}}  {r['params_b']:>6.1f}B  {r['title']}")
        for problem in problems:
            print(f"modelrig: error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _show(args: argparse.Namespace, ctx: Context) -> int:
    manifest = load_model(args.model)
    data = manifest.model_dump(mode="json", exclude_none=True)
    print(json.dumps(data, indent=2) if ctx.as_json else yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return 0


def _validate(args: argparse.Namespace, ctx: Context) -> int:
    paths = list(args.files) or manifest_paths()
    good, problems = validate_files(paths)
    if ctx.as_json:
        print(json.dumps({"valid": [m.id for m in good], "problems": problems}, indent=2))
    else:
        for m in good:
            if not ctx.quiet:
                print(f"ok  {m.id}")
    if problems:
        raise ManifestError(problems)
    return 0
