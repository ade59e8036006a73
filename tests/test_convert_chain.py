"""Fused conversion chains: Meta -> HF -> delta merge -> safetensors in one pass, byte-identical to step by step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from modelrig.catalog import resolve_model
from modelrig.hub import tiny
from modelrig.manifest import load_manifest
from modelrig.plan.steps import group_steps
from modelrig.stamp import STAMP_NAME, sha256_file
from tests.helpers.interrupt import killed

MODEL = "demo-tiny-ziya"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain-weights")
    meta = tiny.write_llama_meta(root / "llama-meta")
    base = tiny.write_llama_hf(root / "base-hf")
    tiny.write_ziya_delta(base, root / "ziya-delta")
    return {"meta": meta, "delta": root / "ziya-delta"}


def _files(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != STAMP_NAME}


def _manifest_variant(tmp_path: Path, name: str, edit) -> Path:
    data = yaml.safe_load(resolve_model(MODEL).read_text())
    data["id"] = name
    edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _args(weights, model: str | Path = MODEL) -> list[str]:
    return ["convert", str(model), "--input", f"base={weights['meta']}", "--input", f"delta={weights['delta']}"]


def test_fused_chain_writes_the_step_by_step_files_byte_for_byte_and_no_intermediates(weights, data_root, cli,
                                                                                      tmp_path):
    models = data_root / "models" / MODEL
    code, out, err = cli(*_args(weights), "--json")
    assert code == 0, err
    fused = _files(models / "final")
    assert sorted(p.name for p in models.iterdir()) == ["final"]  # base_hf and merged were never written
    assert any(n.endswith(".safetensors") for n in fused) and "config.json" in fused
    stamp = json.loads((models / "final" / STAMP_NAME).read_text())
    assert stamp["kind"] == "llama-meta+delta+safetensors"
    assert [(s["kind"], s["output"]) for s in stamp["params"]["steps"]] == [
        ("llama-meta", "base_hf"), ("delta", "merged"), ("safetensors", "final")]
    assert stamp["params"]["steps"][1]["convention"] == "replace"
    assert stamp["params"]["steps"][2]["max_shard_size"] == "500MB"
    assert set(stamp["inputs"]) == {"base_hf.checkpoint", "base_hf.tokenizer", "merged.delta"}
    shutil.copytree(models / "final", tmp_path / "fused")

    code, out, err = cli(*_args(weights), "--keep-intermediates", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [s["details"]["kind"] for s in result["details"]["steps"]] == ["llama-meta", "delta", "safetensors"]
    assert sorted(p.name for p in models.iterdir()) == ["base_hf", "final", "merged"]
    assert _files(models / "final") == fused


def test_rerun_of_a_fused_chain_is_unchanged(weights, data_root, cli):
    assert cli(*_args(weights))[0] == 0
    code, out, err = cli(*_args(weights), "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is False


def test_keep_on_a_step_writes_that_output_and_fuses_the_rest(weights, data_root, cli, tmp_path):
    def keep_base(data):
        data["convert"][0]["llama_meta_to_hf"]["keep"] = True

    path = _manifest_variant(tmp_path, "kept-tiny-ziya", keep_base)
    code, out, err = cli(*_args(weights, path), "--json")
    assert code == 0, err
    kinds = [s["details"]["kind"] for s in json.loads(out)["details"]["steps"]]
    assert kinds == ["llama-meta", "delta+safetensors"]
    models = data_root / "models" / "kept-tiny-ziya"
    assert sorted(p.name for p in models.iterdir()) == ["base_hf", "final"]

    assert cli(*_args(weights), "--keep-intermediates")[0] == 0
    assert _files(models / "final") == _files(data_root / "models" / MODEL / "final")


def test_an_output_something_else_reads_is_not_fused_away(tmp_path):
    def serve_merged(data):
        data["launch"][1]["weights"] = "merged"

    manifest = load_manifest(_manifest_variant(tmp_path, "served-tiny-ziya", serve_merged))
    groups = [[s.output_name for s in g] for g in group_steps(manifest)]
    assert groups == [["base_hf", "merged"], ["final"]]
    assert [[s.output_name for s in g] for g in group_steps(manifest, keep_intermediates=True)] == [
        ["base_hf"], ["merged"], ["final"]]
    plain = load_manifest(resolve_model(MODEL))
    assert [[s.output_name for s in g] for g in group_steps(plain)] == [["base_hf", "merged", "final"]]
    assert [[s.output_name for s in g] for g in group_steps(plain, overridden=frozenset({"base_hf"}))] == [
        ["base_hf"], ["merged", "final"]]


def test_a_prefix_chain_meta_to_merge_matches_step_by_step(weights, data_root, cli, tmp_path):
    def no_safetensors(data):
        data["convert"] = data["convert"][:2]

    path = _manifest_variant(tmp_path, "prefix-tiny-ziya", no_safetensors)
    assert cli(*_args(weights, path))[0] == 0
    models = data_root / "models" / "prefix-tiny-ziya"
    assert sorted(p.name for p in models.iterdir()) == ["merged"]
    fused = _files(models / "merged")
    assert cli(*_args(weights, path), "--keep-intermediates")[0] == 0
    assert _files(models / "merged") == fused


@pytest.mark.slow
@pytest.mark.parametrize(("point", "shard"), [("bytes:0.05", "500MB"), ("bytes:0.6", "500MB"), ("bytes:0.6", "100KB"),
                                             ("stamp", "100KB"), ("rename", "500MB")])
def test_killed_fused_chain_leaves_nothing_finished_looking_and_reruns_to_the_same_bytes(weights, data_root, cli,
                                                                                          tmp_path, point, shard):
    def shard_size(data):
        data["convert"][2]["to_safetensors"]["max_shard_size"] = shard

    name = f"killed-{shard.lower()}-tiny-ziya"
    path = _manifest_variant(tmp_path, name, shard_size)
    models = data_root / "models" / name
    assert cli(*_args(weights, path))[0] == 0
    expected = _files(models / "final")
    assert (len([n for n in expected if n.endswith(".safetensors")]) > 1) == (shard == "100KB")
    total = sum(p.stat().st_size for p in (models / "final").glob("*.safetensors"))
    shutil.rmtree(models)
    if point.startswith("bytes:"):
        point = f"bytes:{int(float(point.split(':')[1]) * total)}"
    assert killed(point, _args(weights, path)) == -9
    assert not (models / "final").exists()
    assert not (models / "base_hf").exists() and not (models / "merged").exists()
    assert [p for p in models.iterdir() if p.name.startswith(".modelrig-tmp-")]
    code, _, err = cli(*_args(weights, path))
    assert code == 0, err
    assert _files(models / "final") == expected
    assert not [p for p in models.iterdir() if p.name.startswith(".modelrig-tmp-")]


#: Runs `modelrig ARGS` and prints the bytes the process wrote (its /proc/self/io wchar) as the last line.
_WRITTEN = r"""
import sys
from pathlib import Path
from modelrig.cli import main
code = main(sys.argv[1:])
io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
print(io["wchar"])
sys.exit(code)
"""


@pytest.mark.slow
def test_a_fused_chain_writes_only_its_final_output_where_step_by_step_writes_every_intermediate(weights, tmp_path):
    import os
    import subprocess
    import sys

    def written(data_root: Path, *extra: str) -> int:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MODELRIG_NO_PROGRESS": "1"}
        done = subprocess.run([sys.executable, "-c", _WRITTEN, "--data-root", str(data_root), "-q",
                               *_args(weights), *extra], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip().splitlines()[-1])

    fused_root, steps_root = tmp_path / "fused", tmp_path / "steps"
    fused = written(fused_root)
    steps = written(steps_root, "--keep-intermediates")
    models = fused_root / "models" / MODEL
    final = sum(p.stat().st_size for p in (models / "final").iterdir())
    kept = sum(p.stat().st_size for p in (steps_root / "models" / MODEL).rglob("*") if p.is_file())
    assert sorted(p.name for p in models.iterdir()) == ["final"]
    # the final output, its stamp and the digest cache: nothing of the two intermediates
    assert final <= fused <= final + 64 * 1024, (fused, final)
    assert steps >= kept > 2.5 * final
