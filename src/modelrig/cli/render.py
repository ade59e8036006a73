"""`modelrig render MODEL [--out DIR]`: the model's launch scripts, start scripts and service units."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelrig.catalog import load_model
from modelrig.cli import facts_option, parse_pairs
from modelrig.config import Context


def register(sub: Any) -> None:
    """Add the `render` verb."""
    from modelrig.cli import add_check_flag, add_json_flag

    p = sub.add_parser("render", help="render the model's launch scripts and service units from launch/ templates")
    p.add_argument("model", help="model id or path to a manifest YAML file")
    p.add_argument("--out", type=Path, help="output folder (default: <data root>/launch/<model>)")
    p.add_argument("--entry", action="append", dest="entries", metavar="NAME",
                   help="render only this launch entry (repeatable; default: every entry the plan keeps)")
    p.add_argument("--python", type=Path, metavar="PATH",
                   help="the model env's interpreter (default: the env `modelrig env` builds for the plan)")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="folder of a weight source or step output (default: where fetch/convert put it)")
    p.add_argument("--bind", help="listen address (default: serve.bind of the host config, 127.0.0.1); other "
                   "addresses get an API key / UI password in the entry's 0600 secrets.env")
    p.add_argument("--facts", type=Path, help="host facts JSON instead of this host's")
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_render)


def _render(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.fetch.locate import weight_paths
    from modelrig.launch.render import render
    from modelrig.orchestrate.up import default_env_python
    from modelrig.plan import plan_model

    manifest = load_model(args.model)
    # launch files take no room worth planning: the disk is checked where weights are written (fetch, convert, up)
    plan = plan_model(manifest, ctx, facts=facts_option(args), check_disk=False)
    python = args.python.expanduser().absolute() if args.python else default_env_python(plan, ctx)
    given = parse_pairs(args.weights, "--weights")
    paths = {**weight_paths(manifest, ctx), **{n: Path(v).expanduser().absolute() for n, v in given.items()}}
    result = render(manifest, plan, args.out or ctx.data.launch / manifest.id, paths=paths, python=python,
                    config=ctx.config, entries=args.entries, bind=args.bind, cache_dir=ctx.data.cache,
                    log_dir=ctx.data.run / manifest.id, check=args.check)
    if ctx.as_json:
        print(result.to_json())
    elif args.check:
        print(result.line())
    elif not ctx.quiet:
        print(result.line())
        for name, entry in result.details["entries"].items():
            print(f"  {name:<14} {entry['kind']:<20} {entry['dir']}")
            if entry["secrets"]:
                print(f"  {'':<14} listens on {entry['bind']}; API key / UI password in {entry['secrets']} (0600)")
    return 0
