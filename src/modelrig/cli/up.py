"""`modelrig env MODEL`, `modelrig up MODEL`, `modelrig down MODEL` and `modelrig demo`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelrig.catalog import load_model
from modelrig.cli import facts_option, parse_pairs
from modelrig.config import Context
from modelrig.result import StageResult


def register(sub: Any) -> None:
    """Add the env/up/down/demo verbs."""
    from modelrig.cli import add_check_flag, add_json_flag

    p = sub.add_parser("env", help="create the model's isolated environment (venv or conda) from its plan")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    _env_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the env key, folder and commands; build nothing")
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_env)

    p = sub.add_parser("up", help="run the whole pipeline on this host: plan, env, fetch, convert, render, launch")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    p.add_argument("--store", type=Path, help="store folder for downloads (default: <data root>/store)")
    p.add_argument("--hub", choices=("auto", "huggingface", "modelscope"), default="auto",
                   help="which hub to download from")
    p.add_argument("--hf-endpoint", help="Hugging Face Hub endpoint (a mirror or `modelrig hub serve`)")
    p.add_argument("--modelscope-endpoint", help="ModelScope endpoint")
    p.add_argument("--local", action="append", default=[], metavar="NAME=PATH",
                   help="path of user-supplied weights named by a manifest's local: var (repeatable)")
    p.add_argument("--entry", action="append", dest="entries", metavar="NAME",
                   help="launch only this entry (repeatable; default: every entry for this host)")
    p.add_argument("--prune-sources", action=argparse.BooleanOptionalAction, default=None,
                   help="once converted, delete the fetched sources only the conversion reads (default: the host "
                   "config's convert.prune_sources); they are downloaded again when it must run again")
    _env_options(p)
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_up)

    p = sub.add_parser("down", help="stop what `modelrig up MODEL` started")
    p.add_argument("model", help="model id")
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_down)

    p = sub.add_parser("demo", help="the offline demo: tiny models on a local hub, merged, served, asked one "
                       "question")
    p.add_argument("--offline", action="store_true", default=None,
                   help="build the env from uv's cache only (default: detected from whether PyPI answers)")
    p.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto")
    add_json_flag(p)
    p.set_defaults(func=_demo)


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


def _env(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.envs import build_env
    from modelrig.envs.build import prepare_env_build
    from modelrig.plan import plan_model

    manifest = load_model(args.model)
    plan = plan_model(manifest, ctx, facts=facts_option(args), env_only=True)
    for warning in plan.warnings:
        print(f"modelrig: warning: {warning}", file=sys.stderr)
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
                       installer=args.installer, offline=args.offline, model=manifest.id, check=args.check)
    for warning in result.details.get("warnings", []):
        print(f"modelrig: warning: {warning}", file=sys.stderr)
    print(result.to_json() if ctx.as_json else result.line())
    return 0


def _printer(ctx: Context) -> Callable[[StageResult], None]:
    def show(result: StageResult) -> None:
        if not ctx.as_json and not ctx.quiet:
            print(result.line(), flush=True)
            for warning in result.details.get("warnings", []) if result.stage in ("plan", "env") else []:
                print(f"modelrig: warning: {warning}", file=sys.stderr)

    return show


def _summary(model: str, changed: bool, seconds: float, urls: dict[str, str]) -> list[str]:
    state = "ready" if changed else "already up, nothing changed"
    lines = [f"{model}: {state} ({seconds:.1f}s)"]
    lines += [f"  {name:<8} {url}" for name, url in urls.items()]
    return lines


def _up(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.orchestrate.prune import prune_enabled
    from modelrig.orchestrate.up import UpOptions, check_up, up

    manifest = load_model(args.model)
    options = UpOptions(store=args.store, hub=args.hub, hf_endpoint=args.hf_endpoint,
                        modelscope_endpoint=args.modelscope_endpoint, local=parse_pairs(args.local, '--local'),
                        backend=args.backend, python=args.python, installer=args.installer, offline=args.offline,
                        entries=args.entries, facts=facts_option(args),
                        prune_sources=prune_enabled(args.prune_sources, ctx))
    report = (check_up if args.check else up)(manifest, ctx, options=options, on_stage=_printer(ctx))
    if ctx.as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    elif args.check:
        print(f"{report.model}: " + ("would change" if report.changed else "up to date, nothing would change"))
    else:
        print("\n".join(_summary(report.model, report.changed, report.seconds, report.urls)))
    return 0


def _down(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.orchestrate.up import check_down, down

    result = check_down(args.model, ctx) if args.check else down(args.model, ctx)
    print(result.to_json() if ctx.as_json else result.line())
    return 0


def _demo(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.orchestrate.demo import DEMO_MODEL, PROMPT, advice, run_demo

    report = run_demo(ctx, offline=args.offline, installer=args.installer, on_stage=_printer(ctx))
    if ctx.as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    changed = any(r.changed for r in report.results)
    print("\n".join(_summary(DEMO_MODEL, changed, report.seconds, report.urls)))
    print(f"\nasked {report.urls.get('api')}/chat/completions: {PROMPT!r}")
    print(f"answer: {report.answer!r}  (random tiny weights: the words are noise, the plumbing is real)")
    print(f"\nstop it: modelrig down {DEMO_MODEL}\n\n{advice(ctx.data.config_file)}")
    return 0
