"""launchd (macOS): the rendered plist installed into ~/Library/LaunchAgents and bootstrapped."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from modelrig.launch.health import ensure_port_free, probe, wait_healthy
from modelrig.launch.systemd import install, run


def plist_path(info: dict[str, Any]) -> Path:
    """Where the job is installed: the user's LaunchAgents."""
    return Path.home() / "Library" / "LaunchAgents" / f"{info['launchd_label']}.plist"


class LaunchdSupervisor:
    """Runs entries as launchd agents."""

    name = "launchd"

    def _target(self, info: dict[str, Any]) -> str:
        return f"gui/{os.getuid()}/{info['launchd_label']}"

    def _print(self, info: dict[str, Any]) -> tuple[bool, str]:
        done = run(["launchctl", "print", self._target(info)], check=False)
        return done.returncode == 0, done.stdout

    def _pid(self, text: str) -> int | None:
        found = re.search(r"^\s*pid = (\d+)", text, re.MULTILINE)
        return int(found.group(1)) if found else None

    def check(self, entry_dir: Path, info: dict[str, Any]) -> list[str]:
        """Why `start` would change something (empty: it would not)."""
        reasons = []
        if install(Path(entry_dir) / f"{info['launchd_label']}.plist", plist_path(info), write=False):
            reasons.append(f"{plist_path(info)} differs from the rendered one")
        loaded, text = self._print(info)
        if not loaded or "state = running" not in text:
            reasons.append("service is stopped")
        elif not probe(info):
            reasons.append("service runs but does not answer its health check")
        return reasons

    def start(self, entry_dir: Path, info: dict[str, Any], *, timeout: float | None, wait: bool,
              env: dict[str, str] | None, args: list[str]) -> tuple[bool, dict[str, Any]]:
        """Install and bootstrap the job (boot it out first when its plist changed); (changed, details)."""
        label = info["launchd_label"]
        target = plist_path(info)
        written = install(Path(entry_dir) / f"{label}.plist", target)
        domain = f"gui/{os.getuid()}"
        loaded, _ = self._print(info)
        if loaded and written:
            run(["launchctl", "bootout", self._target(info)], check=False)
            loaded = False
        if not loaded:
            ensure_port_free(info)
            run(["launchctl", "bootstrap", domain, str(target)])
        details: dict[str, Any] = {"plist": str(target)}
        if wait:
            pid = self._pid(self._print(info)[1])
            details["pid"] = pid
            details["waited_s"] = round(wait_healthy(info, timeout=timeout, pid=pid), 3)
        return written or not loaded, details

    def stop(self, entry_dir: Path, info: dict[str, Any], *, grace: float = 20.0) -> tuple[bool, dict[str, Any]]:
        """Boot the job out."""
        loaded, _ = self._print(info)
        if loaded:
            run(["launchctl", "bootout", self._target(info)])
        return loaded, {"label": info["launchd_label"]}

    def status(self, entry_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
        """{running, pid}."""
        loaded, text = self._print(info)
        return {"running": loaded and "state = running" in text, "pid": self._pid(text)}
