"""The rendered Streamlit chat (BlueLM's seed app shape): Streamlit's AppTest chats with it, and the live server
started by its start script answers its health check and page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request

import pytest

from modelrig.hub import tiny
from tests.helpers.launching import free_port, render_one, running, tiny_manifest
from tests.helpers.offline import offline
from tests.helpers.venvs import CURRENT_UI

pytestmark = pytest.mark.slow

APPTEST = r'''
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=180)
at.run()
assert not at.exception, at.exception
turns = []
for text in ("hello", "and then?"):
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
turns = [(m.name, " ".join(x.value for x in m.markdown)) for m in at.chat_message]
print(json.dumps({"title": at.title[0].value, "messages": turns,
                  "sliders": {s.label: s.value for s in at.sidebar.slider}}))
'''


@pytest.fixture(scope="module")
def entry(tmp_path_factory, venvs):
    root = tmp_path_factory.mktemp("streamlit")
    model = tiny.write_llama_hf(root / "model", seed=1)
    manifest = tiny_manifest("tiny-bluelm", [{
        "name": "chat", "kind": "streamlit_chat", "adapter": "bluelm", "port": 6006,
        "options": {"max_new_tokens": 6, "top_p": 0.8, "top_k": 50, "temperature": 0.0, "greeting": "Hi there"}}])
    return {"dir": render_one(manifest, root / "launch", python=venvs.get(CURRENT_UI), paths={"model": model},
                              entry="chat"),
            "python": venvs.get(CURRENT_UI)}


def test_apptest_chats_and_keeps_the_conversation_offline(entry):
    done = subprocess.run(offline([str(entry["python"]), "-c", APPTEST, str(entry["dir"] / "app.py")]),
                          capture_output=True, text=True, timeout=400, cwd=entry["dir"])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the title is Markdown-escaped so Streamlit shows it exactly as given: unescaped it is the manifest's title
    assert re.sub(r"\\(.)", r"\1", result["title"]) == "tiny tiny-bluelm (chat)"
    names = [name for name, _ in result["messages"]]
    assert names == ["assistant", "user", "assistant", "user", "assistant"]
    texts = [text for _, text in result["messages"]]
    assert texts[0] == "Hi there" and texts[1] == "hello" and texts[3] == "and then?"
    assert texts[2] and texts[4]  # the model answered both turns
    assert result["sliders"] == {"max_new_tokens": 6, "top_p": 0.8, "top_k": 50, "temperature": 0.0}


def test_live_server_answers_health_and_page(entry):
    port = free_port()
    with running(["/bin/sh", str(entry["dir"] / "start.sh")], cwd=entry["dir"],
                 url=f"http://127.0.0.1:{port}/_stcore/health", env={"MODELRIG_PORT": str(port)}):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as response:
            assert response.read().strip() == b"ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    info = json.loads((entry["dir"] / "entry.json").read_text())
    assert info["health"]["url"] == "http://127.0.0.1:6006/_stcore/health"


GATED = r'''
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=180)
at.run()
before = {"inputs": [t.label for t in at.text_input], "chat_inputs": len(at.chat_input)}
at.text_input[0].set_value("wrong").run()
wrong = len(at.chat_input)
at.text_input[0].set_value("s3cret").run()
print(json.dumps({"before": before, "wrong": wrong, "after": len(at.chat_input)}))
'''


def test_password_gates_the_page_when_configured(entry):
    done = subprocess.run(offline([str(entry["python"]), "-c", GATED, str(entry["dir"] / "app.py")]),
                          capture_output=True, text=True, timeout=400, cwd=entry["dir"],
                          env={**os.environ, "MODELRIG_UI_AUTH": "alice:s3cret"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"before": {"inputs": ["Password"], "chat_inputs": 0}, "wrong": 0, "after": 1}
