"""Locks on a real data root (the demo model from a local hub, its API running): an untouched host verifies clean;
each kind of drift is named by `verify` with exit 9; deleting env, weights, converted and rendered files and
rebuilding from the lock gives the identical env, files and launch files and the API answers again; a bundle
provisions a fresh data root inside a network namespace with no network at all, and it verifies clean."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelrig.lock import collect
from modelrig.lock.packages import freeze
from modelrig.orchestrate.demo import ANSWER, chat
from tests.helpers.demo_root import demo_root, run
from tests.helpers.offline import offline
from tests.helpers.venvs import CACHE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
MODEL = "lock-tiny-ziya"
REMOTE_CODE = "configuration_tiny.py"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    """A data root after `up` of a copy of the demo model whose base repo carries remote code, and its lock."""
    def remote_code(hub: Path) -> None:
        (hub / "modelrig-tiny" / "llama-meta" / "main" / REMOTE_CODE).write_text("TINY = 1\n")

    with demo_root(tmp_path_factory, MODEL, prepare_hub=remote_code) as demo:
        lock = demo.root / "locks" / f"{MODEL}.lock.yaml"
        code, out, err = run(demo.root, "lock", MODEL, "--json")
        assert code == 0, err
        assert json.loads(out)["path"] == str(lock)
        yield demo.root, demo.hub, lock, demo.config


def drift_of(root: Path, *args: object) -> list[str]:
    """`verify --json` must fail with the `drift` code; the drift lines it reports."""
    code, out, err = run(root, "verify", MODEL, *args, "--json")
    assert code == 9, err
    error = json.loads(out)["error"]
    assert error["code"] == "drift" and err.startswith("modelrig: error: ") and err.count("\n") == 1
    return error["fields"]["drift"]


@contextlib.contextmanager
def restored(path: Path):
    """Put a file's bytes and times back after the block."""
    data, stat = path.read_bytes(), path.stat()
    try:
        yield path
    finally:
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_lock_records_every_piece_and_an_untouched_host_verifies_clean(host):
    root, _, lock, _ = host
    data = yaml.safe_load(lock.read_text())
    assert data["schema"] == "modelrig-lock/1" and data["platform"]["accelerator"] == "cpu"
    torch = next(p for p in data["env"]["packages"] if p["name"] == "torch")
    assert torch["version"].startswith("2.13.0") and torch["hashes"]
    assert all(len(h) == 64 for p in data["env"]["packages"] for h in p["hashes"])
    assert {s["name"] for s in data["sources"]} == {"base", "delta"}
    assert data["remote_code"] == [{"source": "base", "path": REMOTE_CODE,
                                    "sha256": hashlib.sha256(b"TINY = 1\n").hexdigest()}]
    assert [c["output"] for c in data["conversions"]] == ["final"]
    assert {f["path"] for f in data["launch"]} >= {"start.sh", "app.py", "entry.json"}
    assert str(root) not in lock.read_text().split("launch:")[1]
    for mode in ([], ["--full"]):
        code, out, err = run(root, "verify", MODEL, *mode, "--json")
        assert code == 0, err
        assert json.loads(out)["drift"] == []


def test_a_second_lock_reads_the_cache_runs_no_uv_and_is_the_same_bytes(host, tmp_path, monkeypatch):
    root, _, _, _ = host
    shutil.rmtree(root / "cache" / "lock", ignore_errors=True)
    fresh, cached = tmp_path / "fresh.lock.yaml", tmp_path / "cached.lock.yaml"
    assert run(root, "lock", MODEL, "--out", fresh)[0] == 0
    assert len(list((root / "cache" / "lock").glob("*.json"))) == 1

    def refuse(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an unchanged env was frozen and hashed again")

    monkeypatch.setattr(collect, "freeze", refuse)
    monkeypatch.setattr(collect, "hashes_for", refuse)
    code, _, err = run(root, "lock", MODEL, "--out", cached)
    assert code == 0, err
    assert cached.read_bytes() == fresh.read_bytes()


def test_a_lock_taken_with_no_network_is_the_same_lock(host, tmp_path):
    root, _, lock, _ = host
    shutil.rmtree(root / "cache" / "lock", ignore_errors=True)  # hash with uv offline, not from the lock cache
    again = tmp_path / "offline.lock.yaml"
    cmd = [sys.executable, "-m", "modelrig", "--data-root", str(root), "lock", MODEL, "--out", str(again)]
    proc = subprocess.run(offline(cmd), capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    assert again.read_text() == lock.read_text()


def test_a_changed_package_version_is_drift_and_the_next_lock_lists_it(host, tmp_path):
    root, _, _, _ = host
    env = next((root / "envs").glob("*/bin/python"))
    locked = {f.name: f.version for f in freeze(env)}["tqdm"]
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))

    def install(version: str) -> None:
        subprocess.run([uv, "pip", "install", "--no-config", "--no-deps", "--python", str(env), f"tqdm=={version}"],
                       check=True, capture_output=True, env={**os.environ, "UV_CACHE_DIR": str(CACHE / "uv")})

    def tqdm_locked(name: str) -> str:
        assert run(root, "lock", MODEL, "--out", tmp_path / name)[0] == 0
        packages = yaml.safe_load((tmp_path / name).read_text())["env"]["packages"]
        return next(p["version"] for p in packages if p["name"] == "tqdm")

    assert tqdm_locked("before.lock.yaml") == locked  # and remembered in the lock cache
    install("4.66.4")
    try:
        assert drift_of(root) == [f"package tqdm: {locked} expected, found 4.66.4"]
        assert tqdm_locked("changed.lock.yaml") == "4.66.4"
    finally:
        install(locked)
    assert run(root, "verify", MODEL)[0] == 0
    assert tqdm_locked("after.lock.yaml") == locked


def test_one_flipped_byte_of_a_weight_file_is_found_by_full(host):
    root, _, _, _ = host
    delta = root / "store" / "huggingface" / "modelrig-tiny--ziya-delta"
    shard = delta / "pytorch_model-00002-of-00003.bin"
    locked = hashlib.sha256(shard.read_bytes()).hexdigest()
    with restored(shard):
        data = bytearray(shard.read_bytes())
        data[100] ^= 1
        shard.write_bytes(bytes(data))
        assert drift_of(root, "--full") == [
            f"weight delta: {shard.name} sha256 {locked} expected, found {hashlib.sha256(data).hexdigest()}"]
        assert drift_of(root) == [f"weight delta: {shard.name} was modified after it was stamped (same size; "
                                  "`modelrig verify --full` compares hashes)"]
    assert run(root, "verify", MODEL, "--full")[0] == 0


def test_a_hand_edited_launch_script_is_drift(host):
    root, _, _, _ = host
    script = root / "launch" / MODEL / "api" / "start.sh"
    with restored(script):
        script.write_text(script.read_text() + "# tuned by hand\n")
        (line,) = drift_of(root)
        assert line.startswith("launch api/start.sh: edited (sha256 ")
    assert run(root, "verify", MODEL)[0] == 0


def test_remote_code_changed_on_the_hub_is_drift(host):
    root, hub, _, _ = host
    code = hub / "modelrig-tiny" / "llama-meta" / "main" / REMOTE_CODE
    with restored(code):
        code.write_text("TINY = 2\n")
        lines = drift_of(root, "--remote")
        assert len(lines) == 2
        assert lines[0].startswith("remote base: modelrig-tiny/llama-meta@main is commit ")
        old, new = (hashlib.sha256(text).hexdigest() for text in (b"TINY = 1\n", b"TINY = 2\n"))
        assert lines[1] == f"remote code base/{REMOTE_CODE}: sha256 {old} expected, upstream {new}"
        assert run(root, "verify", MODEL)[0] == 0  # fast mode does not ask the hub
    assert run(root, "verify", MODEL, "--full")[0] == 0


def test_a_truncated_converted_file_is_drift(host):
    root, _, _, _ = host
    shard = root / "models" / MODEL / "final" / "model.safetensors"
    size = shard.stat().st_size
    with restored(shard):
        with open(shard, "r+b") as f:
            f.truncate(size - 7)
        assert drift_of(root) == [f"converted final: model.safetensors has {size - 7} bytes, {size} expected "
                                  "(truncated)"]
    assert run(root, "verify", MODEL)[0] == 0


def test_a_rebuild_that_cannot_reproduce_a_file_stops_in_one_line_naming_it(host, tmp_path):
    root, _, lock, _ = host
    data = yaml.safe_load(lock.read_text())
    delta = next(s for s in data["sources"] if s["name"] == "delta")
    entry = next(f for f in delta["files"] if f["path"] == "config.json")
    real, entry["sha256"] = entry["sha256"], "0" * 64
    other = tmp_path / "other.lock.yaml"
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    code, _, err = run(root, "rebuild", other)
    assert code == 9
    assert err == (f"modelrig: error: weight delta: config.json sha256 {'0' * 64} expected, found {real} "
                   "[not_reproduced]\n")


def test_a_rebuild_that_fails_after_starting_the_api_stops_it(host, tmp_path):
    """The lock's launch script differs from what renders: the rebuild starts the API, verifies, fails
    `not_reproduced`, and leaves nothing listening."""
    from modelrig.launch import status

    root, _, lock, _ = host
    data = yaml.safe_load(lock.read_text())
    launch = data["launch"][0]
    real, launch["sha256"] = launch["sha256"], "0" * 64
    other = tmp_path / "other.lock.yaml"
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    folder = root / "launch" / MODEL / launch["entry"]
    assert run(root, "down", MODEL)[0] == 0
    try:
        code, _, err = run(root, "rebuild", other)
        assert code == 9
        assert err == (f"modelrig: error: launch {launch['entry']}/{launch['path']}: edited (sha256 {'0' * 64} "
                       f"expected, found {real}) [not_reproduced]\n")
        assert status(folder, run_dir=root / "run" / MODEL)["running"] is False
    finally:
        assert run(root, "up", MODEL)[0] == 0
    assert status(folder, run_dir=root / "run" / MODEL)["running"] is True


def test_bundle_does_not_pack_a_weight_file_that_is_a_link_out_of_its_folder(host, tmp_path):
    """A store file replaced by a link to the data root's token file: `bundle` refuses it, packing nothing."""
    root, _, lock, _ = host
    token = root / "hf-token"
    token.write_text("hf_secret\n")
    config = next(p for p in (root / "store" / "huggingface").glob("*/config.json") if "delta" in p.parent.name)
    data, stat = config.read_bytes(), config.stat()
    config.unlink()
    config.symlink_to(token)
    try:
        code, _, err = run(root, "bundle", lock, "--out", tmp_path / "b.tar")
    finally:
        config.unlink()
        config.write_bytes(data)
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        token.unlink()
    assert code == 9
    assert err == (f"modelrig: error: weights delta: {config} is a link or leads outside {config.parent}; not packed "
                   "[not_reproduced]\n")
    assert not (tmp_path / "b.tar").exists()


def snapshot(root: Path) -> dict[str, object]:
    """What a rebuild must reproduce: the env's packages, every weight and converted file, the launch files."""
    env = next((root / "envs").glob("*/bin/python"))
    files = {}
    for top in ("store", "models", "launch"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and ".cache" not in path.parts and path.name not in (".modelrig-stamp.json",
                                                                                   ".modelrig-fetch.lock"):
                files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"packages": [f.requirement for f in freeze(env)], "files": files}


def test_rebuild_from_the_lock_reproduces_everything_and_a_second_rebuild_changes_nothing(host):
    root, _, lock, _ = host
    before = snapshot(root)
    assert run(root, "down", MODEL)[0] == 0
    for top in ("envs", "store", "models", "launch"):
        shutil.rmtree(root / top)
    code, out, err = run(root, "rebuild", lock, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["changed"] is True
    assert snapshot(root) == before
    assert chat(report["urls"]["api"], model=MODEL) == ANSWER
    code, out, err = run(root, "rebuild", lock, "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["changed"] is False, [s for s in again["stages"] if s["changed"]]
    assert run(root, "verify", MODEL, "--full")[0] == 0
    relocked = root / "relocked.yaml"
    assert run(root, "lock", MODEL, "--out", relocked)[0] == 0
    assert relocked.read_text() == lock.read_text()


def test_a_bundle_provisions_a_fresh_data_root_with_no_network_and_it_verifies_clean(host, tmp_path):
    root, _, lock, config = host
    bundle = tmp_path / "bundle.tar"
    code, out, err = run(root, "bundle", lock, "--out", bundle, "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["bytes"] > made["weights_bytes"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(config)
    assert run(root, "down", MODEL)[0] == 0  # the fresh root's API takes the same port
    modelrig = [sys.executable, "-m", "modelrig", "--data-root", str(fresh)]
    script = (f"{' '.join(modelrig)} rebuild {lock} --bundle {bundle} && {' '.join(modelrig)} verify --lock {lock}; "
              f"rc=$?; {' '.join(modelrig)} down {MODEL} >/dev/null; exit $rc")
    env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "empty-uv-cache"), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(offline(["sh", "-c", script]), capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed" in proc.stdout and "from the bundle" in proc.stdout
    assert f"{MODEL}: matches its lock" in proc.stdout
    assert snapshot(fresh)["packages"] == snapshot(root)["packages"]
