"""The rendered OpenAI-compatible server, run by its start script in a real model env, against the `openai` client."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import random
import socket
import subprocess
import time
from pathlib import Path

import openai
import pytest

from modelrig.hub import tiny
from tests.helpers.launching import (
    free_port,
    make_images,
    probe_adapter,
    render_one,
    running,
    tiny_manifest,
    write_tiny_vlm,
)
from tests.helpers.venvs import CURRENT_UI

pytestmark = pytest.mark.slow

API_KEY = "sk-test-0123456789"
TEXT_MODEL = "tiny-ziya"
#: The `model_aliases` of the text server; /v1/models lists them after the served name.
TEXT_ALIAS = "ziya-alias"


@pytest.fixture(scope="module")
def env_python(venvs) -> Path:
    return venvs.get(CURRENT_UI)


@pytest.fixture(scope="module")
def text_server(tmp_path_factory, env_python):
    """A tiny LLaMA behind the `ziya` adapter, with an API key and a small queue (8) so overload is reachable."""
    root = tmp_path_factory.mktemp("openai-text")
    model = tiny.write_llama_hf(root / "model", seed=1)  # seed 1 does not answer EOS at once
    manifest = tiny_manifest("tiny-ziya", [{"name": "api", "kind": "openai_api", "adapter": "ziya", "port": 8000,
                                            "options": {"queue_size": 8, "max_new_tokens": 16,
                                                        "temperature": 0.0, "model_aliases": [TEXT_ALIAS]}}])
    entry = render_one(manifest, root / "launch", python=env_python, paths={"model": model}, entry="api",
                       secrets={"MODELRIG_API_KEY": API_KEY})
    port = free_port()
    with running(["/bin/sh", str(entry / "start.sh")], cwd=entry, url=f"http://127.0.0.1:{port}/health",
                 env={"MODELRIG_PORT": str(port)}) as proc:
        yield {"port": port, "proc": proc, "entry": entry}


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory, env_python):
    """A tiny LLaVA behind the `llava` adapter, without an API key (loopback only); it also answers to the model
    name of the Mac write-up's request (a `model_aliases` entry)."""
    root = tmp_path_factory.mktemp("openai-vision")
    model = write_tiny_vlm(root / "model", kind="llava", python=env_python)
    manifest = tiny_manifest("tiny-llava", [{"name": "api", "kind": "openai_api", "adapter": "llava",
                                             "options": {"max_new_tokens": 8, "temperature": 0.0,
                                                         "model_aliases": ["Qwen-VL-Chat-7B"]}}],
                             architecture="LlavaForConditionalGeneration")
    entry = render_one(manifest, root / "launch", python=env_python, paths={"model": model}, entry="api")
    port = free_port()
    with running(["/bin/sh", str(entry / "start.sh")], cwd=entry, url=f"http://127.0.0.1:{port}/health",
                 env={"MODELRIG_PORT": str(port)}) as proc:
        yield {"port": port, "proc": proc, "root": root}


def client(port: int, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)


def raw(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {API_KEY}", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def test_models_endpoint_lists_the_served_model(text_server):
    models = client(text_server["port"]).models.list()
    assert [m.id for m in models.data] == [TEXT_MODEL, TEXT_ALIAS]


def test_plain_chat_answers_with_usage_and_respects_max_tokens(text_server):
    reply = client(text_server["port"]).chat.completions.create(
        model="tiny-ziya", messages=[{"role": "user", "content": "hello there"}], max_tokens=5, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens > 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_streaming_yields_the_same_text_as_a_plain_answer(text_server):
    api = client(text_server["port"])
    messages = [{"role": "user", "content": "tell me a story"}]
    plain = api.chat.completions.create(model="tiny-ziya", messages=messages, max_tokens=10, temperature=0)
    chunks = list(api.chat.completions.create(model="tiny-ziya", messages=messages, max_tokens=10, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 10


def test_stop_sequence_cuts_the_answer_before_it(text_server):
    api = client(text_server["port"])
    messages = [{"role": "user", "content": "count with me"}]
    full = api.chat.completions.create(model=TEXT_MODEL, messages=messages, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    stop = text.strip()[2:5]
    assert len(stop) == 3, text
    cut = api.chat.completions.create(model=TEXT_MODEL, messages=messages, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.find(stop)]
    streamed = api.chat.completions.create(model=TEXT_MODEL, messages=messages, max_tokens=16, temperature=0,
                                           stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[: text.find(stop)]


def test_multi_turn_history_changes_the_prompt(text_server):
    api = client(text_server["port"])
    one = api.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                      temperature=0)
    two = api.chat.completions.create(model=TEXT_MODEL, max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello friend"},
        {"role": "user", "content": "hi"}])
    assert two.usage.prompt_tokens > one.usage.prompt_tokens


def test_wrong_or_missing_api_key_is_rejected(text_server):
    with pytest.raises(openai.AuthenticationError):
        client(text_server["port"], key="sk-wrong").chat.completions.create(
            model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    status, _, body = raw(text_server["port"], "GET", "/v1/models", headers={"Authorization": ""})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, body = raw(text_server["port"], "GET", "/health", headers={"Authorization": ""})
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_bad_requests_get_openai_shaped_4xx_errors(text_server):
    port = text_server["port"]
    cases = [
        (b"{not json", 400),
        (json.dumps({"messages": []}).encode(), 422),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(), 422),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": 7}).encode(), 422),
        (json.dumps({"messages": [{"role": "assistant", "content": "x"}]}).encode(), 422),
        (json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}).encode(), 422),
    ]
    for body, expected in cases:
        status, _, data = raw(port, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        assert status == expected, (body, data)
        error = json.loads(data)["error"]
        assert error["message"] and error["type"]
    status, _, _ = raw(port, "POST", "/v1/nowhere", b"{}")
    assert status == 404
    # an oversized body is refused from its Content-Length, before it is read
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                     + b"\r\nContent-Length: " + str(64 << 20).encode() + b"\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head


SMALL = json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()


def _head(*lines: bytes) -> bytes:
    """A chat completion request's head (request line, Host, Authorization and `lines`), ending in a blank line."""
    return b"\r\n".join([b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1",
                         b"Authorization: Bearer " + API_KEY.encode(), *lines]) + b"\r\n\r\n"


def _exchange(port: int, data: bytes, *, timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes the connection; (status, headers, body) of the first answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def _openai_error(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize("lines, status", [
    ([b"Content-Length: -1"], 400),
    ([b"Content-Length: -1", b"Expect: 100-continue"], 400),
    ([b"Content-Length: 1e3"], 400),
    ([b"Content-Length: 5", b"Content-Length: 7"], 400),
    ([], 411),
    ([b"Transfer-Encoding: chunked"], 411),
    ([b"Content-Length: " + str(64 << 20).encode(), b"Expect: 100-continue"], 413),
], ids=["negative", "negative-expect", "not-a-number", "two-lengths", "missing", "chunked", "too-large-expect"])
def test_a_bad_content_length_is_refused_before_any_body_is_read(text_server, lines, status):
    """The answer comes from the head alone (a body the server waited for would never come), never `100 Continue`
    first, and the connection closes since whatever follows cannot be framed."""
    got, headers, body = _exchange(text_server["port"], _head(*lines))
    assert got == status, body
    assert headers["Connection"] == "close"
    assert headers["Content-Length"] == str(len(body))
    _openai_error(body)


def test_a_negative_content_length_does_not_make_the_server_read_on(text_server):
    """Sending on after `Content-Length: -1` soon fails: the server answered and closed instead of reading to EOF."""
    chunk, sent = b"x" * (1 << 20), 0
    with socket.create_connection(("127.0.0.1", text_server["port"]), timeout=60) as sock:
        sock.sendall(_head(b"Content-Length: -1"))
        try:
            while sent < 128 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
    assert sent < 64 << 20
    assert text_server["proc"].poll() is None


def test_expect_100_continue_is_answered_once_the_body_is_wanted(text_server):
    with socket.create_connection(("127.0.0.1", text_server["port"]), timeout=60) as sock:
        sock.sendall(_head(b"Expect: 100-continue", b"Connection: close", f"Content-Length: {len(SMALL)}".encode()))
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(SMALL)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body, param", [
    (json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                 "stream_options": "x"}).encode(), "stream_options"),
    (json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                 "stream_options": {"include_usage": "yes"}}).encode(), "stream_options"),
    (b'{"model": "tiny-ziya", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    (json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": "\ud800"}]}).encode(), "messages"),
    (json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": "hi"}],
                 "stop": ["\udfff"]}).encode(), "stop"),
    (b'{"model": "tiny-ziya", "messages": [{"role": "user", "content": "hi"}], "max_tokens": '
     + b"9" * 200_000 + b"}", None),
    (json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": {"nested": "object"}}]}]}).encode(), "messages"),
], ids=["stream-options-string", "include-usage-string", "nested-100000-deep", "lone-surrogate",
        "lone-surrogate-stop", "huge-integer", "text-part-object"])
def test_malformed_requests_get_a_400_in_openais_error_shape(text_server, body, param):
    status, headers, data = raw(text_server["port"], "POST", "/v1/chat/completions", body,
                                {"Content-Type": "application/json"})
    assert status == 400, data
    assert _openai_error(data)["param"] == param
    assert "Connection" not in headers  # the body was read whole: the connection could go on
    assert text_server["proc"].poll() is None


def _mutated(rnd: random.Random, value):
    """`value` with one nested member (or itself) replaced by an odd JSON value."""
    odd = [None, True, False, 0, -1, 1.5, 1e308, 10**30, "x", "", "\ud800", [], {}, [None], {"a": None}, [[[]]]]
    if isinstance(value, dict) and value and rnd.random() < 0.7:
        key = rnd.choice(list(value))
        return {**value, key: _mutated(rnd, value[key]) if rnd.random() < 0.6 else rnd.choice(odd)}
    if isinstance(value, list) and value and rnd.random() < 0.7:
        index, copy = rnd.randrange(len(value)), list(value)
        copy[index] = _mutated(rnd, value[index]) if rnd.random() < 0.6 else rnd.choice(odd)
        return copy
    return rnd.choice(odd)


def test_mutated_requests_all_get_an_answer_never_a_5xx_or_a_dropped_connection(text_server):
    rnd = random.Random(7)
    valid = {"model": TEXT_MODEL, "max_tokens": 3, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "n": 1,
             "stream": False, "stream_options": {"include_usage": True},
             "messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    statuses = set()
    for _ in range(150):
        body = _mutated(rnd, valid)
        status, _, data = raw(text_server["port"], "POST", "/v1/chat/completions", json.dumps(body).encode(),
                              {"Content-Type": "application/json"})
        statuses.add(status)
        assert status in (200, 400, 404, 422), (body, data)
        if status != 200:
            _openai_error(data)
        elif isinstance(body, dict) and body.get("stream") is True:
            assert data.rstrip().endswith(b"data: [DONE]")
        else:
            assert json.loads(data)["object"] == "chat.completion"
    assert {200, 400, 422} <= statuses  # the mutations reach past the first checks
    assert text_server["proc"].poll() is None


def test_http_level_garbage_gets_json_errors_too(text_server):
    status, headers, body = _exchange(text_server["port"], b"PUT /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 501 and headers["Connection"] == "close"
    assert "PUT" in _openai_error(body)["message"]


def test_unknown_model_is_a_404_model_not_found_and_aliases_are_served(text_server):
    api = client(text_server["port"])
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="gpt-4", messages=messages, max_tokens=2)
    assert caught.value.code == "model_not_found"
    assert "gpt-4" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4")
    assert api.models.retrieve(TEXT_ALIAS).id == TEXT_ALIAS
    by_name = api.chat.completions.create(model=TEXT_MODEL, messages=messages, max_tokens=4, temperature=0)
    by_alias = api.chat.completions.create(model=TEXT_ALIAS, messages=messages, max_tokens=4, temperature=0)
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    status, _, data = raw(text_server["port"], "POST", "/v1/chat/completions",
                          json.dumps({"model": 4, "messages": messages}).encode())
    assert status == 400 and _openai_error(data)["param"] == "model"


def test_one_keep_alive_connection_carries_answers_and_errors_in_turn(text_server):
    conn = http.client.HTTPConnection("127.0.0.1", text_server["port"], timeout=120)
    sockets = []
    for model, expected in ((TEXT_MODEL, 200), ("gpt-4", 404), (TEXT_MODEL, 200)):
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == expected, data
        assert response.getheader("Content-Length") == str(len(data))
        assert response.getheader("Connection") is None
        sockets.append(conn.sock)
    conn.close()
    assert sockets[0] is not None and sockets[0] is sockets[1] is sockets[2]


def test_fresh_connections_reuse_the_servers_connection_threads(text_server):
    """A connection's thread waits for the next connection instead of exiting: eight connections one after another
    start at most one or two threads (each thread is seen in /proc while its connection is open)."""
    tasks = Path(f"/proc/{text_server['proc'].pid}/task")
    before = {p.name for p in tasks.iterdir()}
    seen: set[str] = set()
    for _ in range(8):
        conn = http.client.HTTPConnection("127.0.0.1", text_server["port"], timeout=60)
        conn.request("GET", "/health")
        assert conn.getresponse().read()
        seen |= {p.name for p in tasks.iterdir()}
        conn.close()
        time.sleep(0.05)  # let the thread see the connection end and wait for the next one
    assert len(seen - before) <= 2, sorted(seen - before)


def _health(port: int) -> dict:
    return json.loads(raw(port, "GET", "/health")[2])


def _wait_for(port: int, test, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = _health(port)
        if test(health):
            return health
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s ({health})")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_a_client_that_goes_away_cancels_its_generation(text_server, stream):
    """A long answer (thousands of tokens; "x" leads the tiny model far from EOS) whose client closes its socket
    stops generating: the worker is free again and the server counts the job as cancelled."""
    port = text_server["port"]
    before = _health(port)
    assert before["generating"] == 0
    body = json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 8000,
                       "temperature": 0, "stream": stream}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(_head(f"Content-Length: {len(body)}".encode()) + body)
        _wait_for(port, lambda h: h["generating"] == 1, "the long answer started")
        if stream:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    after = _wait_for(port, lambda h: h["generating"] == 0, "generation stopped after the client left")
    assert after["cancelled"] == before["cancelled"] + 1
    reply = client(port).chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2)
    assert reply.usage.completion_tokens == 2


def test_64_concurrent_requests_each_complete_or_get_503_with_retry_after(text_server):
    port = text_server["port"]
    body = json.dumps({"model": TEXT_MODEL, "messages": [{"role": "user", "content": "go"}],
                       "max_tokens": 8}).encode()

    def one(index: int):
        stream = index % 2 == 1
        payload = body if not stream else body[:-1] + b', "stream": true}'
        return (*raw(port, "POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"}), stream)

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(one, range(64), timeout=300))
    answered = busy = 0
    for status, headers, data, stream in results:
        if status == 503:
            busy += 1
            assert int(headers["Retry-After"]) >= 1
            assert json.loads(data)["error"]["code"] == "queue_full"
            continue
        assert status == 200, data
        answered += 1
        if stream:
            assert data.rstrip().endswith(b"data: [DONE]")
        else:
            assert json.loads(data)["choices"][0]["finish_reason"] in ("stop", "length")
    assert answered + busy == 64
    assert answered >= 9  # the worker's job plus a full queue of 8 were all served
    assert busy >= 1
    assert text_server["proc"].poll() is None
    assert client(port).models.list().data[0].id == "tiny-ziya"


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_image_content_in_openai_and_seed_forms(vision_server):
    image = make_images(vision_server["root"] / "images", 1)[0]
    api = client(vision_server["port"], key="unused")
    forms = [
        {"type": "image_url", "image_url": {"url": _data_url(image)}},
        {"type": "image_url", "image_url": {"url": f"file://{image}"}},
        {"type": "image", "image": str(image)},
    ]
    answers = []
    for part in forms:
        reply = api.chat.completions.create(model="tiny-llava", max_tokens=6, temperature=0, messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}])
        answers.append(reply.choices[0].message.content)
        assert reply.usage.completion_tokens >= 1
        assert reply.usage.prompt_tokens > 4  # image tokens count as prompt
    assert answers[0] == answers[1] == answers[2]  # the same image, however it was sent


def test_the_seed_documents_request_shape_is_answered(vision_server):
    """The Mac write-up's request: multi-turn, image parts `{"type": "image", ...}`, `functions: []`, `stop: []`."""
    image = make_images(vision_server["root"] / "seed-images", 1)[0]
    body = {"model": "Qwen-VL-Chat-7B", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "这是哪里？"}, {"type": "image", "image": str(image)}]},
        {"role": "assistant", "content": [{"type": "text", "text": "这是在海滩上"}]},
        {"role": "user", "content": [{"type": "text", "text": "是什么品种的狗？"}]}],
        "functions": [], "stop": [], "top_p": 0.9, "temperature": 0.7, "stream": False, "max_tokens": 4}
    conn = http.client.HTTPConnection("127.0.0.1", vision_server["port"], timeout=120)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    reply = json.loads(response.read())
    assert response.status == 200, reply
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] >= 1


def test_unreadable_image_is_a_422_not_a_crash(vision_server):
    api = client(vision_server["port"], key="unused")
    with pytest.raises(openai.UnprocessableEntityError):
        api.chat.completions.create(model="tiny-llava", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image", "image": "/nonexistent/picture.png"}]}])
    assert vision_server["proc"].poll() is None


def test_server_refuses_to_listen_beyond_loopback_without_a_key(tmp_path, env_python):
    manifest = tiny_manifest("tiny-open", [{"name": "api", "kind": "openai_api", "adapter": "ziya"}])
    entry = render_one(manifest, tmp_path / "launch", python=env_python, paths={"model": tmp_path / "none"},
                       entry="api")
    done = subprocess.run(["/bin/sh", str(entry / "start.sh")], capture_output=True, text=True, timeout=120,
                          env={"MODELRIG_BIND": "0.0.0.0", "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0 without" in done.stderr  # start.sh or the server itself refuses


@pytest.mark.parametrize("host", ["127.evil.example", "0.0.0.0", "10.1.2.3"])
def test_the_app_itself_parses_the_address_before_listening_without_a_key(tmp_path, env_python, host):
    manifest = tiny_manifest("tiny-open", [{"name": "api", "kind": "openai_api", "adapter": "ziya"}])
    entry = render_one(manifest, tmp_path / "launch", python=env_python, paths={"model": tmp_path / "none"},
                       entry="api")
    done = subprocess.run([str(env_python), str(entry / "app.py"), "--host", host, "--port", "1"],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert f"refusing to listen on {host} without an API key" in done.stderr


def test_chat_template_adapter_renders_the_tokenizers_template_once(tmp_path, env_python):
    template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant] {% endif %}")
    model = tiny.write_llama_hf(tmp_path / "model", seed=1, chat_template=template)
    manifest = tiny_manifest("tiny-templated", [{"name": "api", "kind": "openai_api", "adapter": "chat_template",
                                                 "options": {"max_new_tokens": 4}}])
    entry = render_one(manifest, tmp_path / "launch", python=env_python, paths={"model": model}, entry="api")
    (result,) = probe_adapter(entry, env_python, [[{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "hello"},
                                                   {"role": "user", "content": "again"}]])
    assert result["prompt"] == "<s>[system] be brief\n[user] hi\n[assistant] hello\n[user] again\n[assistant] "
    assert result["input_ids"][0] == result["bos"] != result["input_ids"][1]
    assert result["text"] and result["usage"]["completion_tokens"] == 4
