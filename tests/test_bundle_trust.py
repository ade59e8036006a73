"""A bundle is input from another host and trusted with nothing: each hostile archive below is built here, member
by member, and `modelrig rebuild LOCK --bundle FILE` refuses it in one line (`bundle_invalid`, exit 2, or
`not_reproduced`, exit 9) before anything lands outside a fresh temporary folder under the data root, or in the
store. A bundle shaped as `modelrig bundle` writes it reads back whole."""

from __future__ import annotations

import io
import json
import lzma
import os
import tarfile
from pathlib import Path

import pytest

from modelrig.lock.bundle_reader import read_bundle
from modelrig.lock.schema import load_lock
from tests.helpers.demo_root import run
from tests.helpers.locks import MODEL, STAMP, STORE, bundle_entries, entry, index_of, sha, tiny_bundle, write_tar


def rebuild(tmp_path: Path, lock: Path, bundle: Path) -> tuple[int, str, str]:
    """`modelrig rebuild LOCK --bundle BUNDLE` on the data root `tmp_path/root`."""
    return run(tmp_path / "root", "rebuild", lock, "--bundle", bundle)


def left_behind(root: Path) -> list[str]:
    """Every path under the data root but the (empty) cache folder: what a refused bundle must not leave."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p != root / "cache")


def test_a_bundle_as_modelrig_writes_it_reads_back_whole(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(members))
    into = tmp_path / "into"
    into.mkdir()
    unpacked = read_bundle(bundle, load_lock(lock), into)
    found = {p.relative_to(into).as_posix(): p.read_bytes() for p in into.rglob("*") if p.is_file()}
    assert found == members
    assert unpacked.store("huggingface", "org/tiny") == into / STORE
    assert {oct(p.stat().st_mode & 0o7777) for p in into.rglob("*") if p.is_file()} == {"0o644"}


def cve_2025_4517_entries(escape_to: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The technique of CVE-2025-4517: a chain of symlinks whose resolved path outgrows PATH_MAX, so that
    os.path.realpath (what tarfile's `data` filter checks with) stops resolving while the kernel does not; a link
    `escape` then points at `escape_to` outside the target, and a file is written through it."""
    component = "d" * 247
    steps = "abcdefghijklmnop"
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    path = ""
    for step in steps:
        entries.append(entry(os.path.join(path, component), kind=tarfile.DIRTYPE))
        entries.append(entry(os.path.join(path, step), kind=tarfile.SYMTYPE, link=component))
        path = os.path.join(path, component)
    long_link = os.path.join(*steps, "l" * 254)
    entries.append(entry(long_link, kind=tarfile.SYMTYPE, link="../" * len(steps)))
    entries.append(entry("escape", kind=tarfile.SYMTYPE, link=f"{long_link}/{escape_to}"))
    entries.append(entry("escape/pwned", b"written outside the data root\n"))
    return entries


def test_the_cve_2025_4517_symlink_chain_writes_nothing_outside(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    # the bundle is read in <root>/cache/<tmp>/: three levels up is tmp_path
    entries = bundle_entries(members)[:1] + cve_2025_4517_entries("../../../outside") + bundle_entries(members)[1:]
    bundle = write_tar(tmp_path / "b.tar", entries)
    code, out, err = rebuild(tmp_path, lock, bundle)
    assert list(outside.iterdir()) == []
    assert (code, out) == (2, "")
    assert err == (f"modelrig: error: --bundle {bundle}: member {'d' * 247}: a folder no declared member is in; "
                   "a bundle holds only regular files and their folders [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


@pytest.mark.parametrize(("kind", "link", "what"), [
    (tarfile.SYMTYPE, "/etc/passwd", "symbolic link"), (tarfile.LNKTYPE, "lock.yaml", "hard link"),
    (tarfile.CHRTYPE, "", "character device"), (tarfile.FIFOTYPE, "", "fifo"),
])
def test_a_link_or_device_named_as_a_locked_file_is_refused_before_any_byte_is_written(tmp_path, kind, link, what):
    lock, members = tiny_bundle(tmp_path)
    entries = bundle_entries(members)
    name = f"{STORE}/config.json"
    entries = [entry(name, kind=kind, link=link) if info.name == name else (info, data) for info, data in entries]
    bundle = write_tar(tmp_path / "b.tar", entries)
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert code == 2
    assert err == (f"modelrig: error: --bundle {bundle}: member {name}: a {what}; a bundle holds only regular "
                   "files and their folders [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


def test_an_xz_bomb_is_refused_before_anything_is_decompressed(tmp_path):
    """256 MiB of zeros in a few dozen KB of xz: refused on its first bytes, nothing written."""
    lock, members = tiny_bundle(tmp_path)
    bundle = tmp_path / "bomb.tar.xz"
    size = 256 * 1024 * 1024
    with lzma.open(bundle, "wb", preset=0) as xz, tarfile.open(fileobj=xz, mode="w|") as tar:
        info, _ = entry("bundle.json", index_of(members))
        tar.addfile(info, io.BytesIO(index_of(members)))
        zeros, _ = entry(f"{STORE}/model.safetensors", b"", size=size)
        with open("/dev/zero", "rb") as source:
            tar.addfile(zeros, source)
    assert bundle.stat().st_size < size // 1000
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert code == 2
    assert err == (f"modelrig: error: --bundle {bundle}: xz-compressed; a bundle is an uncompressed .tar (as "
                   "`modelrig bundle` writes it), so that nothing expands beyond its own size [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


def test_a_member_larger_than_declared_is_refused_before_it_is_written(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    name = f"{STORE}/model.safetensors"
    entries = [entry(n, d + b"\0" * 4096 if n == name else d) if n != "bundle.json" else (i, d)
               for (i, d), n in ((e, e[0].name) for e in bundle_entries(members))]
    bundle = write_tar(tmp_path / "b.tar", entries)
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert code == 2
    assert err == (f"modelrig: error: --bundle {bundle}: member {name}: 5120 bytes, bundle.json declares 1024 "
                   "[bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


def test_sizes_beyond_the_archive_are_refused_before_any_member_is_read(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    index = json.loads(index_of(members))
    index["sizes"]["wheels/tqdm-4.70.1-py3-none-any.whl"] = 2 ** 40
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(members, json.dumps(index).encode()))
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert code == 2
    total = sum(index["sizes"].values())
    assert total == 2 ** 40 + sum(len(d) for n, d in members.items() if not n.startswith("wheels/"))
    assert err == (f"modelrig: error: --bundle {bundle}: bundle.json: declares {total} bytes of members in a "
                   f"{bundle.stat().st_size}-byte file [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


@pytest.mark.parametrize(("index", "message"), [
    (b"[1, 2]", "bundle.json: expected a mapping, found list"),
    (b"{not json", "bundle.json: not JSON"),
    (json.dumps({"schema": "modelrig-bundle/1", "model": MODEL, "members": {}}).encode(),
     "bundle.json: schema: expected 'modelrig-bundle/2', found 'modelrig-bundle/1' (`modelrig bundle` the lock "
     "again with this modelrig)"),
    (json.dumps({"schema": "modelrig-bundle/2", "model": MODEL, "members": ["lock.yaml"], "sizes": {}}).encode(),
     "bundle.json: members: expected a mapping of member name to 64-hex sha256"),
    (json.dumps({"schema": "modelrig-bundle/2", "model": MODEL, "members": {"lock.yaml": "x"}, "sizes": {}}).encode(),
     "bundle.json: members: expected a mapping of member name to 64-hex sha256"),
    (json.dumps({"schema": "modelrig-bundle/2", "model": MODEL, "members": {}}).encode(),
     "bundle.json: sizes: expected a mapping of every member name to its size in bytes"),
    (json.dumps({"schema": "modelrig-bundle/2", "model": "other", "members": {}, "sizes": {}}).encode(),
     f"bundle.json: model: a bundle of 'other', the lock is of '{MODEL}'"),
])
def test_a_bundle_json_of_the_wrong_shape_is_one_line(tmp_path, index, message):
    lock, members = tiny_bundle(tmp_path)
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(members, index))
    code, out, err = rebuild(tmp_path, lock, bundle)
    assert (code, out, err) == (2, "", f"modelrig: error: --bundle {bundle}: {message} [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


def test_a_missing_manifest_or_a_manifest_that_is_a_folder_is_one_line(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    manifest = f"manifests/{MODEL}.yaml"
    without = {n: d for n, d in members.items() if n != manifest}
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(without))
    assert rebuild(tmp_path, lock, bundle) == (2, "", f"modelrig: error: --bundle {bundle}: member {manifest}: "
                                               "missing from bundle.json (the lock needs it) [bundle_invalid]\n")
    declared = bundle_entries(members)[0]
    rest = [entry(manifest, kind=tarfile.DIRTYPE) if i.name == manifest else (i, d)
            for i, d in bundle_entries(members)[1:]]
    bundle = write_tar(tmp_path / "b.tar", [declared, *rest])
    assert rebuild(tmp_path, lock, bundle) == (2, "", f"modelrig: error: --bundle {bundle}: member {manifest}: a "
                                               "folder no declared member is in; a bundle holds only regular files "
                                               "and their folders [bundle_invalid]\n")
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(members)[1:])
    assert rebuild(tmp_path, lock, bundle) == (2, "", f"modelrig: error: --bundle {bundle}: bundle.json: missing "
                                               "(it must be the first member) [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


def test_a_member_named_outside_the_bundle_is_never_read(tmp_path):
    """bundle.json names ../../../../secret.txt (beside the data root): refused before any path of it is opened,
    so its sha256 is nowhere in the message."""
    lock, members = tiny_bundle(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_secret\n")
    name = "../../../../secret.txt"
    index = json.loads(index_of(members))
    index["members"][name], index["sizes"][name] = "0" * 64, 10
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(members, json.dumps(index).encode()))
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert code == 2
    assert err == (f"modelrig: error: --bundle {bundle}: member {name}: not a file the lock names (a bundle holds "
                   f"lock.yaml, manifests/{MODEL}.yaml, wheels/*.whl, modelrig/*.whl and the locked sources' files "
                   "under store/) [bundle_invalid]\n")
    assert sha(secret.read_bytes()) not in err


def test_a_file_the_lock_does_not_name_never_reaches_the_store(tmp_path):
    """modeling_evil.py beside the locked files of a source: declared in bundle.json or not, it is refused and the
    store stays empty."""
    lock, members = tiny_bundle(tmp_path)
    evil = f"{STORE}/modeling_evil.py"
    declared = {**members, evil: b"import os; os.system('id')\n"}
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(declared))
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert code == 2
    assert err.startswith(f"modelrig: error: --bundle {bundle}: member {evil}: not a file the lock names ")
    bundle = write_tar(tmp_path / "b.tar", [*bundle_entries(members), entry(evil, declared[evil])])
    assert rebuild(tmp_path, lock, bundle) == (2, "", f"modelrig: error: --bundle {bundle}: member {evil}: not "
                                               "declared in bundle.json [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


def test_a_wheel_no_locked_package_has_is_refused(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    other = "wheels/evil-1.0-py3-none-any.whl"
    bundle = write_tar(tmp_path / "b.tar", bundle_entries({**members, other: b"PK evil"}))
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert (code, err) == (2, f"modelrig: error: --bundle {bundle}: member {other}: a wheel whose sha256 "
                           f"{sha(b'PK evil')} no locked package has [bundle_invalid]\n")


def test_a_duplicate_member_is_refused(tmp_path):
    """A second copy of a locked file (the one a naive extraction would keep) is refused."""
    lock, members = tiny_bundle(tmp_path)
    name = f"{STORE}/config.json"
    bundle = write_tar(tmp_path / "b.tar", [*bundle_entries(members), entry(name, members[name])])
    assert rebuild(tmp_path, lock, bundle) == (2, "", f"modelrig: error: --bundle {bundle}: member {name}: "
                                               "appears twice [bundle_invalid]\n")
    assert left_behind(tmp_path / "root") == []


def test_bytes_that_differ_from_bundle_json_and_the_lock_are_not_reproduced(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    name = f"{STORE}/config.json"
    flipped = {**members, name: members[name].replace(b"8", b"9")}
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(flipped, index_of(members)))
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert (code, err) == (9, f"modelrig: error: bundle {bundle}: member {name}: sha256 {sha(members[name])} "
                           f"expected, found {sha(flipped[name])} [not_reproduced]\n")
    bundle = write_tar(tmp_path / "b.tar", bundle_entries(flipped))  # bundle.json agrees, the lock does not
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert (code, err) == (9, f"modelrig: error: bundle {bundle}: member {name}: sha256 {sha(members[name])} (19 "
                           f"bytes) in the lock, {sha(flipped[name])} (19 bytes) in bundle.json [not_reproduced]\n")
    assert left_behind(tmp_path / "root") == []


def test_a_fetch_stamp_that_lists_other_files_is_refused(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    name = f"{STORE}/{STAMP}"
    stamp = json.loads(members[name])
    stamp["files"].append({"path": "modeling_evil.py", "size": 1, "sha256": "0" * 64})
    bundle = write_tar(tmp_path / "b.tar", bundle_entries({**members, name: json.dumps(stamp).encode()}))
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert (code, err) == (2, f"modelrig: error: --bundle {bundle}: member {name}: not the fetch stamp of "
                           f"org/tiny@{'1' * 40} with the lock's files [bundle_invalid]\n")



def test_a_member_name_with_a_newline_is_shown_escaped_on_one_line(tmp_path):
    lock, members = tiny_bundle(tmp_path)
    name = "lock.yaml\nmodelrig: ok"
    bundle = write_tar(tmp_path / "b.tar", bundle_entries({**members, name: b"x"}))
    code, _, err = rebuild(tmp_path, lock, bundle)
    assert (code, err.count("\n")) == (2, 1)
    assert err.startswith(f"modelrig: error: --bundle {bundle}: member 'lock.yaml\\nmodelrig: ok': not a file ")
