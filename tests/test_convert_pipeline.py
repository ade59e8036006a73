"""`modelrig convert MODEL`: a manifest's steps run in order on fetched, local or given folders, idempotently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from modelrig.catalog import resolve_model
from modelrig.hub import tiny
from modelrig.stamp import write_stamp


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-weights")
    meta = tiny.write_llama_meta(root / "llama-meta")
    base = tiny.write_llama_hf(root / "base-hf")
    target = tiny.write_ziya_delta(base, root / "ziya-delta", target_dir=root / "target")
    return {"meta": meta, "delta": root / "ziya-delta", "target": target}


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_demo_manifest_converts_meta_base_and_ziya_delta_into_the_target(weights, data_root, cli):
    code, out, err = cli("convert", "demo-tiny-ziya", "--input", f"base={weights['meta']}",
                         "--input", f"delta={weights['delta']}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["changed"] is True
    assert [s["details"]["kind"] for s in result["details"]["steps"]] == ["llama-meta+delta+safetensors"]
    final = data_root / "models" / "demo-tiny-ziya" / "final"
    assert result["details"]["output"] == str(final)
    assert (final / ".modelrig-stamp.json").is_file()
    assert not (data_root / "models" / "demo-tiny-ziya" / "base_hf").exists()
    assert not (data_root / "models" / "demo-tiny-ziya" / "merged").exists()
    got, want = _tensors(final), _tensors(weights["target"])
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert json.loads((final / "config.json").read_text())["vocab_size"] == 448

    code, out, _ = cli("convert", "demo-tiny-ziya", "--input", f"base={weights['meta']}",
                       "--input", f"delta={weights['delta']}")
    assert code == 0
    assert "final unchanged (fused: llama_meta_to_hf -> apply_delta -> to_safetensors)" in out


def test_fetched_store_folders_are_found_without_overrides(weights, data_root, cli):
    for repo, src in (("modelrig-tiny/llama-meta", weights["meta"]), ("modelrig-tiny/ziya-delta", weights["delta"])):
        dest = data_root / "store" / "huggingface" / repo.replace("/", "--")
        shutil.copytree(src, dest)
        write_stamp(dest, {"key": "fetched", "hub": "huggingface", "repo": repo})
    code, out, err = cli("convert", "demo-tiny-ziya", "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is True


def test_unfetched_weights_are_a_clear_error(cli):
    code, _, err = cli("convert", "demo-tiny-ziya")
    assert code == 6
    assert "not fetched" in err and "modelrig fetch" in err


def test_local_sources_come_from_the_local_option(weights, tmp_path, data_root, cli):
    manifest = yaml.safe_load(resolve_model("demo-tiny-ziya").read_text())
    manifest["id"] = "local-tiny-ziya"
    manifest["weights"]["base"] = {"format": "meta-llama", "local": {"var": "llama_meta_dir"}}
    path = tmp_path / "local-tiny-ziya.yaml"
    path.write_text(yaml.safe_dump(manifest))
    code, _, err = cli("convert", path, "--input", f"delta={weights['delta']}")
    assert code == 2 and "--local llama_meta_dir=PATH" in err
    code, _, err = cli("convert", path, "--input", f"delta={weights['delta']}",
                         "--local", f"llama_meta_dir={weights['meta']}")
    assert code == 0, err
    assert (data_root / "models" / "local-tiny-ziya" / "final" / "model.safetensors").is_file()


def test_local_weights_hashed_by_fetch_are_not_read_again_by_convert(weights, tmp_path, data_root, cli, monkeypatch):
    import modelrig.stamp

    manifest = yaml.safe_load(resolve_model("demo-tiny-ziya").read_text())
    manifest["id"] = "all-local-tiny-ziya"
    manifest["weights"]["base"] = {"format": "meta-llama", "local": {"var": "llama_meta_dir"}}
    manifest["weights"]["delta"] = {"local": {"var": "ziya_delta_dir"}}
    path = tmp_path / "all-local-tiny-ziya.yaml"
    path.write_text(yaml.safe_dump(manifest))
    meta, delta = shutil.copytree(weights["meta"], tmp_path / "meta"), shutil.copytree(weights["delta"], tmp_path / "d")
    local = ["--local", f"llama_meta_dir={meta}", "--local", f"ziya_delta_dir={delta}"]
    hashed: list[Path] = []
    real = modelrig.stamp.sha256_file
    monkeypatch.setattr(modelrig.stamp, "sha256_file", lambda p, **k: hashed.append(Path(p)) or real(p, **k))
    code, _, err = cli("fetch", path, *local)
    assert code == 0, err
    inputs = {p for d in (meta, delta) for p in Path(d).rglob("*") if p.is_file()}
    assert set(hashed) == inputs
    hashed.clear()
    code, _, err = cli("convert", path, *local)
    assert code == 0, err
    assert not set(hashed) & inputs
    (meta / "params.json").write_text((meta / "params.json").read_text() + "\n")
    code, _, err = cli("convert", path, *local)
    assert code == 0, err
    assert set(hashed) & inputs == {meta / "params.json"}


def test_unknown_input_name_is_a_usage_error(weights, cli):
    code, _, err = cli("convert", "demo-tiny-ziya", "--input", f"nope={weights['delta']}")
    assert code == 2 and "no weight source or step output 'nope'" in err


def test_weights_are_found_on_the_hub_they_were_fetched_from(data_root, tmp_path):
    from modelrig.config import Context, DataRoot, HostConfig
    from modelrig.fetch.locate import weight_paths
    from modelrig.manifest import load_manifest

    manifest_file = tmp_path / "two-hubs.yaml"
    manifest_file.write_text(yaml.safe_dump({
        "id": "two-hubs", "title": "t", "license": {"name": "test"},
        "weights": {"model": {"huggingface": {"repo": "org/m", "revision": "main"},
                              "modelscope": {"repo": "msorg/m", "revision": "master"}}},
        "env": {"python": "3.11"}, "resources": {"params_b": 0.001, "memory_gb": {"fp32": 0.1}}}))
    manifest = load_manifest(manifest_file)
    ctx = Context(data=DataRoot(data_root), config=HostConfig())
    assert weight_paths(manifest, ctx)["model"] == data_root / "store" / "huggingface" / "org--m"
    fallback = data_root / "store" / "modelscope" / "msorg--m"
    fallback.mkdir(parents=True)
    write_stamp(fallback, {"hub": "modelscope", "repo": "msorg/m"})
    assert weight_paths(manifest, ctx)["model"] == fallback


#: Runs `modelrig ARGS` and prints, as the last line, whether torch was imported.
_LOADS_TORCH = r"""
import sys
from modelrig.cli import main
code = main(sys.argv[1:])
print("torch" in sys.modules)
sys.exit(code)
"""


# Seven `modelrig convert` processes, five of them importing torch: the slow lane.
@pytest.mark.slow
def test_a_rerun_with_nothing_changed_is_answered_without_the_converters(weights, tmp_path):
    import os
    import subprocess
    import sys

    meta = shutil.copytree(weights["meta"], tmp_path / "meta")
    data_root = tmp_path / "root"

    def convert(*extra: str) -> tuple[dict, bool]:
        done = subprocess.run([sys.executable, "-c", _LOADS_TORCH, "--data-root", str(data_root), "convert",
                               "demo-tiny-ziya", "--input", f"base={meta}", "--input", f"delta={weights['delta']}",
                               "--json", *extra], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        *body, torch_loaded = done.stdout.strip().splitlines()
        return json.loads("\n".join(body)), torch_loaded == "True"

    first, loaded = convert()
    assert first["changed"] and loaded
    final = data_root / "models" / "demo-tiny-ziya" / "final"
    files = {p.name: p.read_bytes() for p in final.iterdir()}
    again, loaded = convert()
    assert not again["changed"] and not loaded
    assert again["details"]["output"] == first["details"]["output"] == str(final)
    assert [s["details"]["files"] for s in again["details"]["steps"]] == \
        [s["details"]["files"] for s in first["details"]["steps"]]
    check, loaded = convert("--check")
    assert not check["changed"] and not loaded

    # an input changed, an output edited, the record gone: each goes back to the converters, which decide
    (meta / "params.json").write_text((meta / "params.json").read_text() + "\n")
    rebuilt, loaded = convert()
    assert rebuilt["changed"] and loaded
    assert {p.name: p.read_bytes() for p in final.iterdir() if p.name != ".modelrig-stamp.json"} == \
        {n: b for n, b in files.items() if n != ".modelrig-stamp.json"}
    shard = final / "model.safetensors"
    shard.write_bytes(shard.read_bytes())
    repaired, loaded = convert()
    assert repaired["changed"] and loaded
    assert shard.read_bytes() == files["model.safetensors"]
    shutil.rmtree(data_root / "cache" / "pipelines")
    unchanged, loaded = convert()
    assert not unchanged["changed"] and loaded
    assert not convert()[1]


def test_convert_takes_its_options_before_the_model_as_the_ansible_modules_pass_them(cli, tmp_path):
    """`convert --check --no-prune-sources -- MODEL` (options first, the model after `--`, as modelrig_convert
    calls it) is the same as `convert MODEL --check --no-prune-sources`; an unknown option is still refused."""
    root = str(tmp_path / "root")
    first = cli("--data-root", root, "convert", "--check", "--no-prune-sources", "--", "demo-tiny-ziya")
    second = cli("--data-root", root, "convert", "demo-tiny-ziya", "--check", "--no-prune-sources")
    assert first[0] == 0 and first == second and "would change 3 step(s)" in first[1]
    with pytest.raises(SystemExit) as refused:
        cli("--data-root", root, "convert", "--no-such-option", "--", "demo-tiny-ziya")
    assert refused.value.code == 2
