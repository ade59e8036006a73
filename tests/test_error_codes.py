"""Structured errors: every failure a program must act on has a stable `code` and fields, in the `--json`
result (`{"ok": false, "error": {...}}`) and at the end of the one-line message."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelrig.hub.layout import open_repo, resolve_revision
from modelrig.hub.server import serve_in_thread
from tests.helpers.hub import random_bytes, write_manifest, write_repo

Cli = Callable[..., tuple[int, str, str]]
REPO = Path(__file__).resolve().parent.parent
WEIGHTS = random_bytes(300_000, 11)
FILES = {"config.json": b'{"model_type": "llama"}\n', "model.safetensors": WEIGHTS}


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    write_repo(root, "org/tiny", {"main": FILES})
    write_repo(root, "msorg/tiny", {"master": FILES}, settings={"default": "master"})
    write_repo(root, "org/gated", {"main": FILES}, settings={"gated": True})
    (tmp_path / "tokens").write_text("hf_not_given\n")
    return root


@pytest.fixture
def hub(hub_dir: Path) -> Iterator[str]:
    url, stop = serve_in_thread(hub_dir, token_file=hub_dir.parent / "tokens")
    yield url
    stop()


def failed(cli: Cli, *args: object) -> tuple[int, dict, str]:
    """Run a CLI verb with --json that must fail: (exit code, the error object, stderr)."""
    code, out, err = cli(*args, "--json")
    assert code != 0, out
    result = json.loads(out)
    assert result["ok"] is False and result["error"]["exit_code"] == code
    assert err.strip().splitlines()[-1].endswith(f"[{result['error']['code']}]"), err
    return code, result["error"], err


def _source(tmp_path: Path, model_id: str, hub_name: str, repo: str, revision: str) -> Path:
    return write_manifest(tmp_path, model_id, {"model": {hub_name: {"repo": repo, "revision": revision}}})


@pytest.mark.parametrize("hub_name,repo,revision,code,fields", [
    ("huggingface", "org/nope", "main", "repo_not_found", {"repo_id": "org/nope", "hub": "huggingface"}),
    ("huggingface", "org/tiny", "v9", "revision_not_found", {"repo_id": "org/tiny", "revision": "v9"}),
    ("huggingface", "org/gated", "main", "gated_repo", {"repo_id": "org/gated", "hub": "huggingface"}),
    ("modelscope", "msorg/nope", "master", "repo_not_found", {"repo_id": "msorg/nope", "hub": "modelscope"}),
    ("modelscope", "msorg/tiny", "v9", "revision_not_found", {"repo_id": "msorg/tiny", "revision": "v9"}),
])
@pytest.mark.slow
def test_hub_errors_have_codes_and_the_repo(cli: Cli, hub: str, tmp_path: Path, hub_name, repo, revision, code,
                                            fields) -> None:
    manifest = _source(tmp_path, f"t-{code}", hub_name, repo, revision)
    exit_code, error, _ = failed(cli, "fetch", manifest, "--hf-endpoint", hub, "--modelscope-endpoint", hub)
    assert exit_code == 5 and error["code"] == code
    assert {k: error["fields"][k] for k in fields} == fields


def test_an_unreachable_hub_has_its_code(cli: Cli, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    manifest = _source(tmp_path, "t-dead", "huggingface", "org/tiny", "main")
    _, error, err = failed(cli, "fetch", manifest, "--hf-endpoint", dead)
    assert error["code"] == "hub_unreachable" and error["fields"]["hubs"] == ["huggingface"]
    assert dead in err


def test_a_hash_mismatch_names_the_file_and_both_hashes(cli: Cli, hub: str, hub_dir: Path, tmp_path: Path) -> None:
    import hashlib

    corrupt = bytearray(WEIGHTS)
    corrupt[7] ^= 0xFF
    (hub_dir / "org/tiny/main/model.safetensors").write_bytes(bytes(corrupt))  # the index keeps the real hash
    _, error, _ = failed(cli, "fetch", _source(tmp_path, "t-hash", "huggingface", "org/tiny", "main"),
                         "--hf-endpoint", hub)
    assert error["code"] == "hash_mismatch"
    assert error["fields"]["path"] == "model.safetensors"
    assert error["fields"]["expected"] == hashlib.sha256(WEIGHTS).hexdigest()


def test_not_enough_disk_before_starting_is_disk_space(cli: Cli, hub: str, tmp_path: Path) -> None:
    manifest = _source(tmp_path, "t-disk", "huggingface", "org/tiny", "main")
    code, error, _ = failed(cli, "fetch", manifest, "--hf-endpoint", hub, "--headroom", "1000000TB")
    assert code == 4 and error["code"] == "disk_space"


FILL_AFTER_PREFLIGHT = """
import sys
import modelrig.fetch.stage as stage
from modelrig.cli import main

real = stage._locked_download

def fill_then_download(*args, **kwargs):
    # another program fills the disk after the free-space check passed
    try:
        with open(sys.argv[1] + "/filler", "wb") as out:
            while True:
                out.write(b"x" * 65536)
    except OSError:
        pass
    return real(*args, **kwargs)

stage._locked_download = fill_then_download
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_fetch_is_one_line_with_disk_full(hub: str, hub_dir: Path, tmp_path: Path) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("a private tmpfs needs root and unshare (util-linux)")
    disk = tmp_path / "small-disk"
    disk.mkdir()
    commit = resolve_revision(open_repo(hub_dir, "org/tiny"), "main").commit
    manifest = _source(tmp_path, "t-full", "huggingface", "org/tiny", commit)
    script = tmp_path / "fill.py"
    script.write_text(FILL_AFTER_PREFLIGHT)
    cmd = (f'mount -t tmpfs -o size=2m tmpfs "$1" && exec "{sys.executable}" "$2" "$1" --data-root "$1/root" '
           f'fetch "$3" --hf-endpoint "$4" --headroom 0 --json')
    done = subprocess.run(["unshare", "-m", "--", "sh", "-c", cmd, "fill", str(disk), str(script), str(manifest),
                           hub], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("modelrig: error: disk full") and line.endswith("[disk_full]")
    assert json.loads(done.stdout)["error"]["code"] == "disk_full"


def test_plan_refused_model_not_found_and_manifest_invalid(cli: Cli, tmp_path: Path) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"os": "linux", "arch": "x86_64", "cpu": "tiny", "cpu_count": 1,
                                 "ram_bytes": 1 << 30, "disk_free_bytes": 1 << 20, "data_root": str(tmp_path)}))
    code, error, _ = failed(cli, "plan", "demo-tiny-ziya", "--facts", facts)
    assert code == 3 and error["code"] == "plan_refused"
    code, error, _ = failed(cli, "plan", "no-such-model")
    assert code == 2 and error["code"] == "model_not_found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\n")
    code, error, _ = failed(cli, "plan", bad)
    assert code == 2 and error["code"] == "manifest_invalid" and error["fields"]["problems"]
