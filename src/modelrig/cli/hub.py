"""`modelrig hub serve DIR`, `hub index DIR`, `hub make-tiny DIR`: the local Hugging Face / ModelScope hub."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from modelrig.config import Context
from modelrig.errors import UsageError


def register(sub: Any) -> None:
    """Add the `hub` verbs."""
    from modelrig.cli import add_check_flag, add_json_flag

    hub = sub.add_parser("hub", help="a local hub serving model repos over the Hub and ModelScope protocols")
    verbs = hub.add_subparsers(dest="hub_command", metavar="VERB", required=True)

    p = verbs.add_parser("serve", help="serve DIR (read-only) until interrupted; prints the URL once ready")
    _serve_options(p)
    add_json_flag(p)
    p.set_defaults(func=_serve)

    p = verbs.add_parser("start", help="run `hub serve DIR ...` as a supervised service (systemd, launchd, or a "
                         "background process); a second start of the same command changes nothing")
    _serve_options(p)
    p.add_argument("--supervisor", choices=("auto", "process", "systemd", "launchd"), default="auto",
                   help="auto: systemd where it is init (a user's units only when it lingers), launchd on macOS, "
                   "else a supervised background process")
    p.add_argument("--launchd-domain", choices=("system", "gui"), default="system",
                   help="macOS: a LaunchDaemon (system, needs passwordless sudo) or a LaunchAgent (gui)")
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_start)

    p = verbs.add_parser("stop", help="stop the hub service of DIR and remove its unit, plist or pidfile")
    p.add_argument("dir", type=Path)
    add_json_flag(p)
    add_check_flag(p)
    p.set_defaults(func=_stop)

    p = verbs.add_parser("status", help="whether the hub service of DIR runs, under which supervisor")
    p.add_argument("dir", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_status)

    p = verbs.add_parser("index", help="record the size and sha256 of every file of every repo in DIR")
    p.add_argument("dir", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_index)

    p = verbs.add_parser("make-tiny", help="write tiny, deterministic model repos into DIR for tests and demos")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tf-python", type=Path, help="a Python with tensorflow-cpu, to also write the TF1 BERT repo")
    p.add_argument("--only", action="append", metavar="REPO", help="write only this repo (org/name or name; "
                   "repeatable)")
    add_json_flag(p)
    p.set_defaults(func=_make_tiny)


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="hub directory: DIR/<org>/<name>/<revision>/...")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8790, help="port, 0-65535 (0: any free port; default 8790)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (serve other machines)")
    p.add_argument("--token-file", type=Path, help="tokens accepted for gated repos, one per line")
    p.add_argument("--max-connections", type=int, default=32,
                   help="requests handled at once, at least 1 (default 32); idle keep-alive connections hold no "
                   "slot, and past 4 open connections per slot (at least 16) the longest-idle one is closed")
    p.add_argument("--throttle", type=int, default=0, metavar="BYTES_PER_S",
                   help="limit each file transfer to this rate (simulates a slow link; 0: unlimited)")
    p.add_argument("--access-log", action="store_true", help="log every request (and its Range) to stderr")
    p.add_argument("--upstream", action="append", metavar="HUB",
                   help="pull-through mode: fetch what DIR lacks from huggingface, modelscope, a URL serving both "
                   "protocols, or hf=URL / ms=URL (repeatable); each file is fetched once, verified, kept in DIR")
    p.add_argument("--upstream-token-file", type=Path, metavar="FILE",
                   help="the fleet's Hub token for gated repos upstream (one line), sent to the Hugging Face "
                   "upstream; clients must present a token from --token-file to get gated repos")
    p.add_argument("--upstream-modelscope-token-file", type=Path, metavar="FILE",
                   help="the fleet's ModelScope token (one line), sent only to the ModelScope upstream")


def _serve(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.hub.layout import REPO_INDEX, list_repos
    from modelrig.hub.server import make_server
    from modelrig.hub.upstream import parse_upstreams

    upstream = None
    if args.upstream:
        upstream = parse_upstreams(args.upstream, args.upstream_token_file, args.upstream_modelscope_token_file)
        args.dir.mkdir(parents=True, exist_ok=True)
    elif args.upstream_token_file or args.upstream_modelscope_token_file:
        flag = "--upstream-token-file" if args.upstream_token_file else "--upstream-modelscope-token-file"
        raise UsageError(f"{flag} needs --upstream", flag=flag)
    server = make_server(args.dir, host=args.host, port=args.port, allow_remote=args.allow_remote,
                         token_file=args.token_file, max_connections=args.max_connections,
                         throttle_bps=args.throttle, access_log=args.access_log, upstream=upstream)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    unindexed = [] if upstream else [repo for repo in list_repos(args.dir)
                                     if not (args.dir / repo / REPO_INDEX).is_file()]
    if unindexed and not ctx.quiet:
        print(f"modelrig: warning: {len(unindexed)} repos have no hash index ({', '.join(unindexed[:3])}"
              f"{', ...' if len(unindexed) > 3 else ''}): their files are hashed on first request, which is slow "
              f"for large weights; run `modelrig hub index {args.dir}` first", file=sys.stderr)
    if ctx.as_json:
        print(json.dumps({"url": server.url, "dir": str(args.dir.resolve())}), flush=True)
    else:
        print(f"serving {args.dir.resolve()} at {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _start(args: argparse.Namespace, ctx: Context) -> int:
    import shutil

    from modelrig.hub import service
    from modelrig.hub.upstream import parse_upstreams

    if args.upstream:  # in check mode the token files may not be written yet
        parse_upstreams(args.upstream, *(() if args.check else (args.upstream_token_file,
                                                                 args.upstream_modelscope_token_file)))
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: a service needs a fixed port, 1-65535", flag="--port", value=args.port)
    if args.max_connections < 1 or args.throttle < 0:
        raise UsageError("--max-connections is at least 1 and --throttle at least 0", flag="--max-connections")
    modelrig = shutil.which("modelrig", path=str(Path(sys.executable).parent)) or shutil.which("modelrig")
    if not modelrig:
        raise UsageError("cannot find the modelrig command beside this Python or on PATH")
    root = args.dir.absolute()
    if not args.check:
        root.mkdir(parents=True, exist_ok=True)
    files = {"--token-file": args.token_file, "--upstream-token-file": args.upstream_token_file,
             "--upstream-modelscope-token-file": args.upstream_modelscope_token_file}
    flags: list[str] = []
    if args.allow_remote:
        flags.append("--allow-remote")
    for value in args.upstream or []:
        flags += ["--upstream", value]
    for flag, path in files.items():
        if path is not None:
            flags += [flag, str(path.absolute())]
    flags += ["--max-connections", str(args.max_connections)]
    if args.throttle:
        flags += ["--throttle", str(args.throttle)]
    if args.access_log:
        flags.append("--access-log")
    svc = service.HubService(root=root, modelrig=Path(modelrig).absolute(), host=args.host, port=args.port,
                             serve_args=tuple(flags), launchd_domain=args.launchd_domain,
                             secrets=tuple(p.absolute() for p in files.values() if p is not None))
    _print(ctx, service.start(svc, supervisor=args.supervisor, check=args.check))
    return 0


def _stop(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.hub import service

    _print(ctx, service.stop(args.dir, check=args.check))
    return 0


def _status(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.hub import service

    row = service.status(args.dir)
    if ctx.as_json:
        print(json.dumps(row, indent=2))
    else:
        print(f"{args.dir}: " + (f"running under {row['supervisor']} (pid {row['pid']})" if row["running"]
                                 else "not running"))
    return 0


def _print(ctx: Context, result: Any) -> None:
    if ctx.as_json:
        print(result.to_json())
    elif not ctx.quiet:
        print(result.line())


def _index(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.hub.layout import list_repos, write_index

    written = [str(write_index(args.dir / repo)) for repo in list_repos(args.dir)]
    if ctx.as_json:
        print(json.dumps({"indexes": written}, indent=2))
    elif not ctx.quiet:
        for path in written:
            print(path)
    return 0


def _make_tiny(args: argparse.Namespace, ctx: Context) -> int:
    from modelrig.hub.tiny_repos import make_tiny_hub

    result = make_tiny_hub(args.dir, seed=args.seed, tf_python=args.tf_python, only=args.only,
                           log=None if ctx.quiet or ctx.as_json else
                           (lambda line: print(line, file=sys.stderr)))
    print(result.to_json() if ctx.as_json else result.line())
    return 0
