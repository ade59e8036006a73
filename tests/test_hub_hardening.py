"""The local hub under attack: symlinks that leave a repo, request text aimed at response headers, connection
exhaustion, bad limits and request bodies on a keep-alive connection."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelrig.errors import UsageError
from modelrig.hub.layout import HubPathError, open_file, open_repo, resolve_revision
from modelrig.hub.server import HubServer, make_server, serve_in_thread
from tests.helpers.hub import demo_repos, modelrig_cmd, random_bytes, write_repo

TOKEN = "gate-token-456"
SECRET = b"outside the hub: private\n"
GATED = random_bytes(5000, 3)
BIG = random_bytes(300_000, 4)


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    write_repo(root, "org/open", {"main": {"config.json": b"{}\n", "model.safetensors": BIG},
                                  "v1.0": {"config.json": b'{"v": 1}\n'}}, settings={"tags": ["v1.0"]})
    write_repo(root, "org/gated", {"main": {"config.json": b"{}\n", "weights.bin": GATED,
                                            "sub/weights.bin": GATED}}, settings={"gated": True})
    (root / "tokens").write_text(TOKEN + "\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    return root


@pytest.fixture
def url(hub_dir: Path) -> Iterator[str]:
    base, stop = serve_in_thread(hub_dir, token_file=hub_dir / "tokens")
    yield base
    stop()


def _get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def _raw(url: str, data: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes the connection."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# Symlinks: nothing outside a repo's own folder is served, and a repo's gate covers what is served from it.

def test_a_revision_symlinked_out_of_the_hub_is_neither_served_nor_listed(url: str, hub_dir: Path,
                                                                          tmp_path: Path) -> None:
    repo = hub_dir / "org" / "open"
    (repo / "escape").symlink_to(tmp_path / "outside")
    (repo / "root").symlink_to(hub_dir)  # the hub directory itself holds the token file
    for path in ("/org/open/resolve/escape/secret.txt", "/org/open/resolve/root/tokens",
                 "/api/v1/models/org/open/repo?Revision=escape&FilePath=secret.txt",
                 "/api/models/org/open/tree/escape?recursive=true", "/api/models/org/open/revision/root"):
        status, _, body = _get(url, path)
        assert status == 404, path
        assert b"private" not in body and TOKEN.encode() not in body
    _, _, refs = _get(url, "/api/models/org/open/refs")
    assert [b["name"] for b in json.loads(refs)["branches"]] == ["main"]
    _, _, ms_refs = _get(url, "/api/v1/models/org/open/revisions")
    assert [b["Revision"] for b in json.loads(ms_refs)["Data"]["RevisionMap"]["Branches"]] == ["main"]


def test_a_revision_symlinked_to_a_gated_repo_does_not_bypass_its_gate(url: str, hub_dir: Path) -> None:
    (hub_dir / "org" / "open" / "stolen").symlink_to(hub_dir / "org" / "gated" / "main")
    for path in ("/org/open/resolve/stolen/weights.bin", "/api/models/org/open/tree/stolen",
                 "/api/v1/models/org/open/repo?Revision=stolen&FilePath=weights.bin"):
        status, _, body = _get(url, path)
        assert status == 404 and GATED not in body, path
    status, _, body = _get(url, "/_lfs/org/gated/main/weights.bin", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body == GATED


def test_a_repo_symlinked_to_a_gated_repo_or_into_one_keeps_the_gate(url: str, hub_dir: Path) -> None:
    (hub_dir / "org" / "alias").symlink_to(hub_dir / "org" / "gated")
    (hub_dir / "org" / "inner").symlink_to(hub_dir / "org" / "gated" / "main")  # its revision "sub" is gated data
    status, headers, body = _get(url, "/org/alias/resolve/main/weights.bin")
    assert (status, headers["x-error-code"]) == (401, "GatedRepo") and GATED not in body
    status, _, body = _get(url, "/_lfs/org/alias/main/weights.bin", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body == GATED
    for path in ("/org/inner/resolve/sub/weights.bin", "/api/models/org/inner/tree/sub",
                 "/api/v1/models/org/inner/repo?Revision=sub&FilePath=weights.bin"):
        status, _, body = _get(url, path)
        assert status == 401 or status == 404, path
        assert GATED not in body


def test_file_symlinks_stay_inside_their_repo_and_never_reach_its_metadata(url: str, hub_dir: Path,
                                                                           tmp_path: Path) -> None:
    main = hub_dir / "org" / "open" / "main"
    (main / "same-repo.json").symlink_to(Path("..") / "v1.0" / "config.json")
    (main / "other-repo.bin").symlink_to(hub_dir / "org" / "gated" / "main" / "weights.bin")
    (main / "settings.yaml").symlink_to(Path("..") / ".modelrig-hub.yaml")
    (main / "secret.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (main / "linked-dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    status, _, body = _get(url, "/org/open/resolve/main/same-repo.json")
    assert status == 200 and body == b'{"v": 1}\n'
    for name in ("other-repo.bin", "settings.yaml", "secret.txt", "linked-dir/secret.txt"):
        status, _, body = _get(url, f"/org/open/resolve/main/{name}")
        assert status == 404 and GATED not in body and b"private" not in body, name
    _, _, tree = _get(url, "/api/models/org/open/tree/main?recursive=true")
    assert sorted(e["path"] for e in json.loads(tree)) == ["config.json", "model.safetensors", "same-repo.json"]
    _, _, ms = _get(url, "/api/v1/models/org/open/repo/files?Revision=main&Recursive=true")
    assert sorted(f["Path"] for f in json.loads(ms)["Data"]["Files"]) == ["config.json", "model.safetensors",
                                                                           "same-repo.json"]


def test_a_file_swapped_for_a_symlink_after_listing_is_not_opened(hub_dir: Path, tmp_path: Path) -> None:
    revision = resolve_revision(open_repo(hub_dir, "org/open"), "main")
    listed = revision.file("config.json")
    assert listed is not None
    with open_file(listed) as f:
        assert f.read() == b"{}\n"
    target = hub_dir / "org" / "open" / "main" / "config.json"
    target.unlink()
    target.symlink_to(tmp_path / "outside" / "secret.txt")
    with pytest.raises(HubPathError):
        open_file(listed)


# Request text never becomes a header of its own.

@pytest.mark.parametrize("path", [
    "/org/open/resolve/x%0d%0aSet-Cookie:%20pwn=1/config.json",
    "/org/open/resolve/main/a%0d%0aSet-Cookie:%20pwn=1",
    "/org/open/resolve/main/a%0aSet-Cookie:%20pwn=1",
    "/org/open/resolve/main/a%0dSet-Cookie:%20pwn=1",
    "/api/models/org/open/revision/x%0d%0aSet-Cookie:%20pwn=1",
    "/api/models/org/x%0d%0aSet-Cookie:%20pwn=1",
])
def test_encoded_line_breaks_in_the_path_do_not_inject_headers(url: str, path: str) -> None:
    status, headers, _ = _get(url, path)
    assert status in (401, 404)
    assert "set-cookie" not in headers
    assert "\\r" in headers["x-error-message"] or "\\n" in headers["x-error-message"]
    host = urlsplit(url).netloc.encode()
    head = _raw(url, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    head = head.split(b"\r\n\r\n", 1)[0]
    assert b"\nSet-Cookie" not in head and b"\rSet-Cookie" not in head


def test_raw_control_bytes_in_the_request_line_are_escaped(url: str) -> None:
    host = urlsplit(url).netloc.encode()
    answer = _raw(url, b"GET /org/open/resolve/x\x00y\x1b[31m/config.json HTTP/1.1\r\nHost: " + host +
                  b"\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 404")
    assert all(b >= 0x20 for line in head.split(b"\r\n") for b in line), head
    assert b"X-Error-Message: Invalid rev id: x\\x00y\\x1b[31m" in head


def test_a_long_request_path_is_cut_short_in_the_error_header(url: str) -> None:
    name = "a" * 30_000
    status, headers, body = _get(url, f"/org/open/resolve/main/{name}")
    assert (status, headers["x-error-code"]) == (404, "EntryNotFound")
    assert len(headers["x-error-message"]) <= 510 and name in json.loads(body)["error"]


@pytest.mark.parametrize("host", [b"evil.example/\x00x", b"a b@evil.example", b"127.0.0.1:99999\x7f"])
def test_a_malformed_host_header_does_not_shape_the_redirect(url: str, host: bytes) -> None:
    answer = _raw(url, b"HEAD /org/open/resolve/main/model.safetensors HTTP/1.1\r\nHost: " + host +
                  b"\r\nConnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 302")
    location = next(line for line in head.split("\r\n") if line.lower().startswith("location:"))
    assert location.split(":", 1)[1].strip().startswith(f"{url}/_lfs/org/open/")


def test_a_well_formed_host_header_names_the_redirect_host(url: str) -> None:
    port = urlsplit(url).port
    status, headers, _ = _get(url, "/org/open/resolve/main/model.safetensors", {"Host": f"localhost:{port}"})
    assert status == 302 and headers["location"].startswith(f"http://localhost:{port}/_lfs/")


# Connections: idle keep-alive sockets never hold a request slot; bad limits are one-line usage errors.

@contextlib.contextmanager
def _serve(server: HubServer) -> Iterator[tuple[str, int]]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _keep_alive(host: str, port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/api/models/org/open")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Connection", "").lower() != "close"
    resp.read()
    return conn


def test_idle_keep_alive_connections_do_not_hold_request_slots(hub_dir: Path) -> None:
    with _serve(make_server(hub_dir, port=0, max_connections=2)) as address:
        idle = [_keep_alive(*address) for _ in range(2)]
        started = time.monotonic()
        conn = http.client.HTTPConnection(*address, timeout=5)
        conn.request("GET", "/org/open/resolve/main/config.json")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"{}\n"
        assert time.monotonic() - started < 2
        for c in idle:  # the idle connections were left open and still work
            c.request("GET", "/api/models/org/open")
            assert c.getresponse().read()
            c.close()
        conn.close()


def test_past_the_open_connection_cap_the_longest_idle_connection_is_closed(hub_dir: Path) -> None:
    server = HubServer(("127.0.0.1", 0), hub_dir, max_connections=1, max_open=2)
    with _serve(server) as address:
        oldest = _keep_alive(*address)
        time.sleep(0.05)
        newer = _keep_alive(*address)
        status, _, _ = _get(f"http://{address[0]}:{address[1]}", "/api/models/org/open")
        assert status == 200
        assert oldest.sock is not None and oldest.sock.recv(1) == b""  # closed by the server
        newer.request("GET", "/api/models/org/open")
        assert newer.getresponse().status == 200
        newer.close()
        oldest.close()


def test_requests_in_flight_are_bounded(hub_dir: Path) -> None:
    server = make_server(hub_dir, port=0, max_connections=1, throttle_bps=400_000)
    with _serve(server) as (host, port):
        base = f"http://{host}:{port}"
        slow: dict[str, object] = {}

        def download() -> None:
            slow["answer"] = _get(base, "/_lfs/org/open/main/model.safetensors")
            slow["done"] = time.monotonic()

        thread = threading.Thread(target=download)
        thread.start()
        time.sleep(0.2)  # the slow download (about 0.75 s at this rate) holds the only slot
        status, _, _ = _get(base, "/org/open/resolve/main/config.json")
        quick_done = time.monotonic()
        thread.join(timeout=10)
        assert status == 200 and slow["answer"][0] == 200 and slow["answer"][2] == BIG  # type: ignore[index]
        assert quick_done >= slow["done"]  # type: ignore[operator]


def test_the_demo_downloads_quickly_with_two_connections(tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from huggingface_hub import snapshot_download

    from modelrig.hub.tiny_repos import ORG, TOKEN_FILE

    hub = tmp_path / "tiny-hub"
    repos = [f"{ORG}/llama-meta", f"{ORG}/ziya-delta"]
    demo_repos(tmp_path_factory, hub)
    token = (hub / TOKEN_FILE).read_text().strip()
    base, stop = serve_in_thread(hub, token_file=hub / TOKEN_FILE, max_connections=2)
    try:
        started = time.monotonic()
        for repo in repos:
            snapshot_download(repo, cache_dir=tmp_path / "cache", endpoint=base, token=token, etag_timeout=30)
        elapsed = time.monotonic() - started
    finally:
        stop()
    assert elapsed < 20, f"{elapsed:.1f} s"


@pytest.mark.parametrize(("args", "flag"), [
    (["--max-connections", "0"], "--max-connections"),
    (["--max-connections", "-1"], "--max-connections"),
    (["--port", "70000"], "--port"),
    (["--port", "-5"], "--port"),
    (["--throttle", "-1"], "--throttle"),
])
@pytest.mark.slow
def test_bad_limits_are_one_line_usage_errors(hub_dir: Path, args: list[str], flag: str) -> None:
    proc = subprocess.run(modelrig_cmd("hub", "serve", str(hub_dir), *args), capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("modelrig: error: ") and flag in proc.stderr and "[usage]" in proc.stderr


def test_make_server_refuses_bad_limits(hub_dir: Path) -> None:
    for kwargs in ({"max_connections": 0}, {"max_connections": -1}, {"port": 70000}, {"throttle_bps": -1}):
        with pytest.raises(UsageError):
            make_server(hub_dir, **kwargs)  # type: ignore[arg-type]


# Request bodies are consumed, so the next request on a keep-alive connection is read as sent.

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "GET"])
def test_a_request_body_is_consumed_before_the_next_request(url: str, method: str) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, "/api/models/org/open", body=b"GET /org/gated/resolve/main/weights.bin HTTP/1.1\r\n\r\n"
                 + b"x" * 5000)
    first = conn.getresponse()
    first.read()
    assert first.status == (200 if method == "GET" else 405)
    conn.request("GET", "/org/open/resolve/main/config.json")
    second = conn.getresponse()
    assert second.status == 200 and second.read() == b"{}\n"
    conn.close()


def test_a_body_that_cannot_be_skipped_closes_the_connection(url: str) -> None:
    host = urlsplit(url).netloc.encode()
    chunked = _raw(url, b"POST /api/models/org/open HTTP/1.1\r\nHost: " + host +
                   b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /org/open/resolve/main/"
                   b"config.json HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 405") and chunked.count(b"HTTP/1.1 ") == 1
    assert b"\r\nConnection: close\r\n" in chunked.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    huge = _raw(url, b"PUT /api/models/org/open HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 999999999999"
                b"\r\n\r\nabc")
    assert huge.startswith(b"HTTP/1.1 405") and b"\r\nConnection: close\r\n" in huge
    twice = _raw(url, b"POST /api/models/org/open HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 3\r\n"
                 b"Content-Length: 60\r\n\r\nabcGET /org/open/resolve/main/config.json HTTP/1.1\r\n\r\n")
    assert twice.startswith(b"HTTP/1.1 405") and twice.count(b"HTTP/1.1 ") == 1


# Clients that stall anywhere in a request lose their place; malformed requests get a status and one log line.

def _stalled(address: tuple[str, int], data: bytes) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(data)
    return sock


def _closed_by_server(sock: socket.socket, *, within: float) -> bool:
    """True when the server closes `sock` (end of stream or reset) within `within` seconds, having sent nothing."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def test_clients_stalled_in_their_headers_lose_their_places(hub_dir: Path) -> None:
    server = HubServer(("127.0.0.1", 0), hub_dir, read_deadline=1.0)  # 32 slots, 128 open connections
    with _serve(server) as address:
        stalled = [_stalled(address, b"GET /api/models/org/open HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                   for _ in range(135)]
        started = time.monotonic()
        conn = http.client.HTTPConnection(*address, timeout=10)
        conn.request("GET", "/org/open/resolve/main/config.json")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"{}\n"
        assert time.monotonic() - started < 5
        conn.close()
        assert all(_closed_by_server(sock, within=5) for sock in stalled)


def test_clients_stalled_in_their_body_lose_their_places(hub_dir: Path) -> None:
    server = HubServer(("127.0.0.1", 0), hub_dir, max_connections=1, max_open=2, read_deadline=1.0)
    with _serve(server) as address:
        stalled = [_stalled(address, b"POST /api/models/org/open HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n"
                                     b"\r\nabc") for _ in range(2)]
        started = time.monotonic()
        status, _, body = _get(f"http://{address[0]}:{address[1]}", "/org/open/resolve/main/config.json")
        assert status == 200 and body == b"{}\n"
        assert time.monotonic() - started < 5
        assert all(_closed_by_server(sock, within=5) for sock in stalled)


@pytest.mark.parametrize("request_bytes, answer", [
    (b"GARBAGE\r\n\r\n", b"HTTP/1.1 400 Bad Request\r\n"),
    (b"GET /api/models/org/open HTTP/9.9\r\nHost: a\r\n\r\n", b"HTTP/1.1 505 HTTP Version Not Supported\r\n"),
    (b"GET /api/models/org/open HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
     b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
    (b"GET /api/models/org/open HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
     b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
], ids=["garbage", "http-9.9", "70k-header", "300-headers"])
def test_a_malformed_request_gets_a_status_and_one_log_line(url: str, capsys: pytest.CaptureFixture[str],
                                                            request_bytes: bytes, answer: bytes) -> None:
    capsys.readouterr()
    reply = _raw(url, request_bytes)
    assert reply.startswith(answer), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close" in head and json.loads(body) == {"error": answer.split(b" ", 2)[2].strip().decode()}
    assert _get(url, "/org/open/resolve/main/config.json")[0] == 200  # still serving
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert f"] {answer.split(b' ')[1].decode()} " in line and len(line) < 320, line
