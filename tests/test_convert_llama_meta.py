"""`modelrig convert llama-meta`: Meta's consolidated shards to HF, equal to transformers' converter, dtype kept."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from modelrig.convert.llama_meta import convert_llama_meta
from modelrig.errors import ConversionError
from modelrig.hub import tiny
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


# The reference below is written from the definitions, not from modelrig: Meta's tensor-parallel split (column-parallel
# weights along rows, row-parallel ones and the embedding along columns, norms replicated) and the rotary layouts
# (Meta rotates interleaved pairs (0, 1), (2, 3), ...; HF's rotate_half pairs row i with row i + head_dim/2).
COLUMN_PARALLEL = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "feed_forward.w1.weight",
                   "feed_forward.w3.weight", "output.weight")
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")
HF_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
            "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
            "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
            "ffn_norm": "post_attention_layernorm"}
#: (shards, heads, kv heads): one shard; 4 shards with grouped kv heads (2 query heads per kv head, one kv head per
#: shard, as LLaMA-2 70B on 8 shards); 2 shards with 4 query heads per kv head.
LAYOUTS = [(1, 4, None), (4, 8, 4), (2, 8, 2)]


def meta_unsharded(folder) -> tuple[dict[str, torch.Tensor], dict]:
    """Meta's full tensors, glued back from `consolidated.NN.pth` by the split rule above, and params.json."""
    shards = [torch.load(f, map_location="cpu", weights_only=True) for f in sorted(folder.glob("consolidated.*.pth"))]
    full = {}
    for name in shards[0]:
        if name == "rope.freqs":
            continue
        if name.endswith(COLUMN_PARALLEL):
            full[name] = torch.cat([s[name] for s in shards], dim=0)
        elif name.endswith(ROW_PARALLEL):
            full[name] = torch.cat([s[name] for s in shards], dim=1)
        else:
            assert all(torch.equal(s[name], shards[0][name]) for s in shards), name
            full[name] = shards[0][name]
    return full, json.loads((folder / "params.json").read_text())


def interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per head: rows 0, 2, 4, ... of the head's block, then rows 1, 3, 5, ... (index lists, no reshapes)."""
    head_dim = w.shape[0] // n_heads
    order = []
    for h in range(n_heads):
        base = h * head_dim
        order += [base + r for r in range(0, head_dim, 2)] + [base + r for r in range(1, head_dim, 2)]
    return w[order]


def expected_hf(full: dict[str, torch.Tensor], params: dict) -> dict[str, torch.Tensor]:
    """HF names and layout of Meta's tensors, q/k rows reordered per head by `interleaved_to_halves`."""
    n_heads = params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    out = {"model.embed_tokens.weight": full["tok_embeddings.weight"], "model.norm.weight": full["norm.weight"],
           "lm_head.weight": full["output.weight"]}
    for name, tensor in full.items():
        if not name.startswith("layers."):
            continue
        _, i, *rest = name.split(".")
        meta = ".".join(rest[:-1])
        if meta == "attention.wq":
            tensor = interleaved_to_halves(tensor, n_heads)
        elif meta == "attention.wk":
            tensor = interleaved_to_halves(tensor, n_kv)
        out[f"model.layers.{i}.{HF_NAMES[meta]}.weight"] = tensor
    return out


def meta_forward(full: dict[str, torch.Tensor], params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of Meta's reference LLaMA forward (complex rotary on interleaved pairs, kv heads repeated), in fp32."""
    w = {k: v.float() for k, v in full.items()}
    dim, n_heads, eps = params["dim"], params["n_heads"], params["norm_eps"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim, seq = dim // n_heads, tokens.shape[0]
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs_cis = torch.polar(torch.ones(seq, head_dim // 2), torch.outer(torch.arange(seq).float(), freqs))

    def norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rotate(x: torch.Tensor) -> torch.Tensor:  # x: [seq, heads, head_dim]
        pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(pairs * freqs_cis[:, None, :]).flatten(2)

    mask = torch.full((seq, seq), float("-inf")).triu(1)
    h = w["tok_embeddings.weight"][tokens]
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = norm(h, w[p + "attention_norm.weight"])
        q = rotate((x @ w[p + "attention.wq.weight"].T).view(seq, n_heads, head_dim))
        k = rotate((x @ w[p + "attention.wk.weight"].T).view(seq, n_kv, head_dim))
        v = (x @ w[p + "attention.wv.weight"].T).view(seq, n_kv, head_dim)
        k, v = (t.repeat_interleave(n_heads // n_kv, dim=1) for t in (k, v))  # query head j reads kv head j // rep
        scores = torch.einsum("qhd,khd->hqk", q, k) / head_dim**0.5 + mask
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(seq, dim)
        h = h + attn @ w[p + "attention.wo.weight"].T
        x = norm(h, w[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(x @ w[p + "feed_forward.w1.weight"].T)
        h = h + (gate * (x @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
    return norm(h, w["norm.weight"]) @ w["output.weight"].T


def test_interleaved_to_halves_follows_the_definition():
    rows = torch.arange(16).float()[:, None]  # 2 heads of 8 rows
    assert interleaved_to_halves(rows, 2)[:, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]


@pytest.mark.parametrize(("shards", "heads", "kv_heads"), LAYOUTS)
def test_shards_and_grouped_kv_heads_convert_to_an_independent_reassembly(tmp_path, shards, heads, kv_heads):
    meta = tiny.write_llama_meta(tmp_path / "meta", shards=shards, n_heads=heads, n_kv_heads=kv_heads)
    convert_llama_meta(input_dir=meta, out=tmp_path / "hf")
    expected = expected_hf(*meta_unsharded(meta))
    got = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float16 and torch.equal(got[name], tensor), name
    kv = kv_heads or heads
    assert got["model.layers.0.self_attn.k_proj.weight"].shape == (64 // heads * kv, 64)


@pytest.mark.parametrize(("shards", "heads", "kv_heads"), LAYOUTS)
def test_converted_model_gives_the_logits_of_metas_forward(tmp_path, shards, heads, kv_heads):
    from transformers import LlamaForCausalLM

    meta = tiny.write_llama_meta(tmp_path / "meta", shards=shards, n_heads=heads, n_kv_heads=kv_heads)
    convert_llama_meta(input_dir=meta, out=tmp_path / "hf")
    full, params = meta_unsharded(meta)
    tokens = torch.tensor([1, 17, 250, 3, 99, 42, 7, 300, 5, 64])
    reference = meta_forward(full, params, tokens)
    model = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).float().eval()
    with torch.no_grad():
        logits = model(tokens[None]).logits[0]
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
        # The check sees the rotary layout: Meta's q/k rows loaded unpermuted give other logits.
        for i in range(params["n_layers"]):
            attn = model.model.layers[i].self_attn
            attn.q_proj.weight.copy_(full[f"layers.{i}.attention.wq.weight"].float())
            attn.k_proj.weight.copy_(full[f"layers.{i}.attention.wk.weight"].float())
        assert (model(tokens[None]).logits[0] - reference).abs().max() > 1e-2


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


@pytest.mark.parametrize(("shards", "heads", "kv_heads"), LAYOUTS)
def test_any_row_range_reads_the_rows_of_the_assembled_tensor(tmp_path, shards, heads, kv_heads):
    from modelrig.convert.llama_meta import meta_product

    meta = tiny.write_llama_meta(tmp_path / "meta", shards=shards, n_heads=heads, n_kv_heads=kv_heads)
    expected = expected_hf(*meta_unsharded(meta))
    for t in meta_product(meta).tensors:
        want = expected[t.name]
        rows = want.shape[0]
        for start, stop in ((0, rows), (1, rows - 1), (rows // 3, rows // 3 + 5), (rows - 3, rows)):
            assert torch.equal(t.load_rows(start, stop), want[start:stop]), (t.name, start, stop)
