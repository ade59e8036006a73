"""A recording service manager for command-level supervisor tests: `systemctl`, `journalctl` and `launchctl`
executables that append each command line to a log, keep the services' state in a JSON file, answer as the real
tools do (exit codes, `is-active` words, `systemctl show` lines, `launchctl print` lines), replay scripted unit
states and journal lines, and fail a chosen verb with the real tools' message."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The executable behind both names (argv[0] tells which tool it is).
_TOOL = r'''
import json, os, sys
from pathlib import Path
tool, args = Path(sys.argv[0]).name, sys.argv[1:]
state_file = Path(os.environ["FAKE_SM_STATE"])
with open(os.environ["FAKE_SM_LOG"], "a") as log:
    log.write(json.dumps([tool, *args]) + "\n")
state = json.loads(state_file.read_text()) if state_file.exists() else {}
verbs = [a for a in args if not a.startswith("-")]
if os.environ.get("FAKE_SM_FAIL") and verbs and verbs[0] == os.environ["FAKE_SM_FAIL"]:
    print(f"Failed to {verbs[0]}: Access denied", file=sys.stderr)
    sys.exit(1)
name = verbs[-1] if verbs else ""
if tool == "systemctl":
    verb = verbs[0]
    if verb == "is-active":
        active = state.get(name, {}).get("active", False)
        print("active" if active else "inactive")
        sys.exit(0 if active else 3)
    if verb == "show" and "MainPID" in args:
        print(state.get(name, {}).get("pid", 0) if state.get(name, {}).get("active") else 0)
    elif verb == "show":
        unit = state.setdefault(name, {})
        answers = unit.get("shows") or [{"ActiveState": "active" if unit.get("active") else "inactive"}]
        wanted = args[args.index("-p") + 1].split(",")
        print("\n".join(f"{k}={v}" for k, v in answers[0].items() if k in wanted))
        unit["shows"] = answers[1:] or answers
    elif verb in ("enable", "restart", "start"):
        state.setdefault(name, {}).update(active=True, pid=4242)
    elif verb in ("disable", "stop"):
        state.setdefault(name, {})["active"] = False
elif tool == "journalctl":
    name = args[args.index("-u") + 1]
    lines = state.get(name, {}).get("journal", [])
    print("\n".join(lines[-int(args[args.index("-n") + 1]):]))
else:
    verb = verbs[0]
    label = name.rsplit("/", 1)[-1].removesuffix(".plist") if verb != "bootstrap" else Path(name).stem
    if verb == "print":
        if not state.get(label, {}).get("loaded"):
            print(f"Could not find service \"{label}\" in domain for port", file=sys.stderr)
            sys.exit(113)
        print(f"{name} = {{\n\tstate = running\n\tpid = 4242\n}}")
    elif verb == "bootstrap":
        state[label] = {"loaded": True}
    elif verb == "bootout":
        state[label] = {"loaded": False}
state_file.write_text(json.dumps(state))
'''


@dataclass
class ServiceManager:
    """The recording tools' folder (first on PATH), their command log and state."""

    bin: Path
    log: Path
    state: Path

    def commands(self) -> list[list[str]]:
        """Every command line run since the last call, in order (the log is emptied)."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.write_text("")
        return [json.loads(line) for line in lines]

    def replay(self, unit: str, shows: list[dict[str, str]], journal: list[str]) -> None:
        """Script `systemctl show -p ...` answers for `unit` (one per call, the last one repeated) and its
        `journalctl -u` lines."""
        state = json.loads(self.state.read_text()) if self.state.exists() else {}
        state.setdefault(unit, {}).update(shows=shows, journal=journal)
        self.state.write_text(json.dumps(state))

    def fail(self, monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
        """Make `verb` fail (exit 1, 'Failed to VERB: Access denied' on stderr)."""
        monkeypatch.setenv("FAKE_SM_FAIL", verb)


def service_manager(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> ServiceManager:
    """Put recording `systemctl`, `journalctl` and `launchctl` first on PATH, HOME in `tmp/home`; return their
    handle."""
    folder = tmp / "service-bin"
    folder.mkdir()
    for name in ("systemctl", "journalctl", "launchctl"):
        path = folder / name
        path.write_text(f"#!{sys.executable}\n{_TOOL}")
        path.chmod(0o755)
    manager = ServiceManager(bin=folder, log=tmp / "service-commands.log", state=tmp / "service-state.json")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SM_LOG", str(manager.log))
    monkeypatch.setenv("FAKE_SM_STATE", str(manager.state))
    monkeypatch.delenv("FAKE_SM_FAIL", raising=False)
    monkeypatch.setenv("HOME", str(tmp / "home"))
    return manager
