"""Bare Debian 12 servers (systemd-nspawn, Python 3.11.2 only, a sudo login, nothing else) on mirror-only networks:
the manifest's Python installed from a Python mirror the test serves on loopback, torch and every package from
wheel folders served over HTTP (no PyPI, no PyTorch index, for the toolkit and the model env alike), a lock whose
torch hash is read from the served folder, both demos started as the login user's systemd services (the Gradio
chat answering the demo's dialogue through the env's gradio_client; ports are free ones on the host's own loopback
address, as the container shares this machine's network); then a second bare host, booted into a network
namespace of its own (loopback only: no route out, reached through an SSH ProxyCommand into that namespace),
rebuilt from a bundle with every index and endpoint at its public default: the toolkit from the bundle's wheels,
the lock's Python (a patch release the host lacks) from a mirror folder on the host, the bundle never staged in the
login user's ~/.ansible/tmp (a 8 MiB tmpfs there), the lock's demos started again, the API answering inside the
namespace."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from modelrig.orchestrate.demo import ANSWER, PROMPT
from tests.helpers.ansible_site import user_manifest
from tests.helpers.barehost import BareHosts, available
from tests.helpers.pythons import downloads_json, mirror_folder, sha256, standalone_archive
from tests.helpers.served import Served, serve_folder
from tests.helpers.sshhosts import playbook, recap
from tests.helpers.wheelhouse import packages_wheelhouse, toolkit_wheelhouse

pytestmark = pytest.mark.slow
HELPERS = Path(__file__).parent / "helpers"

MODEL = "bare-tiny-ziya"
#: Debian 12 has 3.11.2; the manifest names another release of 3.11 (the local torch wheel is cp311).
WANTED = "3.11.7"
MODEL_REQUIREMENTS = ["torch==2.13.0", "transformers==4.37.0", "tokenizers", "sentencepiece", "accelerate", "protobuf",
                      "numpy<2", "gradio>=6,<7"]
TORCH_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@dataclass
class Fleet:
    hosts: BareHosts
    tmp: Path
    mirror: Served
    mirror_root: Path
    first: subprocess.CompletedProcess[str]

    def inventory(self, name: str, knobs: dict[str, object]) -> Path:
        path = self.tmp / f"inventory-{name}"
        path.mkdir(exist_ok=True)
        only = {name: self.hosts.hosts[name]}
        saved, self.hosts.hosts = self.hosts.hosts, only
        try:
            return self.hosts.inventory(path / "hosts.yml", hostvars={name: knobs})
        finally:
            self.hosts.hosts = saved

    def run(self, inventory: Path, book: str, *args: str) -> subprocess.CompletedProcess[str]:
        return playbook(self.tmp, inventory, book, *args)


def _manifests(folder: Path, address: str) -> Path:
    """The demo as a user manifest naming WANTED, its demos on free ports of the host's own loopback address (the
    container shares this machine's network: the manifest's default ports may be held by any other demo here)."""
    user_manifest(folder, address, MODEL)
    path = folder / f"{MODEL}.yaml"
    data = yaml.safe_load(path.read_text())
    data["env"]["python"] = WANTED
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _prepare(hosts: BareHosts, name: str) -> None:
    """What the image has before modelrig runs: python3-venv (the system_packages role's job, with sudo)."""
    hosts.hosts[name].root("DEBIAN_FRONTEND=noninteractive apt-get -qq update && DEBIAN_FRONTEND=noninteractive "
                           "apt-get -qq install -y --no-install-recommends python3-venv", timeout=600)


def _mirror_knobs(tmp: Path, address: str, mirror: str, hub: tuple[str, str]) -> dict[str, object]:
    return {
        "modelrig_models": [MODEL],
        "modelrig_data_root": "/home/operator1/modelrig",
        "modelrig_hf_endpoint": hub[0],
        "modelrig_hf_token": hub[1],
        "modelrig_manifests_dir": str(_manifests(tmp / "manifests", address)),
        "modelrig_bind": address,
        "modelrig_wheel_build_dir": str(tmp / "wheel"),
        # a mirror-only network: an index with nothing, wheel folders served over HTTP, no PyTorch index at all
        "modelrig_pip": {"index_url": f"{mirror}/empty-index/", "extra_index_urls": [],
                         "find_links": [f"{mirror}/packages/", f"{mirror}/toolkit/"], "use_torch_index": False},
        "modelrig_python_mirror": f"{mirror}/pbs",
        "modelrig_python_downloads_json_url": f"{mirror}/pbs/downloads.json",
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny_hub: tuple[str, str]) -> Iterator[Fleet]:
    reason = available()
    if reason:
        pytest.fail(reason)
    tmp = tmp_path_factory.mktemp("bare-mirror")
    root = tmp / "mirror"
    root.mkdir()
    (root / "empty-index").mkdir()
    (root / "toolkit").symlink_to(toolkit_wheelhouse())
    (root / "packages").symlink_to(packages_wheelhouse(MODEL_REQUIREMENTS))
    archive = standalone_archive(WANTED)
    mirror_folder(root / "pbs", archive)
    downloads_json(root / "pbs" / "downloads.json", WANTED, sha=sha256(archive))
    with BareHosts(tmp / "bare-hosts") as hosts, serve_folder(root) as served:
        hosts.add("bare")
        _prepare(hosts, "bare")
        fleet = Fleet(hosts=hosts, tmp=tmp, mirror=served, mirror_root=root,
                      first=subprocess.CompletedProcess([], 0))
        inventory = fleet.inventory("bare", _mirror_knobs(tmp, hosts.hosts["bare"].address, served.url, tiny_hub))
        # the demos too: they are started, health-checked and locked (their rendered files) in the same run
        fleet.first = fleet.run(inventory, "site.yml", "--tags", "toolkit,env,weights,launch,lock")
        yield fleet


def test_the_manifests_python_comes_from_the_mirror_and_torch_from_a_served_wheel_folder(fleet):
    assert fleet.first.returncode == 0, fleet.first.stdout[-8000:] + fleet.first.stderr[-3000:]
    assert recap(fleet.first.stdout)["bare"]["failed"] == 0
    home = fleet.hosts.hosts["bare"].home
    assert len([p for p in (home / "modelrig" / "envs").iterdir() if p.is_dir()]) == 1
    python_dir = home / "modelrig" / "python" / f"cpython-{WANTED}-linux-x86_64-gnu"
    assert python_dir.is_dir()
    archive = f"/pbs/20991231/cpython-{WANTED}%2B20991231-x86_64-unknown-linux-gnu-install_only.tar.gz"
    assert fleet.mirror.requests.count(archive) == 1
    assert f"/packages/{TORCH_WHEEL.replace('+', '%2B')}" in fleet.mirror.requests
    lock = yaml.safe_load((fleet.tmp / "inventory-bare" / "locks" / "bare" / f"{MODEL}.lock.yaml").read_text())
    assert lock["env"]["python"] == WANTED
    torch = next(p for p in lock["env"]["packages"] if p["name"] == "torch")
    assert (torch["version"], torch["hashes"]) == ("2.13.0+cpu", [sha256(fleet.mirror_root / "packages" / TORCH_WHEEL)])
    config = yaml.safe_load((home / "modelrig" / "config.yaml").read_text())
    assert config["pip"]["use_torch_index"] is False
    assert config["python"]["mirror"] == f"{fleet.mirror.url}/pbs"
    # both demos of the mirror-built env run as the login user's systemd services and answer: the Gradio chat
    # through the env's own gradio_client, with the demo's one dialogue word for word
    entries = _status(fleet.hosts, "bare")
    assert {e: (s["supervisor"], s["running"], s["healthy"]) for e, s in entries.items()} == {
        "chat": ("systemd", True, True), "api": ("systemd", True, True)}
    env = next(p for p in (home / "modelrig" / "envs").iterdir() if p.is_dir())
    shutil.copy(HELPERS / "gradio_ask.py", home / "gradio_ask.py")
    asked = fleet.hosts.ssh("bare", f"~/modelrig/envs/{env.name}/bin/python ~/gradio_ask.py "
                                    f"{shlex.quote(str(entries['chat']['url']))} /chat "
                                    f"{shlex.quote(json.dumps([[PROMPT, 0.0, 0.9, 64]]))}", check=False, timeout=300)
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert json.loads(asked.stdout.strip().splitlines()[-1])["chats"] == [[[PROMPT, ANSWER]]]


def _status(hosts: BareHosts, name: str) -> dict[str, dict[str, object]]:
    modelrig = "MODELRIG_MANIFESTS=~/modelrig/manifests ~/modelrig/toolkit/bin/modelrig --data-root ~/modelrig"
    out = hosts.ssh(name, f"{modelrig} status {MODEL} --json").stdout
    return {e["entry"]: e for e in json.loads(out)["entries"]}


#: Inside a namespace with loopback only, a TCP connect to anything but loopback fails at once with this errno.
ENETUNREACH = 101
_CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        print(target, "connected")
    except OSError as exc:
        print(target, exc.errno)
"""
_ASK = """
import json, sys, urllib.request
body = json.dumps({"model": sys.argv[2], "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8})
request = urllib.request.Request(sys.argv[1] + "/chat/completions", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=120))))
"""


def _outside_targets() -> list[str]:
    """Addresses a host with a route out would reach: a public address, PyPI's (resolved here, where PyPI is
    reachable), and this machine's default gateway (where an intercepting proxy sits)."""
    targets = ["1.1.1.1:443", f"{socket.getaddrinfo('pypi.org', 443, socket.AF_INET)[0][4][0]}:443"]
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000" and fields[2] != "00000000":
            gateway = socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
            targets.append(f"{gateway}:3128")
    return targets


def test_a_bundle_rebuilds_a_second_bare_host_with_no_route_out(fleet):
    assert fleet.first.returncode == 0, fleet.first.stdout[-4000:]
    hosts = fleet.hosts
    made = hosts.ssh("bare", f"MODELRIG_MANIFESTS=~/modelrig/manifests ~/modelrig/toolkit/bin/modelrig --data-root "
                             f"~/modelrig bundle ~/modelrig/locks/{MODEL}.lock.yaml --out ~/bundle.tar --json",
                     check=False, timeout=1200)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    bundle = fleet.tmp / "bundle.tar"
    shutil.copy(hosts.hosts["bare"].home / "bundle.tar", bundle)
    lock = fleet.tmp / "inventory-bare" / "locks" / "bare" / f"{MODEL}.lock.yaml"

    cold = hosts.add("cold")
    _prepare(hosts, "cold")
    # the lock's Python from a mirror folder on the host itself (file://), checked against the downloads list
    archive = standalone_archive(WANTED)
    local = cold.rootfs / "srv" / "python-mirror"
    mirror_folder(local, archive)
    downloads_json(local / "downloads.json", WANTED, sha=sha256(archive))
    # the server as it will be rebuilt: booted again in a network namespace with loopback only
    hosts.reboot("cold", private_network=True)
    assert cold.netns(["ip", "-o", "link"]).stdout.split(":")[1].strip() == "lo"
    assert len(cold.netns(["ip", "-o", "link"]).stdout.splitlines()) == 1
    assert cold.netns(["ip", "-4", "route", "show", "table", "main"]).stdout == ""
    assert cold.netns(["ip", "-6", "route", "show", "default"]).stdout == ""
    targets = _outside_targets()
    probe = cold.netns(["/usr/bin/python3", "-c", _CONNECT, *targets]).stdout
    assert probe.splitlines() == [f"{t} {ENETUNREACH}" for t in targets]
    uid = cold.root("id -u operator1").stdout.strip()
    cold.root(f"install -d -o operator1 -g operator1 /home/operator1/.ansible && mount -t tmpfs -o "
              f"size=8m,uid={uid},gid={uid},mode=0700 tmpfs /home/operator1/.ansible")
    # every index and endpoint left at its public default (PyPI, the PyTorch index, the Hugging Face hub): a reach
    # for any of them would fail here, so the rebuild succeeding proves the bundle carries everything
    knobs = {
        "modelrig_models": [MODEL],
        "modelrig_data_root": "/home/operator1/modelrig",
        "modelrig_manifests_dir": str(fleet.tmp / "manifests"),
        # the locked launch files name the first host's address (every 127.x address is on the namespace's lo)
        "modelrig_bind": hosts.hosts["bare"].address,
        "modelrig_python_mirror": "file:///srv/python-mirror",
        "modelrig_python_downloads_json_url": "/srv/python-mirror/downloads.json",
    }
    inventory = fleet.inventory("cold", knobs)
    run = fleet.run(inventory, "rebuild.yml", "-e", f"modelrig_lock={lock}", "-e", f"modelrig_bundle={bundle}")
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
    root = cold.home / "modelrig"
    assert (root / "bundles" / "bundle.tar").stat().st_size == bundle.stat().st_size
    assert (root / "toolkit" / "bin" / "modelrig").is_file()
    assert (root / "python" / f"cpython-{WANTED}-linux-x86_64-gnu").is_dir()
    env = next(p for p in (root / "envs").iterdir() if p.is_dir())
    base = hosts.ssh("cold", f"~/modelrig/envs/{env.name}/bin/python -c "
                             "'import sys, torch; print(sys.version.split()[0], torch.__version__)'", check=False)
    assert base.stdout.split() == [WANTED, "2.13.0+cpu"], base.stderr
    again = fleet.run(inventory, "rebuild.yml", "-e", f"modelrig_lock={lock}", "-e", f"modelrig_bundle={bundle}")
    assert again.returncode == 0 and recap(again.stdout)["cold"]["changed"] == 0, again.stdout[-6000:]
    # the rebuild started the lock's demos (the first host ran them) as systemd services; the API answers a
    # request made inside the host's namespace: nothing outside it can reach the host
    entries = _status(hosts, "cold")
    assert {e: (s["supervisor"], s["running"], s["healthy"]) for e, s in entries.items()} == {
        "chat": ("systemd", True, True), "api": ("systemd", True, True)}
    asked = cold.netns(["/usr/bin/python3", "-c", _ASK, str(entries["api"]["url"]), MODEL], timeout=180)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["choices"][0]["message"]["content"].strip()
