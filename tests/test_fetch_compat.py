"""The private client details of `modelrig.fetch.compat` hold for the oldest and the newest supported releases of
huggingface_hub, modelscope and modelscope-hub: a real fetch from the local hub over both protocols, run in a venv
holding exactly those releases (and modelrig's own source)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from modelrig.fetch.compat import SUPPORTED
from modelrig.hub.layout import open_repo, resolve_revision
from modelrig.hub.server import serve_in_thread
from tests.helpers.hub import random_bytes, write_manifest, write_repo
from tests.helpers.venvs import VenvFactory

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
#: What modelrig's fetch path imports besides the hub clients.
BASE = ["pydantic>=2.6,<3", "pyyaml>=6", "jinja2>=3.1", "packaging>=23", "tqdm>=4.66", "filelock>=3.12",
        "psutil>=5.9"]
RANGES = {
    "oldest": ["huggingface_hub==1.18.0", "modelscope==1.38.0", "modelscope-hub==0.4.0"],
    "newest": ["huggingface_hub==2.4.0", "modelscope==1.40.2", "modelscope-hub==0.5.1"],
}
WEIGHTS = random_bytes(3_000_000, 5)

WATCH = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from huggingface_hub import hf_hub_download
    from modelrig.fetch.compat import hf_incomplete_glob
    endpoint, target, sha = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    folder, pattern = hf_incomplete_glob(target, "model.safetensors", sha)
    seen = []
    def watch():
        while not done.is_set():
            if folder.is_dir() and list(folder.glob(pattern)):
                seen.append(True)
                return
            time.sleep(0.005)
    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    hf_hub_download("org/tiny", "model.safetensors", local_dir=target, endpoint=endpoint)
    done.set()
    watcher.join()
    print("seen" if seen else "not seen")
""")


def test_declared_ranges_cover_the_tested_releases():
    text = (REPO / "pyproject.toml").read_text()
    for package, (low, high) in SUPPORTED.items():
        assert f'"{package}{low},{high}"' in text
    for pins in RANGES.values():
        for pin in pins:
            package, version = pin.split("==")
            low, high = SUPPORTED[package]
            assert version in SpecifierSet(f"{low},{high}"), pin


@pytest.mark.parametrize("release", sorted(RANGES))
def test_fetch_works_with_the_supported_client_releases(release, tmp_path):
    python = VenvFactory().get([*BASE, *RANGES[release]])
    hub_dir = tmp_path / "hub"
    files = {"config.json": b"{}\n", "model.safetensors": WEIGHTS}
    write_repo(hub_dir, "org/tiny", {"main": files})
    write_repo(hub_dir, "msorg/tiny", {"master": files}, settings={"default": "master"})
    commit = resolve_revision(open_repo(hub_dir, "org/tiny"), "main").commit
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_DISABLE_XET": "1", "MODELRIG_NO_PROGRESS": "1",
           "HF_HOME": str(tmp_path / "hf"), "MODELSCOPE_CACHE": str(tmp_path / "ms")}
    url, stop = serve_in_thread(hub_dir, throttle_bps=4_000_000)
    try:
        watched = subprocess.run([str(python), "-c", WATCH, url, str(tmp_path / "watched"),
                                  hashlib.sha256(WEIGHTS).hexdigest()], capture_output=True, text=True, env=env,
                                 timeout=300)
        assert watched.stdout.strip() == "seen", watched.stderr
        for hub, repo, revision in (("huggingface", "org/tiny", commit), ("modelscope", "msorg/tiny", "master")):
            manifest = write_manifest(tmp_path, f"compat-{hub}", {"model": {hub: {"repo": repo,
                                                                                  "revision": revision}}})
            done = subprocess.run([str(python), "-m", "modelrig", "--data-root", str(tmp_path / "root"), "fetch",
                                   str(manifest), "--hf-endpoint", url, "--modelscope-endpoint", url, "--json"],
                                  capture_output=True, text=True, env=env, timeout=300)
            assert done.returncode == 0, done.stderr
            (source,) = json.loads(done.stdout)["details"]["sources"]
            target = Path(source["path"])
            assert (target / "model.safetensors").read_bytes() == WEIGHTS
            assert not list(target.rglob("*.incomplete"))
            assert "%|" not in done.stderr  # no per-file progress bars with progress off
    finally:
        stop()
