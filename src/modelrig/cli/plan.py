"""`modelrig plan MODEL [--facts FILE] [--json]`: what this host (or a recorded one) would do for a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modelrig.catalog import load_model
from modelrig.config import Context
from modelrig.doctor import verdict
from modelrig.errors import HostCannotRunError, UsageError
from modelrig.facts import HostFacts, read_facts
from modelrig.humansize import format_size
from modelrig.plan import Plan


def register(sub: Any) -> None:
    """Add the `plan` verb."""
    from modelrig.cli import add_json_flag

    p = sub.add_parser("plan", help="plan a model on this host: torch build, precision, downloads, disk, steps")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    p.add_argument("--facts", type=Path, help="host facts JSON (from `modelrig facts --json`) instead of this host")
    add_json_flag(p)
    p.set_defaults(func=_plan)


def _this_host(ctx: Context) -> HostFacts:
    try:
        from modelrig.facts.collect import collect
    except ImportError:
        raise UsageError("collecting this host's facts is not available here: pass --facts FILE") from None
    return collect(ctx.data.root)


def _plan(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.plan import plan_model

    manifest = load_model(args.model)
    facts = read_facts(args.facts) if args.facts else _this_host(ctx)
    plan = plan_model(manifest, ctx, facts=facts, refuse=False)
    if not plan.fits and ctx.as_json:
        raise HostCannotRunError(f"{plan.model} cannot run on this host: {plan.refusal}", model=plan.model,
                                 refusal=plan.refusal, plan=plan.to_dict())
    if ctx.as_json:
        print(json.dumps({"ok": True, **plan.to_dict()}, indent=2))
    elif ctx.quiet:
        print(verdict(plan))
    else:
        print(summary(plan))
    if not plan.fits:
        raise HostCannotRunError(f"{plan.model} cannot run on this host: {plan.refusal}", model=plan.model,
                                 refusal=plan.refusal)
    return 0


def summary(plan: Plan) -> str:
    """A short human-readable account of a plan."""
    torch = plan.env.torch
    if plan.quantization:
        precision = f"{plan.quantization} ({plan.dtype} compute, bitsandbytes)"
    else:
        precision = plan.dtype
    spread = f" over {plan.gpus} GPUs (device_map=auto)" if plan.gpus > 1 else ""
    lines = [
        f"model     {plan.model}" + (f"  (needs {', '.join(plan.dependencies)})" if plan.dependencies else ""),
        f"host      {plan.platform}" + (f", {plan.gpus} GPU(s) used" if plan.gpus else ""),
        f"torch     {torch.version or '-'} [{torch.variant}]" + (f" from {torch.index_url}" if torch.index_url else ""),
        f"python    {plan.env.python}, {len(plan.env.packages)} packages",
        f"precision {precision}{spread}: needs {plan.memory_needed_gb:g} GB of {plan.memory_available_gb:g} GB",
        f"download  {format_size(plan.download_bytes)}; disk needed {format_size(plan.disk_needed_bytes)} of "
        f"{format_size(plan.disk_free_bytes)} free"
        + (f" ({format_size(plan.present_bytes)} already on disk)" if plan.present_bytes else "")
        + (f"; with --prune-sources the sources' {format_size(plan.prunable_bytes)} are freed after conversion"
           if plan.prunable_bytes else ""),
        f"launch    {', '.join(plan.launch) or '-'}",
        "steps",
    ]
    lines += [f"  {i:>2}. {s['stage']:<8} " + (f"[{s['model']}] " if s.get("model") != plan.model else "")
              + s["description"] for i, s in enumerate(plan.steps, 1)]
    lines += [f"warning   {w}" for w in plan.warnings]
    lines.append("fits      yes" if plan.fits else f"fits      NO: {plan.refusal}")
    return "\n".join(lines)
