"""A lock of an unchanged env reuses the last freeze and hashes (`<data root>/cache/lock/<env key>.json`) without
running uv; installing, upgrading or removing a package in the env (real uv installs into a small real venv) makes
the next lock freeze again and list the change; a corrupt or foreign cache file is ignored and rewritten; an env
with a package that has no hash is never remembered. All indexes are local folders: no network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelrig.envs.build import EnvBuildPlan
from modelrig.envs.install import Indexes
from modelrig.envs.tools import find_uv
from modelrig.errors import LockError
from modelrig.lock import collect
from modelrig.lock.cache import SCHEMA, cache_file, env_state_key, load_packages
from modelrig.lock.packages import Frozen
from tests.helpers.tinywheel import tiny_wheel

KEY = "0123456789abcdef"
STAMP = {"key": KEY, "spec": {"python_version": "3.11.7"}}


@dataclass
class SmallEnv:
    """A real venv made with uv, its local wheel folder (the only find-links) and an empty local simple index."""

    build: EnvBuildPlan
    indexes: Indexes
    wheels: Path
    cache_dir: Path
    uv: str

    def pip(self, *args: str, links: Path | None = None) -> None:
        cmd = [self.uv, "pip", *args, "--no-config", "--python", str(self.build.python)]
        if args[0] == "install":
            cmd += ["--no-index", "--find-links", str(links or self.wheels)]
        subprocess.run(cmd, check=True, capture_output=True,
                       env={**os.environ, "UV_CACHE_DIR": str(self.cache_dir / "uv")})

    def packages(self) -> tuple[list[Frozen], dict[str, list[str]]]:
        return collect.env_packages(self.build, self.indexes, stamp=STAMP, cache_dir=self.cache_dir,
                                    model="tiny")

    @property
    def cache(self) -> Path:
        return cache_file(self.cache_dir, KEY)


@pytest.fixture
def small_env(tmp_path: Path) -> SmallEnv:
    uv = find_uv()
    assert uv is not None
    wheels, simple, venv = tmp_path / "wheels", tmp_path / "simple", tmp_path / "env"
    for name, version in (("tinypkg", "1.0"), ("tinypkg", "2.0"), ("otherpkg", "1.0")):
        tiny_wheel(wheels, name, version)
    simple.mkdir()
    subprocess.run([uv, "venv", "-q", "--no-config", str(venv)], check=True, capture_output=True)
    build = EnvBuildPlan(key=KEY, path=venv, spec={}, backend="venv", installer="uv", python=venv / "bin" / "python",
                         constraints=[], commands=[], needs_rust=False)
    env = SmallEnv(build=build, indexes=Indexes(index_url=simple.as_uri(), find_links=[str(wheels)]),
                   wheels=wheels, cache_dir=tmp_path / "data" / "cache", uv=uv)
    env.pip("install", "tinypkg==1.0")
    return env


@pytest.fixture
def freezes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The interpreter of each real `freeze` and `hashes_for` the lock runs, in order."""
    calls: list[str] = []
    real_freeze, real_hashes = collect.freeze, collect.hashes_for

    def freeze(python, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("freeze")
        return real_freeze(python, **kwargs)

    def hashes_for(frozen, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("hashes")
        return real_hashes(frozen, **kwargs)

    monkeypatch.setattr(collect, "freeze", freeze)
    monkeypatch.setattr(collect, "hashes_for", hashes_for)
    return calls


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listed(found: tuple[list[Frozen], dict[str, list[str]]]) -> dict[str, tuple[str, list[str]]]:
    frozen, hashes = found
    return {f.name: (f.version, hashes.get(f.name, [])) for f in frozen}


def test_a_second_lock_of_an_unchanged_env_reads_the_cache_and_runs_no_uv(small_env, freezes, monkeypatch):
    first = small_env.packages()
    assert listed(first) == {"tinypkg": ("1.0", [sha(small_env.wheels / "tinypkg-1.0-py3-none-any.whl")])}
    assert freezes == ["freeze", "hashes"]
    assert json.loads(small_env.cache.read_text())["schema"] == SCHEMA

    def refuse(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an unchanged env was frozen again")

    monkeypatch.setattr(collect, "freeze", refuse)
    monkeypatch.setattr(collect, "hashes_for", refuse)
    assert small_env.packages() == first
    assert small_env.packages() == first


def test_installing_upgrading_and_removing_a_package_freezes_again_and_lists_the_change(small_env, freezes):
    tiny1, tiny2, other = (sha(small_env.wheels / f"{n}-py3-none-any.whl")
                           for n in ("tinypkg-1.0", "tinypkg-2.0", "otherpkg-1.0"))
    assert listed(small_env.packages()) == {"tinypkg": ("1.0", [tiny1])}
    small_env.pip("install", "otherpkg==1.0")
    assert listed(small_env.packages()) == {"otherpkg": ("1.0", [other]), "tinypkg": ("1.0", [tiny1])}
    small_env.pip("install", "tinypkg==2.0")
    assert listed(small_env.packages()) == {"otherpkg": ("1.0", [other]), "tinypkg": ("2.0", [tiny2])}
    small_env.pip("uninstall", "otherpkg")
    assert listed(small_env.packages()) == {"tinypkg": ("2.0", [tiny2])}
    assert freezes == ["freeze", "hashes"] * 4
    assert listed(small_env.packages()) == {"tinypkg": ("2.0", [tiny2])}
    assert freezes == ["freeze", "hashes"] * 4  # unchanged since the last one: from the cache


def test_a_reinstall_of_the_same_version_freezes_again(small_env, freezes):
    """A reinstall (a rebuilt wheel of the same version) writes a new dist-info folder: the cache is not used."""
    small_env.packages()
    small_env.pip("install", "--reinstall", "tinypkg==1.0")
    small_env.packages()
    assert freezes == ["freeze", "hashes"] * 2


def test_another_index_or_a_changed_local_wheel_or_stamp_is_another_key(small_env, tmp_path):
    def key(**changes) -> str:  # type: ignore[no-untyped-def]
        args = {"python": small_env.build.python, "env_path": small_env.build.path, "stamp": STAMP,
                "indexes": small_env.indexes, **changes}
        return env_state_key(**args)

    before = key()
    assert key() == before
    assert key(indexes=Indexes(index_url="https://mirror.example/simple", find_links=[str(small_env.wheels)])) \
        != before
    assert key(stamp={**STAMP, "spec": {"python_version": "3.11.8"}}) != before
    tiny_wheel(small_env.wheels, "tinypkg", "3.0")  # a wheel added to a find-links folder
    assert key() != before


def _entry(**fields: object) -> dict[str, object]:
    return {"name": "tinypkg", "version": "1.0", "requirement": "tinypkg==1.0", "git_commit": None, **fields}


#: Each corruption of a valid cache file (its parsed JSON given), as the bytes written over it.
CORRUPT = {
    "not json": lambda good: b'{"schema": ',
    "not utf-8": lambda good: b"\xff\xfe{}",
    "not an object": lambda good: b"[]",
    "a field missing": lambda good: {k: v for k, v in good.items() if k != "hashes"},
    "an extra field": lambda good: {**good, "more": 1},
    "another schema": lambda good: {**good, "schema": "modelrig-lock-cache/0"},
    "another env state's key": lambda good: {**good, "key": "f" * 64},
    "a short hash": lambda good: {**good, "hashes": {"tinypkg": ["ab" * 20]}},
    "hashes not a list": lambda good: {**good, "hashes": {"tinypkg": "e" * 64}},
    "a name that is not a string": lambda good: {**good, "frozen": [_entry(name=1)]},
    "an empty version": lambda good: {**good, "frozen": [_entry(version="")]},
    "a bad commit": lambda good: {**good, "frozen": [_entry(git_commit="zz")]},
    "an entry with an extra field": lambda good: {**good, "frozen": [{**_entry(), "x": 1}]},
    "entries out of order": lambda good: {**good, "frozen": [_entry(name="zz"), _entry(name="aa")]},
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_or_stale_cache_file_is_ignored_and_rewritten(small_env, freezes, case):
    first = small_env.packages()
    good = json.loads(small_env.cache.read_text())
    bad = CORRUPT[case](good)
    small_env.cache.write_bytes(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
    assert load_packages(small_env.cache, good["key"]) is None
    assert small_env.packages() == first
    assert freezes == ["freeze", "hashes"] * 2
    assert json.loads(small_env.cache.read_text()) == good


def test_an_env_with_a_package_without_a_hash_is_not_remembered(small_env, monkeypatch):
    """A lock that fails for a missing hash (an index that was down, a wheel moved away) is not cached: the next
    lock looks again, and succeeds once the hash can be found."""
    real_hashes, calls = collect.hashes_for, []

    def hashes_without_tinypkg(frozen, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("hashes")
        return {name: found for name, found in real_hashes(frozen, **kwargs).items() if name != "tinypkg"}

    monkeypatch.setattr(collect, "hashes_for", hashes_without_tinypkg)
    for _ in range(2):
        with pytest.raises(LockError, match=r"^tiny: no wheel hash found for tinypkg==1.0 on the env's"):
            small_env.packages()
    assert calls == ["hashes", "hashes"] and not small_env.cache.exists()
    monkeypatch.setattr(collect, "hashes_for", real_hashes)
    assert listed(small_env.packages()) == {
        "tinypkg": ("1.0", [sha(small_env.wheels / "tinypkg-1.0-py3-none-any.whl")])}
    assert small_env.cache.is_file()

