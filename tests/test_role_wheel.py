"""The modelrig role builds the toolkit wheel on the controller again only when its source changed: a second run
needs no package index (uv build fetches hatchling from it), and each source state keeps its own wheel."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.offline import offline
from tests.helpers.venvs import CACHE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BOOK = """
- name: Build the wheel.
  hosts: all
  gather_facts: false
  tasks:
    - name: Build or find it.
      ansible.builtin.include_role:
        name: modelrig
        tasks_from: wheel.yml
    - name: Say which.
      ansible.builtin.debug:
        msg: "wheel={{ modelrig_wheel_file }} sha1={{ modelrig_wheel_checksum }}"
"""


def run_book(tmp: Path, source: Path, *args: str, without_network: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp / "book.yml"),
           "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"modelrig_source_dir={source}",
           "-e", f"modelrig_wheel_build_dir={tmp / 'wheels'}", *args]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_HOME": str(tmp / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"), "UV_CACHE_DIR": str(CACHE / "uv"), "NO_COLOR": "1"}
    return subprocess.run(offline(cmd) if without_network else cmd, capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


def build(tmp: Path, source: Path, *, without_network: bool = False) -> Path:
    """The wheel the role built or found; the sha1 it printed must be the wheel's."""
    done = run_book(tmp, source, without_network=without_network)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    wheel, sha1 = re.search(r"wheel=(\S+\.whl) sha1=([0-9a-f]{40})", done.stdout).groups()
    assert hashlib.sha1(Path(wheel).read_bytes()).hexdigest() == sha1
    return Path(wheel)


def test_the_wheel_is_built_once_per_source_state_and_a_second_run_needs_no_index(tmp_path):
    (tmp_path / "book.yml").write_text(BOOK)
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("src", "model_manifests", "launch"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    first = build(tmp_path, source)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert first.parent.parent == tmp_path / "wheels" and first.name == "modelrig-0.1.0-py3-none-any.whl"
    # Unchanged source, loopback only: the same wheel, untouched.
    assert build(tmp_path, source, without_network=True) == first
    assert hashlib.sha256(first.read_bytes()).hexdigest() == digest
    # A changed source gets a wheel of its own; the first one stays as it was (a run may have pinned it).
    readme = source / "README.md"
    readme.write_text(readme.read_text() + "\nchanged\n")
    second = build(tmp_path, source)
    assert second.parent != first.parent and second.parent.parent == first.parent.parent
    assert hashlib.sha256(first.read_bytes()).hexdigest() == digest


def test_a_given_wheel_is_taken_as_it_is_with_its_sha1_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "book.yml").write_text(BOOK)
    given = tmp_path / "pinned" / "modelrig-0.1.0-py3-none-any.whl"
    given.parent.mkdir()
    given.write_bytes(b"a pinned wheel")
    done = run_book(tmp_path, tmp_path / "no-source", "-e", f"modelrig_wheel={given}")
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"wheel={given} sha1={hashlib.sha1(b'a pinned wheel').hexdigest()}" in done.stdout
    assert not (tmp_path / "wheels").exists()  # nothing built
    missing = run_book(tmp_path, tmp_path / "no-source", "-e", f"modelrig_wheel={tmp_path / 'gone.whl'}")
    assert missing.returncode == 2
    assert f"modelrig_wheel: {tmp_path / 'gone.whl'} is not a file on the controller" in missing.stdout
