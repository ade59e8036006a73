"""The engine's import graph reads in pipeline order, bottom to top: a module imports only from its own layer or
the layers below it (no import runs back up, nothing outside the CLI imports the CLI), and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "modelrig"

#: Bottom to top. A module belongs to the first layer whose prefix names it.
LAYERS: list[tuple[str, ...]] = [
    ("modelrig", "modelrig.errors", "modelrig.result", "modelrig.stamp", "modelrig.progress", "modelrig.humansize",
     "modelrig.yamlpos", "modelrig.shipped", "modelrig.outputs", "modelrig.netcheck"),
    ("modelrig.manifest", "modelrig.config", "modelrig.catalog"),
    ("modelrig.facts",),
    ("modelrig.plan",),
    ("modelrig.envs",),
    ("modelrig.fetch",),
    ("modelrig.convert",),
    ("modelrig.launch",),
    ("modelrig.hub",),
    ("modelrig.orchestrate", "modelrig.doctor", "modelrig.lock"),
    ("modelrig.cli", "modelrig.__main__"),
]
#: Lines above which a module is split by concern.
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(name == p or (p != "modelrig" and name.startswith(p + ".")) for p in prefixes):
            return index
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


def imports_of(path: Path) -> set[str]:
    """Every modelrig module `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("modelrig")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modelrig"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if (PACKAGE.parent / node.module.replace(".", "/") / a.name).exists()
                      or (PACKAGE.parent / f"{node.module.replace('.', '/')}/{a.name}.py").exists()}
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_import_runs_back_up_the_pipeline(path):
    name = module_name(path)
    own = layer_of(name)
    upward = sorted(m for m in imports_of(path) if m != "modelrig" and layer_of(m) > own)
    assert not upward, f"{name} (layer {own}) imports from a later stage: {upward}"


def test_nothing_outside_the_cli_imports_the_cli():
    offenders = [module_name(p) for p in MODULES if not module_name(p).startswith(("modelrig.cli", "modelrig.__main__"))
                 and any(m.startswith("modelrig.cli") for m in imports_of(p))]
    assert offenders == []


def test_modules_stay_small():
    large = {module_name(p): n for p in MODULES if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert large == {}, f"split these by concern: {large}"
