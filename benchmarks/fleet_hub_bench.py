"""A fleet through the pull-through hub vs straight to the upstream: N = 1, 2, 4 hosts (each a real
huggingface_hub client in its own process with its own cache, as a host's fetch is) download one model from a
throttled upstream (`hub serve --throttle`, per transfer). Upstream bytes come from the upstream's access log (each
file GET counts its size less the Range start). Writes its section of BENCHMARKS.md.

Usage: `.venv/bin/python benchmarks/fleet_hub_bench.py [--no-write] [--throttle BYTES_PER_S]`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import publish  # noqa: E402
from tests.helpers.hub import client_env, logged_requests, random_bytes, start_hub, write_repo  # noqa: E402

SECTION = "## Fleet hub: one download per file (benchmarks/fleet_hub_bench.py)"
#: The model: three weight shards and a config, 24 MB in all.
FILES = {"config.json": b'{"model_type": "llama"}\n', **{f"model-0000{i}-of-00003.safetensors":
                                                           random_bytes(8_000_000, i) for i in (1, 2, 3)}}
CLIENT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download("org/fleet", cache_dir=sys.argv[1], endpoint=sys.argv[2])
"""


def upstream_bytes(log: Path, sizes: dict[str, int]) -> int:
    total = 0
    for method, path, status, rng in logged_requests(log):
        name = path.rsplit("/", 1)[-1]
        if method == "GET" and status in (200, 206) and name in sizes:
            start = int(rng.removeprefix("bytes=").split("-")[0]) if rng.startswith("bytes=") else 0
            total += sizes[name] - start
    return total


def fleet(tmp: Path, endpoint: str, n: int) -> float:
    """Seconds until `n` clients have each downloaded the model from `endpoint`."""
    script = tmp / "client.py"
    script.write_text(CLIENT)
    began = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp / f"cache-{n}-{i}-{time.time_ns()}"), endpoint],
                              env=client_env(tmp / f"home-{i}"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(n)]
    for proc in procs:
        _, err = proc.communicate(timeout=1200)
        if proc.returncode != 0:
            raise SystemExit(f"a client failed: {err.decode()[-2000:]}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--throttle", type=int, default=4_000_000)
    args = parser.parse_args()
    size = sum(len(d) for d in FILES.values())
    sizes = {name: len(data) for name, data in FILES.items()}
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as name:
        tmp = Path(name)
        write_repo(tmp / "upstream", "org/fleet", {"main": FILES})
        log = tmp / "upstream.log"
        upstream, up_url = start_hub(tmp / "upstream", "--throttle", str(args.throttle), access_log=log)
        try:
            results = {}
            for mode in ("direct", "hub"):
                for n in (1, 2, 4):
                    mark = len(log.read_text().splitlines())
                    hub = None
                    endpoint = up_url
                    if mode == "hub":
                        hub, endpoint = start_hub(tmp / f"pull-{n}", "--upstream", up_url)
                    try:
                        seconds = fleet(tmp, endpoint, n)
                    finally:
                        if hub is not None:
                            hub.terminate()
                            hub.wait()
                    part = tmp / "part.log"
                    part.write_text("\n".join(log.read_text().splitlines()[mark:]) + "\n")
                    results[mode, n] = (seconds, upstream_bytes(part, sizes))
        finally:
            upstream.terminate()
            upstream.wait()
    for n in (1, 2, 4):
        d_s, d_b = results["direct", n]
        h_s, h_b = results["hub", n]
        rows.append(f"| {n} | {d_b / size:.2f}x | {h_b / size:.2f}x | {d_s:.1f} | {h_s:.1f} | "
                    f"{h_s / results['hub', 1][0]:.2f}x |")
    table = "\n".join([
        SECTION, "",
        f"One model of {size / 1e6:.0f} MB (three 8 MB shards and a config) from an upstream `modelrig hub serve "
        f"--throttle {args.throttle}` (bytes per second per transfer); each host is a `huggingface_hub` client in its "
        "own process with its own cache, all started at once, on this 2-core machine (shared with other "
        f"developers' work: 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after). "
        "Upstream bytes are counted from the upstream's access log (each file GET, less its Range start) over the "
        "model's size; seconds are wall time until every host has the whole model.", "",
        "| hosts | upstream bytes, direct | upstream bytes, through the fleet hub | seconds, direct | seconds, through "
        "the hub | through the hub, N hosts / 1 host |",
        "|---|---|---|---|---|---|", *rows, "",
        "The upstream's throttle is per transfer, so hosts going direct each get the full rate and take about as "
        "long as one host while costing N times the upstream bytes; a shared link (a rented fleet's one uplink, a "
        "mirror's per-IP limit) would also make them N times slower. Through the fleet hub the upstream sends the "
        "model once whatever N, and every host is served from that one transfer as it arrives.",
    ])
    publish(SECTION, table, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
