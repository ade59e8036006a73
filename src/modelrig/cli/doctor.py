"""`modelrig doctor [MODEL] [--json] [--from-dir DIR | --facts FILE]`: check this host before anything else."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.errors import UsageError


def register(sub: Any) -> None:
    """Add the `doctor` verb."""
    from modelrig.cli import add_json_flag
    from modelrig.doctor import PROBE_TIMEOUT

    p = sub.add_parser(
        "doctor", help="check this host first: Python, uv, disk, hubs and mirrors, GPUs or MPS, proxy, tokens, and "
        "whether it can run MODEL",
        description="One line per check, OK / WARN / FAIL, with the fix for anything not OK; exit 1 on any FAIL. "
                    "With --from-dir or --facts, only what the recorded facts answer is checked.")
    p.add_argument("model", nargs="?", help="also check whether this host can run this model (id or manifest)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-dir", type=Path, metavar="DIR",
                        help="a recorded host: command outputs as `modelrig facts --save DIR` writes them")
    source.add_argument("--facts", type=Path, metavar="FILE", help="a recorded host: `modelrig facts --json` output")
    p.add_argument("--timeout", type=float, default=PROBE_TIMEOUT, metavar="SECONDS",
                   help=f"time limit of each network probe (all run at once; default {PROBE_TIMEOUT:g})")
    add_json_flag(p)
    p.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.doctor import run_checks, worst

    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    facts = None
    if args.from_dir is not None:
        from modelrig.facts.collect import facts_from_dir

        facts = facts_from_dir(args.from_dir.expanduser(), data_root=ctx.data.root)
    elif args.facts is not None:
        from modelrig.facts import read_facts

        facts = read_facts(args.facts)
    checks = run_checks(ctx, model=args.model, facts=facts, timeout=args.timeout)
    status = worst(checks)
    if ctx.as_json:
        print(json.dumps({"ok": status != "fail", "status": status, "recorded": facts is not None,
                          "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        shown = [c for c in checks if c.status != "ok"] if ctx.quiet else checks
        for check in shown:
            print(check.line())
        counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
        print(f"doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    return 1 if status == "fail" else 0
