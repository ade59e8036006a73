"""The model_lock role checks a lock on the controller before it writes anything on a host: a lock whose `model`
is `../../../x` (which the role would name `<data root>/locks/../../../x.lock.yaml`) is refused in one line naming
the variable, the file and the field, by the engine's schema and by the script's own check where the engine cannot
be imported; a compressed bundle is refused without being decompressed."""

from __future__ import annotations

import importlib.util
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers.locks import sample, write_lock

SCRIPT = REPO / "roles" / "model_lock" / "files" / "check_lock.py"
BIN = Path(sys.executable).parent
MODEL_LINE = ("model: expected a model id as a manifest spells it (a-z, 0-9, '.', '_', '-', starting with a letter "
              "or digit) (found '../../../x')")


def hostile(tmp_path: Path) -> Path:
    data = sample()
    data["model"] = "../../../x"
    return write_lock(tmp_path / "hostile.lock.yaml", data)


def check(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=60)


def test_the_script_refuses_a_model_id_that_leaves_the_data_root(tmp_path):
    lock = hostile(tmp_path)
    done = check("modelrig_lock", lock, REPO, "modelrig_bundle", "")
    assert (done.returncode, done.stdout) == (1, f"modelrig_lock={lock}: {MODEL_LINE}\n")


def test_without_the_engine_the_script_checks_the_model_id_itself(tmp_path):
    spec = importlib.util.spec_from_file_location("check_lock", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lock = hostile(tmp_path)
    with pytest.raises(ValueError) as caught:
        module._check_shape(lock)
    assert str(caught.value) == (f"{lock}: model: expected a model id as a manifest spells it (a-z, 0-9, '.', '_', "
                                 "'-', starting with a letter or digit), found '../../../x'")
    assert module._check_shape(write_lock(tmp_path / "ok.lock.yaml", sample())) == "demo-tiny-ziya"


def test_the_script_refuses_a_compressed_bundle_without_decompressing_it(tmp_path):
    lock = write_lock(tmp_path / "ok.lock.yaml", sample())
    bundle = tmp_path / "b.tar.xz"
    bundle.write_bytes(lzma.compress(b"\0" * 1024))
    done = check("modelrig_lock", lock, REPO, "modelrig_bundle", bundle)
    assert (done.returncode, done.stdout) == (1, f"modelrig_bundle={bundle}: compressed; a bundle is an uncompressed "
                                              ".tar as `modelrig bundle` writes it\n")


@pytest.mark.slow
def test_the_role_writes_nothing_outside_the_data_root_for_a_hostile_model_id(tmp_path):
    """check.yml then rebuild.yml (engine not ready: only the role's own copies run) on localhost."""
    lock = hostile(tmp_path)
    root = tmp_path / "a" / "b" / "data"
    book = tmp_path / "book.yml"
    book.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                    "    - {ansible.builtin.include_role: {name: model_lock, tasks_from: check}}\n"
                    "    - {ansible.builtin.include_role: {name: model_lock, tasks_from: rebuild}}\n")
    engine = {"modelrig_engine": {"data_root": str(root), "ready": False, "toolkit_env": "", "environment": {}}}
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_HOME": str(tmp_path / "ah"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "at"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book),
                           "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"modelrig_lock={lock}",
                           "-e", json.dumps(engine)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f'"msg": "modelrig_lock={lock}: {MODEL_LINE}"' in done.stdout, done.stdout
    assert not (tmp_path / "a" / "x.lock.yaml").exists()
    assert not root.exists()
