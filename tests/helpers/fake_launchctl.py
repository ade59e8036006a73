"""A `launchctl` (and `sudo`) on PATH that replay launchctl's answers and record every call, for testing the launchd
supervisor at the command level on a machine without launchd.

The answers are macOS 14's launchctl output as reported publicly (launchctl(1) gives no exit codes): `print` of a
service that is not loaded exits 113 "Could not find service ... in domain for ...", `bootstrap` into `gui/<uid>`
with nobody logged in at the console exits 125 "Domain does not support specified action", `bootstrap` of an
already loaded service exits 5 "Input/output error", and `print` of a loaded job lists `state = running` and
`pid = N`. They have not been recorded on a Mac here.

Each call pops the next answer for its subcommand (`print`, `bootstrap`, `bootout`) from the queue the test set;
a call with no answer left fails the call and the test. `sudo -n CMD...` records itself and runs CMD (the tests run
as root), or answers "a password is required" when told to.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: Recorded answers: (exit status, stdout, stderr).
Answer = tuple[int, str, str]


def not_loaded(target: str) -> Answer:
    """`launchctl print DOMAIN/LABEL` for a service the domain does not hold."""
    domain, _, label = target.rpartition("/")
    return 113, "", f'Could not find service "{label}" in domain for {domain}\n'


def running(target: str, plist: str, pid: int) -> Answer:
    """`launchctl print DOMAIN/LABEL` for a loaded, running job (the head of macOS 14's output)."""
    kind = "LaunchDaemon" if target.startswith("system/") else "LaunchAgent"
    return 0, (f"{target} = {{\n\tactive count = 1\n\tpath = {plist}\n\ttype = {kind}\n\tstate = running\n\n"
               f"\tprogram = /bin/sh\n\targuments = {{\n\t\t/bin/sh\n\t}}\n\n\tdefault environment = {{\n\t}}\n\n"
               f"\truns = 1\n\tpid = {pid}\n\timmediate reason = speculative\n}}\n"), ""


NO_GUI_SESSION: Answer = (125, "", "Bootstrap failed: 125: Domain does not support specified action\n")
ALREADY_LOADED: Answer = (5, "", "Bootstrap failed: 5: Input/output error\n")
OK: Answer = (0, "", "")

_LAUNCHCTL = r"""#!/usr/bin/python3
import json, os, sys
state = os.environ["FAKE_LAUNCHCTL_STATE"]
with open(state) as f:
    data = json.load(f)
args = sys.argv[1:]
data["calls"].append({"argv": ["launchctl", *args], "euid_via_sudo": os.environ.get("FAKE_SUDO") == "1"})
queue = data["answers"].get(args[0] if args else "", [])
if not queue:
    data["unexpected"].append(args)
    answer = [99, "", "fake launchctl: no recorded answer for %r\n" % (args,)]
else:
    answer = queue.pop(0)
with open(state, "w") as f:
    json.dump(data, f)
sys.stdout.write(answer[1]); sys.stderr.write(answer[2])
sys.exit(answer[0])
"""

_SUDO = r"""#!/usr/bin/python3
import json, os, sys
state = os.environ["FAKE_LAUNCHCTL_STATE"]
with open(state) as f:
    data = json.load(f)
data["calls"].append({"argv": ["sudo", *sys.argv[1:]]})
with open(state, "w") as f:
    json.dump(data, f)
if data.get("sudo_needs_password"):
    sys.stderr.write("sudo: a password is required\n")
    sys.exit(1)
args = sys.argv[1:]
if args[:1] == ["-n"]:
    args = args[1:]
os.environ["FAKE_SUDO"] = "1"
os.execvp(args[0], args)
"""


@dataclass
class FakeLaunchctl:
    """The fake's state file and bin folder; `answer()` queues answers, `calls()` reads what was run."""

    state: Path
    bin_dir: Path

    def _load(self) -> dict:
        return json.loads(self.state.read_text())

    def _save(self, data: dict) -> None:
        self.state.write_text(json.dumps(data))

    def answer(self, subcommand: str, *answers: Answer) -> None:
        """Queue the answers the next `launchctl SUBCOMMAND` calls get, in order."""
        data = self._load()
        data["answers"].setdefault(subcommand, []).extend(list(a) for a in answers)
        self._save(data)

    def sudo_needs_password(self) -> None:
        """Make `sudo -n` refuse, as it does for a user without passwordless sudo."""
        data = self._load()
        data["sudo_needs_password"] = True
        self._save(data)

    def calls(self) -> list[list[str]]:
        """Every recorded call (sudo and launchctl), in order."""
        return [c["argv"] for c in self._load()["calls"]]

    def unanswered(self) -> list[list[str]]:
        """Calls that found no queued answer, and queued answers no call took."""
        data = self._load()
        return data["unexpected"] + [[k, *map(str, a)] for k, v in data["answers"].items() for a in v]


def install_fake_launchctl(folder: Path) -> FakeLaunchctl:
    """Write `launchctl` and `sudo` into `folder/bin` with an empty answer queue (put `folder/bin` first on PATH and
    FAKE_LAUNCHCTL_STATE in the environment: `env()`)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("launchctl", _LAUNCHCTL), ("sudo", _SUDO)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    state = folder / "launchctl-state.json"
    state.write_text(json.dumps({"calls": [], "answers": {}, "unexpected": []}))
    return FakeLaunchctl(state=state, bin_dir=bin_dir)


def fake_env(fake: FakeLaunchctl) -> dict[str, str]:
    """PATH with the fakes first, and the state file."""
    return {"PATH": f"{fake.bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LAUNCHCTL_STATE": str(fake.state)}
