"""`make demo`'s path: scripts/demo-ansible.sh provisions this machine with the demo model through the real
ansible-playbook (site.yml), asks the API one question and prints the URLs; a second run changes nothing, and
needs no network. The demo lives on modelrig's default data root, so the CLI sees it with no flag."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelrig.fetch.remote import DEFAULT_HF_ENDPOINT
from modelrig.orchestrate.demo import ANSWER
from tests.helpers.launching import free_port
from tests.helpers.offline import offline
from tests.helpers.sshhosts import recap
from tests.helpers.venvs import CACHE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
MODEL = "demo-tiny-ziya"


def run_demo(env: dict[str, str], *, without_network: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(REPO / "scripts" / "demo-ansible.sh")]
    return subprocess.run(offline(cmd) if without_network else cmd, capture_output=True, text=True, timeout=1500,
                          env=env, cwd=REPO)


def modelrig(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV / "bin" / "modelrig"), *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd="/")


def printed(out: str, label: str) -> str:
    """The command the demo printed after `demo-ansible: LABEL: `."""
    return next(line.split(f"{label}: ", 1)[1] for line in out.splitlines()
                if line.startswith(f"demo-ansible: {label}: "))


def test_the_ansible_demo_runs_on_the_cli_data_root_again_offline_and_stops_as_printed(tmp_path):
    data = tmp_path / "data"
    ports = {"DEMO_HUB_PORT": free_port(), "DEMO_CHAT_PORT": free_port(), "DEMO_API_PORT": free_port()}
    env = {**os.environ, "MODELRIG_VENV": str(VENV), "MODELRIG_HOME": str(data), "UV_CACHE_DIR": str(CACHE / "uv"),
           **{k: str(v) for k, v in ports.items()}}
    before = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    try:
        first = run_demo(env)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        assert recap(first.stdout)["localhost"]["failed"] == 0
        answer = json.loads(next(line for line in first.stdout.splitlines() if line.startswith("{")))
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == ANSWER
        api = f"http://127.0.0.1:{ports['DEMO_API_PORT']}/v1"
        assert re.search(rf"{MODEL}/api\s+{re.escape(api)}", first.stdout)
        # The CLI sees the demo on its default data root ($MODELRIG_HOME here), with no flag.
        status = modelrig(env, "status", MODEL)
        assert re.search(rf"^{MODEL}\s+api\s+openai_api\s+healthy\s+{re.escape(api)}$", status.stdout, re.M), \
            status.stdout + status.stderr
        # Nothing new in the checkout (the locks went to the data root).
        after = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout
        new = set(after.splitlines()) - set(before.splitlines())
        assert not [line for line in new if "inventory/" in line or "locks" in line], new
        assert not (REPO / "inventory" / "locks").exists()
        assert (data / "demo-ansible" / "locks" / "localhost" / f"{MODEL}.lock.yaml").is_file()
        # The local hub was this run's only: the data root's default hub is the public one (its config names no
        # endpoint or token file), so a later `modelrig fetch` there never asks the demo's stopped hub ...
        config = yaml.safe_load((data / "config.yaml").read_text())
        assert (config["hub"]["hf_endpoint"], config["hub"]["token_file"]) == (None, None)
        # (doctor in a namespace with loopback only: it names the endpoint it would ask, and asks nothing outside)
        env_without_hub = {k: v for k, v in env.items() if k not in ("HF_ENDPOINT", "HF_TOKEN")}
        doctor = subprocess.run(offline([str(VENV / "bin" / "modelrig"), "doctor", "--json", "--timeout", "2"]),
                                capture_output=True, text=True, timeout=300, env=env_without_hub, cwd="/")
        hub_check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "hf hub")
        assert hub_check["data"]["url"] == DEFAULT_HF_ENDPOINT, hub_check
        # ... while lock and verify of the demo still work without any network.
        for verb in ("lock", "verify"):
            done = subprocess.run(offline([str(VENV / "bin" / "modelrig"), verb, MODEL]), capture_output=True,
                                  text=True, timeout=300, env=env, cwd="/")
            assert done.returncode == 0, f"{verb}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        second = run_demo(env)
        assert second.returncode == 0, second.stdout[-4000:]
        assert recap(second.stdout)["localhost"]["changed"] == 0, second.stdout[-6000:]
        # The printed commands work in a new login shell elsewhere, without the demo's environment.
        login = {k: v for k, v in os.environ.items() if k not in ("MODELRIG_HOME", "VIRTUAL_ENV")}
        stop = printed(second.stdout, "stop the demo with")
        assert shlex.split(stop)[0] == str(VENV / "bin" / "modelrig")
        shown = subprocess.run(["bash", "-lc", printed(second.stdout, "status")], capture_output=True, text=True,
                               env=login, cwd="/", timeout=120)
        assert re.search(rf"^{MODEL}\s+api\s+openai_api\s+healthy", shown.stdout, re.M), shown.stdout + shown.stderr
        stopped = subprocess.run(["bash", "-lc", stop], capture_output=True, text=True, env=login, cwd="/",
                                 timeout=120)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        status = modelrig(env, "status", MODEL)
        assert re.search(rf"^{MODEL}\s+api\s+openai_api\s+stopped", status.stdout, re.M), status.stdout
        # Again with loopback only (its own network namespace, where the demo starts anew): the wheel is not
        # rebuilt and nothing reaches an index; the demo answers inside the namespace.
        third = run_demo(env, without_network=True)
        assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-2000:]
        assert recap(third.stdout)["localhost"]["failed"] == 0
        answer = json.loads(next(line for line in third.stdout.splitlines() if line.startswith("{")))
        assert answer["choices"][0]["message"]["content"] == ANSWER
    finally:
        modelrig(env, "down", MODEL)
