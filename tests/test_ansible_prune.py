"""modelrig_convert with prune_sources over SSH: the first run converts and prunes, the second (fetch and convert)
changes nothing and downloads nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.sshhosts import playbook, recap, ssh_hosts_fixture  # noqa: F401
from tests.test_ansible_modules import TOOLKIT, _book, _fetch_task

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
    convert = {"name": "Convert and prune.", "modelrig_convert": {
        "model": "demo-tiny-ziya", "prune_sources": True, "toolkit_env": str(TOOLKIT), "data_root": str(data_root)},
        "register": "converted"}
    book = _book(tmp_path, [_fetch_task(data_root, url, token), convert])
    store = data_root / "store" / "huggingface"

    first = playbook(tmp_path, inventory, str(book))
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout)["gamma"]["changed"] == 2
    assert sorted(p.name for p in store.iterdir()) == ["modelrig-tiny--llama-meta", "modelrig-tiny--ziya-delta"]
    assert all(weights(folder) == [] for folder in store.iterdir())
    assert any((data_root / "models" / "demo-tiny-ziya" / "final").glob("*.safetensors"))

    second = playbook(tmp_path, inventory, str(book))
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout)["gamma"] == {**recap(second.stdout)["gamma"], "changed": 0, "failed": 0}
    assert all(weights(folder) == [] for folder in store.iterdir())
