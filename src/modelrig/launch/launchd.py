"""launchd (macOS): the rendered plist installed as a LaunchDaemon (default) or a LaunchAgent, and bootstrapped.

Why a LaunchDaemon by default. A Mac Studio serving demos is reached over SSH, usually with nobody logged in at
its console, and must bring the demos back after a reboot. launchd.plist(5) and launchctl(1) give three domains:

- `gui/<uid>` (LaunchAgents in ~/Library/LaunchAgents) exists only while the user is logged in at the console:
  bootstrapping into it over SSH with nobody logged in fails with "Bootstrap failed: 125: Domain does not support
  specified action", and its jobs start only at a console login;
- `user/<uid>` exists while the user has any session (the SSH login) but is not recreated at boot, so its jobs
  do not come back after a reboot until that user logs in again;
- `system` (LaunchDaemons in /Library/LaunchDaemons, owned by root, mode 0644) is loaded at boot before anyone
  logs in; the plist's `UserName` runs the job as the login user, not as root.

So modelrig installs `/Library/LaunchDaemons/<label>.plist` with `UserName` and bootstraps it into `system`, as
Mac management tools do for headless services (Homebrew's `sudo brew services`, Jamf and Munki daemons). That
needs root for the install and the launchctl calls: as another user they run through `sudo -n` (passwordless
sudo for the login user, which the Ansible route checks first), and a refusal names that. `serve.launchd_domain:
gui` keeps the old LaunchAgent route for a Mac with a console login (auto-login) and no sudo.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from modelrig.errors import LaunchError
from modelrig.launch.health import ensure_port_free, probe, wait_healthy
from modelrig.launch.systemd import install, run

#: Where system-domain jobs live; root-owned, read by launchd at boot.
DAEMONS_DIR = Path("/Library/LaunchDaemons")
#: launchctl's exit status for "Domain does not support specified action" (gui/<uid> with nobody at the console).
NO_GUI_SESSION = 125
#: launchctl's exit status when a service is not loaded in the domain ("Could not find service").
NOT_LOADED = 113


def domain_of(info: dict[str, Any]) -> str:
    """`system` or `gui/<uid>`: where the entry's job is bootstrapped (entries rendered before the choice existed
    were LaunchAgents)."""
    return "system" if info.get("launchd_domain", "gui") == "system" else f"gui/{os.getuid()}"


def plist_path(info: dict[str, Any]) -> Path:
    """Where the job is installed: /Library/LaunchDaemons for the system domain, else the user's LaunchAgents."""
    folder = DAEMONS_DIR if domain_of(info) == "system" else Path.home() / "Library" / "LaunchAgents"
    return folder / f"{info['launchd_label']}.plist"


class LaunchdSupervisor:
    """Runs entries as launchd jobs (LaunchDaemons with UserName, or LaunchAgents)."""

    name = "launchd"

    def _privileged(self, info: dict[str, Any], cmd: list[str]) -> list[str]:
        """`cmd` as root: as is for root or a LaunchAgent, else through `sudo -n` (never a password prompt)."""
        return cmd if domain_of(info) != "system" or os.geteuid() == 0 else ["sudo", "-n", *cmd]

    def _launchctl(self, info: dict[str, Any], *args: str, check: bool = True):  # noqa: ANN202
        done = run(self._privileged(info, ["launchctl", *args]), check=False)
        if check and done.returncode != 0:
            raise self._failure(info, args, done)
        return done

    def _failure(self, info: dict[str, Any], args: tuple[str, ...], done: Any) -> LaunchError:
        said = (done.stderr or done.stdout).strip()[:500]
        cmd = " ".join(self._privileged(info, ["launchctl", *args]))
        if done.returncode == NO_GUI_SESSION and domain_of(info) != "system":
            hint = ("nobody is logged in at this Mac's console, so its GUI domain does not exist; use LaunchDaemons "
                    "(serve.launchd_domain: system, the default) or log in at the console")
        elif "sudo" in cmd and ("password" in said.lower() or done.returncode == 1 and "sudo" in said.lower()):
            hint = ("a LaunchDaemon needs root: allow the login user passwordless sudo for launchctl and install "
                    "(the mac_studio inventory's sudoers line), or use serve.launchd_domain: gui with a console login")
        else:
            hint = ""
        return LaunchError(f"{cmd} failed (exit {done.returncode}): {said}" + (f"; {hint}" if hint else ""),
                           code="service_manager_failed", command=self._privileged(info, ["launchctl", *args]))

    def _target(self, info: dict[str, Any]) -> str:
        return f"{domain_of(info)}/{info['launchd_label']}"

    def _print(self, info: dict[str, Any]) -> tuple[bool, str]:
        done = self._launchctl(info, "print", self._target(info), check=False)
        return done.returncode == 0, done.stdout

    def _pid(self, text: str) -> int | None:
        found = re.search(r"^\s*pid = (\d+)", text, re.MULTILINE)
        return int(found.group(1)) if found else None

    def _install(self, source: Path, info: dict[str, Any], *, write: bool = True) -> bool:
        """Put the rendered plist in place when it differs; True when it differed. A LaunchDaemon's plist must be
        root-owned and not group/world-writable, or launchd refuses it: `install -m 0644 -o 0 -g 0`."""
        target = plist_path(info)
        if domain_of(info) != "system":
            return install(source, target, write=write)
        if target.is_file() and target.read_bytes() == source.read_bytes():
            return False
        if write:
            cmd = self._privileged(info, ["install", "-m", "0644", "-o", "0", "-g", "0", str(source), str(target)])
            done = run(cmd, check=False)
            if done.returncode != 0:
                raise LaunchError(f"{' '.join(cmd)} failed (exit {done.returncode}): "
                                  f"{(done.stderr or done.stdout).strip()[:300]}; a LaunchDaemon needs root: allow "
                                  "the login user passwordless sudo for launchctl and install, or use "
                                  "serve.launchd_domain: gui with a console login", code="service_manager_failed",
                                  command=cmd)
        return True

    def check(self, entry_dir: Path, info: dict[str, Any]) -> list[str]:
        """Why `start` would change something (empty: it would not)."""
        reasons = []
        if self._install(Path(entry_dir) / f"{info['launchd_label']}.plist", info, write=False):
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
        target = plist_path(info)
        written = self._install(Path(entry_dir) / f"{info['launchd_label']}.plist", info)
        loaded, _ = self._print(info)
        if loaded and written:
            self._launchctl(info, "bootout", self._target(info))
            loaded = False
        if not loaded:
            ensure_port_free(info)
            self._launchctl(info, "bootstrap", domain_of(info), str(target))
        details: dict[str, Any] = {"plist": str(target), "domain": domain_of(info)}
        if wait:
            pid = self._pid(self._print(info)[1])
            details["pid"] = pid
            details["waited_s"] = round(wait_healthy(info, timeout=timeout, pid=pid), 3)
        return written or not loaded, details

    def stop(self, entry_dir: Path, info: dict[str, Any], *, grace: float = 20.0) -> tuple[bool, dict[str, Any]]:
        """Boot the job out and remove its plist, so it stays stopped after a reboot (as a disabled systemd unit)."""
        loaded, _ = self._print(info)
        if loaded:
            self._launchctl(info, "bootout", self._target(info))
        target = plist_path(info)
        removed = target.is_file()
        if removed and domain_of(info) == "system":
            run(self._privileged(info, ["rm", "-f", str(target)]))
        elif removed:
            target.unlink()
        return loaded or removed, {"label": info["launchd_label"], "domain": domain_of(info)}

    def status(self, entry_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
        """{running, pid}."""
        loaded, text = self._print(info)
        return {"running": loaded and "state = running" in text, "pid": self._pid(text)}
