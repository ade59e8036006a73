"""The demo model provisioned by site.yml on SSH test hosts: its user manifest, host variables and inventory (the
Ansible site, lock, fleet, interrupt and check tests)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
from pathlib import Path

import yaml

from tests.helpers.sshhosts import BIN, REPO_ROOT, SshHost, SshHosts, ansible_env
from tests.helpers.venvs import CACHE, pip_find_links

#: Where the modelrig role builds the toolkit wheel for the tests: one folder per checkout, kept between sessions.
#: The role builds again only when the source changed, each source state into its own subfolder, so one wheel
#: serves every Ansible test of a session, and a wheel a test pinned stays as it was.
WHEEL_DIR = CACHE / "wheels" / hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]


def built_wheel() -> Path:
    """The wheel the role built last into WHEEL_DIR (what a test pins for its later runs)."""
    return max(WHEEL_DIR.glob("*/modelrig-*.whl"), key=lambda p: p.stat().st_mtime)


VAULT_PASSWORD = "modelrig-test-vault"


#: The user manifest the tests install through modelrig_manifests_dir (the demo model under its own id).
MODEL = "ansible-tiny-ziya"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def user_manifest(folder: Path, address: str, model: str = MODEL) -> Path:
    """The demo manifest as a user manifest with its own id (`model`) and free ports on the host's address."""
    data = yaml.safe_load((REPO_ROOT / "model_manifests" / "demo-tiny-ziya.yaml").read_text())
    data["id"] = model
    for entry in data["launch"]:
        entry["port"] = free_port(address)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def demo_knobs(tmp: Path, host: SshHost, hub_url: str, manifests: str = "manifests") -> dict[str, object]:
    """The host variables that provision the demo model on `host` from the hub at `hub_url` (all but the token):
    its data root in the host's home, its user manifest (in `tmp/manifests`) with free ports on the host's
    address, local wheels only (this machine's find-links folders; the toolkit wheel from WHEEL_DIR)."""
    return {
        "modelrig_models": [MODEL],
        "modelrig_data_root": f"{host.home}/modelrig",
        "modelrig_hf_endpoint": hub_url,
        "modelrig_manifests_dir": str(user_manifest(tmp / manifests, host.address)),
        "modelrig_bind": host.address,
        "modelrig_backend": "venv",
        "modelrig_pip": {"index_url": "", "extra_index_urls": [], "find_links": pip_find_links(),
                         "use_torch_index": False},
        "modelrig_torch_index_url": "",
        "modelrig_uv_cache_dir": str(host.slot / "uv"),
        "modelrig_wheel_build_dir": str(WHEEL_DIR),
    }


def write_inventory(hosts: SshHosts, tmp: Path, host: SshHost, hub_url: str, token: str, **extra: object) -> Path:
    """An inventory folder: hosts.yml with every knob for `host`, and group_vars/all/vault.yml encrypted."""
    folder = tmp / "inventory"
    (folder / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    knobs = {**demo_knobs(tmp, host, hub_url), "modelrig_hf_token": "{{ vault_modelrig_hf_token }}", **extra}
    hosts.inventory(folder / "hosts.yml", hostvars={host.name: knobs})
    vault = folder / "group_vars" / "all" / "vault.yml"
    vault.write_text(yaml.safe_dump({"vault_modelrig_hf_token": token}))
    (tmp / "vault-pass").write_text(VAULT_PASSWORD)
    subprocess.run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(tmp / "vault-pass"),
                    str(vault)], check=True, capture_output=True, env=ansible_env(tmp))
    return folder
