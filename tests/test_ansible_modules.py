"""The modelrig Ansible modules: documented for ansible-doc, and run over SSH they report the engine's answer
(changed, diff from its reasons, its one-line error) with tokens kept off every command line."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.ansible_tasks import TOOLKIT, fetch_task
from tests.helpers.ansible_tasks import book as task_book
from tests.helpers.sshhosts import BIN, REPO_ROOT, ansible_env, playbook, recap, ssh_hosts_fixture  # noqa: F401

pytestmark = pytest.mark.slow
MODULES = ("modelrig_env", "modelrig_fetch", "modelrig_convert", "modelrig_launch", "modelrig_facts", "modelrig_lock",
           "modelrig_state")
@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_shows_documentation_examples_and_return_values(module, tmp_path):
    run = subprocess.run([str(BIN / "ansible-doc"), "-M", "library", module], cwd=REPO_ROOT,
                         env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"MODULE {module}" in run.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "")
    for section in ("OPTIONS", "EXAMPLES", "RETURN VALUES", "toolkit_env", "hf_token", "check_mode"):
        assert section in run.stdout, section


def test_fetch_changes_then_not_and_check_mode_writes_nothing(ssh_hosts, tmp_path, tiny_hub):
    url, token = tiny_hub
    ssh_hosts.add("gamma", root=True)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    data_root = tmp_path / "data"
    facts = {"name": "Describe the host.", "modelrig_facts": {"toolkit_env": str(TOOLKIT),
                                                               "data_root": str(data_root)}}
    show = {"name": "Show the result.", "ansible.builtin.debug": {"var": "fetched"}}
    book = task_book(tmp_path, [facts, fetch_task(data_root, url, token), show,
                            {"name": "Check the fact.", "ansible.builtin.assert": {
                                "that": ["modelrig_host.os == 'linux'", "modelrig_host.ram_bytes | int > 0"]}}])

    check = playbook(tmp_path, inventory, str(book), "--check", "--diff")
    assert check.returncode == 0, check.stdout + check.stderr
    assert recap(check.stdout)["gamma"]["changed"] == 1
    assert "+base: not downloaded yet" in check.stdout  # the diff carries the engine's reasons
    assert not (data_root / "store").exists()

    first = playbook(tmp_path, inventory, str(book))
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout)["gamma"]["changed"] == 1
    assert (data_root / "store" / "huggingface" / "modelrig-tiny--llama-meta").is_dir()
    assert token not in first.stdout

    second = playbook(tmp_path, inventory, str(book))
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout)["gamma"] == {**recap(second.stdout)["gamma"], "changed": 0, "failed": 0}


def test_engine_failure_is_its_one_line_message_with_its_code(ssh_hosts, tmp_path, tiny_hub):
    url, _ = tiny_hub
    ssh_hosts.add("gamma", root=True)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    gated = playbook(tmp_path, inventory, str(task_book(tmp_path, [fetch_task(tmp_path / "d", url, "hf_wrong")])))
    assert gated.returncode == 2
    assert "modelrig: error: huggingface: modelrig-tiny/llama-meta is gated" in gated.stdout
    assert '"code": "gated_repo"' in gated.stdout and "hf_wrong" not in gated.stdout

    unknown = playbook(tmp_path, inventory, str(task_book(tmp_path, [fetch_task(tmp_path / "d", url, "x", "nope")])))
    assert unknown.returncode == 2
    assert "modelrig: error: no manifest with id 'nope'" in unknown.stdout and "[model_not_found]" in unknown.stdout


def test_missing_toolkit_env_fails_clearly(ssh_hosts, tmp_path):
    ssh_hosts.add("alpha")
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    book = task_book(tmp_path, [{"name": "Describe the host.", "modelrig_facts": {"toolkit_env": "/nowhere/env"}}])
    run = playbook(tmp_path, inventory, str(book))
    assert run.returncode == 2
    assert "/nowhere/env/bin/modelrig is not an executable file: install the toolkit env first" in run.stdout
