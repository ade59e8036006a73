"""The test suite as a contributor meets it: modules share helpers through tests/helpers/ (never import each
other), the SSH control-socket folders in the system temp folder go away, the local wheel folders are found, the
session's system temp folder is its own (conftest's `_session_temp_folder`, which fails a session leaving anything
there)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.helpers import sshhosts

TESTS = Path(__file__).resolve().parent


def test_no_test_module_imports_another_test_module():
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(TESTS)}: {name}" for name in names if name.startswith("tests.test_")]
    assert found == []


def test_the_ansible_tests_find_the_local_wheel_folders_instead_of_spelling_one_machines_path():
    # The hosts' find-links folders come from pip's configuration (tests.helpers.venvs.pip_find_links).
    spelled = [f"{p.relative_to(TESTS)}" for p in sorted(TESTS.rglob("*.py"))
               if re.search(r'"modelrig_pip": \{[^}]*"find_links": \["/', p.read_text(encoding="utf-8"))]
    assert spelled == []


def test_ansible_control_socket_folders_are_one_per_test_folder_and_removed_at_the_end(tmp_path):
    first = sshhosts.ansible_env(tmp_path)["ANSIBLE_SSH_CONTROL_PATH_DIR"]
    assert sshhosts.ansible_env(tmp_path)["ANSIBLE_SSH_CONTROL_PATH_DIR"] == first
    assert Path(first).is_dir() and len(first) < 20
    sshhosts.remove_control_dirs()
    assert not Path(first).exists()


def test_the_system_temp_folder_of_the_session_is_a_folder_of_pytests_own_for_code_and_subprocesses(
        tmp_path_factory, _session_temp_folder):
    assert _session_temp_folder == tmp_path_factory.getbasetemp() / "system-tmp"
    assert tempfile.gettempdir() == os.environ["TMPDIR"] == str(_session_temp_folder)
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(_session_temp_folder)


def test_a_session_leaving_a_folder_in_the_system_temp_folder_fails_naming_it(tmp_path):
    (tmp_path / "test_leaky.py").write_text("import tempfile\n\n\ndef test_leaves_a_folder():\n"
                                            "    tempfile.mkdtemp(prefix='leaky-')\n")
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                            "--basetemp", str(tmp_path / "base"), str(tmp_path / "test_leaky.py")],
                           capture_output=True, text=True, cwd=TESTS.parent, timeout=120)
    assert inner.returncode == 1, inner.stdout
    assert re.search(r"left behind in the system temp folder \(.*/base/system-tmp\): leaky-\w+$", inner.stdout,
                     re.M), inner.stdout
    assert "1 passed, 1 error" in inner.stdout
