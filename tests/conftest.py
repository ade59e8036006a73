"""Shared fixtures: an isolated data root per test, the CLI in-process, cached real venvs, and the demo's tiny
repos on a local hub."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.hub import demo_repos, served
from tests.helpers.venvs import VenvFactory

REPO = Path(__file__).resolve().parent.parent
#: Everything the tests read lives inside the repository: a clone with nothing beside it runs the whole suite.
FIXTURES = REPO / "tests" / "fixtures"
#: Real command outputs (nvidia-smi, system_profiler, sysctl, torch collect_env); SOURCES.md says where each is from.
HOST_OUTPUTS = FIXTURES / "host_outputs"

# Every test is offline and quiet: no telemetry, no xet, no progress bars, no user config.
for _var, _value in {
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MODELRIG_NO_PROGRESS": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_var] = _value
os.environ.pop("MODELRIG_CONFIG", None)
os.environ.pop("HF_TOKEN", None)


def fixture_files(folder: Path, pattern: str) -> list[Path]:
    """The files of `folder` matching `pattern`, sorted, for parametrising a test over them.

    An empty match raises instead of giving an empty parametrisation, which pytest would silently skip."""
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no fixture files match {pattern} in {folder}")
    return files


@pytest.fixture(scope="session", autouse=True)
def _session_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The system temp folder of this session: TMPDIR (for every subprocess) and Python's tempfile point at a folder
    of pytest's basetemp, so nothing the tests or the code make there lands in /tmp beside other sessions' files.

    At the end that folder must be empty: a test or a piece of the code that leaves a folder behind in the system
    temp folder fails the session, with what it left."""
    folder = tmp_path_factory.getbasetemp() / "system-tmp"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(folder))
        mp.setattr(tempfile, "tempdir", str(folder))
        # torch keeps its compile cache in <temp folder>/torchinductor_<user> (made when torch._dynamo is imported,
        # e.g. by safetensors.torch): the session's goes beside the temp folder, not into it.
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "torchinductor"))
        yield folder
    left = sorted(p.name for p in folder.iterdir())
    if left:
        pytest.fail(f"left behind in the system temp folder ({folder}): {', '.join(left)}", pytrace=False)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data root and hub caches for every test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MODELRIG_HOME", str(home / "modelrig"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(home / "modelscope"))
    return home


@pytest.fixture
def data_root(_isolated_home: Path) -> Path:
    """The data root the CLI uses in this test."""
    return _isolated_home / "modelrig"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `modelrig ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from modelrig.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def venvs() -> VenvFactory:
    """Builds real venvs with uv, cached by spec across the session (and across runs on one machine)."""
    return VenvFactory()


#: Fixtures that build real environments or run the whole pipeline: a test that uses one is in the slow lane
#: (`make test` runs everything; `make test-fast` leaves these out).
SLOW_FIXTURES = frozenset({"venvs", "pipeline", "served"})


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave nothing in the system temp folder: the SSH control-socket folders of the Ansible tests."""
    from tests.helpers.sshhosts import remove_control_dirs

    remove_control_dirs()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests using a slow fixture as `slow`, so the fast lane never builds an env by accident."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The demo model's two tiny repos (one gated) on a local hub, one for the session; yields (url, token)."""
    root = demo_repos(tmp_path_factory)
    tokens = root / ".modelrig-hub-tokens"
    with served(root, "--token-file", str(tokens)) as url:
        yield url, tokens.read_text().split()[0]
