"""`modelrig state MODEL...`: whether every stage of each model is already in place, in one process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modelrig.config import Context


def register(sub: Any) -> None:
    """Add the `state` verb."""
    from modelrig.cli import add_check_flag, add_json_flag

    p = sub.add_parser("state", help="say for each model whether every stage (env, weights, conversions, launch "
                       "files, running demos, lock) is already in place; touches nothing")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model ids (or paths to manifest YAML files)")
    p.add_argument("--backend", choices=("venv", "conda"), default="venv")
    p.add_argument("--installer", choices=("auto", "uv", "pip"), default="auto")
    p.add_argument("--offline", action="store_true")
    p.add_argument("--hub", choices=("auto", "huggingface", "modelscope"), default="auto")
    p.add_argument("--store", type=Path, help="store folder for downloads (default: <data root>/store)")
    p.add_argument("--hf-endpoint", help="Hugging Face Hub endpoint (a mirror or `modelrig hub serve`)")
    p.add_argument("--modelscope-endpoint", help="ModelScope endpoint")
    p.add_argument("--prune-sources", action=argparse.BooleanOptionalAction, default=None,
                   help="whether converted sources are pruned (default: the host config's convert.prune_sources)")
    p.add_argument("--supervisor", choices=("auto", "process", "systemd", "launchd"),
                   help="default: serve.supervisor of the host config")
    add_json_flag(p)
    add_check_flag(p)  # accepted for symmetry with the stage verbs: this verb never changes anything
    p.set_defaults(func=_state)


def _state(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.orchestrate.prune import prune_enabled
    from modelrig.orchestrate.state import model_state
    from modelrig.orchestrate.up import UpOptions

    options = UpOptions(store=args.store, hub=args.hub, hf_endpoint=args.hf_endpoint,
                        modelscope_endpoint=args.modelscope_endpoint, backend=args.backend,
                        installer=args.installer, offline=args.offline,
                        prune_sources=prune_enabled(args.prune_sources, ctx))
    supervisor = args.supervisor or ctx.config.serve.supervisor
    states = [model_state(model, ctx, options=options, supervisor=supervisor) for model in args.models]
    if ctx.as_json:
        print(json.dumps({"ok": True, "stage": "state", "changed": False, "check": True,
                          "settled": all(s.settled for s in states),
                          "models": {s.model: s.to_dict() for s in states}}, indent=2))
        return 0
    for s in states:
        print(f"{s.model}: " + ("every stage in place" if s.settled else "; ".join(s.reasons) or "would change"))
    return 0
