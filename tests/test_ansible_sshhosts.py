"""SSH test hosts: real sshds on loopback addresses, reached by Ansible over SSH, and removed afterwards."""

from __future__ import annotations

import pwd
import subprocess

import pytest

from tests.helpers.sshhosts import MARKER, SshHosts, ansible, ssh_hosts_fixture  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_ansible_ping_reaches_three_hosts_one_of_them_root(ssh_hosts, tmp_path):
    ssh_hosts.add("alpha")
    ssh_hosts.add("beta", env={"MODELRIG_TEST_SETTING": "beta-only"})
    ssh_hosts.add("gamma", root=True)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    run = ansible(tmp_path, inventory, "all", "-m", "ansible.builtin.ping")
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("alpha", "beta", "gamma"):
        assert f"{name} | SUCCESS" in run.stdout

    who = ansible(tmp_path, inventory, "all", "-m", "ansible.builtin.command", "-a", "id -un")
    assert who.returncode == 0, who.stdout + who.stderr
    assert "gamma | CHANGED | rc=0 >>\nroot" in who.stdout
    assert f"alpha | CHANGED | rc=0 >>\n{ssh_hosts.hosts['alpha'].user}" in who.stdout
    for host in ssh_hosts.hosts.values():
        assert host.address.startswith("127.0.0.") and host.address != "127.0.0.1"

    env = ssh_hosts.ssh("beta", "printenv MODELRIG_TEST_SETTING").stdout.strip()
    assert env == "beta-only"
    assert ssh_hosts.ssh("alpha", "printenv MODELRIG_TEST_SETTING", check=False).stdout.strip() == ""


def test_password_login_is_refused(ssh_hosts):
    host = ssh_hosts.add("alpha")
    run = subprocess.run(["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={ssh_hosts.known_hosts}",
                          "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no", "-p", str(host.port),
                          f"{host.user}@{host.address}", "true"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 255 and "Permission denied" in run.stderr


def test_close_stops_sshd_and_removes_the_users(tmp_path):
    with SshHosts(tmp_path / "hosts") as hosts:
        host = hosts.add("alpha")
        assert hosts.ssh("alpha", "echo hi").stdout.strip() == "hi"
        sshd, user, home = host.sshd, host.user, host.home
        assert home.is_dir() and pwd.getpwnam(user).pw_gecos.startswith(MARKER)
    assert sshd is not None and sshd.poll() is not None
    assert user not in {e.pw_name for e in pwd.getpwall()}
    assert not home.exists()
