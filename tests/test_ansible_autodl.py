"""site.yml on an AutoDL-like host over SSH: the data root on the data disk, a proxy file that only download tasks
source, no systemd (the demo runs as a supervised process), and a BlueLM-style remote-code model fetched over the
ModelScope protocol and served as a Streamlit chat."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.helpers.ansible_autodl import MODEL, autodl_knobs, modelscope_hub_fixture, proxy_fixture  # noqa: F401
from tests.helpers.sshhosts import SshHost, playbook, recap, ssh_hosts_fixture  # noqa: F401

pytestmark = pytest.mark.slow


def test_autodl_like_host_serves_a_modelscope_remote_code_model_as_streamlit(ssh_hosts, tmp_path, proxy,
                                                                            modelscope_hub):
    proxy_url, targets = proxy
    host = ssh_hosts.add("autodl")
    data_root = host.home / "autodl-tmp" / "modelrig"
    knobs, url = autodl_knobs(tmp_path, host, proxy_url, modelscope_hub)
    inventory = ssh_hosts.inventory(tmp_path / "hosts.yml", hostvars={"autodl": knobs})
    run = playbook(tmp_path, inventory, "site.yml")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert recap(run.stdout)["autodl"]["failed"] == 0
    assert f"{MODEL}/chat  {url}  healthy" in run.stdout
    assert "health: ok, 1/1 demos healthy" in run.stdout
    with urllib.request.urlopen(f"{url}_stcore/health", timeout=30) as answer:
        assert answer.read() == b"ok"

    assert any(p.name == "model.safetensors" for p in (data_root / "store" / "modelscope").rglob("*"))
    assert any(t.startswith(("pypi.org:", "files.pythonhosted.org:")) for t in targets)  # downloads: proxied
    assert not any(t.startswith("127.") for t in targets)  # the loopback hub: never through the proxy
    services = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _uid(p) == host.uid
                and b"streamlit" in _read(p / "cmdline")]
    assert services, "the Streamlit demo should run as the host's user"
    assert (data_root / "run" / MODEL / "chat.log").is_file()  # no systemd: a supervised process with its log
    for proc in services:
        environ = _read(proc / "environ")
        assert b"http_proxy" not in environ.lower() and b"https_proxy" not in environ.lower()


def _uid(proc: Path) -> int | None:
    try:
        return proc.stat().st_uid
    except OSError:
        return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
