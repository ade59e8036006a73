"""Local hub helpers for tests: small repos written file by file, manifests that point at them, a served hub."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from modelrig.hub.layout import REPO_CONFIG, write_index
from modelrig.hub.tiny_repos import make_tiny_hub

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The demo model's repos: a Meta-format LLaMA (gated) and a Ziya-style delta.
DEMO_REPOS = ["modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta"]
_demo_repos: dict[Path, Path] = {}


def demo_repos(factory: pytest.TempPathFactory, dest: Path | None = None) -> Path:
    """The demo model's two tiny repos and their token file, written once per session by `hub make-tiny` (the
    Ziya target's training takes seconds) and copied to `dest` (default: a new temp folder); returns the copy,
    which a test may serve or change."""
    built = _demo_repos.get(factory.getbasetemp())
    if built is None:
        built = factory.mktemp("demo-repos")
        make_tiny_hub(built, only=DEMO_REPOS)
        _demo_repos[factory.getbasetemp()] = built
    dest = dest or factory.mktemp("hub")
    shutil.copytree(built, dest, dirs_exist_ok=True)
    return dest


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def write_repo(root: Path, repo: str, revisions: dict[str, dict[str, bytes]], *,
               settings: dict[str, object] | None = None, index: bool = True) -> Path:
    """Write `root/<repo>/<revision>/<path>` for every file, the repo settings, and its hash index."""
    folder = root / repo
    for revision, files in revisions.items():
        for path, data in files.items():
            target = folder / revision / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    if settings:
        (folder / REPO_CONFIG).write_text(yaml.safe_dump(settings), encoding="utf-8")
    if index:
        write_index(folder)
    return folder


def write_manifest(folder: Path, model_id: str, weights: dict[str, object], **extra: object) -> Path:
    """A valid manifest file `folder/<model_id>.yaml` with these weight sources."""
    data = {"id": model_id, "title": model_id, "license": {"name": "test"}, "weights": weights,
            "env": {"python": "3.11"}, "resources": {"params_b": 0.001, "memory_gb": {"fp32": 1}}, **extra}
    path = folder / f"{model_id}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def modelrig_cmd(*args: str) -> list[str]:
    """`modelrig ARGS` run by the toolkit interpreter."""
    return [sys.executable, "-m", "modelrig", *args]


def start_hub(directory: Path, *args: str, port: int = 0, access_log: Path | None = None
              ) -> tuple[subprocess.Popen[str], str]:
    """Start `modelrig hub serve DIR --port PORT ARGS` as a subprocess; return it and its URL once it prints it.
    With `access_log`, every request is logged into that file (appended to, so a restarted hub adds to it)."""
    log_args = ["--access-log"] if access_log else []
    stderr = open(access_log, "a") if access_log else subprocess.DEVNULL
    proc = subprocess.Popen(modelrig_cmd("hub", "serve", str(directory), "--port", str(port), *args, *log_args),
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    if access_log:
        stderr.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        proc.wait()
        raise AssertionError(f"hub serve did not start: {line!r}")
    return proc, line.strip().rsplit(" ", 1)[-1]


@contextlib.contextmanager
def served(directory: Path, *args: str, access_log: Path | None = None) -> Iterator[str]:
    """Run `modelrig hub serve DIR --port 0` as a subprocess; yield its URL once it prints it. With `access_log`,
    the server logs every request into that file."""
    proc, url = start_hub(directory, *args, access_log=access_log)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def logged_requests(access_log: Path) -> list[tuple[str, str, int, str]]:
    """(method, path, status, Range asked for or '-') of every request in a `hub serve --access-log` log."""
    found = []
    for line in access_log.read_text(encoding="utf-8").splitlines():
        match = re.search(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d+) range=(\S+)', line)
        if match:
            found.append((match[1], unquote(match[2]), int(match[3]), match[4]))
    return found


def offline_driver(tmp: Path, hub_dir: Path, client_python: Path, client_code: str, *serve_args: str) -> list[str]:
    """A command that starts the hub and runs `client_code` with `client_python` against it, both in one shell
    (so both live in the same `unshare -n` namespace); the client gets the URL as $HUB_URL."""
    client = tmp / "client.py"
    client.write_text(textwrap.dedent(client_code), encoding="utf-8")
    extra = " ".join(serve_args)
    script = tmp / "driver.sh"
    script.write_text(textwrap.dedent(f"""\
        set -e
        {sys.executable} -m modelrig hub serve {hub_dir} --port 0 {extra} > {tmp}/serve.out 2> {tmp}/serve.err &
        SERVER=$!
        trap 'kill $SERVER 2>/dev/null || true' EXIT
        for i in $(seq 1 100); do grep -q http:// {tmp}/serve.out 2>/dev/null && break; sleep 0.1; done
        export HUB_URL=$(grep -o 'http://[^ ]*' {tmp}/serve.out)
        export HF_ENDPOINT=$HUB_URL
        {client_python} {client}
        """), encoding="utf-8")
    return ["bash", str(script)]


def client_env(home: Path) -> dict[str, str]:
    """Environment for a client subprocess: isolated caches, no xet, no progress bars, modelrig importable."""
    env = {**os.environ, "HF_HOME": str(home / "hf"), "MODELSCOPE_CACHE": str(home / "ms"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "MODELRIG_NO_PROGRESS": "1",
           "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("HF_TOKEN", None)
    env.pop("HF_ENDPOINT", None)
    return env
