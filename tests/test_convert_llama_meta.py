"""`modelrig convert llama-meta`: Meta's consolidated shards to HF, equal to transformers' converter, dtype kept."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from modelrig import tiny
from modelrig.convert.llama_meta import convert_llama_meta
from modelrig.errors import ConversionError
from tests.helpers.venvs import TF_CONVERT


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return tiny.write_llama_meta(tmp_path_factory.mktemp("meta") / "13B", shards=2)


def test_two_shard_checkpoint_converts_to_the_same_hf_weights_bit_exact_in_fp16(meta, tmp_path, cli):
    code, out, err = cli("convert", "llama-meta", "--input", meta, "--out", tmp_path / "hf", "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is True
    expected = load_file(str(tiny.write_llama_hf(tmp_path / "expected") / "model.safetensors"))
    got = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float16
        assert torch.equal(got[name], tensor), name
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["torch_dtype"] == "float16"
    assert (config["vocab_size"], config["intermediate_size"], config["max_position_embeddings"]) == (384, 192, 2048)


@pytest.mark.parametrize(("shards", "heads", "kv_heads"), [(1, 4, None), (4, 8, 4)])
def test_other_shard_counts_and_grouped_kv_heads_convert_exactly(tmp_path, shards, heads, kv_heads):
    meta = tiny.write_llama_meta(tmp_path / "meta", shards=shards, n_heads=heads, n_kv_heads=kv_heads)
    convert_llama_meta(input_dir=meta, out=tmp_path / "hf")
    expected_dir = tiny.write_llama_hf(tmp_path / "expected", num_heads=heads, num_kv_heads=kv_heads)
    expected = load_file(str(expected_dir / "model.safetensors"))
    got = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert all(torch.equal(got[n], t) for n, t in expected.items())


@pytest.mark.slow
def test_matches_transformers_447_convert_llama_weights_to_hf_tensor_by_tensor(meta, tmp_path, venvs):
    python = venvs.get(TF_CONVERT)
    ref = tmp_path / "ref"
    proc = subprocess.run([str(python), "-m", "transformers.models.llama.convert_llama_weights_to_hf",
                           "--input_dir", str(meta), "--num_shards", "2", "--output_dir", str(ref),
                           "--llama_version", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    convert_llama_meta(input_dir=meta, out=tmp_path / "ours")
    reference = {}
    for f in sorted(ref.glob("*.safetensors")):
        reference.update(load_file(str(f)))
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    reference = {k: v for k, v in reference.items() if "rotary_emb.inv_freq" not in k}
    assert set(ours) == set(reference)
    # The reference script silently writes bf16; ours keeps the checkpoint's fp16, equal once cast the same way.
    assert {t.dtype for t in reference.values()} == {torch.bfloat16}
    for name, tensor in reference.items():
        assert torch.equal(ours[name].to(torch.bfloat16), tensor), name
    ref_cfg = json.loads((ref / "config.json").read_text())
    our_cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    for field in ("vocab_size", "intermediate_size", "hidden_size", "num_attention_heads", "num_hidden_layers",
                  "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "bos_token_id", "eos_token_id"):
        assert our_cfg[field] == ref_cfg[field], field


def test_wrong_size_is_refused(meta, tmp_path, cli):
    code, _, err = cli("convert", "llama-meta", "--input", meta, "--out", tmp_path / "o", "--size", "7B")
    assert code == 6
    assert "not a LLaMA 7B checkpoint" in err and "1 shard(s)" in err
    assert not (tmp_path / "o").exists()


def test_missing_shard_is_refused(meta, tmp_path):
    import shutil

    broken = tmp_path / "13B"
    shutil.copytree(meta, broken)
    (broken / "consolidated.01.pth").unlink()
    with pytest.raises(ConversionError, match="a shard missing"):
        convert_llama_meta(input_dir=broken, out=tmp_path / "o")
    (broken / "consolidated.00.pth").rename(broken / "consolidated.01.pth")
    with pytest.raises(ConversionError, match="a shard is missing"):
        convert_llama_meta(input_dir=broken, out=tmp_path / "o")


def test_truncated_shard_is_refused(meta, tmp_path, cli):
    import shutil

    broken = tmp_path / "13B"
    shutil.copytree(meta, broken)
    data = (broken / "consolidated.01.pth").read_bytes()
    (broken / "consolidated.01.pth").write_bytes(data[: len(data) // 2])
    code, _, err = cli("convert", "llama-meta", "--input", broken, "--out", tmp_path / "o")
    assert code == 6
    assert "consolidated.01.pth" in err


def test_tokenizer_one_level_up_like_llama1_downloads_and_loads_in_transformers(tmp_path):
    meta = tiny.write_llama_meta(tmp_path / "llama" / "13B")
    (meta / "tokenizer.model").rename(tmp_path / "llama" / "tokenizer.model")
    result = convert_llama_meta(input_dir=meta, out=tmp_path / "hf", size="13B")
    assert result.changed
    again = convert_llama_meta(input_dir=meta, out=tmp_path / "hf", size="13B")
    assert not again.changed
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = tok("hello the model", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
