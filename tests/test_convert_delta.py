"""`modelrig convert delta` / `make-delta`: the four delta conventions, exact arithmetic, wrong-convention refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelrig.convert.delta import apply_delta, make_delta
from modelrig.convert.readers import ModelReader
from modelrig.errors import ConversionError
from modelrig.hub import tiny


def _state(directory: Path) -> dict[str, torch.Tensor]:
    reader = ModelReader.open(directory)
    return {name: t.load() for name, t in reader.tensors.items()}


def _hashes(directory: Path) -> dict[str, str]:
    from modelrig.stamp import sha256_file

    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("delta-models")
    base = tiny.write_llama_hf(root / "base")
    target = tiny.write_ziya_delta(base, root / "ziya-delta", target_dir=root / "ziya-target")
    return {"base": base, "ziya_delta": root / "ziya-delta", "ziya_target": target, "root": root}


def _write_target(base: Path, out: Path, *, grow_rows: int = 0, extra_key: bool = False, seed: int = 7) -> Path:
    """A fine-tuned-looking target of `base`: weights perturbed, optionally more vocab rows and a projector."""
    gen = torch.Generator().manual_seed(seed)
    state = load_file(str(base / "model.safetensors"))
    target = {}
    for name, t in state.items():
        new = (t.float() + torch.randn(t.shape, generator=gen) * 0.01).to(t.dtype)
        if grow_rows and name.endswith(("embed_tokens.weight", "lm_head.weight")):
            new = torch.cat([new, (torch.randn(grow_rows, t.shape[1], generator=gen) * 0.2).to(t.dtype)])
        target[name] = new.contiguous()
    if extra_key:
        target["model.mm_projector.weight"] = (torch.randn(64, 32, generator=gen)).to(torch.float16)
    out.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(target, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    config["vocab_size"] += grow_rows
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _reference_merge(base: Path, delta: Path, convention: str) -> dict[str, torch.Tensor]:
    """The whole-model way: load base and delta with transformers, combine in float32, keep fp16."""
    from transformers import LlamaForCausalLM

    b = LlamaForCausalLM.from_pretrained(str(base), torch_dtype=torch.float16).state_dict()
    d_model = LlamaForCausalLM.from_pretrained(str(delta), torch_dtype=torch.float16)
    d = {k: v for k, v in d_model.state_dict().items()}
    d.update({k: v for k, v in _state(delta).items() if k not in d})  # keys transformers does not know
    out = {}
    for name, dt in d.items():
        if convention == "replace" and any(k in name for k in ("embed_tokens", "lm_head", "inv_freq")):
            out[name] = dt.clone()
        elif name not in b:
            out[name] = dt.clone()
        else:
            merged = dt.float().clone()
            rows = b[name].shape[0]
            merged[:rows] += b[name].float()
            out[name] = merged.to(torch.float16)
    return out


def _ulp_fp16(t: torch.Tensor) -> torch.Tensor:
    t = t.float().abs().clamp(min=2.0 ** -14)
    return 2.0 ** (torch.floor(torch.log2(t)) - 10)


@pytest.mark.parametrize(("convention", "grow", "extra"), [
    ("add", 0, False), ("zero-pad-add", 1, False), ("slice-add", 3, True), ("replace", 64, False)])
@pytest.mark.slow
def test_each_convention_round_trips_through_make_delta_and_equals_whole_model_reference(
        models, tmp_path, convention, grow, extra):
    base = models["base"]
    target = _write_target(base, tmp_path / "target", grow_rows=grow, extra_key=extra)
    make_delta(base=base, target=target, out=tmp_path / "delta", convention=convention)
    result = apply_delta(base=base, delta=tmp_path / "delta", out=tmp_path / "merged", convention=convention)
    assert result.changed
    merged = _state(tmp_path / "merged")
    reference = _reference_merge(base, tmp_path / "delta", convention)
    assert set(merged) == set(reference)
    for name in reference:  # bit-for-bit equal to the float32 whole-model reference
        assert torch.equal(merged[name], reference[name]), name
    original, delta = _state(target), _state(tmp_path / "delta")
    assert set(merged) == set(original)
    exact = total = 0
    for name, t in original.items():  # the target comes back: bit-exact where fp16 allows, else within one ulp
        diff = (merged[name].float() - t.float()).abs()
        bound = torch.maximum(_ulp_fp16(t), _ulp_fp16(delta[name]))
        assert bool((diff <= bound).all()), name
        exact += int((diff == 0).sum())
        total += diff.numel()
        if convention == "replace" and ("embed_tokens" in name or "lm_head" in name):
            assert torch.equal(merged[name], t)
    assert exact / total > 0.95


def test_merge_equals_fastchat_fp16_in_place_addition_bit_for_bit(models, tmp_path):
    base = models["base"]
    target = _write_target(base, tmp_path / "target")
    make_delta(base=base, target=target, out=tmp_path / "delta", convention="add")
    apply_delta(base=base, delta=tmp_path / "delta", out=tmp_path / "merged", convention="add")
    b, d, merged = _state(base), _state(tmp_path / "delta"), _state(tmp_path / "merged")
    for name in b:
        fastchat = b[name].clone()
        fastchat += d[name]  # FastChat's `param.data += delta` in fp16
        assert torch.equal(fastchat, merged[name]), name


def test_replace_on_ziya_shaped_delta_gives_the_target_logits_and_tokenizer(models, tmp_path, cli):
    code, out, err = cli("convert", "delta", "--base", models["base"], "--delta", models["ziya_delta"],
                         "--out", tmp_path / "ziya", "--convention", "replace", "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is True
    from transformers import AutoTokenizer, LlamaForCausalLM

    merged = LlamaForCausalLM.from_pretrained(str(tmp_path / "ziya"), torch_dtype=torch.float32).eval()
    target = LlamaForCausalLM.from_pretrained(str(models["ziya_target"]), torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ziya"))
    assert merged.config.vocab_size == 448
    ids = tok("<human>: hello the model\n<bot>:", return_tensors="pt").input_ids
    assert tok.convert_tokens_to_ids("<human>") in ids[0].tolist()
    assert tok.convert_tokens_to_ids("<bot>") in ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(merged(ids).logits, target(ids).logits)
    config = json.loads((tmp_path / "ziya" / "config.json").read_text())
    assert config["torch_dtype"] == "float16"
    assert all(t.dtype == torch.float16 for n, t in _state(tmp_path / "ziya").items() if "inv_freq" not in n)


def test_vocab_extended_delta_under_add_is_refused_with_a_hint(models, tmp_path, cli):
    code, _, err = cli("convert", "delta", "--base", models["base"], "--delta", models["ziya_delta"],
                       "--out", tmp_path / "bad", "--convention", "add")
    assert code == 6
    assert "does not match delta shape" in err and "replace" in err
    assert not (tmp_path / "bad").exists()


def test_full_weights_delta_under_an_additive_convention_is_refused(models, tmp_path):
    with pytest.raises(ConversionError, match="looks like full weights"):
        apply_delta(base=models["base"], delta=models["ziya_delta"], out=tmp_path / "bad",
                    convention="zero-pad-add")
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".modelrig-tmp")]


def test_difference_delta_under_replace_is_refused(models, tmp_path):
    target = _write_target(models["base"], tmp_path / "target", grow_rows=1)
    make_delta(base=models["base"], target=target, out=tmp_path / "delta", convention="zero-pad-add")
    with pytest.raises(ConversionError, match="looks like a difference"):
        apply_delta(base=models["base"], delta=tmp_path / "delta", out=tmp_path / "bad", convention="replace")


def test_base_of_another_size_is_refused(models, tmp_path):
    other = tiny.write_llama_hf(tmp_path / "other", hidden_size=32, num_heads=2)
    with pytest.raises(ConversionError, match="does not match delta shape"):
        apply_delta(base=other, delta=models["ziya_delta"], out=tmp_path / "bad", convention="replace")


def test_sharded_bin_base_and_sharded_safetensors_delta_merge_like_single_files(models, tmp_path):
    base_bin = tmp_path / "base-bin"
    base_bin.mkdir()
    tiny.save_bin_shards(load_file(str(models["base"] / "model.safetensors")), base_bin, max_shard_bytes=60_000)
    (base_bin / "config.json").write_bytes((models["base"] / "config.json").read_bytes())
    assert len(list(base_bin.glob("pytorch_model-*.bin"))) > 2
    target = _write_target(models["base"], tmp_path / "target")
    make_delta(base=models["base"], target=target, out=tmp_path / "delta", convention="add",
               max_shard_size="100KB")
    assert (tmp_path / "delta" / "model.safetensors.index.json").is_file()
    apply_delta(base=base_bin, delta=tmp_path / "delta", out=tmp_path / "a", convention="add")
    apply_delta(base=models["base"], delta=tmp_path / "delta", out=tmp_path / "b", convention="add")
    assert _hashes(tmp_path / "a")["model.safetensors"] == _hashes(tmp_path / "b")["model.safetensors"]


def test_rerun_is_unchanged_and_outputs_are_byte_identical(models, tmp_path):
    kwargs = {"base": models["base"], "delta": models["ziya_delta"], "convention": "replace"}
    first = apply_delta(out=tmp_path / "one", **kwargs)
    again = apply_delta(out=tmp_path / "one", **kwargs)
    assert first.changed and not again.changed
    assert "unchanged" in again.line()
    apply_delta(out=tmp_path / "two", **kwargs)
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "two")
    resharded = apply_delta(out=tmp_path / "one", max_shard_size="100KB", **kwargs)
    assert resharded.changed and (tmp_path / "one" / "model.safetensors.index.json").is_file()


def test_missing_delta_shard_is_a_clear_error(models, tmp_path, cli):
    import shutil

    broken = tmp_path / "delta"
    shutil.copytree(models["ziya_delta"], broken)
    (broken / "pytorch_model-00002-of-00003.bin").unlink()
    code, _, err = cli("convert", "delta", "--base", models["base"], "--delta", broken, "--out", tmp_path / "o",
                       "--convention", "replace")
    assert code == 6
    assert "missing shard(s) pytorch_model-00002-of-00003.bin" in err
