"""One inventory, three SSH test hosts, one run of playbooks/site.yml: a plain CPU host with the demo model (venv,
Gradio chat and OpenAI API), an AutoDL-like host (data disk, a proxy file only download tasks source, no systemd, a
BlueLM-style remote-code model over the ModelScope protocol as a Streamlit chat on its own port) and a root host
where system_packages runs with nothing missing. Every host ends healthy, its URLs answer real clients, and a
second run changes nothing on any of them."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from tests.helpers.ansible_autodl import MODEL as BLUELM
from tests.helpers.ansible_autodl import autodl_knobs, modelscope_hub_fixture, proxy_fixture  # noqa: F401
from tests.helpers.ansible_site import MODEL as DEMO
from tests.helpers.ansible_site import WHEEL_DIR, built_wheel, demo_knobs
from tests.helpers.sshhosts import SshHosts, available, playbook, recap

pytestmark = pytest.mark.slow
HOSTS = ("cpu", "autodl", "admin")


@dataclass
class Fleet:
    """The three provisioned hosts, their inventory and the first run of site.yml."""

    hosts: SshHosts
    inventory: Path
    tmp: Path
    first: subprocess.CompletedProcess[str]
    streamlit_url: str

    def run(self, book: str = "site.yml", *args: str) -> subprocess.CompletedProcess[str]:
        """Run a playbook again with the wheel the first run built (the working tree may change meanwhile)."""
        wheel = built_wheel()
        return playbook(self.tmp, self.inventory, book, "-e", f"modelrig_wheel={wheel}", *args)


def reports(out: str) -> dict[str, list[str]]:
    """Each host's report lines (`MODEL/ENTRY  URL  STATE`, then its health line) from a site.yml run."""
    tail = out.split("TASK [Show the URLs and health of each host's demos.]", 1)[-1]
    return {host: json.loads(body)["msg"] for host, body in re.findall(r"ok: \[(\S+)\] => (\{.*?\n\})", tail, re.S)}


def url_of(lines: list[str], demo: str) -> str:
    """The URL the report gives for `MODEL/ENTRY`."""
    return next(line.split()[1] for line in lines if line.startswith(f"{demo}  "))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny_hub: tuple[str, str],
          proxy: tuple[str, list[str]], modelscope_hub: str) -> Iterator[Fleet]:
    """The three hosts provisioned by one site.yml run (the first); their demos are stopped afterwards (the root
    host's would outlive its sshd otherwise)."""
    reason = available()
    if reason:
        pytest.fail(reason)
    tmp = tmp_path_factory.mktemp("fleet")
    hub_url, token = tiny_hub
    with SshHosts(tmp / "ssh-hosts") as hosts:
        cpu, autodl, admin = hosts.add("cpu"), hosts.add("autodl"), hosts.add("admin", root=True)
        autodl_vars, streamlit_url = autodl_knobs(tmp, autodl, proxy[0], modelscope_hub)
        inventory = hosts.inventory(tmp / "hosts.yml", hostvars={
            "cpu": {**demo_knobs(tmp, cpu, hub_url, "manifests-cpu"), "modelrig_hf_token": token},
            "autodl": autodl_vars,
            "admin": {**demo_knobs(tmp, admin, hub_url, "manifests-admin"), "modelrig_hf_token": token,
                      "modelrig_data_root": str(tmp / "admin-data" / "modelrig")},
        })
        first = playbook(tmp, inventory, "site.yml")
        fleet = Fleet(hosts=hosts, inventory=inventory, tmp=tmp, first=first, streamlit_url=streamlit_url)
        try:
            yield fleet
        finally:
            if any(WHEEL_DIR.glob("*/modelrig-*.whl")):
                fleet.run("down.yml")


def test_one_run_provisions_three_different_hosts(fleet):
    assert fleet.first.returncode == 0, fleet.first.stdout[-8000:] + fleet.first.stderr[-3000:]
    counts = recap(fleet.first.stdout)
    assert sorted(counts) == sorted(HOSTS)
    assert all(counts[h]["failed"] == 0 and counts[h]["unreachable"] == 0 and counts[h]["changed"] > 5
               for h in HOSTS), counts
    lines = reports(fleet.first.stdout)
    assert lines["cpu"][-1] == lines["admin"][-1] == "health: ok, 2/2 demos healthy", lines
    assert lines["autodl"] == [f"{BLUELM}/chat  {fleet.streamlit_url}  healthy", "health: ok, 1/1 demos healthy"]
    assert fleet.hosts.hosts["cpu"].address in url_of(lines["cpu"], f"{DEMO}/api")
    assert fleet.hosts.hosts["admin"].address in url_of(lines["admin"], f"{DEMO}/api")
    autodl = fleet.hosts.hosts["autodl"]
    assert any((autodl.home / "autodl-tmp" / "modelrig" / "store" / "modelscope").rglob("model.safetensors"))
    assert (autodl.home / "autodl-tmp" / "modelrig" / "run" / BLUELM / "chat.log").is_file()  # no systemd


def test_each_env_build_and_download_ran_as_an_async_job(fleet):
    # one model per host: its env built and its weights fetched, each an async job polled to its end
    jobs = {h: len(re.findall(rf"^ASYNC OK on {h}: jid=", fleet.first.stdout, re.M)) for h in HOSTS}
    assert jobs == dict.fromkeys(HOSTS, 2), fleet.first.stdout[-8000:]


def test_system_packages_ran_on_the_root_host_with_nothing_missing(fleet):
    out = fleet.first.stdout
    query = out.split("TASK [system_packages : Find which of the packages are missing.]", 1)[1].split("TASK [", 1)[0]
    assert re.search(r"^ok: \[admin\]$", query, re.M), query  # one dpkg-query for every package
    install = out.split("TASK [system_packages : Install the missing packages with apt.]", 1)[1].split("TASK [", 1)[0]
    assert "skipping: [admin]" in install and "changed: [admin]" not in install
    runs_as = fleet.hosts.ssh("admin", "id -u").stdout.strip()
    assert runs_as == "0"


def test_every_demo_answers_a_real_client(fleet):
    lines = reports(fleet.first.stdout)
    for host in ("cpu", "admin"):
        client = OpenAI(base_url=url_of(lines[host], f"{DEMO}/api"), api_key="unused-on-loopback", timeout=120)
        answer = client.chat.completions.create(model=DEMO, messages=[{"role": "user", "content": "Hello"}],
                                                max_tokens=8)
        assert answer.choices[0].message.content.strip(), host
        with urllib.request.urlopen(url_of(lines[host], f"{DEMO}/chat"), timeout=60) as page:
            assert page.status == 200 and b"gradio" in page.read().lower(), host
    with urllib.request.urlopen(f"{fleet.streamlit_url}_stcore/health", timeout=30) as health:
        assert health.read() == b"ok"


def test_second_run_changes_nothing_on_any_host(fleet):
    again = fleet.run()
    assert again.returncode == 0, again.stdout[-8000:] + again.stderr[-3000:]
    counts = recap(again.stdout)
    assert {h: counts[h]["changed"] for h in HOSTS} == dict.fromkeys(HOSTS, 0), again.stdout[-8000:]
    assert all(counts[h]["failed"] == 0 for h in HOSTS)
    # every env and every model's weights were found in place by a direct stamp check: no async job to wait for
    assert "ASYNC" not in again.stdout, again.stdout[-8000:]
    lines = reports(again.stdout)
    assert [lines[h][-1] for h in HOSTS] == ["health: ok, 2/2 demos healthy", "health: ok, 1/1 demos healthy",
                                             "health: ok, 2/2 demos healthy"]
