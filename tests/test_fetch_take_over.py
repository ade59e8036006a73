"""A fetch left running in a store folder (what Ctrl-C on a play leaves on the host) is named by the next fetch,
which fails `busy` instead of writing the same folder; with --take-over it stops that fetch and resumes from what
it left (ModelScope's partial file continues with a Range request), so two fetches never write one folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from modelrig.fetch.holder import HOLDER_NAME
from tests.helpers.hub import client_env, modelrig_cmd, random_bytes, served, write_manifest, write_repo

pytestmark = pytest.mark.slow
FILES = {"config.json": b'{"model_type": "llama"}\n', "a.bin": random_bytes(1_200_000, 1),
         "b.bin": random_bytes(1_200_000, 2)}
#: Bytes per second per transfer: each weight file takes several seconds.
THROTTLE = 40_000


def partial_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.incomplete") if p.is_file()) if folder.is_dir() else 0


def test_a_fetch_left_running_is_named_then_stopped_and_resumed_by_a_take_over(tmp_path: Path) -> None:
    hub_dir = tmp_path / "hub"
    write_repo(hub_dir, "msorg/big", {"master": FILES}, settings={"default": "master"})
    manifest = write_manifest(tmp_path, "big-test", {"model": {"modelscope": {"repo": "msorg/big",
                                                                               "revision": "master"}}})
    folder = tmp_path / "root" / "store" / "modelscope" / "msorg--big"
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(tmp_path / "root")}
    log = tmp_path / "access.log"
    with served(hub_dir, "--throttle", str(THROTTLE), access_log=log) as url:
        cmd = modelrig_cmd("fetch", str(manifest), "--hub", "modelscope", "--modelscope-endpoint", url)
        left = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while partial_bytes(folder) < 60_000:
                assert left.poll() is None and time.monotonic() < deadline, "the first fetch did not get going"
                time.sleep(0.05)
            busy = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            assert busy.returncode != 0 and left.poll() is None
            assert f"{folder}: another modelrig fetch (pid {left.pid}, running for " in busy.stderr, busy.stderr
            assert busy.stderr.strip().endswith("is downloading into this folder [busy]")
            taken = subprocess.run([*cmd, "--take-over", "--json"], env=env, capture_output=True, text=True,
                                   timeout=300)
        finally:
            if left.poll() is None:
                left.kill()
            left.wait(timeout=10)
    assert taken.returncode == 0, taken.stderr
    assert left.returncode == -15  # stopped by the take-over (SIGTERM), not left to finish
    notes = json.loads(taken.stdout)["details"]["notes"]
    assert len(notes) == 1 and notes[0].startswith(f"model: stopped the fetch still downloading into {folder} "
                                                   f"(pid {left.pid}, running for "), notes
    assert f"stopping the fetch still downloading here (pid {left.pid}" in taken.stderr
    for path, data in FILES.items():
        assert (folder / path).read_bytes() == data
    assert re.findall(r"range=bytes=([1-9]\d*)-", log.read_text()), "the partial file should be resumed"
    assert not (folder / HOLDER_NAME).exists() and list(folder.rglob("*.incomplete")) == []


@pytest.mark.parametrize("left", ["record", "record_temporary", "record_temporary_of_a_reused_pid"])
def test_what_a_sigkilled_fetch_left_beside_its_lock_never_blocks_the_next(tmp_path: Path, left: str) -> None:
    """A fetch SIGKILLed while noting itself leaves its lock file and its holder record, or the record's temporary
    (`.modelrig-tmp-<pid>-<random>-` + the record's name), in a folder it had not yet marked as fetch's: the next
    fetch neither waits for it, nor refuses the folder as holding files fetch did not write."""
    hub_dir = tmp_path / "hub"
    write_repo(hub_dir, "org/big", {"main": {"config.json": FILES["config.json"], "a.bin": FILES["a.bin"]}})
    manifest = write_manifest(tmp_path, "big-test", {"model": {"huggingface": {"repo": "org/big",
                                                                                "revision": "main"}}})
    folder = tmp_path / "root" / "store" / "huggingface" / "org--big"
    folder.mkdir(parents=True)
    (folder / ".modelrig-fetch.lock").touch()
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid = os.getpid() if left.endswith("reused_pid") else gone.pid
    if left == "record":
        (folder / HOLDER_NAME).write_text(json.dumps({"pid": gone.pid, "create_time": 1.0, "started": 1.0}) + "\n")
    else:
        (folder / f".modelrig-tmp-{pid}-0123abcd-{HOLDER_NAME}").write_text('{"pid": ')
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(tmp_path / "root")}
    with served(hub_dir) as url:
        done = subprocess.run([*modelrig_cmd("fetch", str(manifest), "--hf-endpoint", url), "--json"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["changed"] is True
    assert (folder / "a.bin").read_bytes() == FILES["a.bin"]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".modelrig")) == [
        ".modelrig-fetch-owned", ".modelrig-fetch.lock", ".modelrig-stamp.json"]
