"""A `modelrig fetch` killed at any point and run again ends complete and verified; a partial file never counts."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from modelrig.stamp import STAMP_NAME
from tests.helpers.hub import client_env, modelrig_cmd, random_bytes, served, write_manifest, write_repo

FILES = {"config.json": b'{"model_type": "llama"}\n', "a.bin": random_bytes(200_000, 1),
         "b.bin": random_bytes(600_000, 2), "c.bin": random_bytes(1_500_000, 3), "d.bin": random_bytes(2_500_000, 4)}
SHA = {path: hashlib.sha256(data).hexdigest() for path, data in FILES.items()}
#: Per-transfer rate of the hub, so that a download takes long enough to be killed in the middle.
THROTTLE = 1_000_000
#: Kill points: a time before any byte arrives, then fractions of what is left to download in that run.
POINTS: list[tuple[str, float]] = [("seconds", 0.3), ("fraction", 0.0), ("fraction", 0.2), ("fraction", 0.4),
                                   ("fraction", 0.6), ("fraction", 0.8)]


def _sizes(folder: Path) -> dict[Path, int]:
    sizes = {}
    for path in folder.rglob("*") if folder.exists() else []:
        try:
            if path.is_file():
                sizes[path] = path.stat().st_size
        except FileNotFoundError:
            pass
    return sizes


def _written_since(folder: Path, baseline: dict[Path, int]) -> int:
    return sum(max(0, size - baseline.get(path, 0)) for path, size in _sizes(folder).items())


def _complete_bytes(folder: Path) -> int:
    return sum(len(FILES[p]) for p in FILES if (folder / p).is_file()
               and hashlib.sha256((folder / p).read_bytes()).hexdigest() == SHA[p])


def _assert_nothing_partial_looks_complete(folder: Path) -> None:
    """Every file at its final path is whole and correct; the folder is stamped finished only when all are."""
    for path in FILES:
        final = folder / path
        if final.exists():
            assert hashlib.sha256(final.read_bytes()).hexdigest() == SHA[path], f"{path} is partial or wrong"
    if (folder / STAMP_NAME).exists():
        assert all((folder / path).is_file() for path in FILES)


def _run_and_kill(cmd: list[str], env: dict[str, str], folder: Path, kind: str, value: float) -> int:
    baseline = _sizes(folder)
    remaining = sum(len(d) for d in FILES.values()) - _complete_bytes(folder)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    while proc.poll() is None:
        if kind == "seconds":
            hit = time.monotonic() - start >= value
        else:
            hit = _written_since(folder, baseline) > max(value * remaining, 0)
        if hit:
            proc.kill()
            break
        if time.monotonic() - start > 120:
            proc.kill()
            raise AssertionError("fetch did not finish or reach the kill point in 120 s")
        time.sleep(0.005)
    proc.wait()
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("hub_name", ["huggingface", "modelscope"])
def test_a_fetch_killed_at_many_points_completes_verified_on_rerun(tmp_path: Path, hub_name: str) -> None:
    hub_dir = tmp_path / "hub"
    write_repo(hub_dir, "org/big", {"main": FILES})
    write_repo(hub_dir, "msorg/big", {"master": FILES}, settings={"default": "master"})
    ref = {"repo": "org/big" if hub_name == "huggingface" else "msorg/big", "revision": "main"
           if hub_name == "huggingface" else "master"}
    manifest = write_manifest(tmp_path, "big-test", {"model": {hub_name: ref}})
    data_root = tmp_path / "root"
    folder = data_root / "store" / hub_name / ref["repo"].replace("/", "--")
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(data_root)}
    access_log = tmp_path / "access.log"
    with served(hub_dir, "--throttle", str(THROTTLE), access_log=access_log) as url:
        cmd = modelrig_cmd("fetch", str(manifest), "--hf-endpoint", url, "--modelscope-endpoint", url)
        codes = []
        for kind, value in POINTS:
            codes.append(_run_and_kill(cmd, env, folder, kind, value))
            _assert_nothing_partial_looks_complete(folder)
        assert codes.count(-9) >= 5, f"only {codes.count(-9)} runs were killed before finishing: {codes}"
        final = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=120)
        again = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    result = json.loads(final.stdout)
    files = {f["path"]: f["sha256"] for f in result["details"]["sources"][0]["files"]}
    assert files == SHA
    for path, data in FILES.items():
        assert (folder / path).read_bytes() == data
    leftovers = [p.name for p in folder.rglob("*.incomplete")]
    assert leftovers == [], codes
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] is False
    resumed = re.findall(r"range=bytes=([1-9]\d*)-", access_log.read_text())
    if hub_name == "modelscope":
        assert resumed, "ModelScope should resume a partial file with Range"  # the client keeps `.incomplete`
    else:
        assert not resumed  # huggingface_hub restarts an interrupted file: resume is per file (see README)



@pytest.mark.slow
def test_a_hub_lost_mid_download_gives_one_line_and_a_rerun_completes(tmp_path: Path) -> None:
    hub_dir = tmp_path / "hub"
    write_repo(hub_dir, "org/big", {"main": FILES})
    manifest = write_manifest(tmp_path, "big-test", {"model": {"huggingface": {"repo": "org/big",
                                                                                "revision": "main"}}})
    folder = tmp_path / "root" / "store" / "huggingface" / "org--big"
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(tmp_path / "root")}
    with served(hub_dir, "--throttle", str(THROTTLE)) as url:
        proc = subprocess.Popen(modelrig_cmd("fetch", str(manifest), "--hf-endpoint", url), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while _written_since(folder, {}) < 300_000 and time.monotonic() < deadline:
            time.sleep(0.01)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5
    lines = [line for line in err.splitlines() if line.startswith("modelrig: error:")]
    assert len(lines) == 1 and "run again to continue" in lines[0], err
    _assert_nothing_partial_looks_complete(folder)
    with served(hub_dir) as url:
        again = subprocess.run([*modelrig_cmd("fetch", str(manifest), "--hf-endpoint", url), "--json"], env=env,
                               capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert {f["path"]: f["sha256"] for f in json.loads(again.stdout)["details"]["sources"][0]["files"]} == SHA
