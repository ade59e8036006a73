"""A lock is input from another host: the schema refuses, in one line naming the file and the field, every path
that could leave the folder it names, a model id that is not a manifest id, a requirement that is not
`name==version` with hashes (or a local wheel, or git at a commit), and a control character anywhere; `verify` and
`bundle` refuse such a lock before reading any path of it, and `verify` never follows a link out of its folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from modelrig.errors import LockError
from modelrig.lock.schema import Lock, load_lock
from modelrig.lock.verify import check_files
from tests.helpers.demo_root import run
from tests.helpers.locks import H1, H2, sample, write_lock


def refused(tmp_path: Path, change) -> str:
    """The one line `load_lock` refuses `sample()` changed by `change` with."""
    data = sample()
    change(data)
    path = write_lock(tmp_path / "hostile.lock.yaml", data)
    with pytest.raises(LockError) as caught:
        load_lock(path)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{path}: ")
    return line.removeprefix(f"{path}: ")


RELATIVE = ("expected a path relative to its folder and inside it (no leading '/', no '..', '.' or empty part, "
            "no '\\')")


@pytest.mark.parametrize(("change", "line"), [
    (lambda d: d["sources"][0]["files"][0].update(path="../../../hf-token"),
     f"sources.0.files.0.path: {RELATIVE} (found '../../../hf-token')"),
    (lambda d: d["sources"][0]["files"][0].update(path="/etc/passwd"),
     f"sources.0.files.0.path: {RELATIVE} (found '/etc/passwd')"),
    (lambda d: d["sources"][0]["files"][0].update(path="sub/./x"), f"sources.0.files.0.path: {RELATIVE} "
     "(found 'sub/./x')"),
    (lambda d: d["conversions"][0]["files"][0].update(path="a//b"),
     f"conversions.0.files.0.path: {RELATIVE} (found 'a//b')"),
    (lambda d: d["remote_code"][0].update(path="..\\..\\m.py"), f"remote_code.0.path: {RELATIVE} "
     "(found '..\\\\..\\\\m.py')"),
    (lambda d: d["launch"][0].update(path="../start.sh"), f"launch.0.path: {RELATIVE} (found '../start.sh')"),
    (lambda d: d["launch"][0].update(path="sub/start.sh"), "launch.0.path: expected a file name (no '/') "
     "(found 'sub/start.sh')"),
    (lambda d: d["launch"][0].update(entry=".."), "launch.0.entry: expected a launch entry name (a-z, 0-9, '_', "
     "'-', starting with a letter) (found '..')"),
    (lambda d: d["sources"][0].update(repo="../../etc"), "sources.0.repo: expected a hub repo 'org/name' "
     "(found '../../etc')"),
    (lambda d: d["sources"][0].update(hub=".."), "sources.0.hub: Input should be 'huggingface' or 'modelscope' "
     "(found '..')"),
    (lambda d: d["sources"][0].update(name="../x"), "sources.0.name: expected a name as a manifest spells it "
     "(a-z, 0-9, '_', starting with a letter) (found '../x')"),
    (lambda d: d["conversions"][0].update(output="../../x"), "conversions.0.output: expected a name as a manifest "
     "spells it (a-z, 0-9, '_', starting with a letter) (found '../../x')"),
])
def test_a_path_that_could_leave_its_folder_is_refused(tmp_path, change, line):
    assert refused(tmp_path, change) == line


def test_a_model_id_that_is_not_a_manifest_id_is_refused(tmp_path):
    assert refused(tmp_path, lambda d: d.update(model="../../../x")) == (
        "model: expected a model id as a manifest spells it (a-z, 0-9, '.', '_', '-', starting with a letter or "
        "digit) (found '../../../x')")


PINNED = ("env.packages.0: requirement: expected 'name==version', 'name @ file:///...whl' or 'name @ "
          "git+URL@<40-hex commit>' (no options, spaces or markers)")


@pytest.mark.parametrize(("requirement", "line"), [
    ("tqdm==4.70.1\n--index-url http://127.0.0.1:9/simple", "env.packages.0.requirement: control characters "
     "(newline, tab, NUL, escape, ...) are not allowed"),
    ("tqdm==4.70.1 --index-url http://127.0.0.1:9/simple", PINNED),
    ("--index-url=http://127.0.0.1:9/simple", PINNED),
    ("tqdm>=4.70", PINNED),
    ("tqdm==4.70.1; python_version>'3'", PINNED),
    ("tqdm @ https://127.0.0.1:9/tqdm-4.70.1-py3-none-any.whl", PINNED),
    ("tqdm==not.a.version", "env.packages.0: requirement: 'not.a.version' is not a PEP 440 version"),
    ("requests==4.70.1", "env.packages.0: requirement: 'requests==4.70.1' is not tqdm 4.70.1"),
])
def test_a_requirement_that_is_not_name_equals_version_is_refused(tmp_path, requirement, line):
    assert refused(tmp_path, lambda d: d["env"]["packages"][0].update(requirement=requirement)) == line


def test_a_package_without_hashes_is_refused(tmp_path):
    assert refused(tmp_path, lambda d: d["env"]["packages"][0].update(hashes=[])) == (
        "env.packages.0: hashes: a package other than a git one needs at least one sha256")


def test_the_local_wheel_and_git_exceptions_are_accepted_as_spelled_out(tmp_path):
    data = sample()
    url = "file:///opt/wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"
    data["env"]["packages"] = [
        {"name": "torch", "version": url, "requirement": f"torch @ {url}", "hashes": [H1]},
        {"name": "tokenizers", "version": "d" * 40, "requirement": f"tokenizers @ git+https://github.com/h/t@{'d' * 40}"
         "#subdirectory=bindings/python", "git_commit": "d" * 40},
        {"name": "torchvision", "version": "0.28.0+cpu", "requirement": "torchvision==0.28.0+cpu", "hashes": [H2]}]
    lock = load_lock(write_lock(tmp_path / "ok.lock.yaml", data))
    assert [p.name for p in lock.env.packages] == ["torch", "tokenizers", "torchvision"]
    data["env"]["packages"][1]["git_commit"] = "e" * 40
    assert refused(tmp_path, lambda d: d.update(env=data["env"])) == (
        f"env.packages.1: requirement: a git requirement's commit {'d' * 40} must be git_commit")


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["sources"][0].update(revision="main\x1b[2J"), "sources.0.revision"),
    (lambda d: d["conversions"][0]["params"].update({"st\neps": []}), "conversions.0.params.'st\\neps'"),
    (lambda d: d["platform"].update(os="linux\u2028"), "platform.os"),
    (lambda d: d["env"].update(find_links=["/opt/wheels\x00"]), "env.find_links.0"),
])
def test_a_control_character_anywhere_is_refused(tmp_path, change, field):
    assert refused(tmp_path, change) == f"{field}: control characters (newline, tab, NUL, escape, ...) are not allowed"


def test_a_lock_built_in_code_is_checked_for_control_characters_too():
    data = sample()
    data["sources"][0]["revision"] = "main\n"
    with pytest.raises(ValueError, match=r"sources\.0\.revision: control characters"):
        Lock.model_validate(data)


def test_verify_and_bundle_refuse_a_hostile_lock_before_reading_a_path(tmp_path):
    """The lock names the data root's token file; neither command reads, links or packs it."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "hf-token").write_text("hf_secret\n")
    for path in ("../../../hf-token", "/etc/passwd"):
        data = sample()
        data["sources"][0]["files"][0]["path"] = path
        lock = write_lock(tmp_path / "hostile.lock.yaml", data)
        for args in (["verify", "--lock", lock], ["bundle", lock, "--out", tmp_path / "b.tar"]):
            code, out, err = run(root, *args)
            assert (code, out) == (2, "")
            assert err == (f"modelrig: error: {lock}: sources.0.files.0.path: {RELATIVE} (found {path!r}) "
                           "[lock_invalid]\n")
    assert not (tmp_path / "b.tar").exists()
    assert sorted(p.name for p in root.iterdir()) == ["hf-token"]


def test_verify_does_not_follow_a_link_out_of_the_folder(tmp_path):
    """A weight file replaced by a link to a file outside its folder is drift, and the outside file is not read."""
    from modelrig.lock.schema import LockedFile

    outside = tmp_path / "hf-token"
    outside.write_text("hf_secret\n")
    folder = tmp_path / "store" / "o--d"
    folder.mkdir(parents=True)
    os.symlink(outside, folder / "config.json")
    data = outside.read_bytes()
    locked = LockedFile(path="config.json", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert check_files("weight delta", folder, [locked], full=True) == [
        f"weight delta: config.json leads outside {folder} (a symbolic link); not read"]
