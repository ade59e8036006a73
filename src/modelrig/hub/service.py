"""The hub as a supervised service: `modelrig hub start DIR [serve flags]`, `hub stop DIR`, `hub status DIR`.

`start` renders a launch entry for `modelrig hub serve DIR ...` into `DIR/.modelrig-service/fleet-hub/` (its
`start.sh`, a systemd unit, a launchd plist and `entry.json`, as `modelrig render` does for a demo) and hands it to
the demos' supervisors (`modelrig.launch`): a systemd unit where systemd is init (a system unit as root; a user
unit only for a user whose manager lingers, so it outlives the SSH session and comes back after a reboot), a
launchd job on macOS, else the supervised background process (pidfile `DIR/fleet-hub.pid`). The hub's output and
access log go to `DIR/fleet-hub.log` under every supervisor. systemd and launchd restart it when it fails; the
background process is started again by the next `start`.

Idempotent: an unchanged entry that runs is left alone (`changed` false). A changed command line, token file or
supervisor stops the running hub and starts the new one. `stop` stops it under the supervisor that started it and
removes the entry (unit, plist, pidfile and service folder): nothing of the service stays; what the hub keeps stays.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from modelrig.errors import LaunchError
from modelrig.launch import detect_supervisor
from modelrig.launch import start as launch_start
from modelrig.launch import status as launch_status
from modelrig.launch import stop as launch_stop
from modelrig.launch.escape import FILTERS
from modelrig.launch.outdir import ENTRY_FILE
from modelrig.launch.render import launchd_plist
from modelrig.result import StageResult
from modelrig.shipped import launch_dir
from modelrig.stamp import atomic_write_text, digest, read_stamp, sha256_file, write_stamp

SERVICE_DIR = ".modelrig-service"
ENTRY = "fleet-hub"
UNIT = "modelrig-fleet-hub.service"
LABEL = "ai.modelrig.fleet-hub"
LOG = "fleet-hub.log"
#: Where systemd records the users whose user manager runs from boot (`loginctl enable-linger`).
LINGER_DIR = Path("/var/lib/systemd/linger")
#: Seconds `start` waits for the hub to accept connections.
LISTEN_TIMEOUT = 60.0


@dataclass(frozen=True)
class HubService:
    """What the service runs: `modelrig hub serve ROOT --host HOST --port PORT *serve_args`; `secrets` are the
    token files it reads (a change of their content restarts it)."""

    root: Path
    modelrig: Path
    host: str
    port: int
    serve_args: tuple[str, ...] = ()
    secrets: tuple[Path, ...] = ()
    launchd_domain: str = "system"


def entry_dir(root: Path) -> Path:
    """The service's rendered entry folder inside the hub's folder (hidden: the hub never serves it)."""
    return Path(root).absolute() / SERVICE_DIR / ENTRY


def choose(supervisor: str) -> str:
    """The supervisor `auto` stands for here; a non-root user's systemd units only when its manager lingers
    (else they would stop with the SSH session that started them): a background process otherwise."""
    chosen = detect_supervisor() if supervisor == "auto" else supervisor
    if chosen == "systemd" and supervisor == "auto" and os.geteuid() != 0 \
            and not (LINGER_DIR / pwd.getpwuid(os.geteuid()).pw_name).exists():
        return "process"
    return chosen


def service_files(svc: HubService, supervisor: str, *, user: str) -> dict[str, str]:
    """The entry's files {name: text}. Pure: reads only the unit template."""
    folder = entry_dir(svc.root)
    log = Path(svc.root).absolute() / LOG
    argv = [str(svc.modelrig), "hub", "serve", str(Path(svc.root).absolute()), "--host", svc.host,
            "--port", str(svc.port), *svc.serve_args]
    start = ("#!/bin/sh\n# The fleet's pull-through hub, rendered by `modelrig hub start`: edits are overwritten.\n"
             "# Tokens stay in their files (mode 0600); none is written here.\nset -eu\n"
             f"cd {shlex.quote(str(folder))}\nexec {shlex.join(argv)} >> {shlex.quote(str(log))} 2>&1\n")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(launch_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters.update(FILTERS)
    unit = env.get_template("services/systemd.service.j2").render(
        model_id="fleet-hub", entry_name="hub", kind="pull-through", entry_dir=str(folder),
        wanted_by="multi-user.target" if os.geteuid() == 0 else "default.target")
    files = {"start.sh": start, UNIT: unit, f"{LABEL}.plist": launchd_plist(LABEL, folder, log, user=user)}
    info = {"model": ENTRY, "entry": ENTRY, "kind": "fleet_hub", "bind": svc.host, "port": svc.port,
            "url_path": "/", "start": "start.sh", "health": {"type": "none"}, "systemd_unit": UNIT,
            "launchd_label": LABEL, "launchd_domain": svc.launchd_domain, "supervisor": supervisor,
            "argv": argv, "log": str(log), "files": sorted([*files, ENTRY_FILE])}
    files[ENTRY_FILE] = json.dumps(info, indent=2, sort_keys=True) + "\n"
    return files


def start(svc: HubService, *, supervisor: str = "auto", check: bool = False) -> StageResult:
    """Render the service entry and start it under `supervisor` (see the module); waits until it listens."""
    begun = time.perf_counter()
    chosen = choose(supervisor)
    folder = entry_dir(svc.root)
    files = service_files(svc, chosen, user=pwd.getpwuid(os.getuid()).pw_name)
    key = digest({"files": files, "secrets": {str(p): sha256_file(p) for p in svc.secrets if p.is_file()}})
    previous = _read_info(folder)
    running = previous is not None and bool(_status(svc.root, previous)["running"])
    stale = (read_stamp(folder) or {}).get("key") != key
    reasons = [f"{'the command line, token files or supervisor changed' if previous else 'not set up yet'}"] \
        if stale else ([] if running else ["the hub is stopped"])
    if check:
        return StageResult(stage="hub", changed=bool(reasons), check=True, reasons=reasons,
                           summary=f"the hub in {svc.root} " + ("would be started" if reasons else "runs"),
                           details={"supervisor": chosen, "entry": str(folder)})
    if stale and running and previous is not None:
        launch_stop(folder, supervisor=previous["supervisor"], run_dir=Path(svc.root).absolute())
    if stale:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, text in files.items():
            atomic_write_text(folder / name, text, mode=0o755 if name.endswith(".sh") else 0o644)
        write_stamp(folder, {"key": key, "files": sorted(files)})
    result = launch_start(folder, supervisor=chosen, run_dir=Path(svc.root).absolute(), wait=True, timeout=30)
    _wait_listening(svc)
    details = {**result.details, "entry": str(folder), "log": str(Path(svc.root).absolute() / LOG)}
    changed = stale or result.changed
    return StageResult(stage="hub", changed=changed, reasons=reasons if changed else [], details=details,
                       seconds=time.perf_counter() - begun,
                       summary=f"the hub in {svc.root} {'started' if changed else 'runs'} under {chosen} at "
                               f"http://{svc.host}:{svc.port}")


def stop(root: Path, *, check: bool = False) -> StageResult:
    """Stop the service under the supervisor that started it and remove its entry; nothing running: unchanged."""
    folder = entry_dir(root)
    info = _read_info(folder)
    if info is None:
        return StageResult(stage="hub", changed=False, check=check, summary=f"no hub service in {root}")
    if check:
        running = bool(_status(root, info)["running"])
        return StageResult(stage="hub", changed=True, check=True, summary=f"the hub in {root} would be stopped",
                           reasons=["running" if running else "its service files are installed"])
    result = launch_stop(folder, supervisor=info["supervisor"], run_dir=Path(root).absolute())
    shutil.rmtree(folder.parent)
    return StageResult(stage="hub", changed=True, details={**result.details, "removed": str(folder.parent)},
                       summary=f"the hub in {root} {'stopped' if result.changed else 'was not running'}; its service "
                               "removed")


def status(root: Path) -> dict[str, Any]:
    """{running, pid, supervisor, url, ...} of the hub service in `root` (`running` false when there is none)."""
    info = _read_info(entry_dir(root))
    if info is None:
        return {"running": False, "pid": None, "supervisor": None, "url": None}
    return _status(root, info)


def _status(root: Path, info: dict[str, Any]) -> dict[str, Any]:
    row = launch_status(entry_dir(root), supervisor=info["supervisor"], run_dir=Path(root).absolute())
    return {**row, "listening": _listening(info["bind"], int(info["port"]))}


def _read_info(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("supervisor") else None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _wait_listening(svc: HubService) -> None:
    ends = time.monotonic() + LISTEN_TIMEOUT
    while not _listening(svc.host, svc.port):
        if time.monotonic() > ends:
            log = Path(svc.root).absolute() / LOG
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-10:] if log.is_file() else []
            raise LaunchError(f"the hub in {svc.root} does not listen on {svc.host}:{svc.port} after "
                              f"{LISTEN_TIMEOUT:.0f} s; last lines of {log}:\n" + "\n".join(tail),
                              code="health_check_failed")
        time.sleep(0.2)
