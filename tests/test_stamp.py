"""Atomic outputs: a finished directory appears whole or not at all; leftovers of dead writers are cleaned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelrig.stamp import atomic_dir, atomic_write_text, digest, read_stamp, remove_stale_temporaries, write_stamp


def test_atomic_dir_renames_only_on_success(tmp_path: Path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a").write_text("x")
        raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("y")
        write_stamp(tmp, {"key": "k"})
    assert (final / "a").read_text() == "y"
    assert read_stamp(final) == {"key": "k"}


def test_atomic_dir_replaces_an_existing_output_only_when_the_new_one_is_complete(tmp_path: Path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_dir(final) as tmp:
        (tmp / "new").write_text("2")
        raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["old"]
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".modelrig-tmp-{dead_pid}-abcd1234-out"
    live = tmp_path / f".modelrig-tmp-{os.getpid()}-abcd1234-other"
    legacy = tmp_path / ".modelrig-tmp-deadbeef-out"
    for path in (stale, live, legacy):
        path.mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale, legacy])
    assert live.is_dir() and not stale.exists() and not legacy.exists()


def test_atomic_write_text_sets_mode_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "secrets.env"
    atomic_write_text(target, "KEY=1\n", mode=0o600)
    assert target.read_text() == "KEY=1\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.env"]


def test_digest_is_independent_of_key_order():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
