"""The `modelrig` command line: global options, one sub-module per group of verbs, errors as one line."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from modelrig import __version__
from modelrig.config import Context, DataRoot, default_data_root, load_host_config
from modelrig.errors import DiskFullError, ManifestError, ModelrigError, UsageError
from modelrig.facts import HostFacts

#: Modules under `modelrig.cli` that each add their verbs with a `register(subparsers)` function.
COMMAND_MODULES: tuple[str, ...] = ("manifests", "plan", "facts", "fetch", "hub", "up", "render", "launch", "convert",
                                      "doctor", "lock", "state")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered verb."""
    parser = argparse.ArgumentParser(
        prog="modelrig",
        description="Turn a bare machine into a running, verified model demo, and rebuild it exactly later.",
    )
    parser.add_argument("--version", action="version", version=f"modelrig {__version__}")
    parser.add_argument("--data-root", type=Path, help="data root (default: $MODELRIG_HOME, AutoDL's "
                        "/root/autodl-tmp/modelrig, or ~/.local/share/modelrig)")
    parser.add_argument("--config", type=Path, help="host config file (default: <data root>/config.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"modelrig.cli.{name}").register(sub)
    return parser


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Give a verb the standard `--json` switch (a stable, documented machine-readable result)."""
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON result")


def add_check_flag(parser: argparse.ArgumentParser) -> None:
    """Give a stage verb the standard `--check` switch: say whether it would change anything, and why, touching
    nothing (no download, no build, no write, no start)."""
    parser.add_argument("--check", action="store_true",
                        help="only report whether this would change anything and why; touch nothing")


def facts_option(args: argparse.Namespace) -> HostFacts | None:
    """The host facts given with `--facts FILE`, or None for this host's own."""
    if not getattr(args, "facts", None):
        return None
    from modelrig.facts import read_facts

    return read_facts(args.facts)


def parse_pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    """Turn repeated `--flag NAME=VALUE` options into a dict; a malformed one is a one-line usage error."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"{flag} {item!r}: expected NAME=PATH")
        out[name] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 success, 2 bad input, others per error class)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "rest"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # a verb that parses its own arguments (convert): options it was given before its first positional
        args.rest = [*extra, *args.rest]
    as_json = getattr(args, "json", False)
    try:
        try:
            data = DataRoot((args.data_root or default_data_root()).expanduser().absolute())
            ctx = Context(data=data, config=load_host_config(args.config, data), quiet=args.quiet,
                          as_json=as_json)
            return int(args.func(args, ctx) or 0)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            raise DiskFullError(f"disk full{where}: free some space (or point --data-root / --store at a larger "
                                "disk) and run the same command again; finished work is kept",
                                path=str(exc.filename) if exc.filename else None) from None
    except ModelrigError as exc:
        return report_error(exc, as_json=as_json)
    except KeyboardInterrupt:
        print("modelrig: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (`modelrig facts | head`) went away: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def report_error(exc: ModelrigError, *, as_json: bool) -> int:
    """Print an engine error as one line per problem on stderr (and as JSON on stdout with `--json`)."""
    lines = exc.problems if isinstance(exc, ManifestError) else [str(exc)]
    for line in lines:
        print(f"modelrig: error: {line} [{exc.code}]", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": exc.to_json()}, indent=2))
    return exc.exit_code
