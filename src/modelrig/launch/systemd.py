"""systemd: the rendered unit installed (system units as root, user units otherwise), enabled and started.

A non-root caller's units run under its own user manager (`systemctl --user`): a login session starts it, and
lingering (`loginctl enable-linger USER`, which the model_launch role sets up) keeps it running from boot without
one, so enabled units come back after a reboot. `stop` disables the unit and removes the installed file: nothing
of the entry stays with the service manager."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelrig.errors import LaunchError
from modelrig.launch.health import ensure_port_free, probe, wait_healthy
from modelrig.stamp import atomic_write_text


def _runtime_dir() -> Path:
    return Path(f"/run/user/{os.geteuid()}")


def user_manager_running() -> bool:
    """Whether this (non-root) user's systemd user manager runs: its private socket exists."""
    return (Path(os.environ.get("XDG_RUNTIME_DIR") or _runtime_dir()) / "systemd" / "private").exists()


def _env() -> dict[str, str] | None:
    """`systemctl --user` finds the user manager through XDG_RUNTIME_DIR, which sessions without PAM (cron, su)
    lack: point it at the user's runtime folder."""
    if os.geteuid() == 0 or os.environ.get("XDG_RUNTIME_DIR"):
        return None
    return {**os.environ, "XDG_RUNTIME_DIR": str(_runtime_dir())}


def run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a service-manager command; LaunchError with its output when it fails and `check` is set."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_env())
    if check and done.returncode != 0:
        raise LaunchError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[:500]}",
                          code="service_manager_failed", command=cmd)
    return done


def install(source: Path, target: Path, *, write: bool = True) -> bool:
    """Copy a rendered unit/plist into place when it differs; True when it differed."""
    text = source.read_text(encoding="utf-8")
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return False
    if write:
        atomic_write_text(target, text)
    return True


def _systemctl(*args: str) -> list[str]:
    return ["systemctl", *(() if os.geteuid() == 0 else ("--user",)), *args]


def _journalctl(*args: str) -> list[str]:
    return ["journalctl", *(() if os.geteuid() == 0 else ("--user",)), *args]


#: What `systemctl show` tells about a unit's main process while the supervisor waits for its health check.
STATE_PROPERTIES = ("ActiveState", "SubState", "NRestarts", "Result", "ExecMainStatus")


def unit_state(unit: str) -> dict[str, str]:
    """The unit's STATE_PROPERTIES as `systemctl show` reports them (missing ones absent)."""
    out = run(_systemctl("show", "-p", ",".join(STATE_PROPERTIES), unit), check=False).stdout
    pairs = (line.partition("=") for line in out.splitlines())
    return {key: value.strip() for key, sep, value in pairs if sep and key in STATE_PROPERTIES}


def crashed(state: dict[str, str], restarts_before: int) -> bool:
    """Whether the unit's main process ended since it was started: the unit failed or stopped, waits to be
    restarted (Restart=on-failure), or was restarted (NRestarts grew past `restarts_before`)."""
    restarts = state.get("NRestarts", "0")
    return (state.get("ActiveState") in ("failed", "inactive") or state.get("SubState") == "auto-restart"
            or (restarts.isdigit() and int(restarts) > restarts_before))


def journal_tail(unit: str, lines: int = 20) -> str:
    """The unit's last journal lines (the unit template leaves stdout and stderr to the journal), as a suffix
    for an error message; empty when the journal has none or cannot be read."""
    cmd = _journalctl("-u", unit, "-n", str(lines), "--no-pager", "-o", "cat")
    text = run(cmd, check=False).stdout.rstrip()
    return f"; last lines of `{' '.join(cmd)}`:\n{text}" if text else ""


def unit_path(info: dict[str, Any]) -> Path:
    """Where the unit is installed: /etc/systemd/system as root, else the user's systemd folder."""
    folder = Path("/etc/systemd/system") if os.geteuid() == 0 else Path.home() / ".config" / "systemd" / "user"
    return folder / info["systemd_unit"]


class SystemdSupervisor:
    """Runs entries as systemd services."""

    name = "systemd"

    def _active(self, info: dict[str, Any]) -> bool:
        return run(_systemctl("is-active", info["systemd_unit"]), check=False).stdout.strip() == "active"

    def _main_pid(self, info: dict[str, Any]) -> int | None:
        out = run(_systemctl("show", "-p", "MainPID", "--value", info["systemd_unit"]), check=False).stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    @staticmethod
    def _exit_watch(unit: str, *, fresh: bool) -> Callable[[], int | None]:
        """For wait_healthy: the main process's exit status once the unit has failed or been restarted (None
        while it runs). A start by request resets NRestarts, so a `fresh` start counts from 0; an already
        running unit from its first reading."""
        before: list[int] = [0] if fresh else []

        def exited() -> int | None:
            state = unit_state(unit)
            if not before:
                before.append(int(state["NRestarts"]) if state.get("NRestarts", "").isdigit() else 0)
            if not crashed(state, before[0]):
                return None
            status = state.get("ExecMainStatus", "")
            return int(status) if status.lstrip("-").isdigit() else -1

        return exited

    def check(self, entry_dir: Path, info: dict[str, Any]) -> list[str]:
        """Why `start` would change something (empty: it would not)."""
        reasons = []
        if install(Path(entry_dir) / info["systemd_unit"], unit_path(info), write=False):
            reasons.append(f"unit {unit_path(info)} differs from the rendered one")
        if not self._active(info):
            reasons.append("service is stopped")
        elif not probe(info):
            reasons.append("service runs but does not answer its health check")
        return reasons

    def start(self, entry_dir: Path, info: dict[str, Any], *, timeout: float | None, wait: bool,
              env: dict[str, str] | None, args: list[str]) -> tuple[bool, dict[str, Any]]:
        """Install, enable and start (or restart after a changed unit); (changed, details)."""
        unit = info["systemd_unit"]
        written = install(Path(entry_dir) / unit, unit_path(info))
        if written:
            run(_systemctl("daemon-reload"))
        active = self._active(info)
        if written and active:
            run(_systemctl("restart", unit))
        elif not active:
            ensure_port_free(info)
            run(_systemctl("enable", "--now", unit))
        details: dict[str, Any] = {"unit": str(unit_path(info))}
        if wait:
            pid = self._main_pid(info)
            details["pid"] = pid
            details["waited_s"] = round(wait_healthy(info, timeout=timeout, pid=pid,
                                                     exited=self._exit_watch(unit, fresh=written or not active),
                                                     journal=lambda: journal_tail(unit)), 3)
        return written or not active, details

    def stop(self, entry_dir: Path, info: dict[str, Any], *, grace: float = 20.0) -> tuple[bool, dict[str, Any]]:
        """Disable and stop the unit and remove its installed file; (changed, details)."""
        active = self._active(info)
        target = unit_path(info)
        if active or target.is_file():
            run(_systemctl("disable", "--now", info["systemd_unit"]), check=active)
        removed = target.is_file()
        if removed:
            target.unlink()
            run(_systemctl("daemon-reload"))
        return active or removed, {"unit": info["systemd_unit"]}

    def status(self, entry_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
        """{running, state, pid}."""
        state = run(_systemctl("is-active", info["systemd_unit"]), check=False).stdout.strip()
        return {"running": state == "active", "state": state, "pid": self._main_pid(info)}
