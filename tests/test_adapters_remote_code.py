"""Chat adapters of remote-code models, driven against test doubles.

Ziya-BLIP2, Qwen-VL-Chat, MiniCPM-V/o and BlueLM need `trust_remote_code` and cannot be downloaded here. Their
adapters run (inside rendered scripts, in a real transformers 4.37 env) against `double-*` repos from
`tests/remote_code_doubles`: tiny LLaMA-backed models loaded through `auto_map` remote code, whose `chat(...)`
methods follow the model cards' documented signatures. These tests show the adapters drive those interfaces as
documented; they do not claim anything about the real models.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrig.hub import tiny
from tests import remote_code_doubles
from tests.helpers.launching import make_images, probe_adapter, render_one, tiny_manifest
from tests.helpers.venvs import CURRENT_UI

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def env_python(venvs) -> Path:
    return venvs.get(CURRENT_UI)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return [str(p) for p in make_images(tmp_path_factory.mktemp("double-images"), 2)]


def probe(tmp_path: Path, python: Path, *, adapter: str, paths: dict[str, Path], calls: list, options=None) -> list:
    manifest = tiny_manifest(f"double-{adapter.replace('_', '-')}", [{
        "name": "api", "kind": "openai_api", "adapter": adapter,
        "options": {"max_new_tokens": 6, **(options or {})}}], trust_remote_code=True)
    entry = render_one(manifest, tmp_path / "launch", python=python, paths=paths, entry="api")
    return probe_adapter(entry, python, calls)  # offline: remote code comes from the repo folder, never a hub


def test_bluelm_adapter_uses_the_human_ai_format_with_eos_between_turns(tmp_path, env_python):
    model = remote_code_doubles.build("double-bluelm", tmp_path / "double-bluelm")
    first, second = probe(tmp_path, env_python, adapter="bluelm", paths={"model": model}, calls=[
        [{"role": "user", "content": "三国演义的作者是谁？"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
         {"role": "user", "content": "more"}]])
    assert first["class"] == "BlueLMForCausalLM"  # loaded through auto_map remote code
    assert first["prompt"] == "[|Human|]:三国演义的作者是谁？[|AI|]:"
    assert second["prompt"] == "[|Human|]:hi[|AI|]:hello</s>[|Human|]:more[|AI|]:"
    assert second["text"] and second["usage"]["completion_tokens"] >= 1
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] - 20


def test_qwen_vl_adapter_sends_images_through_from_list_format_and_history(tmp_path, env_python, images):
    model = remote_code_doubles.build("double-qwen-vl", tmp_path / "double-qwen-vl")
    one, two, chat = probe(tmp_path, env_python, adapter="qwen_vl", paths={"model": model}, calls=[
        [{"role": "user", "content": "what is this?", "images": [images[0]]}],
        [{"role": "user", "content": "what is this?", "images": [images[1]]}],
        [{"role": "user", "content": "what is this?", "images": [images[0]]},
         {"role": "assistant", "content": "a square"}, {"role": "user", "content": "which colour?"}]])
    assert one["class"] == "QWenLMHeadModel"
    assert "Picture 1: <img>" in one["model_prompt"] and "</img>\nwhat is this?<|im_end|>" in one["model_prompt"]
    assert one["text"] != two["text"]  # the image reaches the model
    assert one["pieces"] > 1  # streamed through chat_stream
    assert "<|im_start|>assistant\na square<|im_end|>\n<|im_start|>user\nwhich colour?" in chat["model_prompt"]
    assert "You are a helpful assistant." in chat["model_prompt"]


def test_minicpm_adapter_passes_images_in_msgs_and_loads_vision_only(tmp_path, env_python, images):
    model = remote_code_doubles.build("double-minicpm", tmp_path / "double-minicpm")
    one, two = probe(tmp_path, env_python, adapter="minicpm", paths={"model": model},
                     options={"init_audio": False, "init_tts": False}, calls=[
        [{"role": "user", "content": "describe", "images": [images[0]]}],
        [{"role": "user", "content": "describe", "images": [images[0]]}, {"role": "assistant", "content": "ok"},
         {"role": "user", "content": "again"}]])
    assert one["class"] == "MiniCPMV"
    assert one["init_flags"] == {"init_vision": True, "init_audio": False, "init_tts": False}
    assert "<|im_start|>user\n(<image>./</image>)\ndescribe<|im_end|>" in one["model_prompt"]
    assert "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>user\nagain<|im_end|>" in two["model_prompt"]
    assert one["text"] and one["usage"]["completion_tokens"] >= 1


def test_ziya_blip2_adapter_loads_the_llm_separately_and_passes_previous_turns(tmp_path, env_python, images):
    visual = remote_code_doubles.build("double-ziya-blip2", tmp_path / "double-ziya-blip2")
    llm = tiny.write_llama_hf(tmp_path / "ziya-llm", seed=1)
    first, second, no_image = probe(
        tmp_path, env_python, adapter="ziya_blip2", paths={"model": visual, "llm": llm},
        options={"language_model": "llm", "temperature": 0.7, "top_p": 0.1, "repetition_penalty": 1.18}, calls=[
            [{"role": "user", "content": "这是什么？", "images": [images[0]]}],
            [{"role": "user", "content": "q1", "images": [images[0]]}, {"role": "assistant", "content": "a1"},
             {"role": "user", "content": "q2"}],
            [{"role": "user", "content": "no picture"}]])
    assert first["class"] == "ZiyaBlip2ForCausalLM" and first["language_model"] == "LlamaForCausalLM"
    assert first["last_call"]["prompt"] == "<human>:这是什么？\n<bot>:"
    assert second["last_call"]["previous_querys"] == ["q1"] and second["last_call"]["previous_outputs"] == ["a1"]
    assert second["last_call"]["generate_kwargs"] == {"max_new_tokens": 6, "temperature": 0.0, "top_p": 0.1,
                                                      "repetition_penalty": 1.18}
    assert first["text"]
    assert no_image["error"] and "attach one" in no_image["error"]
