"""A data root running a copy of the demo model (its API on a free port), weights from a local hub: what the
check-mode, lock and rebuild tests start from."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from modelrig.cli import main
from modelrig.hub.server import serve_in_thread
from modelrig.hub.tiny_repos import TOKEN_FILE
from modelrig.orchestrate.demo import pip_find_links
from tests.helpers.hub import demo_repos
from tests.helpers.launching import free_port
from tests.helpers.venvs import CACHE

REPO = Path(__file__).resolve().parent.parent.parent


def run(root: Path, *args: object) -> tuple[int, str, str]:
    """`modelrig --data-root ROOT ARGS...` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--data-root", str(root), *map(str, args)])
    return code, out.getvalue(), err.getvalue()


@dataclass
class DemoRoot:
    """A data root after `modelrig up` of `model`, the hub it fetched from, its host config and manifests folder."""

    root: Path
    hub: Path
    config: str
    manifests: Path
    model: str


@contextlib.contextmanager
def demo_root(factory: pytest.TempPathFactory, model: str, *,
              prepare_hub: Callable[[Path], None] | None = None) -> Iterator[DemoRoot]:
    """`up` of a copy of the demo manifest named `model` (its API entry only, on a free port) on a fresh data root,
    weights from a local hub (`prepare_hub` may add files to it first); `down` and the hub stopped afterwards."""
    manifests = factory.mktemp("manifests")
    demo = yaml.safe_load((REPO / "model_manifests" / "demo-tiny-ziya.yaml").read_text())
    demo["id"] = model
    demo["launch"] = [{**e, "port": free_port()} for e in demo["launch"] if e["name"] == "api"]
    (manifests / f"{model}.yaml").write_text(yaml.safe_dump(demo))
    root = factory.mktemp("data-root")
    hub = factory.mktemp("hub")
    demo_repos(factory, hub)
    if prepare_hub is not None:
        prepare_hub(hub)
    url, stop_hub = serve_in_thread(hub, token_file=hub / TOKEN_FILE)
    config = yaml.safe_dump({"hub": {"hf_endpoint": url, "token_file": str(hub / TOKEN_FILE)},
                             "pip": {"find_links": pip_find_links(), "use_torch_index": False}})
    (root / "config.yaml").write_text(config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
        mp.setenv("MODELRIG_MANIFESTS", str(manifests))
        mp.setenv("MODELRIG_NO_PROGRESS", "1")
        try:
            code, _, err = run(root, "up", model)
            assert code == 0, err
            yield DemoRoot(root=root, hub=hub, config=config, manifests=manifests, model=model)
        finally:
            run(root, "down", model)
            stop_hub()
