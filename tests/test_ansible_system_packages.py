"""The system_packages role over SSH: nothing to do and no root needed when everything is installed, a clear
refusal naming the missing packages when the login user cannot become root, and as root (in check mode) the apt
install it would run. A non-root login with sudo installing for real: tests/test_ansible_bare.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.sshhosts import playbook, recap, ssh_hosts_fixture  # noqa: F401

pytestmark = pytest.mark.slow
#: A small Debian package that is not installed on the test machine (checked by the test).
MISSING = "sl"


def _book(tmp: Path, **role_vars: object) -> Path:
    path = tmp / "system.yml"
    path.write_text(yaml.safe_dump([{"name": "System packages.", "hosts": "all", "gather_facts": True,
                                     "roles": [{"role": "system_packages", **role_vars}]}], sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _missing_package_is_missing():
    probe = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", MISSING], capture_output=True, text=True,
                           check=False)
    assert probe.stdout != "installed", f"{MISSING} must not be installed on the test machine"


def test_nothing_missing_changes_nothing_without_root(ssh_hosts, tmp_path):
    ssh_hosts.add("plain")
    run = playbook(tmp_path, ssh_hosts.inventory(tmp_path / "hosts.yml"), str(_book(tmp_path)))
    assert run.returncode == 0, run.stdout[-4000:]
    assert recap(run.stdout)["plain"]["changed"] == 0
    assert "skipping: [plain]" in run.stdout.split("Install the missing packages with apt.")[1]


def test_missing_packages_without_root_are_named(ssh_hosts, tmp_path):
    ssh_hosts.add("plain")
    run = playbook(tmp_path, ssh_hosts.inventory(tmp_path / "hosts.yml"),
                   str(_book(tmp_path, system_packages_extra=[MISSING, "bash"])))
    assert run.returncode == 2
    message = next(line for line in run.stdout.splitlines() if "system packages missing on plain" in line)
    assert f"system packages missing on plain: {MISSING}; installing them as root failed (" in message
    assert message.endswith("sudo (or pass --ask-become-pass), or install them.")
    assert recap(run.stdout)["plain"]["changed"] == 0


def test_root_would_install_the_missing_packages_with_apt(ssh_hosts, tmp_path):
    ssh_hosts.add("admin", root=True)
    run = playbook(tmp_path, ssh_hosts.inventory(tmp_path / "hosts.yml"),
                   str(_book(tmp_path, system_packages_extra=[MISSING])), "--check")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "changed: [admin]" in run.stdout.split("Install the missing packages with apt.")[1]
    assert recap(run.stdout)["admin"]["changed"] == 1
