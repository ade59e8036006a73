"""Every shipped manifest validates, and the loader reports problems as file:line: field: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrig.catalog import manifest_paths
from modelrig.errors import ManifestError
from modelrig.manifest import load_manifest


def test_every_shipped_manifest_validates():
    paths = manifest_paths()
    assert len(paths) >= 2
    for path in paths:
        manifest = load_manifest(path)
        assert manifest.id == path.stem


def test_validate_command_passes_for_shipped_manifests(cli):
    code, out, err = cli("validate")
    assert code == 0, err
    assert "ok  ziya-llama-13b-v1.1" in out


def test_problem_names_file_line_and_field(tmp_path: Path):
    bad = tmp_path / "m.yaml"
    bad.write_text(
        "id: m\ntitle: M\nlicense: {name: x}\n"
        "weights:\n  w:\n    huggingface: {repo: a/b, revision: main}\n"
        "env: {python: '3.10'}\n"
        "resources: {params_b: 1, memory_gb: {fp17: 2}}\n"
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(bad)
    (problem,) = info.value.problems
    assert problem.startswith(f"{bad}:8: resources.memory_gb.fp17")
