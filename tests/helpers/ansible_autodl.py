"""An AutoDL-like host for the Ansible tests: a CONNECT proxy on loopback, a ModelScope-protocol hub holding a
BlueLM-style remote-code double, its user manifest and host variables (the AutoDL and fleet tests)."""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelrig.hub.layout import write_index
from tests import remote_code_doubles
from tests.helpers.ansible_site import WHEEL_DIR
from tests.helpers.hub import served
from tests.helpers.sshhosts import SshHost
from tests.helpers.venvs import pip_find_links

MODEL = "autodl-tiny-bluelm"


REPO = "vivo-tiny/bluelm-double"


class _Tunnel(socketserver.BaseRequestHandler):
    """An HTTP CONNECT proxy: records the target, then relays bytes both ways."""

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target = head.split(b" ", 2)[:2]
        self.server.targets.append(target.decode())  # type: ignore[attr-defined]
        if method != b"CONNECT":
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.decode().rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            self.request.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with upstream:
            sockets = [self.request, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 60)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.request else self.request).sendall(data)


@pytest.fixture(scope="module", name="proxy")
def proxy_fixture() -> Iterator[tuple[str, list[str]]]:
    """A CONNECT proxy on loopback; yields its URL and the list of targets it was asked for."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Tunnel)
    server.daemon_threads = True
    server.targets = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.targets  # type: ignore[attr-defined]
    finally:
        server.shutdown()


@pytest.fixture(scope="module", name="modelscope_hub")
def modelscope_hub_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local hub holding a BlueLM-style remote-code double, reached over the ModelScope protocol."""
    root = tmp_path_factory.mktemp("ms-hub")
    remote_code_doubles.build("double-bluelm", root / REPO / "main")
    write_index(root / REPO)
    with served(root) as url:
        yield url


def _manifest(folder: Path, port: int) -> Path:
    data = {
        "id": MODEL, "title": "Tiny BlueLM-style chat (AutoDL-like host)", "license": {"name": "test"},
        "architecture": "BlueLMForCausalLM", "trust_remote_code": True,
        "weights": {"model": {"prefer": "modelscope", "modelscope": {"repo": REPO, "revision": "master",
                                                                     "to_pin": True},
                              "include": ["*.json", "*.py", "*.safetensors", "tokenizer.model"], "size_gb": 0.001}},
        "env": {"python": "3.11", "torch": "==2.13.0",
                "packages": ["transformers==4.37.0", "tokenizers", "sentencepiece", "accelerate", "protobuf",
                             "numpy<2", "streamlit"]},
        "resources": {"params_b": 0.0001, "memory_gb": {"fp32": 0.1}, "disk_gb": 0.1},
        "launch": [{"name": "chat", "kind": "streamlit_chat", "adapter": "bluelm", "port": port,
                    "options": {"max_new_tokens": 6}}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODEL}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def autodl_knobs(tmp: Path, host: SshHost, proxy_url: str, hub_url: str) -> tuple[dict[str, object], str]:
    """The host variables of an AutoDL-like `host` serving the BlueLM-style double from the ModelScope hub at
    `hub_url`: the data root on its stand-in data disk, a proxy file (`~/network_turbo`) for download tasks, the
    process supervisor, the Streamlit chat on a free port of the host's address. Returns them and the chat's URL."""
    turbo = host.home / "network_turbo"  # stands in for AutoDL's /etc/network_turbo
    turbo.write_text(f"export http_proxy={proxy_url}\nexport https_proxy={proxy_url}\n")
    data_root = host.home / "autodl-tmp" / "modelrig"  # stands in for the data disk /root/autodl-tmp
    port = _free_port(host.address)
    return {
        "modelrig_models": [MODEL],
        "modelrig_data_root": str(data_root),
        "modelrig_manifests_dir": str(_manifest(tmp / f"manifests-{host.name}", port)),
        "modelrig_modelscope_endpoint": hub_url,
        "modelrig_hub_prefer": "modelscope",
        "modelrig_bind": host.address,
        "modelrig_supervisor": "process",
        "modelrig_proxy": {"source_file": str(turbo), "http_proxy": "", "https_proxy": "", "no_proxy": ""},
        "modelrig_pip": {"index_url": "", "extra_index_urls": [], "find_links": pip_find_links(),
                         "use_torch_index": False},
        "modelrig_torch_index_url": "",
        "modelrig_uv_cache_dir": str(host.slot / "uv"),
        "modelrig_wheel_build_dir": str(WHEEL_DIR),
        "model_weights_hub": "modelscope",
        "model_weights_store": str(data_root / "store"),
    }, f"http://{host.address}:{port}/"
