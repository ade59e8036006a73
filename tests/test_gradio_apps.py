"""Rendered Gradio demos in an old (3.50: tuple Chatbot, `.style()`, transformers 4.30), a 5.x (Chatbot
type="messages", the Qwen2-VL/JoyCaption pins) and a current (6.x) env: the real `gradio_client` of each env chats
with them, and headless Chromium renders the page and chats through it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from modelrig.hub import tiny
from tests.helpers.launching import (
    free_port,
    make_images,
    render_one,
    running,
    tiny_manifest,
    write_tiny_qwen2_vl,
    write_tiny_vlm,
)
from tests.helpers.venvs import CURRENT_UI, GRADIO5_VLM, OLD_GRADIO

pytestmark = pytest.mark.slow

HELPERS = Path(__file__).parent / "helpers"
ENVS = {"gradio3": OLD_GRADIO, "gradio6": CURRENT_UI}


@pytest.fixture(scope="module")
def models(tmp_path_factory, venvs):
    root = tmp_path_factory.mktemp("gradio-models")
    return {"llama": tiny.write_llama_hf(root / "llama", seed=1),
            "blip2": write_tiny_vlm(root / "blip2", kind="blip2", python=venvs.get(CURRENT_UI)),
            "images": make_images(root / "images", 2)}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, venvs, models):
    """Start (once per module) the text or vision demo in the old or current env: `servers(env, kind)`."""
    started: dict[tuple[str, str], dict] = {}
    stack = []

    def get(env: str, kind: str) -> dict:
        if (env, kind) in started:
            return started[(env, kind)]
        python = venvs.get(ENVS[env])
        root = tmp_path_factory.mktemp(f"{env}-{kind}")
        if kind == "text":
            manifest = tiny_manifest("tiny-ziya", [{"name": "chat", "kind": "gradio_chat", "adapter": "ziya",
                                                    "options": {"temperature": 0.0, "max_new_tokens": 8}}])
            paths = {"model": models["llama"]}
        else:
            manifest = tiny_manifest("tiny-blip2", [{"name": "chat", "kind": "gradio_vision_chat", "adapter": "blip2",
                                                     "options": {"temperature": 0.0, "max_new_tokens": 8}}],
                                     architecture="Blip2ForConditionalGeneration")
            paths = {"model": models["blip2"]}
        entry = render_one(manifest, root, python=python, paths=paths, entry="chat")
        port = free_port()
        context = running(["/bin/sh", str(entry / "start.sh")], cwd=entry, url=f"http://127.0.0.1:{port}/",
                          env={"MODELRIG_PORT": str(port)})
        context.__enter__()
        stack.append(context)
        started[(env, kind)] = {"url": f"http://127.0.0.1:{port}/", "python": python, "entry": entry}
        return started[(env, kind)]

    yield get
    for context in reversed(stack):
        context.__exit__(None, None, None)


def ask(server: dict, calls: list[list], *, image_index: int = -1, auth: str | None = None) -> dict:
    cmd = [str(server["python"]), str(HELPERS / "gradio_ask.py"), server["url"], "/chat", json.dumps(calls),
           str(image_index)] + ([auth] if auth else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", ["gradio3", "gradio6"])
def test_text_chat_answers_gradio_client_and_keeps_history(servers, env):
    server = servers(env, "text")
    result = ask(server, [["hello", 0.0, 0.9, 8], ["and then?", 0.0, 0.9, 8]])
    assert result["gradio_client"].startswith("0." if env == "gradio3" else "2.")
    first, second = result["chats"]
    assert len(first) == 1 and first[0][0] == "hello" and first[0][1]
    assert [q for q, _ in second] == ["hello", "and then?"]
    assert second[0] == first[0]  # the first turn is kept and fed back as history
    # The one API endpoint is the chat: Enter and Clear are UI-only (no "/False" endpoint on Gradio 6).
    assert result["endpoints"] == ["/chat"]


@pytest.mark.parametrize("env", ["gradio3", "gradio6"])
def test_vision_chat_captions_answers_and_restarts_when_the_image_changes(servers, models, env):
    server = servers(env, "vision")
    one, two = (str(p) for p in models["images"])
    result = ask(server, [["", one, 0.0, 0.5], ["what is it?", one, 0.0, 0.5], ["what is it?", two, 0.0, 0.5]],
                 image_index=1)
    caption, follow_up, new_image = result["chats"]
    assert caption[0][1]  # BLIP-2 captions an image sent without text
    assert [q for q, _ in follow_up] == ["", "what is it?"]  # same image: the conversation goes on
    assert [q for q, _ in new_image] == ["what is it?"]  # another image: it starts over


def _check_png(path: Path) -> None:
    from PIL import Image

    assert path.stat().st_size > 5000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 800
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 1


@pytest.mark.parametrize("env", ["gradio3", "gradio6"])
def test_page_renders_and_chats_in_headless_chromium(servers, tmp_path, env):
    server = servers(env, "text")
    expected = ask(server, [["hello from the page", 0.0, 0.9, 8]])["chats"][0][0][1]
    shot = tmp_path / f"{env}.png"
    done = subprocess.run([str(server["python"]), str(HELPERS / "cdp_chat.py"), server["url"],
                           "hello from the page", "Send", str(shot)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    page = json.loads(done.stdout.strip().splitlines()[-1])
    assert page["user"] == ["hello from the page"]
    assert len(page["bot"]) == 1 and page["bot"][0] == expected.strip()
    assert page["title"] == "tiny tiny-ziya (chat)"
    _check_png(shot)


def test_vision_page_uploads_an_image_and_answers_in_headless_chromium(servers, models, tmp_path):
    server = servers("gradio3", "vision")
    shot = tmp_path / "vision.png"
    done = subprocess.run([str(server["python"]), str(HELPERS / "cdp_chat.py"), server["url"], "what is it?",
                           "Generate", str(shot), str(models["images"][0])], capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    page = json.loads(done.stdout.strip().splitlines()[-1])
    assert page["user"] == ["what is it?"] and page["bot"] and "Image empty" not in page["bot"][0]
    _check_png(shot)


def test_ui_password_is_enforced(tmp_path, venvs, models):
    python = venvs.get(CURRENT_UI)
    manifest = tiny_manifest("tiny-auth", [{"name": "chat", "kind": "gradio_chat", "adapter": "ziya",
                                            "options": {"temperature": 0.0, "max_new_tokens": 4}}])
    entry = render_one(manifest, tmp_path, python=python, paths={"model": models["llama"]}, entry="chat",
                       secrets={"MODELRIG_UI_AUTH": "alice:s3cret"})
    port = free_port()
    with running(["/bin/sh", str(entry / "start.sh")], cwd=entry, url=f"http://127.0.0.1:{port}/",
                 env={"MODELRIG_PORT": str(port)}):
        server = {"url": f"http://127.0.0.1:{port}/", "python": python}
        assert ask(server, [["hi", 0.0, 0.9, 4]], auth="alice:s3cret")["chats"][0][0][0] == "hi"
        cmd = [str(python), str(HELPERS / "gradio_ask.py"), server["url"], "/chat", '[["hi", 0.0, 0.9, 4]]']
        assert subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode != 0


def test_gradio_refuses_a_non_loopback_bind_without_a_password(tmp_path, venvs):
    manifest = tiny_manifest("tiny-open", [{"name": "chat", "kind": "gradio_chat", "adapter": "ziya"}])
    entry = render_one(manifest, tmp_path, python=venvs.get(CURRENT_UI), paths={"model": tmp_path / "none"},
                       entry="chat")
    done = subprocess.run(["/bin/sh", str(entry / "start.sh")], capture_output=True, text=True, timeout=120,
                          env={"MODELRIG_BIND": "0.0.0.0", "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "refusing to listen on 0.0.0.0 without MODELRIG_UI_AUTH" in done.stderr
    # the app refuses by itself too, when started without start.sh on an address that only looks like loopback
    done = subprocess.run([str(venvs.get(CURRENT_UI)), str(entry / "app.py"), "--host", "127.evil.example"],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "refusing to listen on 127.evil.example without authentication" in done.stderr


def test_gradio5_qwen2_vl_chat_answers_about_images_and_through_the_page(tmp_path, venvs, models):
    """Gradio 5 (messages Chatbot) with the qwen2_vl adapter on a tiny Qwen2-VL in the transformers 4.47 env."""
    python = venvs.get(GRADIO5_VLM)
    model = write_tiny_qwen2_vl(tmp_path / "qwen2-vl", python=python)
    manifest = tiny_manifest("tiny-qwen2-vl", [{"name": "chat", "kind": "gradio_vision_chat", "adapter": "qwen2_vl",
                                                "options": {"temperature": 0.0, "max_new_tokens": 6}}],
                             architecture="Qwen2VLForConditionalGeneration")
    entry = render_one(manifest, tmp_path / "launch", python=python, paths={"model": model}, entry="chat")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running(["/bin/sh", str(entry / "start.sh")], cwd=entry, url=url, env={"MODELRIG_PORT": str(port)}):
        server = {"url": url, "python": python}
        one, two = (str(p) for p in models["images"])
        result = ask(server, [["what is it?", one, 0.0, 0.5], ["and now?", one, 0.0, 0.5],
                              ["what is it?", two, 0.0, 0.5]], image_index=1)
        assert result["gradio_client"].startswith("1.")
        first, follow_up, other = result["chats"]
        assert [q for q, _ in follow_up] == ["what is it?", "and now?"] and follow_up[0] == first[0]
        assert [q for q, _ in other] == ["what is it?"] and other[0][1] != first[0][1]  # the image reaches the model
        shot = tmp_path / "gradio5.png"
        done = subprocess.run([str(python), str(HELPERS / "cdp_chat.py"), url, "what is it?", "Generate", str(shot),
                               one], capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        page = json.loads(done.stdout.strip().splitlines()[-1])
        assert page["user"] == ["what is it?"] and page["bot"] == [first[0][1].strip()]
        _check_png(shot)
