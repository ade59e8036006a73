"""The local hub: real Hub (2.x and 0.x) and ModelScope clients work unchanged against it, and it is safe to run."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelrig.errors import UsageError
from modelrig.hub.layout import open_repo, resolve_revision
from modelrig.hub.server import make_server, serve_in_thread
from modelrig.hub.tiny_repos import TOKEN_FILE
from tests.helpers.hub import client_env, modelrig_cmd, offline_driver, random_bytes, served, write_repo
from tests.helpers.offline import offline
from tests.helpers.venvs import T437

BIG = random_bytes(300_000, 1)
FILES = {"config.json": b'{"model_type": "llama"}\n', "model.safetensors": BIG, "sub/notes.txt": b"nested\n"}


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    write_repo(root, "org/tiny", {"main": {**FILES, "README.md": b"# tiny\n"}, "v1.0": FILES},
               settings={"tags": ["v1.0"]})
    write_repo(root, "org/gated", {"main": {"config.json": b"{}\n", "weights.bin": random_bytes(2000, 2)}},
               settings={"gated": True})
    (root / "tokens").write_text("secret-token-123\n")
    return root


@pytest.fixture
def url(hub_dir: Path) -> Iterator[str]:
    base, stop = serve_in_thread(hub_dir, token_file=hub_dir / "tokens")
    yield base
    stop()


def _request(url: str, method: str, path: str, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_hf_2x_snapshot_download_is_byte_identical_at_branch_and_tag(url: str, hub_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    main = Path(snapshot_download("org/tiny", cache_dir=tmp_path / "c", endpoint=url))
    tag = Path(snapshot_download("org/tiny", revision="v1.0", cache_dir=tmp_path / "c", endpoint=url))
    for path, data in {**FILES, "README.md": b"# tiny\n"}.items():
        assert (main / path).read_bytes() == data
    assert not (tag / "README.md").exists()
    assert main.name != tag.name  # two commits
    assert main.name == resolve_revision(open_repo(hub_dir, "org/tiny"), "main").commit


def test_hf_2x_include_patterns_local_dir_and_file_metadata(url: str, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download

    out = Path(snapshot_download("org/tiny", local_dir=tmp_path / "d", allow_patterns=["*.json"], endpoint=url))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.json"]
    info = HfApi(endpoint=url).model_info("org/tiny", files_metadata=True)
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["model.safetensors"].sha256 == hashlib.sha256(BIG).hexdigest()
    assert lfs["config.json"] is None


def test_hf_2x_errors_are_the_hub_errors(url: str, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "missing.json", cache_dir=tmp_path, endpoint=url)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/none", "config.json", cache_dir=tmp_path, endpoint=url)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="v9", cache_dir=tmp_path, endpoint=url)
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", cache_dir=tmp_path, endpoint=url, token=False)
    got = hf_hub_download("org/gated", "weights.bin", cache_dir=tmp_path, endpoint=url, token="secret-token-123")
    assert Path(got).stat().st_size == 2000


def test_entry_not_found_is_404_with_repo_commit(url: str, hub_dir: Path) -> None:
    status, headers, _ = _request(url, "HEAD", "/org/tiny/resolve/main/added_tokens.json")
    assert status == 404
    assert headers["x-error-code"] == "EntryNotFound"
    assert headers["x-repo-commit"] == resolve_revision(open_repo(hub_dir, "org/tiny"), "main").commit
    status, headers, _ = _request(url, "GET", "/api/models/org/none")
    assert (status, headers["x-error-code"]) == (401, "RepoNotFound")
    status, headers, _ = _request(url, "GET", "/api/models/org/tiny/revision/nope")
    assert (status, headers["x-error-code"]) == (404, "RevisionNotFound")


def test_lfs_files_redirect_with_linked_etag_and_size(url: str, hub_dir: Path) -> None:
    status, headers, _ = _request(url, "HEAD", "/org/tiny/resolve/main/model.safetensors")
    assert status == 302
    assert headers["x-linked-etag"] == f'"{hashlib.sha256(BIG).hexdigest()}"'
    assert headers["x-linked-size"] == str(len(BIG))
    assert headers["x-repo-commit"] == resolve_revision(open_repo(hub_dir, "org/tiny"), "main").commit
    status, _, body = _request(url, "GET", urlsplit(headers["location"]).path)
    assert status == 200 and body == BIG


def test_range_requests_return_the_requested_bytes(url: str) -> None:
    status, headers, body = _request(url, "GET", "/org/tiny/resolve/main/config.json", {"Range": "bytes=2-11"})
    assert status == 206
    assert body == FILES["config.json"][2:12]
    assert headers["content-range"] == f"bytes 2-11/{len(FILES['config.json'])}"
    status, _, body = _request(url, "GET", "/api/v1/models/org/tiny/repo?Revision=master&FilePath=model.safetensors",
                               {"Range": "bytes=299990-"})
    assert status == 206 and body == BIG[299990:]
    status, _, _ = _request(url, "GET", "/org/tiny/resolve/main/config.json", {"Range": "bytes=9999-"})
    assert status == 416


def test_commit_ids_resolve_and_refs_list_branches_and_tags(url: str, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=url)
    refs = api.list_repo_refs("org/tiny")
    assert [b.name for b in refs.branches] == ["main"] and [t.name for t in refs.tags] == ["v1.0"]
    commit = refs.tags[0].target_commit
    assert len(commit) == 40 and commit != refs.branches[0].target_commit
    path = hf_hub_download("org/tiny", "config.json", revision=commit, cache_dir=tmp_path, endpoint=url)
    assert Path(path).read_bytes() == FILES["config.json"]


def test_modelscope_snapshot_download_and_single_file(url: str, tmp_path: Path) -> None:
    from modelscope.hub.file_download import model_file_download
    from modelscope.hub.snapshot_download import snapshot_download

    out = Path(snapshot_download("org/tiny", revision="v1.0", local_dir=str(tmp_path / "ms"), endpoint=url))
    for path, data in FILES.items():
        assert (out / path).read_bytes() == data
    assert not (out / "README.md").exists()
    one = model_file_download("org/tiny", "sub/notes.txt", revision="master", local_dir=str(tmp_path / "one"),
                              endpoint=url)
    assert Path(one).read_bytes() == FILES["sub/notes.txt"]
    only = Path(snapshot_download("org/tiny", revision="master", local_dir=str(tmp_path / "p"),
                                  allow_patterns=["*.json"], endpoint=url))
    assert sorted(p.name for p in only.iterdir() if not p.name.startswith(".")) == ["config.json"]


def test_modelscope_listing_carries_sha256_and_commit(url: str, hub_dir: Path) -> None:
    status, _, body = _request(url, "GET", "/api/v1/models/org/tiny/repo/files?Revision=v1.0&Recursive=True")
    files = {f["Path"]: f for f in json.loads(body)["Data"]["Files"] if f["Type"] == "blob"}
    assert status == 200
    assert files["model.safetensors"]["Sha256"] == hashlib.sha256(BIG).hexdigest()
    assert files["config.json"]["Revision"] == resolve_revision(open_repo(hub_dir, "org/tiny"), "v1.0").commit
    status, _, body = _request(url, "GET", "/api/v1/models/org/gated/repo/files?Revision=master&Recursive=True")
    assert status == 401 and json.loads(body)["Success"] is False
    status, _, _ = _request(url, "GET", "/api/v1/models/org/gated/repo/files?Revision=master",
                            {"Authorization": "Bearer secret-token-123"})
    assert status == 200


@pytest.mark.parametrize("path", [
    "/org/tiny/resolve/main/..%2F..%2Ftokens",
    "/org/tiny/resolve/main/../../tokens",
    "/org/tiny/resolve/main/%2Fetc%2Fpasswd",
    "/api/v1/models/org/tiny/repo?Revision=master&FilePath=../../tokens",
    "/api/v1/models/org/tiny/repo?Revision=..&FilePath=tokens",
    "/org/tiny/resolve/main/.modelrig-hub-index.json",
    "/org/tiny/resolve/..%2F..%2F/tokens",
])
@pytest.mark.slow
def test_paths_outside_the_hub_directory_are_refused(url: str, path: str) -> None:
    status, _, body = _request(url, "GET", path)
    assert status in (401, 404)
    assert b"secret-token" not in body


def test_symlinks_leaving_the_hub_are_not_served(url: str, hub_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    (hub_dir / "org" / "tiny" / "main" / "leak.txt").symlink_to(outside)
    status, _, body = _request(url, "GET", "/org/tiny/resolve/main/leak.txt")
    assert status == 404 and b"private" not in body
    _, _, listing = _request(url, "GET", "/api/models/org/tiny/tree/main?recursive=true")
    assert "leak.txt" not in listing.decode()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_hub_is_read_only(url: str, hub_dir: Path, method: str) -> None:
    before = sorted(p.name for p in (hub_dir / "org" / "tiny" / "main").iterdir())
    status, headers, _ = _request(url, method, "/api/models/org/tiny")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert sorted(p.name for p in (hub_dir / "org" / "tiny" / "main").iterdir()) == before


@pytest.mark.slow
def test_non_loopback_bind_is_refused_unless_allowed(hub_dir: Path) -> None:
    with pytest.raises(UsageError, match="--allow-remote"):
        make_server(hub_dir, host="0.0.0.0")
    server = make_server(hub_dir, host="0.0.0.0", port=0, allow_remote=True)
    server.server_close()
    code = subprocess.run(modelrig_cmd("hub", "serve", str(hub_dir), "--host", "0.0.0.0"), capture_output=True,
                          text=True, timeout=30)
    assert code.returncode == 2 and "not a loopback address" in code.stderr


def test_connections_that_send_nothing_do_not_block_requests(hub_dir: Path) -> None:
    server = make_server(hub_dir, port=0, max_connections=2)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    host, port = server.server_address[:2]
    silent = [socket.create_connection((host, port)) for _ in range(2)]  # as many as there are request slots
    time.sleep(0.3)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/api/models/org/tiny")
    assert conn.getresponse().status == 200
    conn.close()
    for sock in silent:
        sock.close()
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_serve_prints_its_url_once_ready(hub_dir: Path) -> None:
    with served(hub_dir) as base:
        status, _, body = _request(base, "GET", "/api/models/org/tiny")
    assert status == 200 and json.loads(body)["id"] == "org/tiny"


@pytest.mark.slow
def test_hf_download_cli_works_offline(hub_dir: Path, tmp_path: Path) -> None:
    hf = Path(sys.executable).parent / "hf"
    code = f"""
        import subprocess, sys
        out = subprocess.run([{str(hf)!r}, "download", "org/tiny", "--local-dir", {str(tmp_path / 'cli')!r},
                              "--revision", "v1.0"], capture_output=True, text=True)
        print(out.stdout, out.stderr)
        sys.exit(out.returncode)
    """
    cmd = offline_driver(tmp_path, hub_dir, Path(sys.executable), code)
    proc = subprocess.run(offline(cmd), capture_output=True, text=True, timeout=120, env=client_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path, data in FILES.items():
        assert (tmp_path / "cli" / path).read_bytes() == data
    assert not (tmp_path / "cli" / "README.md").exists()


@pytest.mark.slow
def test_hf_0x_clients_and_transformers_437_from_pretrained_work_offline(venvs, tmp_path: Path) -> None:
    from modelrig.hub.tiny_repos import make_tiny_hub

    hub = tmp_path / "tiny-hub"
    make_tiny_hub(hub, seed=0)
    python = venvs.get(T437)
    code = """
        import os, huggingface_hub, transformers, torch
        from pathlib import Path
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.utils import EntryNotFoundError, GatedRepoError
        assert huggingface_hub.__version__.startswith("0."), huggingface_hub.__version__
        snap = Path(snapshot_download("modelrig-tiny/tiny-llama", revision="v1.0"))
        assert (snap / "model.safetensors").stat().st_size > 0 and not (snap / "README.md").exists()
        assert Path(hf_hub_download("modelrig-tiny/ziya-delta", "pytorch_model.bin.index.json")).is_file()
        try:
            hf_hub_download("modelrig-tiny/tiny-llama", "nope.json"); raise SystemExit("no EntryNotFound")
        except EntryNotFoundError:
            pass
        try:
            hf_hub_download("modelrig-tiny/llama-meta", "params.json"); raise SystemExit("no GatedRepoError")
        except GatedRepoError:
            pass
        tok = open(os.environ["TOKEN_FILE"]).read().strip()
        assert Path(hf_hub_download("modelrig-tiny/llama-meta", "params.json", token=tok)).is_file()
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained("modelrig-tiny/tiny-llama")
        model = AutoModelForCausalLM.from_pretrained("modelrig-tiny/tiny-llama")
        ids = tokenizer("the model runs", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == ids.shape[1] + 4
        print("OK", transformers.__version__, huggingface_hub.__version__)
    """
    env = {**client_env(tmp_path), "TOKEN_FILE": str(hub / TOKEN_FILE)}
    cmd = offline_driver(tmp_path, hub, python, code, "--token-file", str(hub / TOKEN_FILE))
    proc = subprocess.run(offline(cmd), capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK 4.37.0 0." in proc.stdout


def test_non_ascii_file_names_are_served_and_missing_ones_are_a_clean_404(url: str, hub_dir: Path,
                                                                        tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    (hub_dir / "org" / "tiny" / "main" / "说明.txt").write_text("中文\n", encoding="utf-8")
    got = hf_hub_download("org/tiny", "说明.txt", cache_dir=tmp_path, endpoint=url)
    assert Path(got).read_text(encoding="utf-8") == "中文\n"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "缺失.json", cache_dir=tmp_path, endpoint=url)


def test_hub_index_records_hashes_that_the_hub_then_publishes(cli, tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    write_repo(root, "org/new", {"main": {"w.safetensors": BIG}}, index=False)
    code, out, _ = cli("hub", "index", root, "--json")
    assert code == 0 and json.loads(out)["indexes"] == [str(root / "org" / "new" / ".modelrig-hub-index.json")]
    (root / "org" / "new" / "main" / "w.safetensors").write_bytes(b"\0" * len(BIG))  # altered after indexing
    published = {f.path: f.sha256 for f in resolve_revision(open_repo(root, "org/new"), "main").files}
    assert published == {"w.safetensors": hashlib.sha256(BIG).hexdigest()}
