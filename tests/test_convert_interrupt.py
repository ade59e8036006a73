"""Conversions killed (SIGKILL) at several points leave no finished-looking output; a re-run ends byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelrig.cli import main
from modelrig.hub import tiny
from modelrig.stamp import STAMP_NAME, sha256_file
from tests.helpers.interrupt import killed


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


def _weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def _check_interrupts(tmp_path: Path, args_for: callable, points: list[str]) -> None:
    reference = tmp_path / "reference"
    assert main(args_for(reference)) == 0
    expected = _hashes(reference)
    total = _weight_bytes(reference)
    for point in points:
        if point.startswith("bytes:"):
            point = f"bytes:{int(float(point.split(':')[1]) * total)}"
        out = tmp_path / f"out-{point.replace(':', '-')}"
        code = killed(point, args_for(out))
        assert code == -9, f"{point}: the run was not killed (exit {code})"
        assert not out.exists(), f"{point}: a partial output appeared at {out}"
        leftovers = [p for p in out.parent.iterdir() if p.name.startswith(".modelrig-tmp-")]
        assert leftovers, f"{point}: expected the interrupted run's temporary sibling"
        assert not any((p / STAMP_NAME).exists() for p in leftovers if "stamp" in point or "bytes" in point)
        assert main(args_for(out)) == 0
        assert _hashes(out) == expected, point
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".modelrig-tmp-")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt-models")
    meta = tiny.write_llama_meta(root / "meta")
    base = tiny.write_llama_hf(root / "base")
    tiny.write_ziya_delta(base, root / "delta")
    return {"meta": meta, "base": base, "delta": root / "delta"}


@pytest.mark.slow
def test_killed_delta_merge_reruns_to_byte_identical_output(models, tmp_path):
    def args(out: Path) -> list[str]:
        return ["convert", "delta", "--base", str(models["base"]), "--delta", str(models["delta"]),
                "--out", str(out), "--convention", "replace", "--max-shard-size", "120KB"]

    _check_interrupts(tmp_path, args, ["bytes:0.01", "bytes:0.5", "bytes:0.97", "stamp", "rename"])


@pytest.mark.slow
def test_killed_llama_meta_conversion_reruns_to_byte_identical_output(models, tmp_path):
    def args(out: Path) -> list[str]:
        return ["convert", "llama-meta", "--input", str(models["meta"]), "--out", str(out)]

    _check_interrupts(tmp_path, args, ["bytes:0.3", "bytes:0.9", "rename"])


@pytest.mark.slow
def test_killed_safetensors_conversion_reruns_to_byte_identical_output(models, tmp_path):
    def args(out: Path) -> list[str]:
        return ["convert", "safetensors", "--input", str(models["delta"]), "--out", str(out),
                "--max-shard-size", "100KB"]

    _check_interrupts(tmp_path, args, ["bytes:0.4", "stamp"])


@pytest.mark.slow
def test_killed_rebuild_keeps_the_previous_finished_output_intact(models, tmp_path):
    out = tmp_path / "merged"
    common = ["convert", "delta", "--base", str(models["base"]), "--delta", str(models["delta"]), "--out", str(out),
              "--convention", "replace"]
    assert main(common) == 0
    before = _hashes(out)
    assert killed("bytes:50000", [*common, "--max-shard-size", "100KB"]) == -9
    assert _hashes(out) == before  # still the old, complete, consistently stamped output
    stamp = json.loads((out / STAMP_NAME).read_text())
    assert stamp["params"]["max_shard_size"] == "5GB"
    assert {k: v for k, v in before.items() if k != STAMP_NAME} == stamp["outputs"]
