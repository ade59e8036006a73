"""`--prune-sources`: the fetched sources a finished conversion read are deleted (their stamps keep every sha256),
fetch and convert stay idempotent and quiet, and a conversion that must run again gets its sources back first."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from modelrig.catalog import resolve_model
from modelrig.config import Context, DataRoot, HostConfig
from modelrig.hub.server import serve_in_thread
from modelrig.hub.tiny_repos import TOKEN_FILE
from modelrig.lock.collect import conversions, fetched_sources
from modelrig.lock.schema import Env, Lock, Platform
from modelrig.lock.verify import check_conversions, check_weights
from modelrig.manifest import load_manifest
from modelrig.stamp import STAMP_NAME, read_stamp, sha256_file
from tests.helpers.hub import demo_repos

Cli = Callable[..., tuple[int, str, str]]
MODEL = "demo-tiny-ziya"
REPOS = ["modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("prune-hub")
    demo_repos(tmp_path_factory, root)
    url, stop = serve_in_thread(root, token_file=root / TOKEN_FILE)
    yield url, root
    stop()


@pytest.fixture
def root(data_root: Path, hub: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root whose host config points at the tiny hub."""
    url, hub_dir = hub
    data_root.mkdir(parents=True, exist_ok=True)
    (data_root / "config.yaml").write_text(yaml.safe_dump(
        {"hub": {"hf_endpoint": url, "token_file": str(hub_dir / TOKEN_FILE)}}))
    monkeypatch.setenv("MODELRIG_NO_PROGRESS", "1")
    return data_root


def store_folders(root: Path) -> list[Path]:
    return sorted((root / "store" / "huggingface").iterdir())


def visible_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.relative_to(folder).as_posix().startswith("."))


def outputs(root: Path) -> dict[str, str]:
    final = root / "models" / MODEL / "final"
    return {p.name: sha256_file(p) for p in sorted(final.iterdir()) if p.is_file() and p.name != STAMP_NAME}


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under the data root: sha256 and mtime."""
    return {p.relative_to(root).as_posix(): (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_variant(tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """The demo manifest, same id (so the same outputs), edited."""
    data = yaml.safe_load(resolve_model(MODEL).read_text())
    edit(data)
    path = tmp_path / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fetched_and_pruned(cli: Cli, root: Path, model: str | Path = MODEL) -> dict:
    code, out, err = cli("fetch", model, "--json")
    assert code == 0, err
    code, out, err = cli("convert", model, "--prune-sources", "--json")
    assert code == 0, err
    return json.loads(out)


def test_convert_prunes_the_sources_and_a_second_fetch_and_convert_download_and_change_nothing(cli: Cli,
                                                                                                root: Path) -> None:
    assert cli("fetch", MODEL)[0] == 0
    before = {f.name: (read_stamp(f), visible_files(f)) for f in store_folders(root)}
    total = sum(e["size"] for stamp, _ in before.values() for e in stamp["files"])
    code, out, err = cli("convert", MODEL, "--prune-sources", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True
    pruned = result["details"]["pruned"]
    assert pruned["freed_bytes"] == total > 0
    assert sorted(s["name"] for s in pruned["sources"]) == ["base", "delta"]
    for folder in store_folders(root):
        assert visible_files(folder) == []  # only the stamp (and the fetch lock) are left
        stamp = read_stamp(folder)
        assert stamp["files"] == before[folder.name][0]["files"]  # every path, size and sha256 kept
        assert stamp["pruned"]["by"] == [MODEL] and stamp["pruned"]["at"].endswith("Z")
    final = outputs(root)
    assert any(name.endswith(".safetensors") for name in final)

    code, out, err = cli("convert", MODEL, "--prune-sources")
    assert code == 0, err
    assert out.splitlines()[0].split()[:2] == ["convert", "unchanged"]
    assert out.splitlines()[1].split()[:2] == ["prune", "unchanged"] and "already pruned" in out

    code, out, err = cli("fetch", MODEL, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is False
    assert [s["pruned"] for s in result["details"]["sources"]] == [True, True]
    assert "pruned after conversion" in result["summary"]
    assert all("pruned after conversion" in note for note in result["details"]["notes"])
    assert all(visible_files(f) == [] for f in store_folders(root))  # nothing downloaded again

    code, out, err = cli("fetch", MODEL, "--check", "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is False
    code, out, err = cli("convert", MODEL, "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is False
    assert outputs(root) == final


def test_pinned_sources_stay_pruned_without_asking_the_hub(cli: Cli, root: Path, tmp_path: Path,
                                                           hub: tuple[str, Path]) -> None:
    fetched_and_pruned(cli, root)
    commits = {f.name: read_stamp(f)["commit"] for f in store_folders(root)}

    def pin(data: dict) -> None:
        data["weights"]["base"]["huggingface"]["revision"] = commits["modelrig-tiny--llama-meta"]
        data["weights"]["delta"]["huggingface"]["revision"] = commits["modelrig-tiny--ziya-delta"]

    pinned = manifest_variant(tmp_path, pin)
    dead = "http://127.0.0.1:9"  # nothing listens there: a pinned, pruned source needs no hub
    code, out, err = cli("fetch", pinned, "--hf-endpoint", dead, "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is False
    assert all(visible_files(f) == [] for f in store_folders(root))


def test_a_changed_step_parameter_fetches_the_sources_again_and_reconverts_byte_identical(cli: Cli, root: Path,
                                                                                          tmp_path: Path) -> None:
    fetched_and_pruned(cli, root)
    final = outputs(root)

    def shard(data: dict) -> None:
        data["convert"][-1]["to_safetensors"]["max_shard_size"] = "400MB"

    changed = manifest_variant(tmp_path, shard)
    code, out, err = cli("convert", changed)
    assert code == 6
    assert len(err.strip().splitlines()) == 1
    assert "was pruned after an earlier conversion" in err and f"modelrig fetch {MODEL} --restore-pruned" in err
    assert "[sources_pruned]" in err

    code, out, err = cli("fetch", changed, "--check", "--json")
    assert code == 0, err
    check = json.loads(out)
    assert check["changed"] is True and any("pruned after conversion" in r for r in check["reasons"])

    code, out, err = cli("fetch", changed, "--json")  # the conversion is not current: fetch restores by itself
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True and [s["pruned"] for s in result["details"]["sources"]] == [False, False]
    assert all(visible_files(f) for f in store_folders(root))
    assert all("pruned" not in read_stamp(f) for f in store_folders(root))

    code, out, err = cli("convert", changed, "--prune-sources", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True and result["details"]["steps"][0]["changed"] is True
    assert result["details"]["pruned"]["freed_bytes"] > 0
    assert outputs(root) == final


def test_deleted_outputs_bring_the_pruned_sources_back_before_converting(cli: Cli, root: Path) -> None:
    fetched_and_pruned(cli, root)
    final = outputs(root)
    shutil.rmtree(root / "models" / MODEL / "final")
    code, out, err = cli("convert", MODEL)
    assert code == 6 and "[sources_pruned]" in err
    code, out, err = cli("fetch", MODEL, "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is True
    code, out, err = cli("convert", MODEL, "--json")
    assert code == 0, err
    assert outputs(root) == final
    code, out, err = cli("fetch", MODEL, "--restore-pruned", "--json")  # nothing pruned: nothing to restore
    assert code == 0, err
    assert json.loads(out)["changed"] is False


def test_check_prints_what_would_be_freed_and_leaves_the_data_root_byte_identical(cli: Cli, root: Path) -> None:
    assert cli("fetch", MODEL)[0] == 0
    assert cli("convert", MODEL)[0] == 0
    present = sum(e["size"] for f in store_folders(root) for e in read_stamp(f)["files"])
    before = snapshot(root)
    code, out, err = cli("convert", MODEL, "--check", "--prune-sources")
    assert code == 0, err
    assert "would free" in out and "base, delta" in out
    code, out, err = cli("convert", MODEL, "--check", "--prune-sources", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True and result["details"]["pruned"]["freed_bytes"] == present
    assert "unchanged; would free" in result["summary"] and result["details"]["converted"] is False
    assert snapshot(root) == before


def test_local_sources_are_never_deleted(cli: Cli, root: Path, tmp_path: Path, hub: tuple[str, Path]) -> None:
    _, hub_dir = hub
    mine = tmp_path / "my-llama"
    shutil.copytree(hub_dir / "modelrig-tiny" / "llama-meta" / "main", mine)
    mine_before = {p.name: sha256_file(p) for p in mine.iterdir()}

    def local_base(data: dict) -> None:
        data["weights"]["base"] = {"format": "meta-llama", "local": {"var": "my_llama"}, "size_gb": 0.001}

    variant = manifest_variant(tmp_path, local_base)
    code, out, err = cli("fetch", variant, "--local", f"my_llama={mine}")
    assert code == 0, err
    code, out, err = cli("convert", variant, "--local", f"my_llama={mine}", "--prune-sources", "--json")
    assert code == 0, err
    pruned = json.loads(out)["details"]["pruned"]
    assert [s["name"] for s in pruned["sources"]] == ["delta"]
    assert {p.name: sha256_file(p) for p in mine.iterdir()} == mine_before
    (delta,) = store_folders(root)
    assert visible_files(delta) == []


def test_a_launch_that_reads_a_source_keeps_it(cli: Cli, root: Path, tmp_path: Path) -> None:
    def serve_delta(data: dict) -> None:
        data["launch"][1]["weights"] = "delta"

    variant = manifest_variant(tmp_path, serve_delta)
    result = fetched_and_pruned(cli, root, variant)
    assert [s["name"] for s in result["details"]["pruned"]["sources"]] == ["base"]
    assert visible_files(root / "store" / "huggingface" / "modelrig-tiny--ziya-delta")


def _lock(root: Path) -> tuple[Lock, Context]:
    ctx = Context(data=DataRoot(root), config=HostConfig())
    manifest = load_manifest(resolve_model(MODEL))
    lock = Lock.model_validate({
        "schema": "modelrig-lock/1", "model": MODEL, "manifest_sha256": "0" * 64, "modelrig": "test",
        "platform": Platform(os="linux", arch="x86_64", accelerator="cpu", torch="2", torch_variant="cpu"),
        "env": Env(key="k", python="3.11", backend="venv", packages=[]),
        "sources": fetched_sources(manifest, ctx), "conversions": conversions(manifest, ctx), "launch": [],
        "remote_code": []})
    return lock, ctx


@pytest.mark.parametrize("full", [False, True])
def test_verify_reports_pruned_sources_without_drift_and_a_real_change_as_drift(cli: Cli, root: Path,
                                                                                full: bool) -> None:
    assert cli("fetch", MODEL)[0] == 0
    assert cli("convert", MODEL)[0] == 0
    locked_before, _ = _lock(root)
    fetched_and_pruned(cli, root)
    lock_after, ctx = _lock(root)
    assert [s.pruned for s in lock_after.sources] == [True, True]
    assert [s.files for s in lock_after.sources] == [s.files for s in locked_before.sources]
    manifest = load_manifest(resolve_model(MODEL))
    for lock in (locked_before, lock_after):
        pruned: list[str] = []
        assert check_weights(lock, manifest, ctx, full=full, pruned=pruned) == []
        assert len(pruned) == 2 and all("pruned after conversion" in line for line in pruned)
        assert check_conversions(lock, manifest, ctx, full=full) == []
    shard = next((root / "models" / MODEL / "final").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    drift = check_conversions(lock_after, manifest, ctx, full=full)
    assert drift and shard.name in drift[0]
    stamp_path = root / "store" / "huggingface" / "modelrig-tiny--ziya-delta" / STAMP_NAME
    stamp = json.loads(stamp_path.read_text())
    stamp["files"][0]["sha256"] = "f" * 64
    stamp_path.write_text(json.dumps(stamp))
    drift = check_weights(lock_after, manifest, ctx, full=full)
    assert len(drift) == 1 and "recorded as sha256 " + "f" * 64 in drift[0]


def test_a_lock_writes_pruned_only_when_true(root: Path, cli: Cli) -> None:
    from modelrig.lock.schema import dump_lock, load_lock

    assert cli("fetch", MODEL)[0] == 0
    assert cli("convert", MODEL)[0] == 0
    lock, _ = _lock(root)
    assert "pruned" not in dump_lock(lock)
    fetched_and_pruned(cli, root)
    lock, _ = _lock(root)
    text = dump_lock(lock)
    assert text.count("pruned: true") == 2
    (root / "l.yaml").write_text(text)
    assert load_lock(root / "l.yaml") == lock


@pytest.mark.parametrize("value", ["maybe", 1, "true"])
def test_a_bad_prune_sources_setting_is_one_line_naming_the_file_and_field(cli: Cli, root: Path, value) -> None:
    config = root / "config.yaml"
    config.write_text(config.read_text() + yaml.safe_dump({"convert": {"prune_sources": value}}))
    code, _, err = cli("convert", MODEL)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"{config}: convert.prune_sources:" in err and "[config_invalid]" in err


def test_the_host_setting_prunes_and_the_flag_overrides_it(cli: Cli, root: Path) -> None:
    config = root / "config.yaml"
    config.write_text(config.read_text() + yaml.safe_dump({"convert": {"prune_sources": True}}))
    assert cli("fetch", MODEL)[0] == 0
    code, out, err = cli("convert", MODEL, "--no-prune-sources", "--json")
    assert code == 0, err
    assert "pruned" not in json.loads(out)["details"]
    assert all(visible_files(f) for f in store_folders(root))
    code, out, err = cli("convert", MODEL)
    assert code == 0, err
    assert out.splitlines()[1].split()[:2] == ["prune", "changed"] and "freed" in out
    assert all(visible_files(f) == [] for f in store_folders(root))


def test_plan_says_what_pruning_frees(cli: Cli) -> None:
    facts = Path(__file__).parent / "fixtures" / "hosts" / "a100-80gb.json"
    code, out, err = cli("plan", "ziya-llama-13b-v1", "--facts", facts, "--json")
    assert code == 0, err
    plan = json.loads(out)
    manifest = load_manifest(resolve_model("ziya-llama-13b-v1"))
    assert plan["prunable_bytes"] == int(manifest.weights["delta"].size_gb * 1e9)  # base is local: kept
    code, out, err = cli("plan", "ziya-llama-13b-v1", "--facts", facts)
    assert "with --prune-sources the sources' 26.2 GB are freed after conversion" in out
    code, out, err = cli("plan", "bluelm-7b-chat", "--facts", facts, "--json")
    assert json.loads(out)["prunable_bytes"] == 0  # served as fetched: nothing to prune
