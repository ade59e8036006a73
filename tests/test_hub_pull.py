"""The pull-through hub (`hub serve --upstream`): real Hub and ModelScope clients download through it, each file comes
from upstream once, wrong bytes are refused, an interrupted hub resumes, and pinned revisions answer offline."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelrig.hub.upstream import Upstream
from tests.helpers.hub import (
    client_env,
    logged_requests,
    modelrig_cmd,
    random_bytes,
    served,
    start_hub,
    write_repo,
)

pytestmark = pytest.mark.slow  # every test runs hub servers

BIG = random_bytes(400_000, 7)
LARGE = random_bytes(3_000_000, 8)
FILES = {"config.json": b'{"model_type": "llama"}\n', "model.safetensors": BIG, "sub/notes.txt": b"nested\n"}
UPSTREAM_TOKEN = "upstream-secret"
FLEET_TOKEN = "fleet-secret"


@pytest.fixture
def upstream_dir(tmp_path: Path) -> Path:
    root = tmp_path / "upstream"
    write_repo(root, "org/tiny", {"main": {**FILES, "README.md": b"# tiny\n"}, "v1.0": FILES},
               settings={"tags": ["v1.0"]})
    write_repo(root, "org/gated", {"main": {"config.json": b"{}\n", "weights.bin": random_bytes(2000, 2)}},
               settings={"gated": True})
    write_repo(root, "org/large", {"main": {"model.safetensors": LARGE}})
    (root / "tokens").write_text(UPSTREAM_TOKEN + "\n")
    (tmp_path / "upstream-token").write_text(UPSTREAM_TOKEN + "\n")
    (tmp_path / "fleet-tokens").write_text(FLEET_TOKEN + "\n")
    return root


@pytest.fixture
def upstream(upstream_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "upstream.log"
    with served(upstream_dir, "--token-file", str(upstream_dir / "tokens"), access_log=log) as url:
        yield url, log


def _pull_args(tmp_path: Path, upstream_url: str) -> list[str]:
    return ["--upstream", upstream_url, "--upstream-token-file", str(tmp_path / "upstream-token"),
            "--token-file", str(tmp_path / "fleet-tokens")]


@pytest.fixture
def pull(upstream: tuple[str, Path], tmp_path: Path) -> Iterator[str]:
    with served(tmp_path / "pull", *_pull_args(tmp_path, upstream[0])) as url:
        yield url


def _file_gets(log: Path) -> Counter[str]:
    """How often each file's bytes were asked of the upstream (LFS objects, small files, ModelScope raw files)."""
    counts: Counter[str] = Counter()
    for method, path, status, _ in logged_requests(log):
        if method != "GET" or status == 302:  # a redirect to an LFS object carries no bytes
            continue
        if path.startswith("/_lfs/"):
            counts["hf:" + path.split("/", 5)[5]] += 1
        elif "/resolve/" in path:
            counts["hf:" + path.split("/", 5)[5]] += 1
        elif "/repo?" in path:
            counts["ms:" + path.split("FilePath=", 1)[1].split("&")[0]] += 1
    return counts


def _get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_hub_and_modelscope_clients_download_through_it_and_each_file_comes_from_upstream_once(
        upstream: tuple[str, Path], pull: str, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download
    from modelscope.hub.snapshot_download import snapshot_download as ms_snapshot_download

    first = Path(snapshot_download("org/tiny", cache_dir=tmp_path / "c1", endpoint=pull))
    second = Path(snapshot_download("org/tiny", cache_dir=tmp_path / "c2", endpoint=pull))
    ms = Path(ms_snapshot_download("org/tiny", local_dir=str(tmp_path / "ms"), endpoint=pull))
    for folder in (first, second, ms):
        for path, data in {**FILES, "README.md": b"# tiny\n"}.items():
            assert (folder / path).read_bytes() == data, (folder, path)
    # the Hub protocol's small files are verified by git blob id, ModelScope's by sha256: each protocol asks for
    # them once; the LFS weight is one sha256 blob, shared by both
    assert _file_gets(upstream[1]) == {"hf:config.json": 1, "hf:model.safetensors": 1, "hf:sub/notes.txt": 1,
                                       "hf:README.md": 1, "ms:config.json": 1, "ms:sub/notes.txt": 1,
                                       "ms:README.md": 1}


def test_concurrent_clients_share_one_upstream_download_served_as_it_arrives(
        upstream_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    log = tmp_path / "slow.log"
    with served(upstream_dir, "--throttle", "1000000", access_log=log) as slow, \
            served(tmp_path / "pull", "--upstream", slow) as pull:
        results: dict[int, bytes] = {}

        def client(n: int) -> None:
            path = hf_hub_download("org/large", "model.safetensors", cache_dir=tmp_path / f"c{n}", endpoint=pull)
            results[n] = Path(path).read_bytes()

        began = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        partial = next(iter((tmp_path / "pull").rglob("*.partial")), None)
        while partial is None and time.monotonic() - began < 10:
            time.sleep(0.05)
            partial = next(iter((tmp_path / "pull").rglob("*.partial")), None)
        assert partial is not None
        for t in threads:
            t.join(timeout=60)
        elapsed = time.monotonic() - began
    assert all(results[n] == LARGE for n in range(4))
    assert _file_gets(log) == {"hf:model.safetensors": 1}
    # four clients of a 1 MB/s upstream get the 3 MB file in about 3 s, not 12
    assert elapsed < 8


def test_wrong_bytes_from_upstream_are_refused_and_never_served(upstream_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    # the upstream's index keeps the true hash while the file on disk changes: it lists one sha256, sends other bytes
    weight = upstream_dir / "org/tiny/main/model.safetensors"
    weight.write_bytes(BIG[:-1] + bytes([BIG[-1] ^ 0xFF]))
    log = tmp_path / "bad.log"
    store = tmp_path / "pull" / ".modelrig-pull" / "blobs" / "sha256"
    good = hashlib.sha256(BIG).hexdigest()
    with served(upstream_dir, access_log=log) as bad, served(tmp_path / "pull", "--upstream", bad) as pull:
        parts = urlsplit(pull)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", "/api/v1/models/org/tiny/repo?FilePath=model.safetensors")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(BIG)
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        assert len(cut.value.partial) < len(BIG)  # the last byte is never sent before the file is verified
        conn.close()
        # for a while the file is refused at once (not asked of the upstream again)
        with pytest.raises(HfHubHTTPError, match="do not match its sha256"):
            hf_hub_download("org/tiny", "model.safetensors", cache_dir=tmp_path / "c", endpoint=pull)
        status, headers, _ = _get(pull, "/api/v1/models/org/tiny/repo?FilePath=model.safetensors")
        assert status == 502 and 0 < int(headers["retry-after"]) <= 30
        assert _file_gets(log) == {"ms:model.safetensors": 1}  # the blob is one, whichever protocol asks
        assert not list(store.glob("*.partial")) and not (store / good).exists()
        # once the upstream sends the right bytes (and the wait is over), a client resuming from the refused ones
        # is sent the whole file again (200, not 206)
        weight.write_bytes(BIG)
        marker = store / f"{good}.refused"
        os.utime(marker, (time.time() - 60, time.time() - 60))
        status, headers, body = _get(pull, "/api/v1/models/org/tiny/repo?FilePath=model.safetensors",
                                     {"Range": "bytes=100-"})
        assert (status, headers.get("content-range"), body) == (200, None, BIG)
    assert (store / good).read_bytes() == BIG
    assert not list((tmp_path / "c").rglob("model.safetensors"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_mid_transfer_and_restarted_clients_resume_and_upstream_resumes_too(
        upstream_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    port = _free_port()
    client = tmp_path / "client.py"
    client.write_text(textwrap.dedent("""
        import sys
        from huggingface_hub import hf_hub_download
        print(hf_hub_download("org/large", "model.safetensors", cache_dir=sys.argv[1], endpoint=sys.argv[2]))
    """))
    with served(upstream_dir, "--throttle", "400000", access_log=log) as slow:
        hub, url = start_hub(tmp_path / "pull", "--upstream", slow, port=port)
        clients = [subprocess.Popen([sys.executable, str(client), str(tmp_path / f"c{n}"), url],
                                    env=client_env(tmp_path / f"h{n}"), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for n in range(2)]
        partial = tmp_path / "pull/.modelrig-pull/blobs/sha256" / (hashlib.sha256(LARGE).hexdigest() + ".partial")
        deadline = time.monotonic() + 20
        while (not partial.exists() or partial.stat().st_size < 800_000) and time.monotonic() < deadline:
            time.sleep(0.05)
        hub.send_signal(signal.SIGKILL)
        hub.wait()
        kept = partial.stat().st_size
        assert 800_000 <= kept < len(LARGE)
        hub, _ = start_hub(tmp_path / "pull", "--upstream", slow, port=port)
        try:
            outputs = [c.communicate(timeout=60) for c in clients]
        finally:
            hub.terminate()
            hub.wait()
    for c, (out, err) in zip(clients, outputs, strict=True):
        assert c.returncode == 0, err
        assert Path(out.strip()).read_bytes() == LARGE
    asked = [(path, rng) for _, path, _, rng in logged_requests(log) if path.startswith("/_lfs/")]
    assert len(asked) == 2 and asked[0][1] == "-"
    resumed_at = int(asked[1][1].removeprefix("bytes=").rstrip("-"))
    assert kept <= resumed_at < len(LARGE)  # the restarted hub asks only for what it had not kept


def test_a_pinned_revision_answers_with_the_upstream_down(upstream_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download
    from modelscope.hub.snapshot_download import snapshot_download as ms_snapshot_download

    log = tmp_path / "up.log"
    with served(upstream_dir, access_log=log) as up:
        proc, pull = start_hub(tmp_path / "pull", "--upstream", up)
        first = Path(snapshot_download("org/tiny", revision="v1.0", cache_dir=tmp_path / "c1", endpoint=pull))
        ms_snapshot_download("org/tiny", revision="v1.0", local_dir=str(tmp_path / "m1"), endpoint=pull)
    commit = first.name
    ms_commit = json.loads(next((tmp_path / "pull/.modelrig-pull/meta/ms/org/tiny/commits").iterdir())
                           .read_text())["commit"]
    try:
        again = Path(snapshot_download("org/tiny", revision=commit, cache_dir=tmp_path / "c2", endpoint=pull))
        ms_again = Path(ms_snapshot_download("org/tiny", revision=ms_commit, local_dir=str(tmp_path / "m2"),
                                             endpoint=pull))
        status, _, body = _get(pull, f"/api/models/org/tiny/revision/{'f' * 40}")
    finally:
        proc.terminate()
        proc.wait()
    for folder in (again, ms_again):
        for path, data in FILES.items():
            assert (folder / path).read_bytes() == data
        assert not (folder / "README.md").exists()
    assert again.name == commit
    assert status == 502 and b"unreachable" in body  # an unknown commit still needs the upstream


def test_gated_repos_are_served_only_to_clients_with_the_fleet_token(upstream: tuple[str, Path], pull: str,
                                                                     tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", cache_dir=tmp_path / "a", endpoint=pull, token=False)
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", cache_dir=tmp_path / "b", endpoint=pull, token=UPSTREAM_TOKEN)
    path = hf_hub_download("org/gated", "weights.bin", cache_dir=tmp_path / "c", endpoint=pull, token=FLEET_TOKEN)
    assert Path(path).read_bytes() == random_bytes(2000, 2)
    # once stored, the file is still refused without the token
    status, _, _ = _get(pull, "/api/v1/models/org/gated/repo?FilePath=weights.bin")
    assert status == 401
    status, _, _ = _get(pull, "/api/v1/models/org/gated/repo?FilePath=weights.bin",
                        {"Authorization": f"Bearer {FLEET_TOKEN}"})
    assert status == 200


def test_missing_repos_and_files_are_the_upstreams_errors(pull: str, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nothing", "config.json", cache_dir=tmp_path / "a", endpoint=pull)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "absent.json", cache_dir=tmp_path / "b", endpoint=pull)


@pytest.mark.parametrize("value", ["ftp://example", "hf=nowhere", "huggingfaces"])
def test_a_bad_upstream_is_one_line_naming_the_flag(value: str, tmp_path: Path) -> None:
    proc = subprocess.run(modelrig_cmd("hub", "serve", str(tmp_path / "pull"), "--port", "0", "--upstream", value),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"--upstream {value}: expected huggingface, modelscope" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pull").exists()


def test_upstream_values_are_parsed_and_bad_ones_named() -> None:
    from modelrig.errors import UsageError
    from modelrig.hub.upstream import parse_upstreams

    assert parse_upstreams(["huggingface"]) == Upstream(hf="https://huggingface.co", ms=None)
    assert parse_upstreams(["huggingface", "modelscope"]) == Upstream(hf="https://huggingface.co",
                                                                      ms="https://www.modelscope.cn")
    assert parse_upstreams(["http://10.0.0.5:8790/"]) == Upstream(hf="http://10.0.0.5:8790", ms="http://10.0.0.5:8790")
    assert parse_upstreams(["hf=https://hf-mirror.com", "modelscope"]) == Upstream(hf="https://hf-mirror.com",
                                                                                  ms="https://www.modelscope.cn")
    with pytest.raises(UsageError, match="--upstream ms=file:///etc"):
        parse_upstreams(["ms=file:///etc"])


def test_an_upstream_listing_with_paths_leaving_the_repo_is_refused(tmp_path: Path) -> None:
    """Input from the upstream is not trusted: a listing naming `../` paths or a bad digest is a 502, nothing kept."""
    listing = {"sha": "a" * 40, "gated": False, "siblings": [
        {"rfilename": "../../outside.bin", "size": 3, "blobId": "b" * 40,
         "lfs": {"sha256": "c" * 64, "size": 3}}]}
    bad_digest = {"sha": "a" * 40, "siblings": [{"rfilename": "ok.bin", "size": 3, "blobId": "not-hex"}]}

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(listing if "/evil/" in self.path else bad_digest).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with served(tmp_path / "pull", "--upstream", f"hf=http://127.0.0.1:{evil.server_address[1]}") as pull:
            status, _, body = _get(pull, "/api/models/org/evil/revision/main")
            assert status == 502 and b"bad path '../../outside.bin'" in body
            status, _, body = _get(pull, "/org/bad/resolve/main/ok.bin")
            assert status == 502 and b"bad gitsha1 'not-hex'" in body
    finally:
        evil.shutdown()
    assert not (tmp_path / "outside.bin").exists()
    assert not list((tmp_path / "pull").rglob("*.json"))  # no snapshot kept


MS_TOKEN = "modelscope-secret"


def test_a_gated_modelscope_repo_upstream_needs_the_modelscope_token_and_never_gets_the_hub_token(
        upstream_dir: Path, tmp_path: Path) -> None:
    """The Hub token and the ModelScope token are different secrets: each goes only to its own upstream. The
    ModelScope upstream here would also accept the Hub token, so a hub that leaked it there would get the repo."""
    ms_dir = tmp_path / "ms-upstream"
    write_repo(ms_dir, "org/gated", {"main": {"config.json": b"{}\n", "weights.bin": random_bytes(2000, 2)}},
               settings={"gated": True})
    (ms_dir / "tokens").write_text(f"{MS_TOKEN}\n{UPSTREAM_TOKEN}\n")
    (tmp_path / "ms-token").write_text(MS_TOKEN + "\n")
    fleet = {"Authorization": f"Bearer {FLEET_TOKEN}"}
    files = "/api/v1/models/org/gated/repo?FilePath=weights.bin"
    with served(upstream_dir, "--token-file", str(upstream_dir / "tokens")) as hf_url, \
            served(ms_dir, "--token-file", str(ms_dir / "tokens")) as ms_url:
        both = ["--upstream", f"hf={hf_url}", "--upstream", f"ms={ms_url}", "--upstream-token-file",
                str(tmp_path / "upstream-token"), "--token-file", str(tmp_path / "fleet-tokens")]
        with served(tmp_path / "without", *both) as pull:
            status, _, body = _get(pull, files, fleet)
            assert status == 401, body  # the ModelScope upstream refused: no token of its own, the Hub's not sent
            status, _, _ = _get(pull, "/api/models/org/gated/revision/main", fleet)
            assert status == 200  # the Hub token still opens the Hugging Face side
        with served(tmp_path / "with", *both, "--upstream-modelscope-token-file", str(tmp_path / "ms-token")) as pull:
            status, _, body = _get(pull, files)
            assert status == 401  # and the hosts still need the fleet's token
            status, _, body = _get(pull, files, fleet)
            assert (status, body) == (200, random_bytes(2000, 2))


def test_each_token_goes_only_to_its_own_upstream() -> None:
    apart = Upstream(hf="https://huggingface.co", ms="https://www.modelscope.cn", token="hf-7f3a", ms_token="ms-91c2")
    assert (apart.token_for("hf"), apart.token_for("ms")) == ("hf-7f3a", "ms-91c2")
    assert Upstream(hf="http://a", ms="http://b", token="hf").token_for("ms") is None
    # one server speaking both protocols (`--upstream URL`) gets the Hub token for both when no other is given
    assert Upstream(hf="http://a", ms="http://a", token="hf").token_for("ms") == "hf"
    assert "7f3a" not in repr(apart) and "91c2" not in repr(apart)


def test_an_unreadable_modelscope_token_file_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    proc = subprocess.run(modelrig_cmd("hub", "serve", str(tmp_path / "pull"), "--port", "0", "--upstream",
                                       "modelscope", "--upstream-modelscope-token-file", str(tmp_path / "absent")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"modelrig: error: --upstream-modelscope-token-file {tmp_path / 'absent'}: "
                                   "cannot read it: No such file or directory [usage]")
