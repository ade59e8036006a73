"""Locks through Ansible over SSH to real test hosts: site.yml copies each host's lock back to the controller
(unchanged on a second run), rebuild.yml reproduces host A's lock on host B (another user, so another data root),
verify.yml passes there changing nothing and fails naming an edited launch script or a flipped weight byte, and a
bad lock is refused on the controller before any change, naming the variable, the file and the field."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers.ansible_site import MODEL, built_wheel, free_port, write_inventory
from tests.helpers.sshhosts import BIN, SshHost, SshHosts, available, playbook, recap

pytestmark = pytest.mark.slow


@dataclass
class Fleet:
    """Host A provisioned by site.yml, hosts B and C (root, for `unshare -n`) still bare; one inventory."""

    hosts: SshHosts
    a: SshHost
    b: SshHost
    c: SshHost
    inventory: Path
    tmp: Path
    first: subprocess.CompletedProcess[str]

    def run(self, book: str, *args: str) -> subprocess.CompletedProcess[str]:
        wheel = built_wheel()
        return playbook(self.tmp, self.inventory, book, "--vault-password-file", str(self.tmp / "vault-pass"),
                        "-e", f"modelrig_wheel={wheel}", *args)

    @property
    def lock(self) -> Path:
        return self.inventory / "locks" / "a" / f"{MODEL}.lock.yaml"


def _inventory(hosts: SshHosts, tmp: Path, url: str, token: str) -> Path:
    """Both hosts in one inventory with the same settings but their own data roots and uv caches; demos on
    127.0.0.1 so both hosts render identical launch files (A is stopped before B starts)."""
    folder = write_inventory(hosts, tmp, hosts.hosts["a"], url, token, modelrig_bind="127.0.0.1")
    data = yaml.safe_load((folder / "hosts.yml").read_text())
    knobs = dict(data["all"]["hosts"]["a"])
    for name, host in hosts.hosts.items():
        own = {k: v for k, v in knobs.items() if not k.startswith("ansible_")}
        home = tmp / "root-home" if host.is_root else host.home  # never root's real home
        # One Python for every host (root's PATH here finds another one first): a lock is of one Python.
        own.update(modelrig_data_root=f"{home}/modelrig", modelrig_uv_cache_dir=str(host.slot / "uv"),
                   modelrig_python="/usr/bin/python3")
        data["all"]["hosts"][name].update(own)
    (folder / "hosts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    manifest = tmp / "manifests" / f"{MODEL}.yaml"  # ports free on 127.0.0.1, where both hosts serve
    spec = yaml.safe_load(manifest.read_text())
    for entry in spec["launch"]:
        entry["port"] = free_port("127.0.0.1")
    manifest.write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny_hub: tuple[str, str]) -> Iterator[Fleet]:
    reason = available()
    if reason:
        pytest.fail(reason)
    tmp = tmp_path_factory.mktemp("lock")
    url, token = tiny_hub
    with SshHosts(tmp / "ssh-hosts") as hosts:
        # Root's shell here puts pyenv's shims first: its sessions use the system Python, as the users' do.
        a, b, c = hosts.add("a"), hosts.add("b"), hosts.add("c", root=True, env={"PYENV_VERSION": "system"})
        inventory = _inventory(hosts, tmp, url, token)
        first = playbook(tmp, inventory, "site.yml", "--limit", "a", "--vault-password-file",
                         str(tmp / "vault-pass"))
        yield Fleet(hosts=hosts, a=a, b=b, c=c, inventory=inventory, tmp=tmp, first=first)


def test_site_copies_the_lock_back_and_a_second_run_changes_nothing(fleet):
    assert fleet.first.returncode == 0, fleet.first.stdout[-6000:] + fleet.first.stderr[-3000:]
    on_host = fleet.a.home / "modelrig" / "locks" / f"{MODEL}.lock.yaml"
    assert fleet.lock.read_bytes() == on_host.read_bytes()
    lock = yaml.safe_load(fleet.lock.read_text())
    assert lock["schema"] == "modelrig-lock/1" and lock["model"] == MODEL and lock["env"]["packages"]
    mtime = on_host.stat().st_mtime_ns
    again = fleet.run("site.yml", "--limit", "a")
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    assert recap(again.stdout)["a"]["changed"] == 0, again.stdout[-6000:]
    assert on_host.stat().st_mtime_ns == mtime


def test_a_bad_lock_is_refused_before_any_change_naming_variable_file_and_field(fleet):
    bad = fleet.tmp / "bad.lock.yaml"
    text = fleet.lock.read_text()
    digest = yaml.safe_load(text)["manifest_sha256"]
    bad.write_text(text.replace(digest, digest[:-2]))
    run = fleet.run("rebuild.yml", "--limit", "b", "-e", f"modelrig_lock={bad}")
    assert run.returncode != 0
    assert f"modelrig_lock={bad}: manifest_sha256: expected a 64-hex sha256" in run.stdout, run.stdout[-4000:]
    missing = fleet.run("rebuild.yml", "--limit", "b", "-e", f"modelrig_lock={fleet.tmp / 'none.lock.yaml'}")
    assert missing.returncode != 0 and f"modelrig_lock={fleet.tmp / 'none.lock.yaml'}: lock file not found" in \
        missing.stdout, missing.stdout[-4000:]
    assert not (fleet.b.home / "modelrig").exists()


def test_rebuild_on_another_host_from_the_lock_then_verify_passes_changing_nothing(fleet):
    down = fleet.run("down.yml", "--limit", "a")  # B serves on the same ports
    assert down.returncode == 0, down.stdout[-4000:]
    run = fleet.run("rebuild.yml", "--limit", "b", "-e", f"modelrig_lock={fleet.lock}")
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
    assert recap(run.stdout)["b"]["changed"] > 0
    assert (fleet.b.home / "modelrig" / "locks" / f"{MODEL}.lock.yaml").read_bytes() == fleet.lock.read_bytes()
    assert "http://127.0.0.1:" in run.stdout
    verify = fleet.run("verify.yml", "--limit", "b", "-e", f"modelrig_lock={fleet.lock}")
    assert verify.returncode == 0, verify.stdout[-6000:]
    assert recap(verify.stdout)["b"]["changed"] == 0 and recap(verify.stdout)["b"]["failed"] == 0
    again = fleet.run("rebuild.yml", "--limit", "b", "-e", f"modelrig_lock={fleet.lock}")
    assert again.returncode == 0 and recap(again.stdout)["b"]["changed"] == 0, again.stdout[-6000:]


def test_verify_fails_naming_an_edited_launch_script_and_a_flipped_weight_byte(fleet):
    root = fleet.b.home / "modelrig"
    script = next(p for p in (root / "launch" / MODEL).rglob("*.sh") if p.is_file())
    original = script.read_bytes()
    script.write_bytes(original + b"\n# edited by hand\n")
    try:
        run = fleet.run("verify.yml", "--limit", "b", "-e", f"modelrig_lock={fleet.lock}")
        assert run.returncode != 0
        assert recap(run.stdout)["b"]["failed"] == 1 and recap(run.stdout)["b"]["changed"] == 0
        assert "difference(s) from its lock" in run.stdout, run.stdout[-6000:]
        assert f"launch {script.parent.name}/{script.name}: edited" in run.stdout, run.stdout[-6000:]
    finally:
        script.write_bytes(original)
    weight = max((p for p in (root / "store").rglob("*") if p.is_file() and p.suffix in (".bin", ".safetensors")),
                 key=lambda p: p.stat().st_size)
    saved = fleet.tmp / "weight.orig"
    shutil.copy2(weight, saved)
    with weight.open("r+b") as handle:
        handle.seek(weight.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    try:
        full = fleet.run("verify.yml", "--limit", "b", "-e", f"modelrig_lock={fleet.lock}",
                         "-e", "modelrig_verify_full=true")
        assert full.returncode != 0 and recap(full.stdout)["b"]["changed"] == 0
        assert f"{weight.name} sha256 " in full.stdout and "expected, found" in full.stdout, full.stdout[-6000:]
    finally:
        shutil.copy2(saved, weight)
    clean = fleet.run("verify.yml", "--limit", "b")  # the host's own lock, as rebuild.yml left it
    assert clean.returncode == 0 and recap(clean.stdout)["b"]["changed"] == 0, clean.stdout[-6000:]


def test_a_bundle_made_on_the_controller_rebuilds_a_fresh_host_with_no_network(fleet):
    bundle = fleet.tmp / "bundle" / f"{MODEL}.tar"
    env = {**os.environ, "MODELRIG_MANIFESTS": str(fleet.tmp / "manifests"),
           "UV_CACHE_DIR": str(fleet.tmp / "controller-uv")}
    made = subprocess.run([str(BIN / "modelrig"), "--data-root", str(fleet.a.home / "modelrig"), "bundle",
                           str(fleet.lock), "--out", str(bundle), "--json"], capture_output=True, text=True,
                          env=env, timeout=900, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    wrong = fleet.run("rebuild.yml", "--limit", "c", "-e", f"modelrig_lock={fleet.lock}",
                      "-e", f"modelrig_bundle={fleet.lock}")
    assert wrong.returncode != 0 and f"modelrig_bundle={fleet.lock}: not a modelrig bundle" in wrong.stdout, \
        wrong.stdout[-4000:]
    root = fleet.tmp / "root-home" / "modelrig"
    assert not root.exists()
    try:
        run = fleet.run("rebuild.yml", "--limit", "c", "-e", f"modelrig_lock={fleet.lock}",
                        "-e", f"modelrig_bundle={bundle}", "-e", "modelrig_rebuild_offline=true", "-v")
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
        assert recap(run.stdout)["c"]["changed"] > 0
        compact = re.sub(r"\s+", "", run.stdout)  # the module's result (-v), whatever its indentation
        assert '"cmd":["unshare","-n","--"' in compact and '"--bundle=' in compact, run.stdout[-8000:]
        assert (root / "bundles" / bundle.name).read_bytes() == bundle.read_bytes()
        verify = fleet.run("verify.yml", "--limit", "c", "-e", f"modelrig_lock={fleet.lock}",
                           "-e", "modelrig_verify_full=true")
        assert verify.returncode == 0, verify.stdout[-6000:]
        assert recap(verify.stdout)["c"]["changed"] == 0
    finally:
        down = fleet.run("down.yml", "--limit", "c")  # the root host's demos outlive the test otherwise
        assert down.returncode == 0, down.stdout[-4000:]
