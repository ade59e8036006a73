"""A bundle unpacks on Pythons without tarfile's extraction filters (Debian 12's 3.11.2): plain files and folders
inside the target only; a link or a `..` member is refused naming it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from modelrig.errors import UsageError
from modelrig.lock.bundle import safe_extract


def _tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"weights") -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_plain_files_and_folders_are_extracted(tmp_path):
    bundle = _tar(tmp_path / "b.tar", [_info("store", tarfile.DIRTYPE), _info("store/w.bin"), _info("bundle.json")])
    with tarfile.open(bundle) as tar:
        safe_extract(tar, tmp_path / "out", bundle)
    assert (tmp_path / "out" / "store" / "w.bin").read_bytes() == b"weights"
    assert (tmp_path / "out" / "bundle.json").is_file()


@pytest.mark.parametrize("member", [_info("../escape.bin"), _info("/abs.bin"),
                                    _info("link", tarfile.SYMTYPE, "/etc/passwd"),
                                    _info("hard", tarfile.LNKTYPE, "bundle.json")])
def test_links_and_paths_outside_are_refused_naming_the_member(tmp_path, member):
    bundle = _tar(tmp_path / "b.tar", [_info("bundle.json"), member])
    with tarfile.open(bundle) as tar, pytest.raises(UsageError, match=f"member {member.name}: not a plain file"):
        safe_extract(tar, tmp_path / "out", bundle)
    assert not (tmp_path / "escape.bin").exists() and not (tmp_path / "out").exists()
