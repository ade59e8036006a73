"""`modelrig demo` end to end with no network (`unshare -n`): a fresh data root, tiny repos on a local hub, a
merged model served as a chat UI and an OpenAI API, one chat answer; a second run changes nothing; `down` stops
every process the demo started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from modelrig.orchestrate.demo import ANSWER, pip_find_links
from tests.helpers.offline import offline
from tests.helpers.venvs import CACHE

pytestmark = pytest.mark.slow

MODELRIG = str(Path(sys.executable).parent / "modelrig")
STAGES = ["hub", "plan", "env", "fetch", "convert", "render", "launch"]

#: Runs inside the network namespace: demo, demo again, down; reports outputs, timings and the processes seen.
DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    modelrig, root = sys.argv[1], sys.argv[2]

    def run(*args):
        start = time.perf_counter()
        done = subprocess.run([modelrig, "--data-root", root, *args], capture_output=True, text=True)
        return {"rc": done.returncode, "out": done.stdout, "err": done.stderr[-3000:],
                "wall": time.perf_counter() - start}

    def processes_under_root():
        found = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
                except OSError:
                    continue
                if root in cmd and "modelrig-demo-driver" not in cmd:
                    found[int(pid)] = cmd
        return found

    def alive(pid):
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    try:
        first = run("demo", "--json")
        second = run("demo", "--json")
        locked = run("lock", "demo-tiny-ziya", "--json")
        verified = run("verify", "demo-tiny-ziya", "--json")
        state = json.load(open(os.path.join(root, "run", "demo-tiny-ziya", "up.json")))
        before = processes_under_root()
    finally:
        down = run("down", "demo-tiny-ziya")
    started = sorted({int(e["pid"]) for e in state["entries"].values() if e.get("pid")} | set(before))
    print(json.dumps({"first": first, "second": second, "locked": locked, "verified": verified, "down": down,
                      "state": state,
                      "before": before, "started": started,
                      "alive_after_down": [p for p in started if alive(p)]}))
""")


def test_demo_runs_offline_answers_then_changes_nothing_and_down_stops_everything(tmp_path):
    env = {**os.environ, "UV_CACHE_DIR": str(CACHE / "uv")}
    warm_root = tmp_path / "warm"
    warm_root.mkdir()
    (warm_root / "config.yaml").write_text(yaml.safe_dump(
        {"pip": {"find_links": pip_find_links(), "use_torch_index": False}}))
    warm = subprocess.run([MODELRIG, "--data-root", str(warm_root), "env", "demo-tiny-ziya"], env=env,
                          capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr  # online: fills uv's cache, so the offline demo can build its env

    root = tmp_path / "fresh-root"
    done = subprocess.run(offline([sys.executable, "-c", DRIVER, MODELRIG, str(root), "modelrig-demo-driver"]),
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    first, second = report["first"], report["second"]
    assert first["rc"] == 0, first["err"]
    demo = json.loads(first["out"])
    assert demo["offline"] is True
    assert [s["stage"] for s in demo["stages"]] == STAGES
    assert all(s["changed"] for s in demo["stages"]), [s["summary"] for s in demo["stages"]]
    assert demo["answer"] == ANSWER
    assert demo["urls"] == {"chat": "http://127.0.0.1:17860/", "api": "http://127.0.0.1:18000/v1"}
    final = root / "models" / "demo-tiny-ziya" / "final"
    assert list(final.glob("*.safetensors")) and not list(final.glob("*.bin"))

    assert second["rc"] == 0, second["err"]
    again = json.loads(second["out"])
    assert [s["stage"] for s in again["stages"]] == STAGES
    assert [f"{s['stage']}: {s['summary']}" for s in again["stages"] if s["changed"]] == []
    assert again["answer"] == ANSWER
    assert second["wall"] < 15, second["wall"]

    # with no network (so no PyTorch index), the lock and verify right after the demo use the demo's index settings
    assert report["locked"]["rc"] == 0, report["locked"]["err"]
    assert report["verified"]["rc"] == 0, report["verified"]["err"]
    config = yaml.safe_load((root / "config.yaml").read_text())
    assert config == {"pip": {"find_links": pip_find_links(), "use_torch_index": config["pip"]["use_torch_index"]}}

    assert report["down"]["rc"] == 0, report["down"]["err"]
    assert "stopped" in report["down"]["out"]
    assert set(report["state"]["entries"]) == {"chat", "api"}
    assert len(report["before"]) >= 2, report["before"]  # the chat UI and the API were running
    assert report["alive_after_down"] == []


def test_demo_config_points_the_hub_at_the_local_server_and_takes_torch_from_a_local_wheel_folder(tmp_path):
    from modelrig.config import HostConfig, PipSettings
    from modelrig.orchestrate.demo import demo_config

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    config = demo_config(HostConfig(pip=PipSettings(find_links=[str(wheels)])), hub_url="http://127.0.0.1:9",
                         token_file=tmp_path / "tokens")
    assert config.hub.hf_endpoint == "http://127.0.0.1:9" and config.hub.token_file == str(tmp_path / "tokens")
    assert config.pip.use_torch_index is False
    plain = demo_config(HostConfig(pip=PipSettings(find_links=[str(tmp_path)])), hub_url="http://127.0.0.1:9",
                        token_file=tmp_path / "tokens")
    assert plain.pip.use_torch_index is True


def test_the_demo_keeps_its_index_settings_in_the_data_root_config(tmp_path):
    from modelrig.config import DataRoot, HostConfig, PipSettings, load_host_config
    from modelrig.orchestrate.demo import demo_config, record_index_settings

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    data = DataRoot(tmp_path / "root")
    data.root.mkdir()
    data.config_file.write_text("hub:\n  hf_endpoint: https://hf-mirror.com\npip:\n  index_url: file:///srv/pypi\n"
                                f"  find_links: [{wheels}]\n")
    used = demo_config(load_host_config(None, data), hub_url="http://127.0.0.1:9", token_file=tmp_path / "t")
    assert record_index_settings(data, used) is True
    again = load_host_config(None, data)
    assert again.pip == PipSettings(index_url="file:///srv/pypi", find_links=[str(wheels)], use_torch_index=False)
    assert again.hub.hf_endpoint == "https://hf-mirror.com"  # the demo's local hub is not kept
    mtime = data.config_file.stat().st_mtime_ns
    assert record_index_settings(data, used) is False and data.config_file.stat().st_mtime_ns == mtime

    fresh = DataRoot(tmp_path / "fresh")
    assert record_index_settings(fresh, demo_config(HostConfig(), hub_url="http://127.0.0.1:9",
                                                    token_file=tmp_path / "t")) is True
    assert load_host_config(None, fresh).pip.find_links == demo_config(
        HostConfig(), hub_url="http://127.0.0.1:9", token_file=tmp_path / "t").pip.find_links


def test_without_a_reachable_index_the_demo_builds_offline():
    from modelrig.orchestrate.demo import index_reachable

    probe = [sys.executable, "-c", "import sys; from modelrig.orchestrate.demo import index_reachable as r; "
             "sys.exit(0 if not r() and r('file:///opt/pypi/simple') else 1)"]
    assert subprocess.run(offline(probe), capture_output=True).returncode == 0
    assert index_reachable("file:///anywhere")
