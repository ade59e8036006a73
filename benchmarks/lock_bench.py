"""Reproducible rebuilds of the demo model from a local hub: first `modelrig up` vs `modelrig rebuild LOCK` after
deleting env, weights, converted and rendered files (same warm uv cache), fast vs full `modelrig verify`, and the
size of `modelrig bundle` vs the data it holds. Writes its section of BENCHMARKS.md.

Usage: `.venv/bin/python benchmarks/lock_bench.py [--no-write]`
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import publish  # noqa: E402
from modelrig.cli import main as modelrig  # noqa: E402
from modelrig.hub.server import serve_in_thread  # noqa: E402
from modelrig.hub.tiny_repos import TOKEN_FILE, make_tiny_hub  # noqa: E402
from modelrig.orchestrate.demo import pip_find_links  # noqa: E402

SECTION = "## Locks, verify, rebuild and bundle (benchmarks/lock_bench.py)"
MODEL = "demo-tiny-ziya"
WARM_UV = os.environ.get("UV_CACHE_DIR") or str(Path(os.environ.get(
    "MODELRIG_TEST_CACHE", Path.home() / ".cache" / "modelrig-tests")) / "uv")


def timed(root: Path, *args: object) -> float:
    """Seconds one `modelrig --data-root ROOT ARGS` takes; it must succeed."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = modelrig(["--data-root", str(root), *map(str, args)])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"modelrig {' '.join(map(str, args))} failed ({code}): {err.getvalue()}")
    return seconds


def size_of(folder: Path) -> int:
    """Bytes of every file under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    os.environ["UV_CACHE_DIR"] = WARM_UV
    os.environ["MODELRIG_NO_PROGRESS"] = "1"
    with tempfile.TemporaryDirectory(prefix="modelrig-lockbench-") as tmp:
        root, hub = Path(tmp) / "root", Path(tmp) / "hub"
        root.mkdir()
        make_tiny_hub(hub, only=["modelrig-tiny/llama-meta", "modelrig-tiny/ziya-delta"])
        url, stop_hub = serve_in_thread(hub, token_file=hub / TOKEN_FILE)
        (root / "config.yaml").write_text(yaml.safe_dump({
            "hub": {"hf_endpoint": url, "token_file": str(hub / TOKEN_FILE)},
            "pip": {"find_links": pip_find_links(), "use_torch_index": False}}))
        try:
            first = timed(root, "up", MODEL, "--entry", "api")
            lock = root / "locks" / f"{MODEL}.lock.yaml"
            locking = timed(root, "lock", MODEL)
            fast = statistics.median(timed(root, "verify", MODEL) for _ in range(5))
            full = statistics.median(timed(root, "verify", MODEL, "--full") for _ in range(3))
            held = {top: size_of(root / top) for top in ("envs", "store", "models")}
            timed(root, "down", MODEL)
            for top in ("envs", "store", "models", "launch"):
                shutil.rmtree(root / top)
            rebuilt = timed(root, "rebuild", lock)
            again = timed(root, "rebuild", lock)
            bundle = Path(tmp) / "bundle.tar"
            bundling = timed(root, "bundle", lock, "--out", bundle)
            timed(root, "down", MODEL)
        finally:
            stop_hub()
        bundle_bytes = bundle.stat().st_size
    mb = 1 << 20
    table = "\n".join([
        SECTION, "",
        f"The demo model ({MODEL}, API entry) from a local hub on this host, with a warm uv cache; seconds of "
        "wall time.", "",
        "| what | seconds |", "|---|---|",
        f"| first `modelrig up` (env, fetch, convert, render, start) | {first:.1f} |",
        f"| `modelrig lock` (freeze, hash every wheel, read the stamps) | {locking:.1f} |",
        f"| `modelrig rebuild LOCK` after deleting env, weights, converted and launch files | {rebuilt:.1f} |",
        f"| second `modelrig rebuild LOCK` (nothing to do) | {again:.1f} |",
        f"| `modelrig verify` fast (freeze, sizes and mtimes, launch files, services), median of 5 | {fast:.2f} |",
        f"| `modelrig verify --full` (re-hash every file, ask the hub), median of 3 | {full:.2f} |",
        f"| `modelrig bundle` | {bundling:.1f} |", "",
        "| bundle | MiB |", "|---|---|",
        f"| the .tar (wheels, modelrig wheel, weights, manifest) | {bundle_bytes / mb:.1f} |",
        f"| installed env it rebuilds | {held['envs'] / mb:.1f} |",
        f"| fetched weights it holds | {held['store'] / mb:.1f} |",
        f"| converted outputs (re-made, not bundled) | {held['models'] / mb:.1f} |", "",
        "The bundle is dominated by the wheels (torch alone is most of it); the installed env is larger than its "
        "wheels because they are unpacked.", ""])
    publish(SECTION, table, write=not args.no_write)


if __name__ == "__main__":
    main()
