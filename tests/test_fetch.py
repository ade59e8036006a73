"""`modelrig fetch`: pinned, verified downloads from the Hub or ModelScope into the store, recorded for the lock."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelrig.hub.layout import open_repo, resolve_revision
from modelrig.hub.server import serve_in_thread
from modelrig.stamp import STAMP_NAME, read_stamp
from tests.helpers.hub import client_env, offline_driver, random_bytes, write_manifest, write_repo
from tests.helpers.offline import offline

Cli = Callable[..., tuple[int, str, str]]
TOKEN = "hf_test_Zq81secretvalue"
WEIGHTS = random_bytes(400_000, 7)
FILES = {"config.json": b'{"model_type": "llama"}\n', "model.safetensors": WEIGHTS,
         "tokenizer.model": random_bytes(3000, 8)}
BIN = random_bytes(50_000, 9)


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    write_repo(root, "org/tiny", {"main": {**FILES, "README.md": b"# tiny\n"}, "v1.0": FILES},
               settings={"tags": ["v1.0"]})
    write_repo(root, "msorg/tiny", {"master": FILES, "v1.0.0": FILES}, settings={"default": "master",
                                                                                 "tags": ["v1.0.0"]})
    write_repo(root, "org/two-formats", {"main": {"config.json": b"{}\n", "model.safetensors": WEIGHTS,
                                                  "pytorch_model.bin": BIN}})
    write_repo(root, "org/gated", {"main": {"config.json": b"{}\n", "consolidated.00.pth": BIN}},
               settings={"gated": True})
    (tmp_path / "hub-tokens").write_text(TOKEN + "\n")
    return root


@pytest.fixture
def hub(hub_dir: Path) -> Iterator[str]:
    url, stop = serve_in_thread(hub_dir, token_file=hub_dir.parent / "hub-tokens")
    yield url
    stop()


def commit_of(hub_dir: Path, repo: str, rev: str) -> str:
    return resolve_revision(open_repo(hub_dir, repo), rev).commit


def endpoints(url: str) -> list[str]:
    return ["--hf-endpoint", url, "--modelscope-endpoint", url]


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def tiny_manifest(tmp_path: Path, *, revision: str, ms_revision: str = "v1.0.0", **source: object) -> Path:
    return write_manifest(tmp_path, "tiny-test", {"model": {
        "huggingface": {"repo": "org/tiny", "revision": revision},
        "modelscope": {"repo": "msorg/tiny", "revision": ms_revision}, **source}})


def test_fetch_downloads_verifies_and_records_commit_and_file_hashes(cli: Cli, hub: str, hub_dir: Path,
                                                                     tmp_path: Path, data_root: Path) -> None:
    commit = commit_of(hub_dir, "org/tiny", "v1.0")
    manifest = tiny_manifest(tmp_path, revision=commit)
    code, out, err = cli("fetch", manifest, *endpoints(hub), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True
    (source,) = result["details"]["sources"]
    assert (source["hub"], source["repo"], source["commit"]) == ("huggingface", "org/tiny", commit)
    expected = [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in sorted(FILES.items())]
    assert source["files"] == expected
    store = data_root / "store" / "huggingface" / "org--tiny"
    assert Path(source["path"]) == store
    for path, data in FILES.items():
        assert (store / path).read_bytes() == data
    assert read_stamp(store)["files"] == expected
    assert "warning" not in err


def test_fetch_from_modelscope_is_verified_and_records_the_commit(cli: Cli, hub: str, hub_dir: Path,
                                                                  tmp_path: Path, data_root: Path) -> None:
    code, out, err = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), "--hub", "modelscope",
                         *endpoints(hub), "--json")
    assert code == 0, err
    (source,) = json.loads(out)["details"]["sources"]
    assert source["hub"] == "modelscope" and source["revision"] == "v1.0.0"
    assert source["commit"] == commit_of(hub_dir, "msorg/tiny", "v1.0.0")
    assert source["ref_kind"] == "tag"
    store = data_root / "store" / "modelscope" / "msorg--tiny"
    assert {f["path"]: f["sha256"] for f in source["files"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in FILES.items()}
    assert (store / "model.safetensors").read_bytes() == WEIGHTS


def test_include_and_exclude_patterns_fetch_one_weight_format(cli: Cli, hub: str, tmp_path: Path,
                                                              data_root: Path) -> None:
    manifest = write_manifest(tmp_path, "two-formats", {"model": {
        "huggingface": {"repo": "org/two-formats", "revision": "main"},
        "include": ["*.json", "*.safetensors"], "exclude": ["*.bin"]}})
    code, out, err = cli("fetch", manifest, *endpoints(hub), "--json")
    assert code == 0, err
    (source,) = json.loads(out)["details"]["sources"]
    assert [f["path"] for f in source["files"]] == ["config.json", "model.safetensors"]
    assert not (data_root / "store" / "huggingface" / "org--two-formats" / "pytorch_model.bin").exists()


def test_a_branch_is_resolved_to_its_commit_with_a_warning(cli: Cli, hub: str, hub_dir: Path,
                                                           tmp_path: Path) -> None:
    code, out, err = cli("fetch", tiny_manifest(tmp_path, revision="main"), *endpoints(hub), "--json")
    assert code == 0
    (source,) = json.loads(out)["details"]["sources"]
    main = commit_of(hub_dir, "org/tiny", "main")
    assert source["commit"] == main and source["ref_kind"] == "branch"
    assert "README.md" in [f["path"] for f in source["files"]]
    assert f"'main' of org/tiny is a branch (a moving ref), resolved to {main}" in err


def test_a_second_run_downloads_and_hashes_nothing_and_needs_no_hub(cli: Cli, hub_dir: Path, tmp_path: Path,
                                                                   data_root: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, stop = serve_in_thread(hub_dir)
    manifest = tiny_manifest(tmp_path, revision=commit_of(hub_dir, "org/tiny", "v1.0"))
    assert cli("fetch", manifest, *endpoints(url))[0] == 0
    stop()
    store = data_root / "store" / "huggingface" / "org--tiny"
    mtimes = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    import modelrig.fetch.download

    def no_hashing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a re-run must not hash")

    monkeypatch.setattr(modelrig.fetch.download, "sha256_file", no_hashing)
    monkeypatch.setattr(modelrig.fetch.download, "_hash_file", no_hashing)
    code, out, err = cli("fetch", manifest, *endpoints(url))
    assert code == 0, err
    assert "unchanged" in out and "1 sources, 3 files in place" in out
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == mtimes


def test_a_rerun_at_a_branch_asks_the_hub_but_downloads_nothing(cli: Cli, hub: str, tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, revision="main")
    assert cli("fetch", manifest, *endpoints(hub))[0] == 0
    code, out, _ = cli("fetch", manifest, *endpoints(hub), "--json")
    assert code == 0
    assert json.loads(out)["changed"] is False


def test_verify_rehashes_everything_and_repairs_a_damaged_file(cli: Cli, hub: str, hub_dir: Path, tmp_path: Path,
                                                               data_root: Path) -> None:
    manifest = tiny_manifest(tmp_path, revision=commit_of(hub_dir, "org/tiny", "v1.0"))
    assert cli("fetch", manifest, *endpoints(hub))[0] == 0
    local = data_root / "store" / "huggingface" / "org--tiny" / "model.safetensors"
    damaged = bytearray(local.read_bytes())
    damaged[1000] ^= 0xFF
    local.write_bytes(bytes(damaged))
    code, out, _ = cli("fetch", manifest, *endpoints(hub))
    assert code == 0 and "unchanged" in out  # by default the stamp is trusted: sizes are checked, not hashes
    code, out, err = cli("fetch", manifest, *endpoints(hub), "--verify", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True
    assert local.read_bytes() == WEIGHTS


@pytest.mark.slow
@pytest.mark.parametrize("hub_name", ["huggingface", "modelscope"])
def test_a_file_served_corrupted_is_deleted_retried_once_and_reported(cli: Cli, hub: str, hub_dir: Path,
                                                                     tmp_path: Path, data_root: Path,
                                                                     hub_name: str) -> None:
    repo = "org/tiny" if hub_name == "huggingface" else "msorg/tiny"
    corrupt = bytearray(WEIGHTS)
    corrupt[123] ^= 0x01
    for served in (hub_dir / repo).glob("*/model.safetensors"):
        served.write_bytes(bytes(corrupt))  # the index still records the original sha256, as a hub would
    code, _, err = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), "--hub", hub_name, *endpoints(hub))
    assert code == 5
    lines = err.strip().splitlines()
    assert lines[-1].startswith("modelrig: error: ") and "model.safetensors: sha256 does not match" in lines[-1]
    store = data_root / "store" / hub_name / repo.replace("/", "--")
    assert not (store / "model.safetensors").exists()
    assert not (store / STAMP_NAME).exists()


def test_gated_repo_without_a_token_gives_a_clear_error(cli: Cli, hub: str, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "gated-test", {"base": {
        "huggingface": {"repo": "org/gated", "revision": "main"}}})
    code, _, err = cli("fetch", manifest, *endpoints(hub))
    assert code == 5
    assert err.strip() == ("modelrig: error: huggingface: org/gated is gated: set HF_TOKEN or hub.token_file in "
                           "the host config to a token that has been granted access [gated_repo]")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["env", "token_file"])
def test_a_token_is_used_but_never_shown_or_written(cli: Cli, hub: str, tmp_path: Path, data_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    manifest = write_manifest(tmp_path, "gated-test", {"base": {
        "huggingface": {"repo": "org/gated", "revision": "main"}}})
    args: list[str] = []
    if how == "env":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    else:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        config = tmp_path / "config.yaml"
        config.write_text(f"hub: {{token_file: {token_file}}}\n")
        args = ["--config", str(config)]
    outputs = []
    for extra in ([], ["--json"], ["--dry-run"], ["--verify", "--json"]):
        code, out, err = cli(*args, "fetch", manifest, *endpoints(hub), *extra)
        assert code == 0, err
        outputs += [out, err]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    bad = write_manifest(tmp_path, "gated-missing", {"base": {"huggingface": {"repo": "org/nope", "revision": "x"}}})
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    outputs += list(cli(*args, "fetch", bad, *endpoints(hub))[1:])
    assert all(TOKEN not in text for text in outputs)
    written = [p for p in data_root.rglob("*") if p.is_file()]
    assert any(p.name == "consolidated.00.pth" for p in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path


def test_missing_repo_missing_revision_and_dead_endpoint_each_give_one_line(cli: Cli, hub: str,
                                                                           tmp_path: Path) -> None:
    cases = {
        "missing-repo": ({"repo": "org/nope", "revision": "main"}, hub, "repo org/nope not found"),
        "missing-rev": ({"repo": "org/tiny", "revision": "v9"}, hub, "revision 'v9' not found in org/tiny"),
        "dead-hub": ({"repo": "org/tiny", "revision": "main"}, dead_endpoint(), "cannot reach http://127.0.0.1:"),
    }
    for model_id, (ref, url, message) in cases.items():
        manifest = write_manifest(tmp_path, model_id, {"model": {"huggingface": ref}})
        code, _, err = cli("fetch", manifest, "--hf-endpoint", url)
        assert code == 5, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("modelrig: error: ") and message in lines[0], err


def test_modelscope_missing_repo_and_revision_give_one_line(cli: Cli, hub: str, tmp_path: Path) -> None:
    for model_id, ref, message in (("ms-repo", {"repo": "msorg/nope", "revision": "master"}, "repo msorg/nope not"),
                                   ("ms-rev", {"repo": "msorg/tiny", "revision": "v9"}, "revision 'v9' not found")):
        manifest = write_manifest(tmp_path, model_id, {"model": {"modelscope": ref}})
        code, _, err = cli("fetch", manifest, "--modelscope-endpoint", hub)
        assert code == 5
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], err


def test_auto_falls_back_from_a_dead_endpoint_to_a_live_one_and_says_so(cli: Cli, hub: str, tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, revision="v1.0")
    code, out, err = cli("fetch", manifest, "--hf-endpoint", dead_endpoint(), "--modelscope-endpoint", hub,
                         "--json")
    assert code == 0, err
    assert json.loads(out)["details"]["sources"][0]["hub"] == "modelscope"
    assert "huggingface unreachable" in err and "falling back to modelscope" in err


def test_host_config_preference_and_endpoints_are_used(cli: Cli, hub: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"hub: {{prefer: modelscope, hf_endpoint: '{dead_endpoint()}', modelscope_endpoint: '{hub}'}}\n")
    code, out, err = cli("--config", config, "fetch", tiny_manifest(tmp_path, revision="v1.0"), "--json")
    assert code == 0, err
    assert json.loads(out)["details"]["sources"][0]["hub"] == "modelscope"
    assert "falling back" not in err  # the preferred hub was tried first and answered


def test_disk_preflight_refuses_before_downloading(cli: Cli, hub: str, tmp_path: Path, data_root: Path) -> None:
    code, _, err = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), *endpoints(hub), "--headroom", "1PB")
    assert code == 4
    assert "free, the download needs 403 kB plus" in err and "headroom" in err
    store = data_root / "store" / "huggingface" / "org--tiny"
    assert not store.exists() or not any(p.suffix == ".safetensors" for p in store.rglob("*"))


def test_dry_run_lists_files_total_and_disk_check_without_downloading(cli: Cli, hub: str, tmp_path: Path,
                                                                      data_root: Path) -> None:
    code, out, err = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), *endpoints(hub), "--dry-run")
    assert code == 0, err
    assert "model.safetensors  400 kB" in out
    assert "dry run: 3 files, 403 kB in all, 403 kB to download;" in out and "enough with" in out
    assert not (data_root / "store").exists()
    code, out, _ = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), *endpoints(hub), "--dry-run",
                       "--headroom", "1PB", "--json")
    assert json.loads(out)["details"]["disk"]["ok"] is False


def test_moving_to_another_revision_leaves_only_that_revisions_files(cli: Cli, hub: str, tmp_path: Path,
                                                                     data_root: Path) -> None:
    store = data_root / "store" / "huggingface" / "org--tiny"
    assert cli("fetch", tiny_manifest(tmp_path, revision="main"), *endpoints(hub))[0] == 0
    assert (store / "README.md").is_file()
    assert cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), *endpoints(hub))[0] == 0
    assert not (store / "README.md").exists()
    assert [f["path"] for f in read_stamp(store)["files"]] == sorted(FILES)


def test_store_option_overrides_the_data_root_store(cli: Cli, hub: str, tmp_path: Path) -> None:
    code, out, _ = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), *endpoints(hub), "--store",
                       tmp_path / "disk2", "--json")
    assert code == 0
    assert json.loads(out)["details"]["sources"][0]["path"] == str(tmp_path / "disk2" / "huggingface" / "org--tiny")
    assert (tmp_path / "disk2" / "huggingface" / "org--tiny" / "model.safetensors").read_bytes() == WEIGHTS


def test_a_store_folder_fetch_did_not_write_is_refused_and_kept(cli: Cli, hub: str, tmp_path: Path) -> None:
    folder = tmp_path / "disk2" / "huggingface" / "org--tiny"
    folder.mkdir(parents=True)
    (folder / "important.txt").write_text("the only copy\n")
    (folder / "config.json").write_text("mine\n")
    code, _, err = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), *endpoints(hub), "--hub", "huggingface",
                         "--store", tmp_path / "disk2")
    assert code == 5
    assert err == (f"modelrig: error: {folder}: this folder holds files that modelrig fetch did not write (no "
                   f"{STAMP_NAME} or .modelrig-fetch-owned); fetch would delete or overwrite them, so it stops: move "
                   "them elsewhere or give another --store [store_not_ours]\n")
    assert (folder / "important.txt").read_text() == "the only copy\n"
    assert (folder / "config.json").read_text() == "mine\n"
    assert not (folder / "model.safetensors").exists()


def test_fetch_cleans_only_the_folders_it_claimed(cli: Cli, hub: str, tmp_path: Path, data_root: Path) -> None:
    store = data_root / "store" / "huggingface" / "org--tiny"
    assert cli("fetch", tiny_manifest(tmp_path, revision="main"), *endpoints(hub))[0] == 0
    (store / STAMP_NAME).unlink()  # as a download killed before its stamp leaves it
    (store / "stray.tmp").write_text("left by a killed run\n")
    code, _, err = cli("fetch", tiny_manifest(tmp_path, revision="v1.0"), *endpoints(hub))
    assert code == 0, err
    assert sorted(p.name for p in store.iterdir() if p.is_file()) == sorted(
        [*FILES, STAMP_NAME, ".modelrig-fetch-owned", ".modelrig-fetch.lock"])


def test_local_sources_are_checked_and_hashed(cli: Cli, tmp_path: Path) -> None:
    weights = tmp_path / "llama-13b"
    weights.mkdir()
    (weights / "params.json").write_text("{}")
    manifest = write_manifest(tmp_path, "local-test", {"base": {"local": {"var": "llama_meta_dir"}}})
    code, _, err = cli("fetch", manifest)
    assert code == 2 and "pass --local llama_meta_dir=PATH" in err
    code, out, err = cli("fetch", manifest, "--local", f"llama_meta_dir={weights}", "--json")
    assert code == 0, err
    (source,) = json.loads(out)["details"]["sources"]
    assert source["hub"] == "local" and source["path"] == str(weights)
    assert source["files"] == [{"path": "params.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}]


@pytest.mark.slow
def test_fetch_needs_no_network_beyond_the_local_hub(hub_dir: Path, tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, revision="v1.0")
    code = f"""
        import subprocess, sys, os
        cmd = [sys.executable, "-m", "modelrig", "fetch", {str(manifest)!r}, "--hf-endpoint", os.environ["HUB_URL"],
               "--modelscope-endpoint", os.environ["HUB_URL"], "--json"]
        for hub in ("huggingface", "modelscope"):
            out = subprocess.run([*cmd, "--hub", hub], capture_output=True, text=True)
            print(out.stdout)
            if out.returncode:
                sys.exit(out.stderr)
    """
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(tmp_path / "root")}
    proc = subprocess.run(offline(offline_driver(tmp_path, hub_dir, Path(sys.executable), code)),
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for hub_name, repo in (("huggingface", "org--tiny"), ("modelscope", "msorg--tiny")):
        assert (tmp_path / "root" / "store" / hub_name / repo / "model.safetensors").read_bytes() == WEIGHTS


def test_large_files_hashed_while_downloading_are_recorded_and_checked(cli: Cli, hub_dir: Path, hub: str,
                                                                     tmp_path: Path) -> None:
    large = random_bytes(3_000_000, 11)
    write_repo(hub_dir, "org/large", {"main": {"weights.safetensors": large}})
    manifest = write_manifest(tmp_path, "large-test", {"model": {
        "huggingface": {"repo": "org/large", "revision": "main"}}})
    code, out, err = cli("fetch", manifest, "--hf-endpoint", hub, "--json")
    assert code == 0, err
    (entry,) = json.loads(out)["details"]["sources"][0]["files"]
    assert entry == {"path": "weights.safetensors", "size": 3_000_000, "sha256": hashlib.sha256(large).hexdigest()}
    corrupt = bytearray(large)
    corrupt[2_999_999] ^= 0x01
    (hub_dir / "org" / "large" / "main" / "weights.safetensors").write_bytes(bytes(corrupt))
    code, _, err = cli("fetch", manifest, "--hf-endpoint", hub, "--store", tmp_path / "other")
    assert code == 5 and "weights.safetensors: sha256 does not match" in err
