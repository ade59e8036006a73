"""`make demo`'s path: scripts/demo-ansible.sh provisions this machine with the demo model through the real
ansible-playbook (site.yml), asks the API one question and prints the URLs; a second run changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launching import free_port
from tests.helpers.sshhosts import recap
from tests.helpers.venvs import CACHE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def run_demo(root: Path, hub_port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELRIG_VENV": str(VENV), "DEMO_ROOT": str(root), "DEMO_HUB_PORT": str(hub_port),
           "UV_CACHE_DIR": str(CACHE / "uv")}
    return subprocess.run(["bash", str(REPO / "scripts" / "demo-ansible.sh")], capture_output=True, text=True,
                          timeout=1500, env=env, cwd=REPO)


def test_the_ansible_demo_answers_and_a_second_run_changes_nothing(tmp_path):
    root = tmp_path / "demo"
    port = free_port()
    try:
        first = run_demo(root, port)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        assert recap(first.stdout)["localhost"]["failed"] == 0
        answer = json.loads(next(line for line in first.stdout.splitlines() if line.startswith("{")))
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
        assert re.search(r"demo-tiny-ziya/api\s+http://127\.0\.0\.1:18000/v1", first.stdout)
        second = run_demo(root, port)
        assert second.returncode == 0, second.stdout[-4000:]
        assert recap(second.stdout)["localhost"]["changed"] == 0, second.stdout[-6000:]
    finally:
        subprocess.run([str(VENV / "bin" / "ansible-playbook"), "-i", "local/localhost.yml", "playbooks/down.yml",
                        "-e", json.dumps({"modelrig_models": ["demo-tiny-ziya"],
                                          "modelrig_data_root": str(root / "data")})],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")})
