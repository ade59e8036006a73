"""`modelrig hub start|stop|status DIR`: the pull-through hub as a service under the demos' supervisors (a real
background process here; systemd at the command level through a recording systemctl)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from modelrig.hub import service
from tests.helpers.hub import modelrig_cmd
from tests.helpers.launching import free_port
from tests.helpers.service_commands import service_manager

pytestmark = pytest.mark.slow  # every test but the last starts hub servers


def hub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(modelrig_cmd("hub", *args), capture_output=True, text=True, timeout=120)


def start(root: Path, port: int, *extra: str) -> dict:
    done = hub("start", str(root), "--port", str(port), "--upstream", "http://127.0.0.1:9", "--supervisor",
               "process", "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def status(root: Path) -> dict:
    done = hub("status", str(root), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_started_once_restarted_when_it_died_or_its_token_changed_and_stopped_leaving_nothing(tmp_path: Path) -> None:
    root, port = tmp_path / "hub", free_port()
    token = tmp_path / "token"
    token.write_text("one\n")
    first = start(root, port, "--upstream-token-file", str(token))
    try:
        assert first["changed"] and first["details"]["supervisor"] == "process"
        row = status(root)
        pid = row["pid"]
        assert (row["running"], row["listening"], row["supervisor"]) == (True, True, "process")
        assert os.getsid(pid) == pid  # its own session: it outlives the shell (or SSH session) that started it
        assert not start(root, port, "--upstream-token-file", str(token))["changed"]
        assert status(root)["pid"] == pid

        os.kill(pid, signal.SIGKILL)
        while not gone(pid):
            time.sleep(0.05)
        assert status(root)["running"] is False
        again = start(root, port, "--upstream-token-file", str(token))
        assert again["changed"] and again["reasons"] == ["the hub is stopped"]
        pid = status(root)["pid"]

        token.write_text("two\n")  # a new token is only read at start: the hub is restarted
        rotated = start(root, port, "--upstream-token-file", str(token))
        assert rotated["changed"] and status(root)["pid"] != pid
        assert "two" not in (root / service.SERVICE_DIR / service.ENTRY / "start.sh").read_text()
    finally:
        stopped = hub("stop", str(root), "--json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["changed"], stopped.stderr
    assert sorted(p.name for p in root.iterdir()) == ["fleet-hub.log"]  # no service folder, no pidfile
    assert status(root) == {"running": False, "pid": None, "supervisor": None, "url": None}
    assert not json.loads(hub("stop", str(root), "--json").stdout)["changed"]


def test_a_port_that_is_not_fixed_is_one_line(tmp_path: Path) -> None:
    done = hub("start", str(tmp_path / "hub"), "--port", "0", "--upstream", "huggingface")
    assert done.returncode == 2
    assert done.stderr.strip() == "modelrig: error: --port 0: a service needs a fixed port, 1-65535 [usage]"
    assert not (tmp_path / "hub").exists()


def test_under_systemd_the_unit_is_installed_enabled_and_removed_by_stop(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    manager = service_manager(tmp_path, monkeypatch)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setattr(service, "_wait_listening", lambda svc: None)  # the recording systemctl starts nothing
    svc = service.HubService(root=tmp_path / "hub", modelrig=Path("/opt/modelrig/bin/modelrig"), host="127.0.0.1",
                             port=free_port(), serve_args=("--upstream", "huggingface"))
    unit = tmp_path / "home" / ".config" / "systemd" / "user" / service.UNIT
    assert service.start(svc, supervisor="systemd").changed
    text = unit.read_text()
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    assert f"ExecStart=/bin/sh {tmp_path}/hub/.modelrig-service/fleet-hub/start.sh" in text
    user = ["systemctl", "--user"]
    commands = manager.commands()
    assert commands[:4] == [[*user, "daemon-reload"], [*user, "is-active", service.UNIT],
                            [*user, "enable", "--now", service.UNIT],
                            [*user, "show", "-p", "MainPID", "--value", service.UNIT]]
    # then the supervisor watches the unit's state for its first second (a unit that crashes at once is reported
    # with its journal): as often as that second allows, and nothing else
    state = [*user, "show", "-p", "ActiveState,SubState,NRestarts,Result,ExecMainStatus", service.UNIT]
    assert commands[4:] and all(command == state for command in commands[4:]), commands[4:]
    assert not service.start(svc, supervisor="systemd").changed
    assert service.status(svc.root)["supervisor"] == "systemd" and service.status(svc.root)["running"]
    manager.commands()
    assert service.stop(svc.root).changed
    assert [*user, "disable", "--now", service.UNIT] in manager.commands()
    assert not unit.exists() and not (svc.root / service.SERVICE_DIR).exists()
