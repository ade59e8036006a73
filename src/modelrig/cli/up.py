"""`modelrig env MODEL`, `modelrig up MODEL`, `modelrig down MODEL` and `modelrig demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from modelrig.catalog import load_model
from modelrig.config import Context
from modelrig.errors import UsageError


def register(sub: Any) -> None:
    """Add the env/up/down/demo verbs."""
    from modelrig.cli import add_json_flag

    p = sub.add_parser("env", help="create the model's isolated environment (venv or conda) from its plan")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    _env_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the env key, folder and commands; build nothing")
    add_json_flag(p)
    p.set_defaults(func=_env)


def _env_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("venv", "conda"), default="venv",
                   help="venv from a Python of the manifest's version (default), or a conda env in an existing "
                   "Miniforge/conda install")
    p.add_argument("--python", metavar="PATH", help="base interpreter for the venv (default: python3.X on PATH, "
                   "pyenv, or `uv python find`)")
    p.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto",
                   help="package installer (auto: uv when available, else pip)")
    p.add_argument("--offline", action="store_true", help="install only from uv's cache / pip's find-links")
    p.add_argument("--facts", type=Path, help="host facts JSON instead of this host's")


def _facts(args: argparse.Namespace):
    if not getattr(args, "facts", None):
        return None
    from modelrig.cli.plan import read_facts

    return read_facts(args.facts)


def _env(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.envs import build_env
    from modelrig.envs.build import prepare_env_build
    from modelrig.up import plan_model

    manifest = load_model(args.model)
    plan = plan_model(manifest, ctx, facts=_facts(args))
    if args.dry_run:
        build = prepare_env_build(plan.env, data=ctx.data, config=ctx.config, backend=args.backend,
                                  python=args.python, installer=args.installer, offline=args.offline)
        if ctx.as_json:
            print(json.dumps(build.to_dict(), indent=2))
        else:
            print(f"env {build.key} at {build.path} ({build.backend}, {build.installer})")
            for cmd in build.commands:
                print("  " + " ".join(cmd))
            for warning in build.warnings:
                print(f"modelrig: warning: {warning}", file=sys.stderr)
        return 0
    result = build_env(plan.env, data=ctx.data, config=ctx.config, backend=args.backend, python=args.python,
                       installer=args.installer, offline=args.offline, model=manifest.id)
    for warning in result.details.get("warnings", []):
        print(f"modelrig: warning: {warning}", file=sys.stderr)
    print(result.to_json() if ctx.as_json else result.line())
    return 0


def _parse_local(items: list[str]) -> dict[str, str]:
    local: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--local {item!r}: expected NAME=PATH")
        local[name] = path
    return local
