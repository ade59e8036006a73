"""uv trusts the system trust store wherever pip does: a mirror whose certificate comes from a CA that is only in
the system store (a corporate proxy's, an internal mirror's), with no certificate variable set.

Run in a mount and network namespace (`unshare -m -n`): the system store is this machine's bundle plus the test's
CA, bind-mounted over /etc/ssl/certs/ca-certificates.crt for that namespace only; the mirror listens on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelrig.envs.tools import find_uv
from tests.helpers.offline import unshare_available
from tests.helpers.tinywheel import tiny_wheel

SYSTEM_STORE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Certificate settings a bare host does not have in its SSH sessions.
CERT_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "UV_NATIVE_TLS",
             "UV_SYSTEM_CERTS")

SERVER = """
import functools, http.server, ssl, sys
folder, cert, key = sys.argv[1:4]
server = http.server.ThreadingHTTPServer(("127.0.0.1", 8443),
    functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""

PROBE = """
import json, os, subprocess, sys
from modelrig.envs.tools import clean_environ
uv, out = sys.argv[1:3]
compile_cmd = [uv, "pip", "compile", "--no-config", "--no-cache", "--no-header", "--no-index", "--find-links",
               "https://127.0.0.1:8443/", "-", "--quiet"]
engine = subprocess.run(compile_cmd, input="tinypkg==1.0\\n", capture_output=True, text=True, env=clean_environ())
plain = {k: v for k, v in clean_environ().items() if k != "UV_SYSTEM_CERTS"}
without = subprocess.run(compile_cmd, input="tinypkg==1.0\\n", capture_output=True, text=True, env=plain)
pip = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--isolated",
                      "--no-deps", "--no-index", "--find-links", "https://127.0.0.1:8443/", "-d", out,
                      "tinypkg==1.0"], capture_output=True, text=True)
print(json.dumps({name: [p.returncode, p.stdout, p.stderr] for name, p in
                  [("engine", engine), ("without", without), ("pip", pip)]}))
"""


def _ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for IP 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=modelrig test proxy CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                 "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


def test_uv_trusts_a_ca_in_the_system_store_as_pip_does(tmp_path):
    if not unshare_available():
        pytest.fail("unshare is needed (root) to give the test a system trust store of its own")
    uv = find_uv()
    assert uv is not None
    ca, cert, key = _ca(tmp_path)
    tiny_wheel(tmp_path / "mirror")
    store = tmp_path / "system-store.crt"
    store.write_text(SYSTEM_STORE.read_text() + ca.read_text())
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "probe.py").write_text(PROBE)
    script = (f"set -e; ip link set lo up; mount --bind {store} {SYSTEM_STORE}; "
              f"{sys.executable} {tmp_path}/server.py {tmp_path}/mirror {cert} {key} > {tmp_path}/server.log 2>&1 & "
              f"for i in $(seq 100); do grep -q ready {tmp_path}/server.log && break; sleep 0.1; done; "
              f"{sys.executable} {tmp_path}/probe.py {uv} {tmp_path}/pip-out; kill $!")
    env = {k: v for k, v in os.environ.items() if k not in CERT_VARS}
    out = subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "--", "bash", "-c", script],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["pip"][0] == 0, result["pip"][2]
    assert (tmp_path / "pip-out" / "tinypkg-1.0-py3-none-any.whl").is_file()
    assert result["without"][0] != 0 and "UnknownIssuer" in result["without"][2]
    assert result["engine"][0] == 0, result["engine"][2]
    assert result["engine"][1].strip() == "tinypkg==1.0"
