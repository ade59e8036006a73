"""The modelrig_files module, run as Ansible runs it (`ansible localhost -m modelrig_files`) on a tmp folder: folders
and files with exact modes, nothing rewritten on a second run, check mode writes nothing, a drifted file is written
again, a relative path is refused in one line, a secret's content never reaches output or a diff."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.sshhosts import BIN, REPO_ROOT, ansible_env

SECRET = "hf_modulefilestestsecret42"


def run_files(tmp: Path, args: dict, *flags: str) -> tuple[dict, str]:
    """`ansible localhost -m modelrig_files -a ARGS FLAGS` with this interpreter: the module's result (with
    `failed`) and the whole output (the diff is printed before the result)."""
    cmd = [str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", "modelrig_files",
           "-a", json.dumps(args), "-e", f"ansible_python_interpreter={sys.executable}", *flags]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=ansible_env(tmp), capture_output=True, text=True, timeout=300,
                          check=False)
    out = done.stdout + done.stderr
    start = done.stdout.rfind("\nlocalhost | ") + 1
    status, _, shown = done.stdout[start:].partition(" => ")
    try:
        return {**json.loads(shown), "failed": status.endswith("| FAILED!")}, out
    except ValueError:
        pytest.fail(f"no module result: {out}")


def layout(root: Path) -> dict:
    """The module options of a data root: two folders (one private), a file in a folder not listed, a secret,
    a file it only expects, two probes."""
    return {
        "directories": [{"path": str(root), "mode": "0755"}, {"path": str(root / "secrets"), "mode": "0700"}],
        "files": [{"dest": str(root / "config.yaml"), "content": "hub:\n  endpoint: http://127.0.0.1:9\n"},
                  {"dest": str(root / "toolkit" / "requirements.txt"), "content": "torch\n", "mode": "0640"}],
        "secrets": [{"dest": str(root / "secrets" / "hf_token"), "content": SECRET + "\n"}],
        "expect": [{"path": str(root / "wheels" / "w.whl"), "checksum": hashlib.sha1(b"wheel").hexdigest()}],
        "probe": [str(root / "toolkit"), str(root / "toolkit" / "bin" / "modelrig")],
    }


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with its mode (and text for files)."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = f"{path.stat().st_mode & 0o7777:04o}"
        found[str(path.relative_to(root))] = mode if path.is_dir() else f"{mode} {path.read_text()!r}"
    return found


WRITTEN = {
    "config.yaml": "0644 'hub:\\n  endpoint: http://127.0.0.1:9\\n'",
    "secrets": "0700",
    "secrets/hf_token": f"0600 '{SECRET}\\n'",
    "toolkit": "0755",
    "toolkit/requirements.txt": "0640 'torch\\n'",
}


def test_first_run_writes_everything_with_its_mode_and_a_second_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    first, _ = run_files(tmp_path, layout(root))
    assert first["failed"] is False and first["changed"] is True
    assert first["changed_paths"] == [str(root), str(root / "secrets"), str(root / "config.yaml"),
                                      str(root / "toolkit"), str(root / "toolkit" / "requirements.txt"),
                                      str(root / "secrets" / "hf_token")]
    assert tree(root) == WRITTEN
    assert f"{root.stat().st_mode & 0o7777:04o}" == "0755"
    # what was there before the run: the probes answer as the host was
    assert first["probe"] == {str(root / "toolkit"): {"exists": False, "isdir": False, "executable": False},
                              str(root / "toolkit" / "bin" / "modelrig"): {"exists": False, "isdir": False,
                                                                          "executable": False}}
    assert first["differs"] == [str(root / "wheels" / "w.whl")]

    second, _ = run_files(tmp_path, layout(root))
    assert (second["failed"], second["changed"], second["changed_paths"]) == (False, False, [])
    assert second["probe"][str(root / "toolkit")] == {"exists": True, "isdir": True, "executable": True}
    assert tree(root) == WRITTEN


def test_check_mode_reports_what_it_would_write_and_writes_nothing(tmp_path):
    root = tmp_path / "root"
    result, out = run_files(tmp_path, layout(root), "--check", "--diff")
    assert result["changed"] is True and len(result["changed_paths"]) == 6
    assert not root.exists()
    assert (f"+++ after: {root / 'config.yaml'} (mode 0644)\n@@ -0,0 +1,2 @@\n+hub:\n+  endpoint: http://127.0.0.1:9\n"
            in out)


def test_a_drifted_file_and_mode_are_put_back_and_only_they_are_reported(tmp_path):
    root = tmp_path / "root"
    run_files(tmp_path, layout(root))
    (root / "config.yaml").write_text("hub:\n  endpoint: http://elsewhere\n")
    (root / "secrets" / "hf_token").chmod(0o644)
    (root / "secrets").chmod(0o755)
    result, out = run_files(tmp_path, layout(root), "--diff")
    assert result["changed"] is True
    assert result["changed_paths"] == [str(root / "secrets"), str(root / "config.yaml"),
                                       str(root / "secrets" / "hf_token")]
    assert tree(root) == WRITTEN
    assert "-  endpoint: http://elsewhere\n+  endpoint: http://127.0.0.1:9\n" in out
    assert [p.name for p in root.rglob("*.tmp")] == []  # the temporary file was renamed into place


def test_a_file_the_controller_knows_the_sha1_of_is_only_reported(tmp_path):
    root = tmp_path / "root"
    (root / "wheels").mkdir(parents=True)
    wheel = root / "wheels" / "w.whl"
    args = {"expect": [{"path": str(wheel), "checksum": hashlib.sha1(b"wheel").hexdigest()}]}
    wheel.write_bytes(b"an older wheel")
    assert run_files(tmp_path, args)[0]["differs"] == [str(wheel)]
    assert wheel.read_bytes() == b"an older wheel"
    wheel.write_bytes(b"wheel")
    result, _ = run_files(tmp_path, args)
    assert (result["changed"], result["differs"]) == (False, [])


@pytest.mark.parametrize("args, message", [
    ({"files": [{"dest": "/abs/ok", "content": ""}, {"dest": "relative/config.yaml", "content": "x"}]},
     "files[1].dest must be an absolute path, got 'relative/config.yaml'"),
    ({"directories": [{"path": "data"}]}, "directories[0].path must be an absolute path, got 'data'"),
    ({"secrets": [{"dest": "token", "content": SECRET}]}, "secrets[0].dest must be an absolute path, got 'token'"),
    ({"probe": ["bin/modelrig"]}, "probe[0] must be an absolute path, got 'bin/modelrig'"),
    ({"directories": [{"path": "/abs", "mode": "rwx"}]},
     "directories[0].mode must be an octal mode such as '0644', got 'rwx'"),
    ({"expect": [{"path": "/abs/w.whl", "checksum": "abc"}]},
     "expect[0].checksum must be a sha1 (40 lowercase hex digits), got 'abc'"),
])
def test_bad_options_fail_in_one_line_naming_the_option_and_item_and_write_nothing(tmp_path, args, message):
    made = {"path": str(tmp_path / "made")}
    result, _ = run_files(tmp_path, {**args, "directories": [*args.get("directories", []), made]})
    assert result["failed"] is True and result["msg"] == message
    assert not (tmp_path / "made").exists()


def test_an_unmet_requirement_fails_before_anything_is_written(tmp_path):
    args = {"require": [{"path": str(tmp_path / "bin" / "modelrig"), "kind": "executable",
                         "msg": "install the toolkit env first"}],
            "directories": [{"path": str(tmp_path / "facts.d")}]}
    result, _ = run_files(tmp_path, args)
    assert result["failed"] is True and result["msg"] == "install the toolkit env first"
    assert not (tmp_path / "facts.d").exists()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "modelrig").write_text("#!/bin/sh\n")
    del args["require"][0]["msg"]
    result, _ = run_files(tmp_path, args)
    assert result["msg"] == f"{tmp_path / 'bin' / 'modelrig'} is not an executable file"
    (tmp_path / "bin" / "modelrig").chmod(0o755)
    assert run_files(tmp_path, args)[0]["changed_paths"] == [str(tmp_path / "facts.d")]


def test_a_secret_never_reaches_output_or_a_diff(tmp_path):
    root = tmp_path / "root"
    for flags in (("--check", "--diff", "-vvv"), ("--diff", "-vvv"), ("--diff",)):
        if flags == ("--diff",):  # a changed secret
            (root / "secrets" / "hf_token").write_text("old\n")
        result, out = run_files(tmp_path, layout(root), *flags)
        assert result["changed"] is True
        assert SECRET not in out
        assert f"after: {root / 'secrets' / 'hf_token'}" not in out
    assert (root / "secrets" / "hf_token").read_text() == SECRET + "\n"


def test_ansible_doc_shows_its_options_examples_and_return_values(tmp_path):
    run = subprocess.run([str(BIN / "ansible-doc"), "-M", "library", "modelrig_files"], cwd=REPO_ROOT,
                         env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    shown = run.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "")
    for section in ("MODULE modelrig_files", "OPTIONS", "EXAMPLES", "RETURN VALUES", "secrets", "expect", "probe",
                    "require", "check_mode", "diff_mode"):
        assert section in shown, section
