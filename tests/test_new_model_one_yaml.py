"""Adding a model is writing one YAML file: a non-seed model validates, shows, lists and plans with no code change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HOSTS = Path(__file__).parent / "fixtures" / "hosts"

# Qwen2.5-1.5B-Instruct: a small chat model with a chat template, native in transformers (Qwen2ForCausalLM).
# Its safetensors weights are about 3.09 GB in bf16.
QWEN25 = """\
id: qwen2.5-1.5b-instruct
title: Qwen2.5-1.5B-Instruct
license: {name: apache-2.0}
architecture: Qwen2ForCausalLM
weights:
  model:
    huggingface: {repo: Qwen/Qwen2.5-1.5B-Instruct, revision: main, to_pin: true}
    modelscope: {repo: Qwen/Qwen2.5-1.5B-Instruct, revision: master, to_pin: true}
    include: ["*.json", "*.safetensors", "merges.txt", "vocab.json"]
    size_gb: 3.09
env:
  python: "3.11"
  torch: "==2.13.0"
  packages: [transformers>=4.45, accelerate]
resources:
  params_b: 1.54
  memory_gb: {bf16: 3.5, fp16: 3.5}
launch:
  - {name: chat, kind: gradio_chat, adapter: chat_template, port: 7860}
  - {name: api, kind: openai_api, adapter: chat_template, port: 8000}
"""


@pytest.fixture
def extra_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "qwen2.5-1.5b-instruct.yaml").write_text(QWEN25, encoding="utf-8")
    monkeypatch.setenv("MODELRIG_MANIFESTS", str(folder))
    return folder


def test_the_new_model_validates(cli, extra_manifests: Path):
    code, out, err = cli("validate", extra_manifests / "qwen2.5-1.5b-instruct.yaml")
    assert (code, out, err) == (0, "ok  qwen2.5-1.5b-instruct\n", "")


def test_the_new_model_is_listed_next_to_the_shipped_ones(cli, extra_manifests: Path):
    code, out, _ = cli("list", "--json")
    assert code == 0
    ids = [m["id"] for m in json.loads(out)["models"]]
    assert "qwen2.5-1.5b-instruct" in ids and "bluelm-7b-chat" in ids


def test_the_new_model_shows_with_defaults_filled_in(cli, extra_manifests: Path):
    code, out, _ = cli("show", "qwen2.5-1.5b-instruct", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["weights"]["model"]["huggingface"] == {"repo": "Qwen/Qwen2.5-1.5B-Instruct", "revision": "main",
                                                        "to_pin": True, "repo_type": "model"}
    assert shown["weights"]["model"]["format"] == "hf"


@pytest.mark.parametrize(
    ("host", "variant", "dtype"),
    [
        # CPU: fp32 is twice the 16-bit figure, 7.7 GB with headroom, within 3/4 of 34 GB.
        ("cpu-only", "cpu", "fp32"),
        # T4 (7.5) has no bf16, so the fp16 figure is used; 2.13.0 publishes cu126, which has sm_75.
        ("t4", "cu126", "fp16"),
        ("a100-80gb", "cu126", "bf16"),
        ("m2-pro-16gb", "default", "fp16"),
    ],
)
def test_the_new_model_plans_on_recorded_hosts(cli, extra_manifests: Path, host: str, variant: str, dtype: str):
    code, out, err = cli("plan", "qwen2.5-1.5b-instruct", "--facts", HOSTS / f"{host}.json", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["env"]["torch"]["version"], plan["env"]["torch"]["variant"], plan["dtype"]) == ("2.13.0", variant,
                                                                                                  dtype)
    assert plan["download_bytes"] == int(3.09e9)
    assert plan["launch"] == ["chat", "api"]


def test_a_yaml_path_works_without_the_manifest_folder(cli, tmp_path: Path):
    path = tmp_path / "qwen2.5-1.5b-instruct.yaml"
    path.write_text(QWEN25, encoding="utf-8")
    code, out, _ = cli("plan", path, "--facts", HOSTS / "cpu-only.json")
    assert code == 0
    assert "torch     2.13.0 [cpu]" in out
