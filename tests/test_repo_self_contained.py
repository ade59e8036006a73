"""The suite needs nothing beside the repository: no path leaves it, fixture globs cannot come up empty, and the
facts tests pass from a copy of the repository alone in an empty folder."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, HOST_OUTPUTS, REPO, fixture_files

SCANNED = ("src", "tests")
#: Calls that list a folder; a parametrisation built from one is silently empty when the folder is.
LISTING_CALLS = {"glob", "rglob", "iterdir", "listdir", "scandir"}
FACTS_TESTS = ["tests/test_facts_nvidia.py", "tests/test_facts_macos.py", "tests/test_facts_collect_env.py",
               "tests/test_facts_cli.py"]


class Escape(Exception):
    """A path expression that leaves the repository."""


def _python_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("").parts
    return ".".join(rel[1:] if rel[0] == "src" else rel)


class PathEvaluator:
    """Follows path expressions rooted at `__file__` (`Path(__file__).resolve().parent`, `.parents[2]`, `X / "a/.."`
    and module-level names bound to them, also across `from tests.conftest import REPO`) as parts relative to the
    repository root; raises Escape where one climbs above it. Anything else evaluates to None (unknown)."""

    def __init__(self) -> None:
        self.modules: dict[str, dict[str, tuple[str, ...] | None]] = {}
        self.paths = {_module_name(p): p for p in _python_files()}

    def names(self, module: str) -> dict[str, tuple[str, ...] | None]:
        """Module-level names of `module` bound to path expressions (unknown ones map to None)."""
        if module not in self.modules:
            self.modules[module] = {}
            path = self.paths.get(module)
            if path is not None:
                self.modules[module] = self._bind(ast.parse(path.read_text()), path)
        return self.modules[module]

    def _bind(self, tree: ast.Module, path: Path) -> dict[str, tuple[str, ...] | None]:
        env: dict[str, tuple[str, ...] | None] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module:
                for alias in stmt.names:
                    env[alias.asname or alias.name] = self.names(stmt.module).get(alias.name)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                try:
                    value = self.evaluate(stmt.value, path, env)
                except Escape:
                    value = None  # reported where the expression is found
                for target in targets:
                    if isinstance(target, ast.Name):
                        env[target.id] = value
        return env

    def evaluate(self, node: ast.AST, path: Path,
                 env: dict[str, tuple[str, ...] | None]) -> tuple[str, ...] | None:
        """Parts of the repository path `node` stands for, None when unknown; Escape when it leaves the repo."""
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "Path" and len(node.args) == 1 and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id == "__file__":
                return path.relative_to(REPO).parts
            if isinstance(func, ast.Attribute) and func.attr in ("resolve", "absolute") and not node.args:
                return self.evaluate(func.value, path, env)
            return None
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            base = self.evaluate(node.value, path, env)
            if base is None:
                return None
            if not base:
                raise Escape
            return base[:-1]
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parents" and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, int):
            base = self.evaluate(node.value.value, path, env)
            if base is None:
                return None
            if node.slice.value + 1 > len(base):
                raise Escape
            return base[:len(base) - node.slice.value - 1]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            base = self.evaluate(node.left, path, env)
            if base is None or not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)):
                return None
            parts = list(base)
            if node.right.value.startswith("/"):
                raise Escape
            for segment in node.right.value.split("/"):
                if segment == "..":
                    if not parts:
                        raise Escape
                    parts.pop()
                elif segment not in ("", "."):
                    parts.append(segment)
            return tuple(parts)
        return None


def escapes_in(path: Path, evaluator: PathEvaluator) -> list[str]:
    """`file:line: expression` for each path expression of `path` that climbs above the repository root."""
    tree = ast.parse(path.read_text())
    env = evaluator.names(_module_name(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Attribute, ast.Subscript, ast.BinOp)):
            continue
        try:
            evaluator.evaluate(node, path, env)
        except Escape:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def foreign_paths_in(path: Path) -> list[str]:
    """String constants naming the folder that holds the repository, or a fixtures folder outside tests/."""
    holder = os.path.dirname(REPO)  # compared with, never read
    markers = ["/".join(("shared", "fixtures"))] + ([holder.rstrip("/") + "/"] if holder != "/" else [])
    return [f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and any(m in node.value for m in markers)]


def test_the_evaluator_sees_the_escapes_it_is_meant_to_see(tmp_path):
    evaluator = PathEvaluator()
    module = REPO / "tests" / "conftest.py"
    env = {"REPO": ()}
    cases = {"Path(__file__).resolve().parent.parent": (), "Path(__file__).parents[1] / 'fixtures'": ("fixtures",),
             "REPO / 'tests' / '..' / 'src'": ("src",)}
    for source, parts in cases.items():
        assert evaluator.evaluate(ast.parse(source, mode="eval").body, module, env) == parts, source
    for source in ("REPO.parent / 'shared'", "Path(__file__).resolve().parent.parent.parent",
                   "Path(__file__).parents[2]", "REPO / '../shared'", "REPO / '/abs'"):
        with pytest.raises(Escape):
            evaluator.evaluate(ast.parse(source, mode="eval").body, module, env)


@pytest.mark.slow
def test_no_path_in_src_or_tests_leaves_the_repository():
    evaluator = PathEvaluator()
    assert evaluator.names("tests.conftest")["REPO"] == ()  # REPO is followed, so names built on it are too
    found = [hit for path in _python_files() for hit in escapes_in(path, evaluator) + foreign_paths_in(path)]
    assert found == []


def test_fixture_files_refuses_an_empty_match(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no fixture files match \*\.cmd in"):
        fixture_files(tmp_path, "*.cmd")
    (tmp_path / "b.cmd").write_text("")
    (tmp_path / "a.cmd").write_text("")
    (tmp_path / "c.cmd").mkdir()
    assert fixture_files(tmp_path, "*.cmd") == [tmp_path / "a.cmd", tmp_path / "b.cmd"]


def test_parametrisations_over_folders_go_through_fixture_files():
    """A parametrisation built from a folder listing is silently skipped when the listing is empty."""
    found = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "parametrize":
                for arg in node.args[1:2] + [k.value for k in node.keywords if k.arg == "argvalues"]:
                    calls = [c for c in ast.walk(arg) if isinstance(c, ast.Call)]
                    if any(isinstance(c.func, ast.Attribute) and c.func.attr in LISTING_CALLS for c in calls):
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []


def test_the_fixtures_are_inside_the_repository():
    assert FIXTURES.resolve().is_relative_to(REPO) and HOST_OUTPUTS.resolve().is_relative_to(REPO)
    assert (HOST_OUTPUTS / "SOURCES.md").is_file()
    listed = set(re.findall(r"`([^`/ ]+\.(?:txt|csv|cmd))`", (HOST_OUTPUTS / "SOURCES.md").read_text()))
    present = {p.name for p in HOST_OUTPUTS.iterdir() if p.name != "SOURCES.md"}
    # Every recorded output has its provenance (the .cmd files are listed as "(+ `.cmd`)" beside their CSV).
    assert present - listed == {p.name for p in fixture_files(HOST_OUTPUTS, "*.cmd")}
    assert {p.with_suffix(".csv").name for p in fixture_files(HOST_OUTPUTS, "*.cmd")} <= listed


def repository_files() -> list[Path]:
    """What a clone of this checkout holds: git's tracked and not-ignored files, or, without git, the tree less
    the usual build and cache folders."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
        return [REPO / name for name in out.decode().split("\0") if name and (REPO / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".modelrig-data", "build", "dist"}
        return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]


@pytest.mark.slow
def test_facts_tests_pass_from_a_copy_with_nothing_beside_it(tmp_path):
    alone = tmp_path / "empty" / "modelrig"
    for file in repository_files():
        target = alone / file.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    assert [p.name for p in alone.parent.iterdir()] == ["modelrig"]
    env = {**os.environ, "PYTHONPATH": str(alone / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import modelrig, tests.conftest as c\n"
                            "print(modelrig.__file__); print(c.HOST_OUTPUTS)"],
                           cwd=alone, env=env, capture_output=True, text=True, check=True)
    assert all(Path(line).is_relative_to(alone) for line in probe.stdout.split()), probe.stdout
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "basetemp"), *FACTS_TESTS], cwd=alone, env=env, capture_output=True,
                          text=True, timeout=600)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 100 and not re.search(r"skipped|deselected|error", summary), summary


@pytest.mark.slow
def test_ci_runs_make_test_in_a_clone_alone_in_an_empty_folder(tmp_path):
    """.ci/run with a stand-in `make` that records where and how it was called."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: .ci/run clones the committed tree")
    record = tmp_path / "record"
    stub = tmp_path / "bin" / "make"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\n{ echo "args=$*"; echo "cwd=$PWD"; echo "beside=$(ls -A ..)"; '
                    'echo "head=$(git rev-parse HEAD)"; echo "venv=$VENV"; echo "bin_dir=[$MODELRIG_BIN_DIR]"; '
                    f'}} > {record}\nexit "${{STUB_EXIT:-0}}"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}",
           "MODELRIG_CI_HOME": str(tmp_path / "ci")}
    done = subprocess.run([str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in record.read_text().splitlines())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert seen == {"args": "test", "cwd": str(tmp_path / "ci" / "clone" / "modelrig"), "beside": "modelrig",
                    "head": head, "venv": str(tmp_path / "ci" / "venv"), "bin_dir": "[]"}
    assert not (tmp_path / "ci" / "clone").exists()  # the clone is removed afterwards
    failed = subprocess.run([str(REPO / ".ci" / "run")], env={**env, "STUB_EXIT": "3"}, capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode == 3


def test_readme_says_which_host_files_are_derived_and_which_are_composed_by_hand():
    import json

    text = " ".join((REPO / "README.md").read_text().split())
    derived = re.search(r"Seven are derived from real command outputs.*?: (.*?)\. Five", text)
    hand = re.search(r"Five are composed by hand.*?: (.*?)\. The real outputs", text)
    assert derived and hand

    def names(listing: str) -> set[str]:
        return set(re.findall(r"`([^`]+)`", listing))

    files = {p.stem: json.loads(p.read_text()) for p in fixture_files(FIXTURES / "hosts", "*.json")}
    assert names(derived.group(1)) == {name for name, data in files.items() if "derived_from" in data}
    assert names(hand.group(1)) == {name for name, data in files.items() if "derived_from" not in data}
    assert all("by hand" in files[name]["comment"] for name in names(hand.group(1)))
