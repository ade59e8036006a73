"""Bare Debian 12 servers (systemd-nspawn, Python 3.11.2 only, a sudo login, nothing else) on mirror-only networks:
the manifest's Python installed from a Python mirror the test serves on loopback, torch and every package from
wheel folders served over HTTP (no PyPI, no PyTorch index, for the toolkit and the model env alike), a lock whose
torch hash is read from the served folder; then a second bare host rebuilt from a bundle where every index is
dead: the toolkit from the bundle's wheels, the lock's Python (a patch release the host lacks) from a mirror folder
on the host, the bundle never staged in the login user's ~/.ansible/tmp (a 8 MiB tmpfs there)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers.barehost import BareHosts, available
from tests.helpers.pythons import downloads_json, mirror_folder, sha256, standalone_archive
from tests.helpers.served import Served, serve_folder
from tests.helpers.sshhosts import REPO_ROOT, playbook, recap
from tests.helpers.wheelhouse import packages_wheelhouse, toolkit_wheelhouse

pytestmark = pytest.mark.slow

MODEL = "bare-tiny-ziya"
#: Debian 12 has 3.11.2; the manifest names another release of 3.11 (the local torch wheel is cp311).
WANTED = "3.11.7"
MODEL_REQUIREMENTS = ["torch==2.13.0", "transformers==4.37.0", "tokenizers", "sentencepiece", "accelerate", "protobuf",
                      "numpy<2", "gradio>=6,<7"]
DEAD = "http://127.0.0.1:9"
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


def _manifests(folder: Path) -> Path:
    data = yaml.safe_load((REPO_ROOT / "model_manifests" / "demo-tiny-ziya.yaml").read_text())
    data["id"] = MODEL
    data["env"]["python"] = WANTED
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODEL}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _prepare(hosts: BareHosts, name: str) -> None:
    """What the image has before modelrig runs: python3-venv (the system_packages role's job, with sudo)."""
    hosts.hosts[name].root("DEBIAN_FRONTEND=noninteractive apt-get -qq update && DEBIAN_FRONTEND=noninteractive "
                           "apt-get -qq install -y --no-install-recommends python3-venv", timeout=600)


def _mirror_knobs(tmp: Path, mirror: str, hub: tuple[str, str]) -> dict[str, object]:
    return {
        "modelrig_models": [MODEL],
        "modelrig_data_root": "/home/operator1/modelrig",
        "modelrig_hf_endpoint": hub[0],
        "modelrig_hf_token": hub[1],
        "modelrig_manifests_dir": str(_manifests(tmp / "manifests")),
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
        inventory = fleet.inventory("bare", _mirror_knobs(tmp, served.url, tiny_hub))
        # no launch here; the model_launch handler would otherwise try to restart the never-rendered demos
        fleet.first = fleet.run(inventory, "site.yml", "--tags", "toolkit,env,weights,lock",
                                "-e", '{"model_launch_to_restart": []}')
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


def test_a_bundle_rebuilds_a_second_bare_host_with_every_index_dead(fleet):
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
    uid = cold.root("id -u operator1").stdout.strip()
    cold.root(f"install -d -o operator1 -g operator1 /home/operator1/.ansible && mount -t tmpfs -o "
              f"size=8m,uid={uid},gid={uid},mode=0700 tmpfs /home/operator1/.ansible")
    knobs = {
        "modelrig_models": [MODEL],
        "modelrig_data_root": "/home/operator1/modelrig",
        "modelrig_hf_endpoint": DEAD,
        "modelrig_manifests_dir": str(fleet.tmp / "manifests"),
        "modelrig_pip": {"index_url": f"{DEAD}/simple/", "extra_index_urls": [f"{DEAD}/extra/"],
                         "find_links": [f"{DEAD}/wheels/"], "use_torch_index": True, "torch_index_base": f"{DEAD}/whl"},
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
