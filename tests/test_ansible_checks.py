"""site.yml's safety checks over SSH: --check --diff on a fresh host changes nothing, wrong variables are refused
before any change and named, and the roles, playbooks and inventories are ansible-lint (production) and yamllint
clean."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.helpers.ansible_site import MODEL, write_inventory
from tests.helpers.sshhosts import (  # noqa: F401
    BIN,
    REPO_ROOT,
    ansible_env,
    debug_messages,
    playbook,
    recap,
    ssh_hosts_fixture,
)

pytestmark = pytest.mark.slow
#: yamllint settings that agree with ansible-lint's own YAML rules.
YAMLLINT = json.dumps({"extends": "default", "rules": {
    "line-length": {"max": 160}, "comments": {"min-spaces-from-content": 1}, "comments-indentation": False,
    "braces": {"max-spaces-inside": 1}, "octal-values": {"forbid-implicit-octal": True, "forbid-explicit-octal": True},
    "truthy": {"allowed-values": ["true", "false"]}}})


def test_check_diff_on_a_fresh_host_changes_nothing(ssh_hosts, tmp_path, tiny_hub):
    host = ssh_hosts.add("fresh")
    url, token = tiny_hub
    inventory = write_inventory(ssh_hosts, tmp_path, host, url, token)
    before = sorted(p.name for p in host.home.iterdir())
    run = playbook(tmp_path, inventory, "site.yml", "--check", "--diff", "--vault-password-file",
                   str(tmp_path / "vault-pass"))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counts = recap(run.stdout)["fresh"]
    assert counts["failed"] == 0 and counts["changed"] > 0  # it says what would change ...
    assert "+  bind: " + host.address in run.stdout  # ... with the config it would write as a diff
    after = sorted(p.name for p in host.home.iterdir() if p.name != ".ansible")  # Ansible's own remote tmp
    assert after == before  # ... and writes nothing
    assert not (host.home / "modelrig").exists()
    assert token not in run.stdout
    # ... and, with no toolkit env on the host yet, what each stage would do, planned on the controller
    manifest = yaml.safe_load((tmp_path / "manifests" / f"{MODEL}.yaml").read_text())
    ports = [entry["port"] for entry in manifest["launch"]]
    messages = debug_messages(run.stdout, "fresh")
    assert messages["model_env : Say which env each model would get."] == [
        f"would build env {MODEL} (python 3.11 via venv, torch 2.13.0 cpu)"]
    assert messages["model_weights : Say what each model's weights would be fetched from and converted into."] == [
        f"would fetch modelrig-tiny/llama-meta@main (1 MB) from {url}",
        f"would fetch modelrig-tiny/ziya-delta@main (1 MB) from {url}",
        "would convert base_hf (llama_meta_to_hf)", "would convert merged (apply_delta)",
        "would convert final (to_safetensors)"]
    assert messages["model_launch : Say which demos would start, on which port, under which supervisor."] == [
        f"would start demo chat on port {ports[0]} (a supervised process)",
        f"would start demo api on port {ports[1]} (a supervised process)"]


@pytest.mark.parametrize(("override", "named"), [
    ({"modelrig_models": ["no-such-model"]}, "modelrig_models: no manifest with id no-such-model"),
    ({"modelrig_data_root": "relative/data"}, "modelrig_data_root must be an absolute path"),
    ({"modelrig_backend": "docker"}, "modelrig_backend"),
    ({"modelrig_hub_prefer": "github"}, "modelrig_hub_prefer"),
    ({"model_launch_timeout": "abc"}, "model_launch_timeout"),
    ({"modelrig_ports": {"demo/chat": "abc"}}, 'modelrig_ports: "demo/chat": "abc" must be MODEL/ENTRY mapped to'),
    ({"modelrig_manifests_dir": "/nonexistent/manifests", "modelrig_models": ["demo-tiny-ziya"]},
     'modelrig_manifests_dir must be a folder on the controller, got "/nonexistent/manifests"'),
])
def test_a_wrong_variable_is_refused_by_name_before_any_change(ssh_hosts, tmp_path, tiny_hub, override,
                                                               named):
    host = ssh_hosts.add("wrong")
    url, token = tiny_hub
    inventory = write_inventory(ssh_hosts, tmp_path, host, url, token)
    run = playbook(tmp_path, inventory, "site.yml", "--vault-password-file", str(tmp_path / "vault-pass"),
                   "-e", json.dumps(override))
    assert run.returncode != 0
    assert named in run.stdout, run.stdout[-4000:]
    assert recap(run.stdout)["wrong"]["changed"] == 0
    assert not (host.home / "modelrig").exists()


def test_roles_playbooks_and_inventories_are_lint_clean(tmp_path):
    paths = ["roles", "playbooks", "inventory"]
    lint = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--profile", "production", *paths], cwd=REPO_ROOT,
                          env=ansible_env(tmp_path), capture_output=True, text=True, timeout=600, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 failure(s), 0 warning(s)" in lint.stdout + lint.stderr
    yamllint = subprocess.run([str(BIN / "yamllint"), "--strict", "-d", YAMLLINT, *paths], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300, check=False)
    assert yamllint.returncode == 0, yamllint.stdout + yamllint.stderr


@pytest.mark.parametrize("inventory", ["a100.yml", "autodl_3090.yml", "mac_studio.yml"])
def test_example_inventories_pass_the_inventory_checks(inventory, tmp_path):
    run = playbook(tmp_path, REPO_ROOT / "inventory" / inventory, "check_inventory.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    # every check ran (the ports check is skipped where no modelrig_ports are set) and none failed
    plays = yaml.safe_load((REPO_ROOT / "playbooks" / "check_inventory.yml").read_text())
    checks = len(next(play for play in plays if play["hosts"] == "all")["tasks"])
    assert checks >= 7
    counts = recap(run.stdout)
    assert "localhost" not in counts  # the no-inventory check runs only when the inventory names no host
    assert counts and all(c["failed"] == 0 and c["ok"] + c["skipped"] == checks for c in counts.values())
