"""`modelrig facts`: describe this host (or one recorded in a folder) for people, the planner and Ansible."""

from __future__ import annotations

import argparse
import json
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.errors import UsageError
from modelrig.facts import HostFacts
from modelrig.facts.collect import COMMAND_TIMEOUT, HOST_FILE, OUTPUT_FILES, collect, facts_from_dir
from modelrig.humansize import format_memory, format_size


def register(sub: Any) -> None:
    """Add the `facts` verb."""
    from modelrig.cli import add_json_flag

    parser = sub.add_parser(
        "facts", help="describe this host: OS, CPU, RAM, disk, NVIDIA GPUs and driver, Apple chip and MPS",
        description="Describe this host. With --from-dir, describe a host from recorded command outputs "
                    f"({', '.join(OUTPUT_FILES.values())}, and {HOST_FILE} for OS/CPU/RAM/disk).",
    )
    parser.add_argument("--from-dir", type=Path, metavar="DIR",
                        help="read recorded command outputs from DIR instead of running commands")
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="also record the command outputs and host.json in DIR, for a later --from-dir")
    parser.add_argument("--timeout", type=float, default=COMMAND_TIMEOUT, metavar="SECONDS",
                        help=f"time limit per command such as nvidia-smi (default {COMMAND_TIMEOUT:g})")
    add_json_flag(parser)
    parser.set_defaults(func=_facts)


def _facts(args: argparse.Namespace, ctx: Context) -> int:
    if args.from_dir is not None:
        if args.save is not None:
            raise UsageError("--save records this host's outputs; it cannot be combined with --from-dir")
        facts = facts_from_dir(args.from_dir.expanduser(), data_root=ctx.data.root)
    else:
        facts = collect(ctx.data.root, timeout=args.timeout,
                        save_to=args.save.expanduser() if args.save is not None else None)
    if args.json:
        print(json.dumps(facts.to_dict(), indent=2))
    else:
        print(summary(facts))
    return 0


def _size(n: int | float | None) -> str:
    return format_size(n) if n else "unknown"


def summary(facts: HostFacts) -> str:
    """A short human-readable description of the facts."""
    os_line = f"{facts.os} {facts.arch}" + (f" ({facts.os_version})" if facts.os_version else "")
    if facts.environment:
        os_line += f", {', '.join(facts.environment)}"
    lines = [
        f"Host:      {os_line}",
        f"CPU:       {facts.cpu}" + (f", {facts.cpu_count} cores" if facts.cpu_count else ""),
        f"RAM:       {format_memory(facts.ram_bytes) if facts.ram_bytes else 'unknown'}",
        f"Disk:      {_size(facts.disk_free_bytes) + ' free' if facts.disk_free_bytes else 'free space unknown'} "
        f"at {shlex.quote(facts.data_root) or 'unknown'}",
    ]
    if facts.gpus:
        groups = Counter((g.name, g.memory_mib, g.compute_capability, g.mig) for g in facts.gpus)
        for k, ((name, mib, cap, mig), count) in enumerate(groups.items()):
            label = "GPUs:" if k == 0 else ""
            detail = f"{format_memory(mib * 2**20)}, compute {cap or 'unknown'}" + (", MIG on" if mig else "")
            lines.append(f"{label:<10} {count}x {name} ({detail})")
        driver = facts.driver_version or "unknown"
        lines.append(f"Driver:    {driver} (CUDA {facts.cuda_driver_max or 'version unknown'} at most)")
    else:
        lines.append("GPUs:      none (no NVIDIA GPU found)")
    if facts.apple_chip:
        mps = {True: "MPS available", False: "MPS not available", None: "MPS unknown"}[facts.mps_available]
        lines.append(f"Apple:     {facts.apple_chip}, {format_memory(facts.unified_memory_bytes or facts.ram_bytes)} "
                     f"unified memory, {mps}")
    lines.append(f"Platform:  {facts.platform}")
    lines += [f"warning: {w}" for w in facts.warnings]
    return "\n".join(lines)
