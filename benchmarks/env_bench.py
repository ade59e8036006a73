"""Model env build time with uv vs pip for the same spec (cold and warm package cache), and the wall time of the
first and second `modelrig demo` on a fresh data root."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelrig.config import DataRoot, HostConfig, PipSettings
from modelrig.envs import build_env
from modelrig.orchestrate.demo import pip_find_links
from modelrig.plan import EnvPlan, TorchBuild

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import publish  # noqa: E402

BIN = Path(sys.executable).parent
SECTION = "## Model environments and the demo (benchmarks/env_bench.py)"
PACKAGES = ["transformers==4.37.0", "tokenizers", "sentencepiece", "accelerate", "protobuf", "numpy<2"]
SPEC = EnvPlan(python="3.11", packages=PACKAGES, tokenizers=None, env_vars={},
               torch=TorchBuild(version="2.13.0", variant="cpu", index_url=None, requirements=["torch==2.13.0"]))
#: The uv cache the demo runs use (warm after the test suite): $UV_CACHE_DIR, else the tests' shared cache.
WARM_UV = os.environ.get("UV_CACHE_DIR") or str(Path(os.environ.get(
    "MODELRIG_TEST_CACHE", Path.home() / ".cache" / "modelrig-tests")) / "uv")
CONFIG = HostConfig(pip=PipSettings(find_links=pip_find_links(), use_torch_index=False))


def _build(installer: str, cache: Path) -> float:
    """Seconds to build SPEC on a fresh data root with `installer`, its cache in `cache`."""
    os.environ["UV_CACHE_DIR"] = str(cache / "uv")
    os.environ["PIP_CACHE_DIR"] = str(cache / "pip")
    with tempfile.TemporaryDirectory(prefix="modelrig-envbench-") as root:
        start = time.perf_counter()
        result = build_env(SPEC, data=DataRoot(Path(root)), config=CONFIG, installer=installer)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        assert result.changed
    return seconds


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    rows = []
    for installer in ("uv", "pip"):
        with tempfile.TemporaryDirectory(prefix="modelrig-envbench-cache-") as cache:
            cold = _build(installer, Path(cache))
            warm = _build(installer, Path(cache))
        rows.append((installer, cold, warm))
        print(f"{installer}: cold {cold:.1f}s, warm {warm:.1f}s", flush=True)

    os.environ["UV_CACHE_DIR"] = WARM_UV
    os.environ.pop("PIP_CACHE_DIR", None)
    with tempfile.TemporaryDirectory(prefix="modelrig-demobench-") as root:
        base = [str(BIN / "modelrig"), "--data-root", root]
        first = _timed([*base, "demo"])
        second = _timed([*base, "demo"])
        subprocess.run([*base, "down", "demo-tiny-ziya"], check=True, stdout=subprocess.DEVNULL)
    print(f"demo: first {first:.1f}s, second {second:.1f}s")

    spec = "torch==2.13.0 (local CPU wheel) + " + " ".join(PACKAGES)
    lines = [SECTION, "",
             f"Building one model env for the same spec ({spec}) on a fresh data root.",
             "Cold: an empty package cache; warm: the cache left by the cold build. uv hardlinks installed files from",
             "its cache; pip unpacks every wheel again, and on this machine most wheels come from local `file://`",
             "indexes and find-links, which pip does not cache, so its warm run is no faster. Times include the",
             "smoke check (import torch and transformers, about 2 s) on a shared 2-core machine. uv does not read",
             "pip's configuration: its cold run downloads from PyPI (torch from the find-links folder).", "",
             "| installer | cold cache (s) | warm cache (s) |", "|---|---:|---:|"]
    lines += [f"| {name} | {cold:.1f} | {warm:.1f} |" for name, cold, warm in rows]
    lines += ["", "`modelrig demo` on a fresh data root (tiny repos, local hub, env from a warm uv cache, convert, "
              "render, start the chat UI and the API, one chat request), then again with nothing changed:", "",
              "| run | seconds |", "|---|---:|",
              f"| first `modelrig demo` | {first:.1f} |", f"| second `modelrig demo` (every stage unchanged) | "
              f"{second:.1f} |", ""]
    table = "\n".join(lines)
    publish(SECTION, table)


if __name__ == "__main__":
    main()
