"""The launchd supervisor at the command level: which launchctl commands it runs, in what order, and what it does
with each answer (a recording launchctl first on PATH, HOME in a temp folder for ~/Library/LaunchAgents)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelrig.errors import LaunchError
from modelrig.launch.launchd import LaunchdSupervisor
from tests.helpers.launching import free_port
from tests.helpers.service_commands import ServiceManager, service_manager

LABEL = "dev.modelrig.tiny.api"


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServiceManager:
    return service_manager(tmp_path, monkeypatch)


def entry(tmp_path: Path, text: str = "<plist version=\"1.0\"><dict/></plist>\n") -> tuple[Path, dict]:
    folder = tmp_path / "entry"
    folder.mkdir(exist_ok=True)
    (folder / f"{LABEL}.plist").write_text(text)
    return folder, {"model": "tiny", "entry": "api", "port": free_port(), "bind": "127.0.0.1", "health": None,
                    "launchd_label": LABEL}


def target() -> str:
    return f"gui/{os.getuid()}/{LABEL}"


def start(folder: Path, info: dict) -> tuple[bool, dict]:
    return LaunchdSupervisor().start(folder, info, timeout=None, wait=False, env=None, args=[])


def test_a_first_start_installs_the_plist_and_bootstraps_it_into_the_gui_domain(tmp_path, manager):
    folder, info = entry(tmp_path)
    plist = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert start(folder, info) == (True, {"plist": str(plist)})
    assert plist.read_text() == (folder / f"{LABEL}.plist").read_text()
    assert manager.commands() == [["launchctl", "print", target()],
                                  ["launchctl", "bootstrap", f"gui/{os.getuid()}", str(plist)]]


def test_a_loaded_unchanged_job_is_only_printed(tmp_path, manager):
    folder, info = entry(tmp_path)
    start(folder, info)
    manager.commands()
    assert start(folder, info)[0] is False
    assert manager.commands() == [["launchctl", "print", target()]]


def test_a_changed_plist_of_a_loaded_job_is_booted_out_then_bootstrapped(tmp_path, manager):
    folder, info = entry(tmp_path)
    start(folder, info)
    manager.commands()
    folder, info = entry(tmp_path, "<plist version=\"1.0\"><dict><key>KeepAlive</key><true/></dict></plist>\n")
    assert start(folder, info)[0] is True
    plist = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert manager.commands() == [["launchctl", "print", target()], ["launchctl", "bootout", target()],
                                  ["launchctl", "bootstrap", f"gui/{os.getuid()}", str(plist)]]


def test_a_failing_bootstrap_is_one_error_naming_the_command_and_its_message(tmp_path, manager, monkeypatch):
    folder, info = entry(tmp_path)
    manager.fail(monkeypatch, "bootstrap")
    with pytest.raises(LaunchError) as raised:
        start(folder, info)
    assert raised.value.code == "service_manager_failed"
    assert str(raised.value).endswith("failed: Failed to bootstrap: Access denied")
    assert raised.value.fields["command"][:2] == ["launchctl", "bootstrap"]


def test_stop_boots_a_loaded_job_out_and_leaves_an_unloaded_one_alone(tmp_path, manager):
    folder, info = entry(tmp_path)
    start(folder, info)
    manager.commands()
    sup = LaunchdSupervisor()
    assert sup.stop(folder, info) == (True, {"label": LABEL})
    assert manager.commands() == [["launchctl", "print", target()], ["launchctl", "bootout", target()]]
    assert sup.stop(folder, info) == (False, {"label": LABEL})
    assert manager.commands() == [["launchctl", "print", target()]]


def test_status_reads_the_running_state_and_pid_from_launchctl_print(tmp_path, manager):
    folder, info = entry(tmp_path)
    sup = LaunchdSupervisor()
    assert sup.status(folder, info) == {"running": False, "pid": None}
    start(folder, info)
    assert sup.status(folder, info) == {"running": True, "pid": 4242}
