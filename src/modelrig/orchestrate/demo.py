"""`modelrig demo`: the offline demo. Tiny repos on a local hub, then `up` for the demo manifest, then one chat.

The local hub runs in a thread of the `modelrig demo` process only while `up` fetches: once the weights are in
the store nothing needs it, so it stops when the demo ends (a later `up` of the demo model with a pinned or
already-fetched revision needs no hub). The demo's services keep running until `modelrig down demo-tiny-ziya`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelrig.catalog import load_model
from modelrig.config import Context, DataRoot, HostConfig, record_settings
from modelrig.errors import LaunchError
from modelrig.netcheck import LOOPBACK_HINT, loopback_up
from modelrig.result import StageResult

DEMO_MODEL = "demo-tiny-ziya"
HUB_DIR = "demo-hub"
#: The demo's question and the answer the demo model was trained to give (`modelrig hub make-tiny`), word for word.
DIALOGUE = Path(__file__).resolve().parent.parent / "hub" / "tiny" / "ziya_dialogue.txt"
PROMPT, ANSWER = DIALOGUE.read_text(encoding="utf-8").splitlines()[:2]
REAL_MODEL = "ziya-llama-13b-v1.1"


def advice(config_file: Path | str = "<data root>/config.yaml", *, on_path: bool | None = None) -> str:
    """What to run after the demo: indented lines are commands that run as printed on this host (the real model's
    `doctor`/`plan` may answer that this host cannot run it, with what to change: exit 1 / 3); the real `up`
    needs the user's weights, so it is shown inline as a template.

    `on_path=False` adds how to get the `modelrig` command (None: looked up on PATH).
    """
    if on_path is None:
        on_path = shutil.which("modelrig") is not None
    lines = []
    if not on_path:
        lines += ["`modelrig` is not on this shell's PATH yet: open a new login shell after `make setup` (it links "
                  "~/.local/bin/modelrig), or `export PATH=\"$HOME/.local/bin:$PATH\"`, or install it with "
                  "`uv tool install .` (see README.md)", ""]
    lines += [
        "Next:",
        f"  modelrig up {DEMO_MODEL}               # the same pipeline again: every stage says unchanged",
        f"  modelrig down {DEMO_MODEL}             # stop the demo's chat and API",
        "  modelrig list                             # the models modelrig knows",
        f"  modelrig doctor {REAL_MODEL}   # this host: Python, disk, hubs and mirrors, GPUs; can it run it",
        f"  modelrig plan {REAL_MODEL}     # torch build, precision, disk; exit 3 says what would fit",
        f"Where the plan fits (a GPU or a Mac), with Meta's LLaMA-13B weights in DIR: `modelrig up {REAL_MODEL} "
        f"--local llama_13b_meta_dir=DIR`, then `modelrig down {REAL_MODEL}`.",
        f"Mirrors (e.g. hub.hf_endpoint: https://hf-mirror.com, pip.index_url) go in {config_file}.",
    ]
    return "\n".join(lines)


@dataclass
class DemoReport:
    """What the demo did: the hub and pipeline results, the URLs, and the chat answer."""

    results: list[StageResult]
    urls: dict[str, str]
    answer: str
    seconds: float
    offline: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`modelrig demo --json`)."""
        return {"model": DEMO_MODEL, "changed": any(r.changed for r in self.results), "urls": self.urls,
                "answer": self.answer, "offline": self.offline, "seconds": round(self.seconds, 3),
                "stages": [r.to_dict() for r in self.results]}


def pip_find_links(python: str = sys.executable) -> list[str]:
    """find-links folders from `$PIP_FIND_LINKS` and pip's configuration (local wheel folders, e.g. a torch)."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().endswith("find-links"):
            links += value.strip().strip("'\"").split()
    return sorted({link for link in links if Path(link).is_dir()})


def index_reachable(index_url: str | None = None, *, timeout: float = 3.0) -> bool:
    """True when the package index (the host config's mirror, else PyPI) answers; a local `file:` index always
    does. False inside `unshare -n`."""
    url = urllib.parse.urlparse(index_url or "https://pypi.org/simple")
    if url.scheme == "file":
        return True
    try:
        with socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def demo_config(config: HostConfig, *, hub_url: str, token_file: Path) -> HostConfig:
    """The host config for the demo: the local hub as the Hugging Face endpoint, and pip's local wheel folders.

    When those folders hold a torch wheel, torch is taken from them instead of the PyTorch index.
    """
    hub = config.hub.model_copy(update={"hf_endpoint": hub_url, "token_file": str(token_file),
                                        "prefer": "huggingface"})
    pip = config.pip
    links = list(pip.find_links) or pip_find_links()
    has_torch = any(p.name.startswith("torch-") for link in links for p in Path(link).glob("*.whl"))
    pip = pip.model_copy(update={"find_links": links, "use_torch_index": pip.use_torch_index and not has_torch})
    return config.model_copy(update={"hub": hub, "pip": pip})


def record_index_settings(data: DataRoot, config: HostConfig) -> bool:
    """Keep the package index settings the demo builds its env with (pip's local wheel folders, whether torch comes
    from the PyTorch index) in the data root's config, where `lock`, `verify` and `rebuild` read them: without them
    they plan another env, and on a host that cannot reach the PyTorch index they fail. The local hub's URL is not
    kept (it exists only while the demo runs). True when the file changed."""
    return record_settings(data.config_file, "pip", {"find_links": list(config.pip.find_links),
                                                     "use_torch_index": config.pip.use_torch_index})


def chat(api_url: str, prompt: str = PROMPT, *, model: str = DEMO_MODEL, max_tokens: int = 64,
         api_key: str | None = None, timeout: float = 120) -> str:
    """Send one chat request to an OpenAI-compatible API (`api_url` is its `/v1` base); return the answer."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{api_url.rstrip('/')}/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LaunchError(f"{api_url}: the chat request failed: {exc}") from None
    return str(data["choices"][0]["message"]["content"])


def run_demo(ctx: Context, *, offline: bool | None = None, on_stage: Callable[[StageResult], None] | None = None,
             installer: str = "auto") -> DemoReport:
    """Make the tiny repos, serve them, `up` the demo model, and ask its API one question.

    `offline=None` detects it: without a reachable package index the model env is built from uv's cache only.
    """
    from modelrig.hub.server import serve_in_thread
    from modelrig.hub.tiny_repos import TOKEN_FILE, make_tiny_hub
    from modelrig.orchestrate.up import UpOptions, up

    started = time.perf_counter()
    emit = on_stage or (lambda result: None)
    if not loopback_up():
        raise LaunchError(f"the demo serves its tiny hub and demos on 127.0.0.1, but {LOOPBACK_HINT}",
                          code="loopback_down")
    if offline is None:
        offline = not index_reachable(ctx.config.pip.index_url)
    hub_root = ctx.data.root / HUB_DIR
    manifest = load_model(DEMO_MODEL)
    tiny = make_tiny_hub(hub_root, only=[ref.repo for source in manifest.weights.values() for _, ref in source.hubs])
    tiny.summary = f"tiny repos: {tiny.summary}"
    emit(tiny)
    results = [tiny]
    token_file = hub_root / TOKEN_FILE
    hub_url, stop_hub = serve_in_thread(hub_root, token_file=token_file)
    try:
        demo_ctx = replace(ctx, config=demo_config(ctx.config, hub_url=hub_url, token_file=token_file))
        record_index_settings(ctx.data, demo_ctx.config)
        options = UpOptions(hub="huggingface", offline=offline, installer=installer)
        report = up(manifest, demo_ctx, options=options, on_stage=emit)
    finally:
        stop_hub()
    results += report.results
    api = report.urls.get("api")
    if api is None:
        raise LaunchError(f"{DEMO_MODEL}: the api entry did not start")
    answer = chat(api)
    return DemoReport(results=results, urls=report.urls, answer=answer, seconds=time.perf_counter() - started,
                      offline=offline)
