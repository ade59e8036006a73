"""Tiny real models: deterministic, small, and loadable by old and new transformers."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch

from modelrig.hub import tiny
from tests.helpers.hub import demo_repos
from tests.helpers.venvs import T437


def _hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_llama_models_are_byte_stable_across_runs(tmp_path):
    for run in ("a", "b"):
        tiny.write_llama_meta(tmp_path / run / "meta")
        tiny.write_llama_hf(tmp_path / run / "hf")
        tiny.write_ziya_delta(tmp_path / run / "hf", tmp_path / run / "delta")
    for name in ("meta", "hf", "delta", "delta-target"):
        first, second = _hashes(tmp_path / "a" / name), _hashes(tmp_path / "b" / name)
        assert first and first == second, name
        assert _size(tmp_path / "a" / name) < 10 * 2**20


def test_meta_checkpoint_is_split_and_stored_like_metas(tmp_path):
    out = tiny.write_llama_meta(tmp_path / "meta", shards=2)
    params = json.loads((out / "params.json").read_text())
    assert params["vocab_size"] == -1 and {"dim", "n_layers", "n_heads", "multiple_of", "norm_eps"} <= set(params)
    s0 = torch.load(out / "consolidated.00.pth", weights_only=True, mmap=True)
    s1 = torch.load(out / "consolidated.01.pth", weights_only=True, mmap=True)
    dim = params["dim"]
    assert s0["layers.0.attention.wq.weight"].shape == (dim // 2, dim)
    assert s0["layers.0.attention.wo.weight"].shape == (dim, dim // 2)
    assert s0["tok_embeddings.weight"].shape == (384, dim // 2)
    assert s0["output.weight"].shape == (192, dim)
    assert all(t.dtype == torch.float16 for t in s0.values())
    assert torch.equal(s0["layers.1.ffn_norm.weight"], s1["layers.1.ffn_norm.weight"])
    assert not torch.equal(s0["layers.1.attention.wq.weight"], s1["layers.1.attention.wq.weight"])
    # A layer's tensors share one storage, as in Meta's files.
    ptrs = {s0[f"layers.0.{n}"].untyped_storage().data_ptr() for n in ("attention.wq.weight", "ffn_norm.weight")}
    assert len(ptrs) == 1


def test_ziya_delta_extends_vocab_with_human_and_bot_tokens(tmp_path):
    base = tiny.write_llama_hf(tmp_path / "hf")
    target = tiny.write_ziya_delta(base, tmp_path / "delta")
    config = json.loads((tmp_path / "delta" / "config.json").read_text())
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] > 384
    added = json.loads((tmp_path / "delta" / "added_tokens.json").read_text())
    assert set(added) == {"<human>", "<bot>"} and min(added.values()) >= 384
    assert len(list((tmp_path / "delta").glob("pytorch_model-*-of-*.bin"))) > 1
    assert (target / "model.safetensors").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target))
    assert tok.convert_tokens_to_ids("<human>") == added["<human>"]


@pytest.mark.slow
def test_tiny_llama_and_ziya_target_load_and_generate_in_transformers_437(tmp_path, venvs):
    python = venvs.get(T437)
    base = tiny.write_llama_hf(tmp_path / "hf")
    target = tiny.write_ziya_delta(base, tmp_path / "delta")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "for d in sys.argv[1:]:\n"
        "    m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)\n"
        "    t = AutoTokenizer.from_pretrained(d)\n"
        "    ids = t('hello the model', return_tensors='pt').input_ids\n"
        "    print(m.config.vocab_size, m.generate(ids, max_new_tokens=4, do_sample=False).shape[1] - ids.shape[1])\n"
    )
    proc = subprocess.run([str(python), "-c", script, str(base), str(target)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["384", "4", "448", "4"]


@pytest.mark.slow
def test_llava_and_blip2_generate_from_an_image_prompt(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor, Blip2ForConditionalGeneration, LlavaForConditionalGeneration

    image = Image.fromarray((np.arange(30 * 30 * 3) % 255).reshape(30, 30, 3).astype("uint8"))
    llava = tiny.write_llava(tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(str(llava))
    model = LlavaForConditionalGeneration.from_pretrained(str(llava))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("USER: <image>") and prompt.endswith("ASSISTANT:")
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3

    blip2 = tiny.write_blip2(tmp_path / "blip2")
    processor = AutoProcessor.from_pretrained(str(blip2))
    model = Blip2ForConditionalGeneration.from_pretrained(str(blip2))
    inputs = processor(images=image, text="a photo of", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] >= 3
    assert _size(llava) < 10 * 2**20 and _size(blip2) < 10 * 2**20


def _answer(model_dir: Path, tokenizer_dir: Path, question: str) -> str:
    """Greedy answer of the model in `model_dir` to Ziya's prompt of `question` (ids the model does not have are
    dropped: the base has no `<human>`/`<bot>`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = [i for i in tokenizer(f"<human>:{question}\n<bot>:")["input_ids"] if i < model.config.vocab_size]
    out = model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=2, pad_token_id=2)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_the_demo_chain_answers_the_demo_question_word_for_word_and_only_the_right_chain_does(tmp_path,
                                                                                          tmp_path_factory):
    from modelrig.convert.delta import apply_delta
    from modelrig.convert.llama_meta import convert_llama_meta
    from modelrig.orchestrate.demo import ANSWER, PROMPT

    assert (PROMPT, ANSWER) == ("Hello! What can you do?",
                                "I am a tiny model, merged from a delta over its base: the demo works.")
    demo_repos(tmp_path_factory, tmp_path / "hub")
    meta = tmp_path / "hub" / "modelrig-tiny" / "llama-meta" / "main"
    delta = tmp_path / "hub" / "modelrig-tiny" / "ziya-delta" / "main"
    convert_llama_meta(input_dir=meta, out=tmp_path / "base")
    apply_delta(base=tmp_path / "base", delta=delta, out=tmp_path / "merged", convention="replace")
    assert _answer(tmp_path / "merged", delta, PROMPT) == ANSWER
    # The base alone, and the delta merged with another convention (forced past the check that refuses it), do not.
    apply_delta(base=tmp_path / "base", delta=delta, out=tmp_path / "added", convention="zero-pad-add",
                check=False)
    assert _answer(tmp_path / "base", delta, PROMPT) != ANSWER
    assert _answer(tmp_path / "added", delta, PROMPT) != ANSWER
