"""The lock file's schema: a stable, sorted YAML that reads back identical; a bad field or a hash of the wrong
length is refused in one line naming the file and the field; freeze and compile output are parsed exactly."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from modelrig.cli import main
from modelrig.errors import LockError
from modelrig.lock.packages import hashed_requirements, parse_compiled, parse_line
from modelrig.lock.schema import Lock, dump_lock, load_lock
from tests.helpers.locks import H1, H2, sample
from tests.helpers.locks import write_lock as write


def test_a_lock_is_written_sorted_and_reads_back_identical(tmp_path):
    text = dump_lock(Lock.model_validate(sample()))
    data = yaml.safe_load(text)
    assert list(data)[:4] == ["schema", "model", "manifest_sha256", "modelrig"]
    assert [p["name"] for p in data["env"]["packages"]] == ["accelerate", "tqdm"]
    assert [s["name"] for s in data["sources"]] == ["base", "delta"]
    assert [f["path"] for f in data["sources"][1]["files"]] == ["a.json", "z.bin"]
    assert [f["path"] for f in data["launch"]] == ["app.py", "start.sh"]
    path = tmp_path / "x.lock.yaml"
    path.write_text(text)
    assert dump_lock(load_lock(path)) == text


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda d: d["sources"][1]["files"][0].update(sha256="ab" * 20), "sources.1.files.0.sha256",
     "expected a 64-hex sha256"),
    (lambda d: d["env"]["packages"][0].update(hashes=["0" * 63]), "env.packages.0.hashes.0",
     "expected a 64-hex sha256"),
    (lambda d: d["sources"][0].update(commit="abc"), "sources.0.commit", "expected a 40-hex commit"),
    (lambda d: d["platform"].update(accelerator="tpu"), "platform.accelerator", "'cuda', 'mps' or 'cpu'"),
    (lambda d: d["env"].update(pythn="3.11"), "env.pythn", "Extra inputs are not permitted"),
    (lambda d: d["sources"][0]["files"][0].update(size=-1), "sources.0.files.0.size", "greater than or equal"),
])
def test_a_bad_field_is_refused_in_one_line_naming_file_and_field(tmp_path, change, field, message):
    data = sample()
    change(data)
    path = write(tmp_path / "bad.lock.yaml", data)
    with pytest.raises(LockError) as caught:
        load_lock(path)
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: {field}: ") and message in line, line
    assert caught.value.fields["field"] == field


def test_a_wrong_schema_and_bad_yaml_are_refused(tmp_path):
    data = sample()
    data["schema"] = "modelrig-lock/2"
    with pytest.raises(LockError, match=r"bad\.yaml: schema: expected 'modelrig-lock/1', found 'modelrig-lock/2'"):
        load_lock(write(tmp_path / "bad.yaml", data))
    (tmp_path / "broken.yaml").write_text("schema: [")
    with pytest.raises(LockError, match=r"broken\.yaml: not valid YAML"):
        load_lock(tmp_path / "broken.yaml")
    with pytest.raises(LockError, match=r"nope\.yaml: lock file not found"):
        load_lock(tmp_path / "nope.yaml")


def test_verify_of_a_bad_lock_exits_2_with_one_line_on_stderr(tmp_path):
    data = sample()
    data["conversions"][0]["files"][0]["sha256"] = "f" * 65
    path = write(tmp_path / "bad.lock.yaml", data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--data-root", str(tmp_path / "root"), "verify", "--lock", str(path)])
    assert code == 2
    assert err.getvalue() == (f"modelrig: error: {path}: conversions.0.files.0.sha256: expected a 64-hex sha256 "
                              f"(found '{'f' * 65}') [lock_invalid]\n")


def test_verify_takes_a_lock_file_where_rebuild_and_bundle_do(tmp_path, monkeypatch):
    """`modelrig verify ./x.lock.yaml` reads that file (it looked for `<root>/locks/./x.lock.yaml.lock.yaml`)."""
    data = sample()
    data["conversions"][0]["files"][0]["sha256"] = "f" * 65
    write(tmp_path / "bad.lock.yaml", data)
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["--data-root", str(tmp_path / "root"), "verify", "./bad.lock.yaml"])
    assert code == 2
    assert err.getvalue().startswith("modelrig: error: bad.lock.yaml: conversions.0.files.0.sha256: expected")


def test_freeze_lines_and_compiled_hashes_are_parsed_exactly():
    assert parse_line("Foo_Bar==1.2.3").name == "foo-bar"
    git = parse_line(f"tokenizers @ git+https://github.com/huggingface/tokenizers@{'d' * 40}#subdirectory=b")
    assert (git.name, git.git_commit) == ("tokenizers", "d" * 40)
    compiled = (f"# header\naccelerate==1.15.0 \\\n    --hash=sha256:{H2} \\\n    --hash=sha256:{H1}\n"
                "torch==2.13.0+cpu\n")
    assert parse_compiled(compiled) == {"accelerate": [H1, H2], "torch": []}
    assert hashed_requirements([("tqdm==4.70.1", [H1])]) == f"tqdm==4.70.1 \\\n    --hash=sha256:{H1}\n"


def test_a_plists_login_user_is_normalised_like_the_data_root():
    """A lock taken by one login user verifies on another host's user: launchd's UserName is a placeholder."""
    from modelrig.launch.render import launchd_plist
    from modelrig.lock.collect import normalised_text

    texts = {normalised_text(launchd_plist("ai.m", f"/home/{u}/r/launch/m", f"/home/{u}/r/m.log", user=u).encode(),
                             data_root=Path(f"/home/{u}/r"), env_path=Path("/env")) for u in ("alice", "bob")}
    assert len(texts) == 1 and b"<string>${MODELRIG_USER}</string>" in texts.pop()



#: Keys and strings a lock may hold (conversion params come from manifests) that need quotes, escapes or folding;
#: libyaml's emitter writes the first two differently from PyYAML's Python one.
AWKWARD = {"": "an empty key", "é 中": "non-ASCII é 中 😀, folded " * 20, "n": ["1.0", "yes", "~", "", "- a", "#c"],
           "spaces": "a b " * 80, "quotes": "it's \"q\" " * 30}


@pytest.mark.parametrize("params", [{"steps": [], "dtype": "float16"}, AWKWARD],
                         ids=["plain tokens: libyaml", "awkward strings: Python emitter"])
def test_a_lock_is_the_same_bytes_as_pyyamls_python_emitter_writes(params):
    """Locks are written with libyaml's emitter (~10x faster) only where it gives byte for byte what the Python one
    gives."""
    from modelrig.lock.schema import lock_dumper

    data = sample()
    data["conversions"][0]["params"] = params
    lock = Lock.model_validate(data)
    text = dump_lock(lock)
    assert text.split("\n", 1)[1] == yaml.safe_dump(yaml.safe_load(text), sort_keys=False, default_flow_style=False,
                                                    width=200)
    dumped = lock.model_dump(by_alias=True, mode="json")
    assert lock_dumper(dumped) is (yaml.SafeDumper if params is AWKWARD else yaml.CSafeDumper)
    for key in ("", "é 中"):
        one = {key: AWKWARD[key]}
        assert yaml.dump(one, Dumper=yaml.CSafeDumper, width=200) != yaml.safe_dump(one, width=200)
