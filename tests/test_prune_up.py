"""`up --prune-sources` on a running demo model: the sources go, a second `up` downloads and restarts nothing, a
changed step brings them back and reconverts byte-identical outputs, the lock marks them pruned, `verify` passes
(and still catches a real drift), and `rebuild` from that lock on an emptied data root fetches, converts and
prunes again."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelrig.stamp import read_stamp
from tests.helpers.demo_root import DemoRoot, demo_root, run

pytestmark = pytest.mark.slow
MODEL = "prune-tiny-ziya"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRoot]:
    with demo_root(tmp_path_factory, MODEL) as demo:
        yield demo


def weight_files(root: Path) -> dict[str, list[str]]:
    """The files (not the stamp or lock) of every store folder."""
    return {folder.name: sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            for folder in sorted((root / "store" / "huggingface").iterdir())}


def stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["stage"] == name)


def test_up_prunes_and_a_second_up_changes_nothing_then_lock_verify_and_rebuild_agree(host: DemoRoot) -> None:
    root = host.root
    assert all(weight_files(root).values())
    code, out, err = run(root, "up", MODEL, "--prune-sources", "--json")
    assert code == 0, err
    report = json.loads(out)
    pruned = stage(report, "convert")["details"]["pruned"]
    assert pruned["freed_bytes"] > 0 and sorted(s["name"] for s in pruned["sources"]) == ["base", "delta"]
    assert "prune: freed" in stage(report, "convert")["summary"]
    assert stage(report, "launch")["changed"] is False  # pruning the sources restarts nothing
    assert weight_files(root) == {"modelrig-tiny--llama-meta": [], "modelrig-tiny--ziya-delta": []}

    code, out, err = run(root, "up", MODEL, "--prune-sources", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["changed"] is False, [s["summary"] for s in again["stages"] if s["changed"]]
    assert "2 pruned after conversion" in stage(again, "fetch")["summary"]
    assert weight_files(root) == {"modelrig-tiny--llama-meta": [], "modelrig-tiny--ziya-delta": []}

    final = {p.name: p.read_bytes() for p in (root / "models" / MODEL / "final").glob("*.safetensors")}
    manifest = host.manifests / f"{MODEL}.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["convert"][-1]["to_safetensors"]["max_shard_size"] = "400MB"
    manifest.write_text(yaml.safe_dump(data))
    code, out, err = run(root, "up", MODEL, "--prune-sources", "--json")  # the step changed: sources come back
    assert code == 0, err
    report = json.loads(out)
    assert stage(report, "fetch")["changed"] is True
    assert stage(report, "convert")["details"]["steps"][0]["changed"] is True
    assert stage(report, "convert")["details"]["pruned"]["freed_bytes"] == pruned["freed_bytes"]
    assert {p.name: p.read_bytes() for p in (root / "models" / MODEL / "final").glob("*.safetensors")} == final
    assert weight_files(root) == {"modelrig-tiny--llama-meta": [], "modelrig-tiny--ziya-delta": []}

    lock = root / "locks" / f"{MODEL}.lock.yaml"
    assert run(root, "lock", MODEL)[0] == 0
    sources = yaml.safe_load(lock.read_text())["sources"]
    assert [s["pruned"] for s in sources] == [True, True] and all(s["files"] for s in sources)
    for mode in ([], ["--full"]):
        code, out, err = run(root, "verify", MODEL, *mode)
        assert code == 0, err
        assert out.count("pruned: weights ") == 2 and "matches its lock" in out

    code, out, err = run(root, "bundle", lock, "--out", root / "b.tar", "--json")  # refused before any wheel
    assert code == 9 and json.loads(out)["error"]["code"] == "not_reproduced"
    assert f"modelrig fetch {MODEL} --restore-pruned" in json.loads(out)["error"]["message"]
    assert not (root / "b.tar").exists() and not list((root / "cache").glob("modelrig-bundle-*"))

    shard = next((root / "models" / MODEL / "final").glob("*.safetensors"))
    content = shard.read_bytes()
    shard.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    code, out, err = run(root, "verify", MODEL, "--full", "--json")
    assert code == 9 and shard.name in json.loads(out)["error"]["message"]

    assert run(root, "down", MODEL)[0] == 0
    for top in ("envs", "store", "models", "launch"):
        shutil.rmtree(root / top)
    code, out, err = run(root, "rebuild", lock, "--json")
    assert code == 0, err
    assert weight_files(root) == {"modelrig-tiny--llama-meta": [], "modelrig-tiny--ziya-delta": []}
    assert all(read_stamp(f)["pruned"]["bytes"] > 0 for f in (root / "store" / "huggingface").iterdir())
    assert run(root, "verify", MODEL, "--full")[0] == 0
