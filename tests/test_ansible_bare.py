"""playbooks/site.yml on a bare Debian 12 server with systemd as init, reached as a non-root login with sudo
(tests/helpers/barehost.py): from nothing to answering demos with only what such a host has (Debian's archive
through apt, its system trust store, a wheel folder served over HTTP on loopback, sudo). The demos run as the login
user's systemd services (lingering): enabled, restarted on failure, back after a reboot without Ansible; a second
run changes nothing; down.yml leaves no unit and no process. One host is booted for the whole module and the tests
run in order (site, failure restart, reboot, second run, down)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from tests.helpers.ansible_site import user_manifest
from tests.helpers.barehost import LOGIN, BareHost, BareHosts, available
from tests.helpers.sshhosts import playbook, recap
from tests.helpers.wheelmirror import served_wheels

pytestmark = pytest.mark.slow
MODEL = "bare-tiny-ziya"
#: Packages the system_packages role installs that Debian's minimal root lacks (checked before the first run).
MISSING_ON_BARE = ("python3-venv", "git", "curl", "build-essential")


@dataclass
class Bare:
    """The booted host, its inventory and the first site.yml run."""

    hosts: BareHosts
    host: BareHost
    inventory: Path
    tmp: Path
    first: subprocess.CompletedProcess[str]

    def run(self, book: str = "site.yml", *args: str) -> subprocess.CompletedProcess[str]:
        wheel = next((self.tmp / "wheel").glob("*/modelrig-*.whl"))
        return playbook(self.tmp, self.inventory, book, "-e", f"modelrig_wheel={wheel}", *args)

    @property
    def root(self) -> str:
        return f"/home/{LOGIN}/modelrig"

    def status(self) -> dict[str, dict[str, object]]:
        out = self.hosts.ssh("bare", f"{self.root}/toolkit/bin/modelrig --data-root {self.root} status {MODEL} "
                                     "--json").stdout
        return {e["entry"]: e for e in json.loads(out)["entries"]}

    def user_systemctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.hosts.ssh("bare", "systemctl --user --no-pager " + " ".join(args), check=check)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, tiny_hub: tuple[str, str]) -> Iterator[Bare]:
    reason = available()
    if reason:
        pytest.fail(reason)
    tmp = tmp_path_factory.mktemp("bare")
    url, token = tiny_hub
    with served_wheels(tmp / "wheels") as wheels, BareHosts(tmp / "hosts") as hosts:
        host = hosts.add("bare")
        installed = host.root("dpkg-query -W -f '${Package} ${db:Status-Status}\\n' " + " ".join(MISSING_ON_BARE),
                              check=False).stdout
        assert " installed" not in installed, f"the bare root should lack {MISSING_ON_BARE}: {installed}"
        knobs = {
            "modelrig_models": [MODEL],
            "modelrig_data_root": f"/home/{LOGIN}/modelrig",
            "modelrig_hf_endpoint": url,
            "modelrig_hf_token": token,
            "modelrig_manifests_dir": str(user_manifest(tmp / "manifests", host.address, MODEL)),
            "modelrig_bind": host.address,
            "modelrig_backend": "venv",
            # A mirror-only network for torch: the wheel folder served over HTTP; PyPI for the rest.
            "modelrig_pip": {"index_url": "", "extra_index_urls": [], "find_links": [wheels],
                             "use_torch_index": False},
            "modelrig_torch_index_url": "",
            "modelrig_wheel_build_dir": str(tmp / "wheel"),
            # No lock: locks read wheel hashes only from local folders, not from a find_links URL (issue 18 item 3).
            "model_lock_models": [],
        }
        inventory = hosts.inventory(tmp / "hosts.yml", hostvars={"bare": knobs})
        first = playbook(tmp, inventory, "site.yml")
        yield Bare(hosts=hosts, host=host, inventory=inventory, tmp=tmp, first=first)


def test_site_takes_the_bare_host_from_nothing_to_answering_demos_as_systemd_user_services(bare: Bare) -> None:
    assert bare.first.returncode == 0, bare.first.stdout[-8000:] + bare.first.stderr[-3000:]
    counts = recap(bare.first.stdout)["bare"]
    assert counts["failed"] == 0 and counts["changed"] > 5
    assert "health: ok, 2/2 demos healthy" in bare.first.stdout
    # apt ran for real, through sudo: the packages the minimal root lacked are installed now.
    query = bare.host.root("dpkg-query -W -f '${db:Status-Status}\\n' " + " ".join(MISSING_ON_BARE)).stdout
    assert query.split() == ["installed"] * len(MISSING_ON_BARE)
    # Root only where a role needs it: nothing under the login user's data root or systemd folder is root's.
    owners = bare.host.root(f"find {bare.root} /home/{LOGIN}/.config -not -user {LOGIN} -print -quit").stdout
    assert owners == ""
    # The demos are the login user's systemd services: enabled, active, lingering so they start at boot.
    status = bare.status()
    assert {e: (s["supervisor"], s["running"], s["healthy"]) for e, s in status.items()} == {
        "chat": ("systemd", True, True), "api": ("systemd", True, True)}
    names = [f"modelrig-{MODEL}-chat.service", f"modelrig-{MODEL}-api.service"]
    assert sorted(bare.hosts.ssh("bare", "ls ~/.config/systemd/user/").stdout.split()) == sorted(
        [*names, "default.target.wants"])
    assert bare.user_systemctl("is-enabled", *names).stdout.split() == ["enabled", "enabled"]
    assert bare.user_systemctl("is-active", *names).stdout.split() == ["active", "active"]
    assert bare.host.root(f"test -f /var/lib/systemd/linger/{LOGIN}", check=False).returncode == 0
    assert bare.user_systemctl("show", "-p", "Restart", "--value", names[0]).stdout.strip() == "on-failure"
    assert str(status["api"]["url"]).startswith(f"http://{bare.host.address}:")
    client = OpenAI(base_url=str(status["api"]["url"]), api_key="unused-on-loopback", timeout=120)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                            max_tokens=8)
    assert answer.choices[0].message.content.strip()


def _wait_healthy(bare: Bare, timeout: float = 240) -> dict[str, dict[str, object]]:
    deadline = time.monotonic() + timeout
    status: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        try:
            status = bare.status()
        except (subprocess.CalledProcessError, json.JSONDecodeError, subprocess.TimeoutExpired):
            status = {}
        if status and all(s["healthy"] for s in status.values()):
            return status
        time.sleep(2)
    raise AssertionError(f"the demos did not come back healthy: {status}")


def test_a_demo_that_dies_is_restarted_by_systemd(bare: Bare) -> None:
    before = bare.status()
    unit = f"modelrig-{MODEL}-api.service"
    main_pid = bare.user_systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()
    bare.hosts.ssh("bare", f"kill -9 {main_pid}")
    deadline = time.monotonic() + 60
    while bare.user_systemctl("show", "-p", "NRestarts", "--value", unit).stdout.strip() != "1":
        assert time.monotonic() < deadline, bare.user_systemctl("status", unit).stdout
        time.sleep(0.5)
    after = _wait_healthy(bare)
    assert after["api"]["pid"] != before["api"]["pid"] and after["chat"]["pid"] == before["chat"]["pid"]


def test_after_a_reboot_the_demos_answer_again_without_ansible(bare: Bare) -> None:
    before = bare.status()
    bare.hosts.reboot("bare")
    after = _wait_healthy(bare)
    assert all(after[e]["pid"] != before[e]["pid"] for e in before)
    assert {e: s["supervisor"] for e, s in after.items()} == {"chat": "systemd", "api": "systemd"}


def test_a_second_run_changes_nothing(bare: Bare) -> None:
    before = bare.status()
    again = bare.run()
    assert again.returncode == 0, again.stdout[-8000:] + again.stderr[-3000:]
    assert recap(again.stdout)["bare"]["changed"] == 0, again.stdout[-8000:]
    assert "health: ok, 2/2 demos healthy" in again.stdout
    assert {e: s["pid"] for e, s in bare.status().items()} == {e: s["pid"] for e, s in before.items()}


def test_down_leaves_no_unit_and_no_process(bare: Bare) -> None:
    down = bare.run("down.yml")
    assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-2000:]
    assert recap(down.stdout)["bare"]["changed"] == 1
    assert bare.hosts.ssh("bare", "ls ~/.config/systemd/user/ | grep -c '[.]service$'", check=False).stdout.strip() \
        == "0"
    assert bare.user_systemctl("list-units", "--all", "--plain", "--no-legend", "'modelrig*'").stdout.strip() == ""
    processes = bare.host.root(f"ps -eo user:20,args | grep -F {bare.root}/envs | grep -v grep", check=False).stdout
    assert processes == ""
    assert {e: s["running"] for e, s in bare.status().items()} == {"chat": False, "api": False}


def test_without_sudo_or_lingering_the_launch_names_what_to_do(bare: Bare) -> None:
    """The login user loses its passwordless sudo and its lingering: site.yml needs root for nothing but lingering
    now (every package is installed), and stops there with one line naming the ways out."""
    bare.host.root(f"rm /etc/sudoers.d/90-operator && loginctl disable-linger {LOGIN}")
    run = bare.run()
    assert run.returncode == 2, run.stdout[-6000:]
    text = " ".join(run.stdout.split())  # Ansible wraps long error lines
    assert (f"the demos of {LOGIN} on bare would be systemd user services, which need lingering (`loginctl "
            f"enable-linger {LOGIN}` as root) and becoming root failed (Task failed: Missing sudo password): give the "
            "login user sudo, enable lingering yourself, or set model_launch_user_services: false") in text
    counts = recap(run.stdout)["bare"]
    assert counts["failed"] == 1 and counts["changed"] == 0
