"""Inventories as operators use them: `-i inventory/` is the example fleet (no localhost), group settings live in
`group_vars/<group>/main.yml` beside the Vault file the inventory's comment says to create, and site.yml without an
inventory or without models stops with one line naming what to set. All on the controller: no host is contacted."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers.sshhosts import BIN, REPO_ROOT, ansible_env

VAULT_PASSWORD = "modelrig-test-vault"


def _run(tmp: Path, *cmd: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=cwd, env=ansible_env(tmp), capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_inventory_folder_is_the_example_fleet_without_localhost(tmp_path: Path) -> None:
    listed = _run(tmp_path, "ansible-inventory", "-i", "inventory/", "--list")
    assert listed.returncode == 0, listed.stderr
    data = yaml.safe_load(listed.stdout)
    hosts = sorted(data["_meta"]["hostvars"])
    assert hosts == ["a100-1", "a100-2", "autodl-3090", "mac-studio"]
    assert sorted(data["all"]["children"]) == ["a100", "autodl_3090", "mac_studio", "ungrouped"]
    # each group still gets its settings from group_vars/<group>/main.yml
    assert data["_meta"]["hostvars"]["a100-1"]["modelrig_data_root"] == "/data/modelrig"
    assert data["_meta"]["hostvars"]["autodl-3090"]["modelrig_supervisor"] == "process"
    assert data["_meta"]["hostvars"]["mac-studio"]["modelrig_supervisor"] == "launchd"


def test_the_vault_file_the_inventory_comment_names_keeps_the_group_settings(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO_ROOT / "inventory", inventory)
    (tmp_path / "vault-pass").write_text(VAULT_PASSWORD)
    # The command the a100 settings file documents, run as written (from the inventory folder).
    settings = (inventory / "group_vars" / "a100" / "main.yml").read_text()
    command = re.search(r"^#\s+(ansible-vault encrypt_string .*)$", settings, re.MULTILINE)
    assert command, "group_vars/a100/main.yml documents how to add the token to Vault"
    words = command.group(1).replace("'hf_...'", "hf_from_vault_123").split()
    assert words[-2:] == [">>", "group_vars/a100/vault.yml"]
    encrypted = _run(tmp_path, *words[:-2], "--vault-password-file", str(tmp_path / "vault-pass"), cwd=inventory)
    assert encrypted.returncode == 0, encrypted.stderr
    (inventory / "group_vars" / "a100" / "vault.yml").write_text(encrypted.stdout)

    shown = _run(tmp_path, "ansible-inventory", "-i", str(inventory / "a100.yml"), "--host", "a100-1",
                 "--vault-password-file", str(tmp_path / "vault-pass"))
    assert shown.returncode == 0, shown.stderr
    hostvars = yaml.safe_load(shown.stdout)
    assert hostvars["modelrig_models"] == ["qwen-vl-chat", "ziya-llama-13b-v1.1"]
    assert hostvars["modelrig_data_root"] == "/data/modelrig"
    assert "__ansible_vault" in hostvars["vault_modelrig_hf_token"]  # stored encrypted
    # and the group's token setting reads it (debug runs on the controller: no host is contacted)
    token = _run(tmp_path, "ansible", "-i", str(inventory / "a100.yml"), "a100-1", "-m", "ansible.builtin.debug",
                 "-a", "msg={{ modelrig_hf_token }}", "--vault-password-file", str(tmp_path / "vault-pass"))
    assert token.returncode == 0, token.stdout + token.stderr
    assert '"msg": "hf_from_vault_123"' in token.stdout


def test_site_without_an_inventory_names_what_to_set(tmp_path: Path) -> None:
    run = _run(tmp_path, "ansible-playbook", "playbooks/site.yml")
    assert run.returncode == 2, run.stdout + run.stderr
    assert ("no hosts to provision: name an inventory with -i, e.g. -i inventory/a100.yml (the examples in "
            "inventory/) or -i local/localhost.yml (this machine)") in run.stdout
    assert "undefined" not in run.stdout + run.stderr


def test_site_without_models_names_the_variable(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"bare-1": {"ansible_host": "127.0.0.1"}}}}))
    run = _run(tmp_path, "ansible-playbook", "-i", str(inventory), "playbooks/site.yml")
    assert run.returncode == 2, run.stdout + run.stderr
    assert ("modelrig_models is not set for bare-1: list the model ids to provision in the inventory "
            "(e.g. inventory/group_vars/<group>/main.yml or the host's variables)") in run.stdout
    assert "undefined" not in run.stdout + run.stderr
    assert "Gathering Facts" not in run.stdout  # refused before any host is contacted
