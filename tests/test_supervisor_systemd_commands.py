"""The systemd supervisor at the command level: which systemctl commands it runs, in what order, and what it does
with each answer (a recording systemctl first on PATH; user units, as a non-root user gets them)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelrig.errors import HealthCheckError, LaunchError
from modelrig.launch.systemd import SystemdSupervisor, crashed, journal_tail, unit_path, unit_state
from tests.helpers.launching import free_port
from tests.helpers.service_commands import ServiceManager, service_manager

UNIT = "modelrig-tiny-api.service"


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServiceManager:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    return service_manager(tmp_path, monkeypatch)


def entry(tmp_path: Path, text: str = "[Service]\nExecStart=/bin/true\n") -> tuple[Path, dict]:
    folder = tmp_path / "entry"
    folder.mkdir(exist_ok=True)
    (folder / UNIT).write_text(text)
    return folder, {"model": "tiny", "entry": "api", "port": free_port(), "bind": "127.0.0.1", "health": None,
                    "systemd_unit": UNIT}


def user(*args: str) -> list[str]:
    return ["systemctl", "--user", *args]


def start(folder: Path, info: dict) -> tuple[bool, dict]:
    return SystemdSupervisor().start(folder, info, timeout=None, wait=False, env=None, args=[])


def test_a_first_start_installs_the_user_unit_reloads_then_enables_it(tmp_path, manager):
    folder, info = entry(tmp_path)
    changed, details = start(folder, info)
    installed = tmp_path / "home" / ".config" / "systemd" / "user" / UNIT
    assert changed and details == {"unit": str(installed)}
    assert installed.read_text() == (folder / UNIT).read_text()
    assert manager.commands() == [user("daemon-reload"), user("is-active", UNIT), user("enable", "--now", UNIT)]


def test_an_active_unchanged_unit_is_only_asked_whether_it_is_active(tmp_path, manager):
    folder, info = entry(tmp_path)
    start(folder, info)
    manager.commands()
    assert start(folder, info) == (False, {"unit": str(tmp_path / "home/.config/systemd/user" / UNIT)})
    assert manager.commands() == [user("is-active", UNIT)]


def test_a_changed_unit_of_an_active_service_is_reloaded_and_restarted(tmp_path, manager):
    folder, info = entry(tmp_path)
    start(folder, info)
    manager.commands()
    folder, info = entry(tmp_path, "[Service]\nExecStart=/bin/true --changed\n")
    assert start(folder, info)[0] is True
    assert manager.commands() == [user("daemon-reload"), user("is-active", UNIT), user("restart", UNIT)]


def test_a_failing_enable_is_one_error_naming_the_command_and_its_message(tmp_path, manager, monkeypatch):
    folder, info = entry(tmp_path)
    manager.fail(monkeypatch, "enable")
    with pytest.raises(LaunchError) as raised:
        start(folder, info)
    assert raised.value.code == "service_manager_failed"
    assert str(raised.value) == f"systemctl --user enable --now {UNIT} failed: Failed to enable: Access denied"
    assert raised.value.fields["command"] == user("enable", "--now", UNIT)


def test_stop_disables_an_active_unit_removes_its_file_and_leaves_a_stopped_one_alone(tmp_path, manager):
    folder, info = entry(tmp_path)
    start(folder, info)
    manager.commands()
    sup = SystemdSupervisor()
    assert sup.stop(folder, info) == (True, {"unit": UNIT})
    assert manager.commands() == [user("is-active", UNIT), user("disable", "--now", UNIT), user("daemon-reload")]
    assert not unit_path(info).exists()  # down leaves no unit behind
    assert sup.stop(folder, info) == (False, {"unit": UNIT})
    assert manager.commands() == [user("is-active", UNIT)]


def test_status_reads_the_state_word_and_the_main_pid(tmp_path, manager):
    folder, info = entry(tmp_path)
    sup = SystemdSupervisor()
    assert sup.status(folder, info) == {"running": False, "state": "inactive", "pid": None}
    start(folder, info)
    manager.commands()
    assert sup.status(folder, info) == {"running": True, "state": "active", "pid": 4242}
    assert manager.commands() == [user("is-active", UNIT), user("show", "-p", "MainPID", "--value", UNIT)]


def test_a_unit_that_crashes_and_is_restarted_fails_the_start_at_once_with_its_journal(tmp_path, manager):
    folder, info = entry(tmp_path)
    info["health"] = {"type": "http", "url": f"http://127.0.0.1:{info['port']}/health"}  # nothing answers
    props = ("ActiveState", "SubState", "NRestarts", "Result", "ExecMainStatus")
    manager.replay(UNIT, shows=[dict(zip(props, ("active", "running", "0", "success", "0"), strict=True)),
                                dict(zip(props, ("activating", "auto-restart", "1", "exit-code", "1"), strict=True))],
                   journal=["Traceback (most recent call last):", '  File "/srv/app.py", line 1, in <module>',
                            "ModuleNotFoundError: No module named 'torchx'"])
    began = time.monotonic()
    with pytest.raises(HealthCheckError) as raised:
        SystemdSupervisor().start(folder, info, timeout=60, wait=True, env=None, args=[])
    assert time.monotonic() - began < 5  # not the 60 s health timeout
    assert raised.value.code == "health_check_failed"
    assert raised.value.fields["exit_status"] == 1
    journal = ["journalctl", "--user", "-u", UNIT, "-n", "20", "--no-pager", "-o", "cat"]
    assert str(raised.value) == (
        f"tiny/api exited (status 1) before it became healthy; last lines of `{' '.join(journal)}`:\n"
        "Traceback (most recent call last):\n  File \"/srv/app.py\", line 1, in <module>\n"
        "ModuleNotFoundError: No module named 'torchx'")
    show = user("show", "-p", ",".join(props), UNIT)
    assert manager.commands() == [user("daemon-reload"), user("is-active", UNIT), user("enable", "--now", UNIT),
                                  user("show", "-p", "MainPID", "--value", UNIT), show, show, journal]


def test_as_root_the_state_and_journal_are_read_from_the_system_manager(tmp_path, manager, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    manager.replay(UNIT, shows=[{"ActiveState": "failed", "SubState": "failed", "NRestarts": "0",
                                 "Result": "exit-code", "ExecMainStatus": "2"}], journal=["a", "b"])
    assert unit_state(UNIT) == {"ActiveState": "failed", "SubState": "failed", "NRestarts": "0",
                                "Result": "exit-code", "ExecMainStatus": "2"}
    assert crashed(unit_state(UNIT), 0) is True
    assert journal_tail(UNIT, 1) == f"; last lines of `journalctl -u {UNIT} -n 1 --no-pager -o cat`:\nb"
    props = "ActiveState,SubState,NRestarts,Result,ExecMainStatus"
    assert manager.commands() == [["systemctl", "show", "-p", props, UNIT]] * 2 + [
        ["journalctl", "-u", UNIT, "-n", "1", "--no-pager", "-o", "cat"]]


def test_a_running_unit_is_not_crashed_until_it_fails_waits_to_restart_or_restarts():
    running = {"ActiveState": "active", "SubState": "running", "NRestarts": "2"}
    assert crashed(running, 2) is False
    assert crashed({**running, "NRestarts": "3"}, 2) is True
    assert crashed({**running, "ActiveState": "activating", "SubState": "auto-restart"}, 2) is True
    assert crashed({**running, "ActiveState": "inactive", "SubState": "dead"}, 2) is True
