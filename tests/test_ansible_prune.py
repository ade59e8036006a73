"""modelrig_convert with prune_sources over SSH: the first run converts and prunes, the second (fetch and convert)
changes nothing and downloads nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.ansible_tasks import TOOLKIT, fetch_task
from tests.helpers.ansible_tasks import book as task_book
from tests.helpers.sshhosts import playbook, recap, ssh_hosts_fixture  # noqa: F401

pytestmark = pytest.mark.slow


def weights(folder: Path) -> list[Path]:
    """The files of a store folder, leaving out its stamp, lock and the client's .cache."""
    return [f for f in folder.rglob("*") if f.is_file()
            and not any(part.startswith(".") for part in f.relative_to(folder).parts)]


def test_convert_with_prune_sources_prunes_once_and_a_second_run_changes_nothing(ssh_hosts, tmp_path, tiny_hub):
    url, token = tiny_hub
    ssh_hosts.add("gamma", root=True)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml")
    data_root = tmp_path / "data"

    def book(name: str, prune: bool) -> Path:
        convert = {"name": "Convert.", "modelrig_convert": {
            "model": "demo-tiny-ziya", "prune_sources": prune, "toolkit_env": str(TOOLKIT),
            "data_root": str(data_root)}, "register": "converted"}
        said = {"name": "Say whether it converted.", "ansible.builtin.debug": {
            "msg": "converted={{ converted.converted }} changed={{ converted.changed }}"}}
        return task_book(tmp_path / name, [fetch_task(data_root, url, token), convert, said])

    store = data_root / "store" / "huggingface"
    (tmp_path / "keep").mkdir()
    (tmp_path / "prune").mkdir()
    first = playbook(tmp_path, inventory, str(book("keep", False)))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "converted=True changed=True" in first.stdout
    assert all(weights(folder) for folder in store.iterdir())

    # The conversion is current: pruning is a change, but not a conversion (no restart of what serves it).
    pruned = playbook(tmp_path, inventory, str(book("prune", True)))
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "converted=False changed=True" in pruned.stdout
    assert recap(pruned.stdout)["gamma"]["changed"] == 1
    assert sorted(p.name for p in store.iterdir()) == ["modelrig-tiny--llama-meta", "modelrig-tiny--ziya-delta"]
    assert all(weights(folder) == [] for folder in store.iterdir())
    assert any((data_root / "models" / "demo-tiny-ziya" / "final").glob("*.safetensors"))

    second = playbook(tmp_path, inventory, str(book("prune", True)))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "converted=False changed=False" in second.stdout
    assert recap(second.stdout)["gamma"] == {**recap(second.stdout)["gamma"], "changed": 0, "failed": 0}
    assert all(weights(folder) == [] for folder in store.iterdir())
