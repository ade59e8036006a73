"""The host_facts role: a real ansible-playbook run installs ansible_local.modelrig, idempotently, lint-clean."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent
MODELRIG = BIN / "modelrig"
pytestmark = pytest.mark.slow


def _playbook(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "at"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    cmd = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(REPO / "playbooks" / "facts.yml"),
           "-e", f"ansible_python_interpreter={sys.executable}",
           "-e", f"host_facts_dir={tmp_path / 'facts.d'}",
           "-e", f"host_facts_data_root={tmp_path / 'data'}", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def _recap(out: str) -> dict[str, int]:
    line = next(line for line in out.splitlines() if line.startswith("localhost") and "changed=" in line)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_role_installs_the_fact_then_changes_nothing_on_a_second_run(tmp_path):
    first = _playbook(tmp_path, "-e", f"host_facts_modelrig_bin={MODELRIG}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _recap(first.stdout)["changed"] == 1  # the facts folder and the fact script, in one module run
    assert f"{(tmp_path / 'facts.d').stat().st_mode & 0o777:o}" == "755"
    assert "Check that the modelrig local fact is complete." in first.stdout

    fact = tmp_path / "facts.d" / "modelrig.fact"
    assert os.access(fact, os.X_OK)
    data = json.loads(subprocess.run([str(fact)], capture_output=True, text=True, check=True).stdout)
    assert data["data_root"] == str(tmp_path / "data") and isinstance(data["gpus"], list)

    second = _playbook(tmp_path, "-e", f"host_facts_modelrig_bin={MODELRIG}")
    assert second.returncode == 0, second.stdout + second.stderr
    recap = _recap(second.stdout)
    assert recap["changed"] == 0 and recap["failed"] == 0


def test_role_fails_clearly_without_modelrig(tmp_path):
    run = _playbook(tmp_path, "-e", f"host_facts_modelrig_bin={tmp_path / 'nowhere' / 'modelrig'}")
    assert run.returncode != 0
    assert "is not an executable file: install the toolkit env first" in run.stdout
    assert not (tmp_path / "facts.d").exists()


def test_role_rejects_a_wrongly_typed_variable(tmp_path):
    run = _playbook(tmp_path, "-e", f"host_facts_modelrig_bin={MODELRIG}", "-e", "host_facts_timeout=soon")
    assert run.returncode != 0
    assert "host_facts_timeout" in run.stdout


def test_role_and_playbook_are_ansible_lint_clean(tmp_path):
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "NO_COLOR": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run([str(BIN / "ansible-lint"), "--offline", "roles/host_facts", "playbooks/facts.yml"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failure(s), 0 warning(s)" in run.stdout + run.stderr
