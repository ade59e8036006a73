"""Batch captioning: a folder of images to a JSON file of {id, caption}; killed midway and resumed, it ends with
exactly one caption per readable image; unreadable images are reported and skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.helpers.launching import make_images, probe_adapter, render_one, tiny_manifest, write_tiny_vlm
from tests.helpers.offline import offline
from tests.helpers.venvs import CURRENT_UI

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory, venvs):
    root = tmp_path_factory.mktemp("caption")
    python = venvs.get(CURRENT_UI)
    model = write_tiny_vlm(root / "blip2", kind="blip2", python=python)
    manifest = tiny_manifest("tiny-blip2", [{"name": "caption", "kind": "batch_caption", "adapter": "blip2",
                                             "options": {"max_new_tokens": 4, "temperature": 0.0, "batch_size": 1}}],
                             architecture="Blip2ForConditionalGeneration")
    entry = render_one(manifest, root / "launch", python=python, paths={"model": model}, entry="caption")
    return {"entry": entry, "root": root}


def _folder(root, count):
    folder = root / "images"
    images = make_images(folder, count)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    images += make_images(folder / "nested", 2)
    return folder, images


def _run(entry, *args, **kwargs):
    """Run the job to its end with loopback-only networking (weights are local; nothing may be fetched)."""
    return subprocess.run(offline(["/bin/sh", str(entry / "start.sh"), *map(str, args)]), capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_killed_midway_then_resumed_ends_with_one_caption_per_readable_image(job, tmp_path):
    folder, images = _folder(tmp_path, 16)
    out = tmp_path / "captions.json"
    entry = job["entry"]
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(["/bin/sh", str(entry / "start.sh"), "--images", str(folder), "--output", str(out)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    partial = []
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists():
            partial = json.loads(out.read_text())  # always a whole JSON document: written by rename
            if len(partial) >= 3:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = json.loads(out.read_text())
    assert 3 <= len(interrupted) < len(images)

    resumed = _run(entry, "--images", folder, "--output", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    to_go = len(images) - len(interrupted)
    assert f"{len(interrupted)} already captioned, {to_go} to go, 1 unreadable" in resumed.stdout
    assert "skipped unreadable image" in resumed.stderr and "broken.png" in resumed.stderr
    assert "images/s" in resumed.stdout and "1 unreadable" in resumed.stdout
    final = json.loads(out.read_text())
    ids = [item["id"] for item in final]
    expected = sorted(os.path.splitext(os.path.relpath(p, folder))[0] for p in images)
    assert sorted(ids) == expected  # every readable image exactly once, nothing else
    assert all(isinstance(item["caption"], str) and item["caption"] for item in final)
    assert final[: len(interrupted)] == interrupted  # earlier work kept as it was

    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    again = _run(entry, "--images", folder, "--output", out)
    assert again.returncode == 0 and f"{len(images)} already captioned, 0 to go, 1 unreadable" in again.stdout
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime  # nothing left: nothing rewritten


def test_prompt_turns_blip2_captioning_into_question_answering(job, tmp_path):
    folder, _ = _folder(tmp_path, 2)
    plain, asked = tmp_path / "plain.json", tmp_path / "asked.json"
    assert _run(job["entry"], "--images", folder, "--output", plain, "--prompt", "").returncode == 0
    assert _run(job["entry"], "--images", folder, "--output", asked, "--prompt", "what colour is it?").returncode == 0
    assert json.loads(plain.read_text()) != json.loads(asked.read_text())


def test_vllm_backend_is_refused_off_cuda(job, tmp_path):
    folder, _ = _folder(tmp_path, 1)
    done = _run(job["entry"], "--images", folder, "--output", tmp_path / "c.json", "--backend", "vllm")
    assert done.returncode != 0 and "only on CUDA hosts" in done.stderr


def test_joycaption_uses_its_system_prompt_documented_caption_prompt_and_one_bos(tmp_path, venvs):
    """JoyCaption's recipe on a tiny LLaVA whose chat template writes BOS itself, as Llama 3.1's does."""
    python = venvs.get(CURRENT_UI)
    model = write_tiny_vlm(tmp_path / "llava", kind="llava", python=python)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    manifest = tiny_manifest("tiny-joycaption", [{"name": "caption", "kind": "batch_caption", "adapter": "joycaption",
                                                  "options": {"max_new_tokens": 4}}],
                             architecture="LlavaForConditionalGeneration")
    entry = render_one(manifest, tmp_path / "launch", python=python, paths={"model": model}, entry="caption")
    image = str(make_images(tmp_path / "images", 1)[0])
    (result,) = probe_adapter(entry, python, [[{"role": "user", "content": "", "images": [image]}]])
    assert result["prompt"].startswith("<s><|system|>You are a helpful image captioner.<|end|><|user|><image>\n"
                                       "Write a descriptive caption for this image in a formal tone.<|end|>")
    assert result["input_ids"][0] == result["bos"] != result["input_ids"][1]  # the template's BOS, only once
    assert result["text"]
