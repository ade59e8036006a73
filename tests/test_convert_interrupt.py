"""Conversions killed (SIGKILL) at several points leave no finished-looking output; a re-run ends byte-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelrig.cli import main
from modelrig.hub import tiny
from modelrig.stamp import STAMP_NAME, sha256_file

#: Runs `modelrig ARGS` and SIGKILLs itself at a chosen point: `bytes:N` (after N weight bytes written, mid-write),
#: `stamp` (every file written, stamp not yet), `rename` (stamped, not yet renamed into place).
_KILLER = r"""
import os, signal, sys
from pathlib import Path
import modelrig.convert.shards as cio
import modelrig.convert.step as cstep
import modelrig.stamp as cstamp

point, args = sys.argv[1], sys.argv[2:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if point.startswith("bytes:"):
    limit = int(point.split(":")[1])
    written = [0]

    real_write_all, real_copy_span = cio.write_all, cio.copy_span

    def write_all(fd, data):
        view = memoryview(data).cast("B")
        room = limit - written[0]
        if len(view) >= room:
            real_write_all(fd, view[:room]); die()
        written[0] += len(view)
        real_write_all(fd, view)

    def copy_span(span, fd, *, scratch):
        room = limit - written[0]
        if span.nbytes >= room:
            real_copy_span(cio.FileSpan(span.path, span.offset, room), fd, scratch=scratch); die()
        written[0] += span.nbytes
        real_copy_span(span, fd, scratch=scratch)

    cio.write_all, cio.copy_span = write_all, copy_span
elif point == "stamp":
    cstep.write_stamp = lambda *a, **k: die()
elif point == "rename":
    real_replace = os.replace
    def replace(src, dst):
        if not Path(dst).name.startswith(".modelrig-tmp-") and Path(src).name.startswith(".modelrig-tmp-") \
                and Path(src).is_dir():
            die()
        return real_replace(src, dst)
    cstamp.os.replace = replace

from modelrig.cli import main
sys.exit(main(args))
"""


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


def _weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def _killed(point: str, args: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KILLER, point, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode


def _check_interrupts(tmp_path: Path, args_for: callable, points: list[str]) -> None:
    reference = tmp_path / "reference"
    assert main(args_for(reference)) == 0
    expected = _hashes(reference)
    total = _weight_bytes(reference)
    for point in points:
        if point.startswith("bytes:"):
            point = f"bytes:{int(float(point.split(':')[1]) * total)}"
        out = tmp_path / f"out-{point.replace(':', '-')}"
        code = _killed(point, args_for(out))
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
    assert _killed("bytes:50000", [*common, "--max-shard-size", "100KB"]) == -9
    assert _hashes(out) == before  # still the old, complete, consistently stamped output
    stamp = json.loads((out / STAMP_NAME).read_text())
    assert stamp["params"]["max_shard_size"] == "5GB"
    assert {k: v for k, v in before.items() if k != STAMP_NAME} == stamp["outputs"]
