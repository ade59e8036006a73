"""What check mode says a fresh host would get, planned on the controller (`python -m modelrig.orchestrate.preview`,
as the roles call it) from a host's hardware answers and the host config the modelrig role would write. The plans
run in this process; the command itself runs once, as the roles run it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelrig.facts.collect import COMMANDS
from modelrig.orchestrate.preview import PreviewRequest, answer, main
from tests.helpers.previews import H100, MAC, rust_manifest

REPO = Path(__file__).resolve().parent.parent


def preview(request: dict) -> subprocess.CompletedProcess[str]:
    """The command as the roles run it: `python -m modelrig.orchestrate.preview`, the request on stdin."""
    return subprocess.run([sys.executable, "-m", "modelrig.orchestrate.preview"], input=json.dumps(request),
                          capture_output=True, text=True, check=False, cwd=REPO)


def lines(request: dict) -> list[str]:
    found = answer(PreviewRequest.model_validate(request))
    assert found["ok"] is True and found["stage"] == request["stage"]
    return found["lines"]


def test_a_fresh_mac_studio_would_get_qwen_vl_chat_from_conda_with_mps_torch_and_two_launchd_jobs():
    mac = {**MAC, "models": ["qwen-vl-chat"], "backend": "conda", "supervisor": "launchd",
           "config": {"serve": {"supervisor": "launchd", "launchd_domain": "system"}}}
    assert lines({**mac, "stage": "env"}) == [
        "would build env qwen-vl-chat (python 3.10 via conda, torch 2.14.1 mps)"]
    assert lines({**mac, "stage": "weights"}) == [
        "would fetch Qwen/Qwen-VL-Chat@main (19.4 GB) from https://huggingface.co"]
    # web and upstream-api are for CUDA and CPU hosts only
    assert lines({**mac, "stage": "launch"}) == [
        "would start demo chat on port 7860 (launchd job ai.modelrig.qwen-vl-chat.chat)",
        "would start demo api on port 7861 (launchd job ai.modelrig.qwen-vl-chat.api)"]


def test_a_fresh_linux_gpu_host_follows_the_driver_the_config_ports_hub_and_the_fleet_hub():
    server = {**H100, "models": ["bluelm-7b-chat"], "supervisor": "systemd",
              "config": {"serve": {"ports": {"bluelm-7b-chat/chat": 6006}}, "hub": {"prefer": "modelscope"}}}
    assert lines({**server, "stage": "env"}) == [
        "would build env bluelm-7b-chat (python 3.10 via venv, torch 2.14.1 cu126)"]
    assert lines({**server, "stage": "weights"}) == [
        "would fetch vivo-ai/BlueLM-7B-Chat@master (15.5 GB) from https://www.modelscope.cn"]
    assert lines({**server, "stage": "weights", "hf_endpoint": "http://10.0.0.5:8791",
                  "modelscope_endpoint": "http://10.0.0.5:8791"}) == [
        "would fetch vivo-ai/BlueLM-7B-Chat@master (15.5 GB) from http://10.0.0.5:8791"]
    assert lines({**server, "stage": "launch"}) == [
        "would start demo chat on port 6006 (systemd unit modelrig-bluelm-7b-chat-chat.service)",
        "would start demo api on port 7776 (systemd unit modelrig-bluelm-7b-chat-api.service)"]


def test_dependencies_local_weights_and_conversions_are_said_in_build_order():
    request = {**H100, "stage": "weights", "models": ["ziya-blip2-14b-visual-v1"],
               "config": {"local": {"llama_13b_meta_dir": "/data/llama-13b"}}}
    assert lines(request) == [
        "would read base from local weights /data/llama-13b for ziya-llama-13b-v1",
        "would fetch IDEA-CCNL/Ziya-LLaMA-13B-v1@main (26.2 GB) from https://huggingface.co for ziya-llama-13b-v1",
        "would convert base_hf (llama_meta_to_hf) for ziya-llama-13b-v1",
        "would convert merged (apply_delta) for ziya-llama-13b-v1",
        "would convert final (to_safetensors) for ziya-llama-13b-v1",
        "would fetch IDEA-CCNL/Ziya-BLIP2-14B-Visual-v1@main (4.4 GB) from https://huggingface.co",
        "would use the output of ziya-llama-13b-v1 as llm"]
    unset = lines({**request, "config": {}})
    assert unset[0] == ("would need local weights base for ziya-llama-13b-v1: set local.llama_13b_meta_dir "
                        "(modelrig_local_weights)")


def test_a_host_with_no_gpu_answer_plans_for_its_cpu():
    cpu = {"host": {"os": "linux", "arch": "x86_64", "disk_free_bytes": 500 * 10**9, "data_root": "/srv/m"},
           "outputs": {"meminfo": "MemTotal:       263856228 kB\n"}, "models": ["qwen-vl-chat"]}
    assert lines({**cpu, "stage": "env"}) == ["would build env qwen-vl-chat (python 3.10 via venv, torch 2.14.1 cpu)"]
    assert lines({**cpu, "stage": "launch"}) == [
        "would start demo web on port 8000 (a supervised process)",
        "would start demo upstream-api on port 8080 (a supervised process)",
        "would start demo chat on port 7860 (a supervised process)",
        "would start demo api on port 7861 (a supervised process)"]


@pytest.mark.parametrize(("request_text", "line"), [
    ("not json", "modelrig preview: stdin: not JSON (Expecting value at line 1)"),
    (json.dumps({"stage": "env", "models": ["no-such-model"]}),
     "modelrig preview: no manifest with id 'no-such-model'"),
    (json.dumps({"stage": "build", "models": []}), "modelrig preview: stdin: stage: "),
    (json.dumps({"stage": "launch", "models": ["qwen-vl-chat"],
                 "config": {"serve": {"ports": {"qwen-vl-chat/chat": 0}}}}),
     "modelrig preview: config: serve.ports.qwen-vl-chat/chat: "),
])
def test_bad_requests_are_one_line_and_status_2(request_text, line, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(request_text))
    assert main() == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(line) and err.count("\n") == 1


@pytest.mark.parametrize("system", ["Darwin", "Linux"])
def test_the_roles_ask_the_host_what_modelrig_facts_asks(system):
    """The modelrig role's read-only commands are the engine's own, so the controller plans from the same answers."""
    commands = yaml.safe_load((REPO / "roles" / "modelrig" / "vars" / f"{system}.yml").read_text())
    for name, argv in commands["modelrig_preview_commands"].items():
        assert argv == (COMMANDS[name] if name in COMMANDS else ["cat", "/proc/meminfo"]), name


def test_unknown_free_disk_is_no_refusal_but_too_little_memory_is():
    """No answer from df says nothing about the disk: the host's own engine checks it; memory is known."""
    unknown_disk = {**H100, "host": {"os": "linux", "arch": "x86_64", "data_root": "/srv/m"}, "stage": "env",
                    "models": ["bluelm-7b-chat"]}
    assert lines(unknown_disk) == ["would build env bluelm-7b-chat (python 3.10 via venv, torch 2.14.1 cu126)"]
    small = {**unknown_disk, "outputs": {"meminfo": "MemTotal:        4000000 kB\n"}}
    (line,) = lines(small)
    assert line.startswith("would build env bluelm-7b-chat (python 3.10 via venv, torch 2.14.1 cpu); the model "
                           "itself would be refused: ")


def test_a_model_that_builds_tokenizers_from_source_is_named_for_the_rust_toolchain(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELRIG_MANIFESTS", str(rust_manifest(tmp_path / "manifests")))
    done = preview({**MAC, "stage": "env", "models": ["rust-tiny-ziya", "qwen-vl-chat"], "backend": "conda"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True, "stage": "env", "tokenizers_from_source": ["rust-tiny-ziya"],
                                       "lines": [
        "would build env rust-tiny-ziya (python 3.11 via conda, torch 2.13.0 mps, tokenizers from source with Rust)",
        "would build env qwen-vl-chat (python 3.10 via conda, torch 2.14.1 mps)"]}
