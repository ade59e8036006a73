"""Helpers for launch tests: plans built by hand, tiny manifests, rendered entries and running servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelrig.launch.render import render
from modelrig.manifest import Manifest
from modelrig.plan import EnvPlan, Plan, TorchBuild

#: Run in a model env: load a rendered app.py as a module (its main() does not run), build its ChatAdapter, answer
#: each message list of argv[2] (JSON; "images" are paths) and print what the adapter and the model saw, as JSON.
PROBE = r'''
import importlib.util, json, sys
from PIL import Image
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
adapter = app.ChatAdapter()
results = []
for messages in json.loads(sys.argv[2]):
    for message in messages:
        message["images"] = [Image.open(path) for path in message.get("images", [])]
    usage = {}
    try:
        pieces = list(adapter.stream(messages, dict(app.GENERATION_DEFAULTS, temperature=0.0), usage=usage))
        error = None
    except app.AdapterInputError as exc:
        pieces, error = [], str(exc)
    model = adapter.model
    results.append({"text": "".join(pieces), "pieces": len(pieces), "usage": usage, "error": error,
                    "prompt": adapter.prompt(messages) if hasattr(adapter, "prompt") else None,
                    "model_prompt": getattr(model, "last_prompt", None), "last_call": getattr(model, "last_call", None),
                    "init_flags": getattr(model, "init_flags", None), "class": type(model).__name__,
                    "language_model": type(getattr(model, "language_model", None)).__name__,
                    "input_ids": adapter.encode(messages)["input_ids"][0].tolist() if hasattr(adapter, "encode")
                    and not error else None,
                    "bos": getattr(adapter.tokenizer, "bos_token_id", None)})
print(json.dumps(results, default=str))
'''


def plan_for(manifest: Manifest, *, platform: str = "cpu", dtype: str | None = None,
             quantization: str | None = None, env_vars: dict[str, str] | None = None) -> Plan:
    """A plan as the planner would make it for `platform` (the planner is tested on its own)."""
    torch = TorchBuild(version="2.13.0", variant="cpu" if platform == "cpu" else "cu121", index_url=None,
                       requirements=["torch==2.13.0"])
    env = EnvPlan(python=manifest.env.python, torch=torch, packages=list(manifest.env.packages), tokenizers=None,
                  env_vars=dict(env_vars or {}))
    return Plan(model=manifest.id, platform=platform, device=platform,
                dtype=dtype or ("fp32" if platform == "cpu" else "fp16"), quantization=quantization,
                memory_needed_gb=1.0, memory_available_gb=16.0, env=env, download_bytes=0, disk_needed_bytes=0,
                disk_free_bytes=1 << 40, steps=[],
                launch=[e.name for e in manifest.launch if platform in e.allowed_platforms], fits=True)


def tiny_manifest(model_id: str, launch: list[dict[str, Any]], *, trust_remote_code: bool = False,
                  architecture: str | None = None, python: str = "3.11") -> Manifest:
    """A manifest for a tiny local model with the given launch entries."""
    return Manifest.model_validate({
        "id": model_id, "title": f"tiny {model_id}", "license": {"name": "test"},
        "architecture": architecture, "trust_remote_code": trust_remote_code,
        "weights": {"model": {"local": {"var": "tiny_model"}}},
        "env": {"python": python, "packages": []},
        "resources": {"params_b": 0.001, "memory_gb": {"fp32": 0.1}},
        "launch": launch,
    })


def probe_adapter(entry: Path, python: Path, calls: list) -> list[dict[str, Any]]:
    """Run `PROBE` on a rendered entry with loopback-only networking; return its JSON."""
    import json

    from tests.helpers.offline import offline

    done = subprocess.run(offline([str(python), "-c", PROBE, str(entry / "app.py"), json.dumps(calls)]),
                          capture_output=True, text=True, timeout=300, cwd=entry)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The ports `make demo` and `make demo-engine` serve on by default (the demo manifest's chat and API entries).
DEMO_PORTS = (17860, 18000)


@contextmanager
def ports_held(ports: tuple[int, ...] = DEMO_PORTS) -> Iterator[tuple[int, ...]]:
    """Something listening on each of `ports` on 127.0.0.1 for the duration, as a running demo would be: a socket of
    this process, or whatever holds the port already (the demo itself). Yields the ports."""
    held: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left there is no listener
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                socket.create_connection(("127.0.0.1", port), timeout=5).close()  # taken: something listens there
                continue
            sock.listen()
            held.append(sock)
        yield ports
    finally:
        for sock in held:
            sock.close()


def render_one(manifest: Manifest, out: Path, *, python: Path, paths: dict[str, Path], entry: str,
               **kwargs: Any) -> Path:
    """Render one entry for a CPU plan; return its folder."""
    result = render(manifest, plan_for(manifest), out, paths=paths, python=python, entries=[entry], **kwargs)
    return Path(result.details["entries"][entry]["dir"])


def wait_http(url: str, *, timeout: float = 120.0, proc: subprocess.Popen[Any] | None = None,
              log: Path | None = None) -> None:
    """Wait until `url` answers 2xx; fail with the log tail when the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(f"server exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{tail}")


@contextmanager
def running(cmd: list[str], *, cwd: Path, url: str, env: dict[str, str] | None = None,
            timeout: float = 180.0) -> Iterator[subprocess.Popen[Any]]:
    """Run a server command in its own session until the block ends; wait for `url` first."""
    log = cwd / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        wait_http(url, timeout=timeout, proc=proc, log=log)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def make_images(folder: Path, count: int, *, size: int = 40) -> list[Path]:
    """Write `count` small, distinct RGB images in the supported formats."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("jpeg", "JPEG"), ("bmp", "BMP"), ("webp", "WEBP")]
    paths = []
    for index in range(count):
        ext, fmt = formats[index % len(formats)]
        image = Image.new("RGB", (size, size), ((index * 53) % 256, (index * 97) % 256, (index * 31) % 256))
        for x in range(0, size, 4):
            image.putpixel((x, index % size), (255, 255, 255))
        path = folder / f"img{index:03d}.{ext}"
        image.save(path, fmt)
        paths.append(path)
    return paths


_VLM_SCRIPT = r'''
import json, shutil, sys
import torch
import transformers
from transformers import LlamaTokenizer

kind, out, llama = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
tokenizer = LlamaTokenizer.from_pretrained(llama)
tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
image_token = tokenizer.convert_tokens_to_ids("<image>")
vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=30,
              patch_size=15, projection_dim=32)
if kind == "llava":
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    text = dict(model_type="llama", vocab_size=image_token + 1, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
    config = LlavaConfig(vision_config=dict(vision, model_type="clip_vision_model"), text_config=text,
                         image_token_index=image_token, vocab_size=image_token + 1)
    model = LlavaForConditionalGeneration(config).eval()
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
                               "{% elif m['role'] == 'user' %}USER: {{ m['content'] }} {% else %}ASSISTANT: "
                               "{{ m['content'] }}</s>{% endif %}{% endfor %}"
                               "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30},
                               crop_size={"height": 30, "width": 30}), tokenizer=tokenizer)
else:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor
    text = dict(model_type="opt", vocab_size=image_token + 1, hidden_size=32, num_hidden_layers=2, ffn_dim=37,
                num_attention_heads=2, max_position_embeddings=256, word_embed_proj_dim=32, bos_token_id=1,
                eos_token_id=2, pad_token_id=0)
    vision.pop("projection_dim")
    config = Blip2Config(vision_config=vision, text_config=text, num_query_tokens=4,
                         qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=37, encoder_hidden_size=32, vocab_size=64))
    model = Blip2ForConditionalGeneration(config).eval()
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 30, "width": 30}),
                               tokenizer=tokenizer)
model.save_pretrained(out)
processor.save_pretrained(out)
'''


_QWEN2_VL_SCRIPT = r'''
import sys
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                          Qwen2VLProcessor)

out = sys.argv[1]
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
raw = Tokenizer(models.BPE())
raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
raw.decoder = decoders.ByteLevel()
corpus = ["what is in this picture? a small square of colour, a caption, a question and an answer"] * 20
raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tokenizer = Qwen2TokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None, bos_token=None)
template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
            "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
            "<|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
torch.manual_seed(0)
config = Qwen2VLConfig(
    vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3},
    image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
model = Qwen2VLForConditionalGeneration(config).eval()
model.save_pretrained(out)
processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
                             tokenizer=tokenizer, chat_template=template)
processor.save_pretrained(out)
'''


def write_tiny_qwen2_vl(out: Path, *, python: Path) -> Path:
    """A tiny `Qwen2VLForConditionalGeneration` with a Qwen2 byte-level BPE tokenizer, its vision special tokens and
    a ChatML processor template, written by the transformers (>= 4.45) of the env at `python`."""
    subprocess.run([str(python), "-c", _QWEN2_VL_SCRIPT, str(out)], check=True, capture_output=True, text=True)
    return out


def write_tiny_vlm(out: Path, *, kind: str, python: Path) -> Path:
    """A tiny LLaVA (`kind="llava"`) or BLIP-2 (`"blip2"`) written by the transformers of the env at `python`,
    so it loads in exactly that version (a tiny LLaMA's sentencepiece tokenizer plus an `<image>` token)."""
    from modelrig.hub import tiny

    llama = tiny.write_llama_hf(out.parent / f".{out.name}-llama", seed=1)
    subprocess.run([str(python), "-c", _VLM_SCRIPT, kind, str(out), str(llama)], check=True,
                   capture_output=True, text=True)
    return out
