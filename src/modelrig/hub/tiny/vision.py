"""Tiny vision-language models: BLIP-2 and LLaVA, built with transformers from random weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from modelrig.convert.llama_meta import (
    llama_config_dict,
    write_llama_tokenizer,
)
from modelrig.hub.tiny.llama import sentencepiece_model


def _vision_tower_config(kind: str) -> dict[str, Any]:
    base = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 30, "patch_size": 15, "num_channels": 3}
    if kind == "siglip_vision_model":
        return {**base, "model_type": kind}
    return {**base, "model_type": "clip_vision_model", "projection_dim": 32}


def _image_processor(kind: str) -> Any:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    if kind == "siglip_vision_model":
        return SiglipImageProcessor(size={"height": 30, "width": 30})
    return CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})


def _tiny_llama_tokenizer(directory: Path, *, added: Sequence[str], chat_template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    write_llama_tokenizer(directory, sentencepiece_model(), added_tokens=added, chat_template=chat_template)
    return AutoTokenizer.from_pretrained(str(directory))


def _save_model(model: Any, out: Path) -> None:
    model.save_pretrained(str(out), safe_serialization=True)
    cfg_path = out / "config.json"
    config = json.loads(cfg_path.read_text())
    _legacy_fields(config)
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _legacy_fields(config: dict[str, Any]) -> None:
    """Add the names older transformers read (`torch_dtype`, `image_token_index`) next to v5's."""
    if "dtype" in config and "torch_dtype" not in config:
        config["torch_dtype"] = config["dtype"]
    if "image_token_id" in config and "image_token_index" not in config:
        config["image_token_index"] = config["image_token_id"]
    for key in ("text_config", "vision_config", "qformer_config"):
        if isinstance(config.get(key), dict):
            _legacy_fields(config[key])


#: A LLaVA-1.5-style chat template (`USER: <image>\n... ASSISTANT:`).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def write_llava(out: Path, *, seed: int = 0, vision: str = "siglip_vision_model") -> Path:
    """Write a tiny `LlavaForConditionalGeneration` (LLaMA + SigLIP/CLIP tower), its processor and chat template."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / ".tokenizer-src"
    tokenizer = _tiny_llama_tokenizer(tok_dir, added=("<image>",), chat_template=LLAVA_CHAT_TEMPLATE)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    text = llama_config_dict(vocab_size=image_token_id + 1, hidden_size=64, intermediate_size=192, num_layers=2,
                             num_heads=4, num_kv_heads=4, dtype="float32")
    text.pop("architectures")
    config = LlavaConfig(vision_config=_vision_tower_config(vision), text_config=text,
                         image_token_index=image_token_id, vision_feature_select_strategy="full"
                         if vision == "siglip_vision_model" else "default", vision_feature_layer=-1,
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _save_model(model, out)
    processor = LlavaProcessor(image_processor=_image_processor(vision), tokenizer=tokenizer,
                               chat_template=LLAVA_CHAT_TEMPLATE, patch_size=15,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               num_additional_image_tokens=0 if vision == "siglip_vision_model" else 1)
    processor.save_pretrained(str(out))
    (out / "tokenizer.model").write_bytes((tok_dir / "tokenizer.model").read_bytes())
    shutil.rmtree(tok_dir, ignore_errors=True)
    return out


def write_blip2(out: Path, *, seed: int = 0) -> Path:
    """Write a tiny `Blip2ForConditionalGeneration` (tiny ViT + Q-Former + OPT) with its processor."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / ".tokenizer-src"
    tokenizer = _tiny_llama_tokenizer(tok_dir, added=("<image>",))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = _vision_tower_config("blip")
    vision.pop("model_type")
    vision.pop("projection_dim")
    text = {"model_type": "opt", "vocab_size": image_token_id + 1, "hidden_size": 32, "num_hidden_layers": 2,
            "ffn_dim": 37, "num_attention_heads": 2, "max_position_embeddings": 64, "word_embed_proj_dim": 32,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    qformer = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
               "encoder_hidden_size": 32, "vocab_size": 64}
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
                         image_token_index=image_token_id)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    _save_model(model, out)
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 30, "width": 30}),
                               tokenizer=tokenizer, num_query_tokens=4)
    processor.save_pretrained(str(out))
    (out / "tokenizer.model").write_bytes((tok_dir / "tokenizer.model").read_bytes())
    shutil.rmtree(tok_dir, ignore_errors=True)
    return out
