"""The launchd supervisor at the command level: the plist it installs and the launchctl calls it makes, in order,
against launchctl's answers replayed by a fake `launchctl` on PATH (tests/helpers/fake_launchctl.py). A headless
Mac's demos are LaunchDaemons with UserName in the system domain (they start over SSH with nobody logged in and
come back after a reboot); launchd itself cannot run here."""

from __future__ import annotations

import os
import plistlib
import stat
from pathlib import Path

import pytest

from modelrig.errors import LaunchError
from modelrig.launch import launchd
from modelrig.launch.launchd import LaunchdSupervisor
from modelrig.launch.render import launchd_plist
from tests.helpers.fake_launchctl import (
    ALREADY_LOADED,
    NO_GUI_SESSION,
    OK,
    fake_env,
    install_fake_launchctl,
    not_loaded,
    running,
)

LABEL = "ai.modelrig.qwen-vl-chat.chat"
LOGIN_UID = 501


@pytest.fixture
def mac(tmp_path, monkeypatch):
    """A fake launchctl and sudo first on PATH, /Library/LaunchDaemons and $HOME under tmp_path, and the login user
    (uid 501, not root) running the engine."""
    fake = install_fake_launchctl(tmp_path / "fake")
    for key, value in fake_env(fake).items():
        monkeypatch.setenv(key, value)
    daemons = tmp_path / "Library" / "LaunchDaemons"
    daemons.mkdir(parents=True)
    monkeypatch.setattr(launchd, "DAEMONS_DIR", daemons)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(os, "geteuid", lambda: LOGIN_UID)
    monkeypatch.setattr(os, "getuid", lambda: LOGIN_UID)
    return fake


def _entry(tmp_path: Path, *, domain: str = "system", user: str = "demo") -> tuple[Path, dict]:
    entry = tmp_path / "launch" / "qwen-vl-chat" / "chat"
    entry.mkdir(parents=True)
    (entry / f"{LABEL}.plist").write_text(launchd_plist(LABEL, entry, entry / "chat.log", user=user))
    info = {"model": "qwen-vl-chat", "entry": "chat", "launchd_label": LABEL, "launchd_domain": domain,
            "bind": "127.0.0.1", "port": None, "health": {"type": "none"}}
    return entry, info


def test_a_daemon_is_installed_root_owned_and_bootstrapped_into_the_system_domain_through_sudo(mac, tmp_path):
    entry, info = _entry(tmp_path)
    mac.answer("print", not_loaded(f"system/{LABEL}"))
    mac.answer("bootstrap", OK)
    changed, details = LaunchdSupervisor().start(entry, info, timeout=None, wait=False, env=None, args=[])
    daemon = launchd.DAEMONS_DIR / f"{LABEL}.plist"
    assert changed is True and details == {"plist": str(daemon), "domain": "system"}
    assert mac.calls() == [
        ["sudo", "-n", "install", "-m", "0644", "-o", "0", "-g", "0", str(entry / f"{LABEL}.plist"), str(daemon)],
        ["sudo", "-n", "launchctl", "print", f"system/{LABEL}"],
        ["launchctl", "print", f"system/{LABEL}"],
        ["sudo", "-n", "launchctl", "bootstrap", "system", str(daemon)],
        ["launchctl", "bootstrap", "system", str(daemon)],
    ]
    assert mac.unanswered() == []
    mode = daemon.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o644 and (mode.st_uid, mode.st_gid) == (0, 0)
    job = plistlib.loads(daemon.read_bytes())
    assert job["UserName"] == "demo" and job["Label"] == LABEL and job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}


def test_a_running_daemon_with_the_same_plist_is_left_alone(mac, tmp_path):
    entry, info = _entry(tmp_path)
    daemon = launchd.DAEMONS_DIR / f"{LABEL}.plist"
    daemon.write_bytes((entry / f"{LABEL}.plist").read_bytes())
    mac.answer("print", *[running(f"system/{LABEL}", str(daemon), 4242)] * 2)
    changed, _ = LaunchdSupervisor().start(entry, info, timeout=None, wait=False, env=None, args=[])
    assert changed is False
    assert [c for c in mac.calls() if c[0] == "launchctl"] == [["launchctl", "print", f"system/{LABEL}"]]
    assert LaunchdSupervisor().check(entry, info) == []
    assert mac.unanswered() == []


def test_a_changed_plist_boots_the_daemon_out_before_bootstrapping_it_again(mac, tmp_path):
    entry, info = _entry(tmp_path)
    daemon = launchd.DAEMONS_DIR / f"{LABEL}.plist"
    daemon.write_text("an older plist")
    mac.answer("print", running(f"system/{LABEL}", str(daemon), 4242))
    mac.answer("bootout", OK)
    mac.answer("bootstrap", OK)
    changed, _ = LaunchdSupervisor().start(entry, info, timeout=None, wait=False, env=None, args=[])
    assert changed is True
    assert [c[1] for c in mac.calls() if c[0] == "launchctl"] == ["print", "bootout", "bootstrap"]
    assert daemon.read_bytes() == (entry / f"{LABEL}.plist").read_bytes()


def test_a_bootstrap_refusal_is_one_line_naming_the_command_and_the_answer(mac, tmp_path):
    entry, info = _entry(tmp_path)
    mac.answer("print", not_loaded(f"system/{LABEL}"))
    mac.answer("bootstrap", ALREADY_LOADED)
    with pytest.raises(LaunchError) as caught:
        LaunchdSupervisor().start(entry, info, timeout=None, wait=False, env=None, args=[])
    daemon = launchd.DAEMONS_DIR / f"{LABEL}.plist"
    assert str(caught.value) == (f"sudo -n launchctl bootstrap system {daemon} failed (exit 5): "
                                 "Bootstrap failed: 5: Input/output error")


def test_an_agent_bootstrap_with_nobody_at_the_console_fails_with_125_and_says_to_use_daemons(mac, tmp_path):
    entry, info = _entry(tmp_path, domain="gui")
    mac.answer("print", not_loaded(f"gui/{LOGIN_UID}/{LABEL}"))
    mac.answer("bootstrap", NO_GUI_SESSION)
    with pytest.raises(LaunchError) as caught:
        LaunchdSupervisor().start(entry, info, timeout=None, wait=False, env=None, args=[])
    agent = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert str(caught.value) == (
        f"launchctl bootstrap gui/{LOGIN_UID} {agent} failed (exit 125): Bootstrap failed: 125: Domain does not "
        "support specified action; nobody is logged in at this Mac's console, so its GUI domain does not exist; "
        "use LaunchDaemons (serve.launchd_domain: system, the default) or log in at the console")
    assert mac.calls() == [["launchctl", "print", f"gui/{LOGIN_UID}/{LABEL}"],
                           ["launchctl", "bootstrap", f"gui/{LOGIN_UID}", str(agent)]]  # no sudo for an agent


def test_without_passwordless_sudo_the_daemon_is_refused_before_launchctl_runs(mac, tmp_path):
    entry, info = _entry(tmp_path)
    mac.sudo_needs_password()
    with pytest.raises(LaunchError) as caught:
        LaunchdSupervisor().start(entry, info, timeout=None, wait=False, env=None, args=[])
    assert "failed (exit 1): sudo: a password is required; a LaunchDaemon needs root: allow the login user " \
        "passwordless sudo for launchctl and install" in str(caught.value)
    assert not (launchd.DAEMONS_DIR / f"{LABEL}.plist").exists()
    assert [c[0] for c in mac.calls()] == ["sudo"]


def test_root_needs_no_sudo(mac, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    entry, info = _entry(tmp_path, user="root")
    mac.answer("print", not_loaded(f"system/{LABEL}"))
    mac.answer("bootstrap", OK)
    LaunchdSupervisor().start(entry, info, timeout=None, wait=False, env=None, args=[])
    assert [c[0] for c in mac.calls()] == ["launchctl", "launchctl"]


def test_stop_boots_the_daemon_out_and_removes_its_plist_so_a_reboot_does_not_bring_it_back(mac, tmp_path):
    entry, info = _entry(tmp_path)
    daemon = launchd.DAEMONS_DIR / f"{LABEL}.plist"
    daemon.write_bytes((entry / f"{LABEL}.plist").read_bytes())
    mac.answer("print", running(f"system/{LABEL}", str(daemon), 4242))
    mac.answer("bootout", OK)
    changed, details = LaunchdSupervisor().stop(entry, info)
    assert changed is True and details == {"label": LABEL, "domain": "system"}
    assert [c for c in mac.calls() if c[0] == "sudo"][-1] == ["sudo", "-n", "rm", "-f", str(daemon)]
    assert [c[1] for c in mac.calls() if c[0] == "launchctl"] == ["print", "bootout"]
    assert not daemon.exists()


def test_status_reads_state_and_pid_from_launchctl_print(mac, tmp_path):
    entry, info = _entry(tmp_path)
    mac.answer("print", running(f"system/{LABEL}", "/Library/LaunchDaemons/x.plist", 4242),
               not_loaded(f"system/{LABEL}"))
    assert LaunchdSupervisor().status(entry, info) == {"running": True, "pid": 4242}
    assert LaunchdSupervisor().status(entry, info) == {"running": False, "pid": None}
