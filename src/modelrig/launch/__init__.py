"""Starting, stopping and checking rendered launch entries under one of three supervisors.

`process` (a supervised background process, for containers without an init system), `systemd` and `launchd`
implement one protocol (`Supervisor`); `start`, `stop`, `status` and `check` pick one and report a
`StageResult`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from modelrig.errors import LaunchError
from modelrig.launch.entry import entry_url, read_entry
from modelrig.launch.health import probe, wait_healthy
from modelrig.launch.launchd import LaunchdSupervisor
from modelrig.launch.process import ProcessSupervisor
from modelrig.launch.systemd import SystemdSupervisor, user_manager_running
from modelrig.result import StageResult

__all__ = ["Supervisor", "check", "choose_supervisor", "detect_supervisor", "entry_url", "probe", "read_entry", "start", "status",
           "stop", "supervisor_for", "wait_healthy"]

SupervisorName = Literal["auto", "process", "systemd", "launchd"]


class Supervisor(Protocol):
    """What every supervisor does for one rendered entry."""

    name: str

    def check(self, entry_dir: Path, info: dict[str, Any]) -> list[str]:
        """Why `start` would change something; empty when it would not. Touches nothing."""

    def start(self, entry_dir: Path, info: dict[str, Any], *, timeout: float | None, wait: bool,
              env: dict[str, str] | None, args: list[str]) -> tuple[bool, dict[str, Any]]:
        """Start (or find running) the entry; (changed, details). Idempotent."""

    def stop(self, entry_dir: Path, info: dict[str, Any], *, grace: float = 20.0) -> tuple[bool, dict[str, Any]]:
        """Stop the entry; (changed, details). Stopping what is not running is `changed=False`."""

    def status(self, entry_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
        """{running, pid, ...}."""


def choose_supervisor(*, darwin: bool, systemd_init: bool, root: bool, user_manager: bool) -> str:
    """launchd on macOS; systemd where it is init and the caller can manage units there (system units as root,
    the caller's own user manager otherwise: a login session or lingering keeps it running); else a supervised
    background process (containers without an init system, a user with no service manager of their own)."""
    if darwin:
        return "launchd"
    if systemd_init and (root or user_manager):
        return "systemd"
    return "process"


def detect_supervisor() -> str:
    """`choose_supervisor` for this machine and user."""
    return choose_supervisor(darwin=sys.platform == "darwin" and bool(shutil.which("launchctl")),
                             systemd_init=Path("/run/systemd/system").is_dir() and bool(shutil.which("systemctl")),
                             root=os.geteuid() == 0, user_manager=user_manager_running())


def supervisor_for(name: str, *, run_dir: Path | None = None) -> Supervisor:
    """The supervisor called `name` (`auto` detects one); `run_dir` holds pidfiles and logs of `process`."""
    chosen = detect_supervisor() if name == "auto" else name
    if chosen == "process":
        return ProcessSupervisor(run_dir)
    if chosen == "systemd":
        return SystemdSupervisor()
    if chosen == "launchd":
        return LaunchdSupervisor()
    raise LaunchError(f"unknown supervisor {name!r}; use auto, process, systemd or launchd", code="usage",
                      supervisor=name)


def start(entry_dir: Path, *, supervisor: SupervisorName | str = "auto", run_dir: Path | None = None,
          timeout: float | None = None, wait: bool = True, env: dict[str, str] | None = None,
          args: list[str] | None = None) -> StageResult:
    """Start a rendered entry under `supervisor` and wait for its health check; idempotent.

    `process` runs `start.sh` in its own session with a pidfile and log under `run_dir` (default
    `<entry_dir>/run`); a stale pidfile (dead or reused pid) is removed, and an entry re-rendered since it
    started is restarted. `systemd` installs the unit (system units as root, else user units of the caller's own
    user manager, which lingering keeps running without a login) and enables it; `launchd` installs
    the plist into ~/Library/LaunchAgents and bootstraps it. Already running and unchanged: `changed=False`.
    A port already taken by another process is a `PortBusyError`; a health answer that does not come from the
    started process is a `HealthCheckError`. Services never get hub tokens in their environment.
    """
    begun = time.perf_counter()
    entry_dir = Path(entry_dir).absolute()
    info = read_entry(entry_dir)
    sup = supervisor_for(supervisor, run_dir=run_dir)
    changed, details = sup.start(entry_dir, info, timeout=timeout, wait=wait, env=env, args=list(args or []))
    url = entry_url(info)
    details.update(supervisor=sup.name, entry=info["entry"], kind=info["kind"], url=url)
    state = "started" if changed else "already running"
    return StageResult(stage="launch", changed=changed, model=info["model"], seconds=time.perf_counter() - begun,
                       summary=f"{info['entry']} ({info['kind']}) {state} under {sup.name}"
                               + (f" at {url}" if url else ""), details=details)


def check(entry_dir: Path, *, supervisor: SupervisorName | str = "auto",
          run_dir: Path | None = None) -> StageResult:
    """What `start` would do, touching nothing: `changed` with the reasons (service stopped, files re-rendered,
    unit differs, not answering its health check)."""
    entry_dir = Path(entry_dir).absolute()
    info = read_entry(entry_dir)
    sup = supervisor_for(supervisor, run_dir=run_dir)
    reasons = sup.check(entry_dir, info)
    summary = f"{info['entry']} ({info['kind']}) " + ("would be started" if reasons else "running, healthy")
    return StageResult(stage="launch", changed=bool(reasons), model=info["model"], summary=summary, check=True,
                       reasons=[f"{info['entry']}: {r}" for r in reasons],
                       details={"supervisor": sup.name, "entry": info["entry"], "kind": info["kind"],
                                "url": entry_url(info)})


def stop(entry_dir: Path, *, supervisor: SupervisorName | str = "auto", run_dir: Path | None = None,
         grace: float = 20.0) -> StageResult:
    """Stop a started entry: SIGTERM to its process group (SIGKILL after `grace` seconds), or stop the unit/job.

    Stopping what is not running is `changed=False`; a process whose identity cannot be confirmed (pid reused,
    no creation time recorded) is never signalled.
    """
    begun = time.perf_counter()
    entry_dir = Path(entry_dir).absolute()
    info = read_entry(entry_dir)
    sup = supervisor_for(supervisor, run_dir=run_dir)
    changed, details = sup.stop(entry_dir, info, grace=grace)
    details["supervisor"] = sup.name
    return StageResult(stage="stop", changed=changed, model=info["model"], seconds=time.perf_counter() - begun,
                       summary=f"{info['entry']} {'stopped' if changed else 'was not running'}", details=details)


def status(entry_dir: Path, *, supervisor: SupervisorName | str = "auto",
           run_dir: Path | None = None) -> dict[str, Any]:
    """Whether an entry runs and answers its health check: {entry, kind, running, healthy, pid, url, ...}."""
    entry_dir = Path(entry_dir).absolute()
    info = read_entry(entry_dir)
    sup = supervisor_for(supervisor, run_dir=run_dir)
    result: dict[str, Any] = {"model": info["model"], "entry": info["entry"], "kind": info["kind"],
                              "supervisor": sup.name, "url": entry_url(info), "pid": None}
    result.update(sup.status(entry_dir, info))
    result["healthy"] = bool(result["running"]) and probe(info)
    return result
