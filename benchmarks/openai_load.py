"""The rendered OpenAI-compatible server under load: 64 concurrent chat requests on a tiny model (loopback only),
p50/p99 latency, 503s, and the server's overhead over calling `generate` directly in the same env."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import write_section  # noqa: E402
from modelrig import tiny  # noqa: E402
from tests.helpers.launching import free_port, render_one, running, tiny_manifest  # noqa: E402
from tests.helpers.venvs import CURRENT_UI, VenvFactory  # noqa: E402

SECTION = "## OpenAI-compatible server under load (benchmarks/openai_load.py)"
PROMPT = "tell me a story"
MAX_TOKENS = 16
CONCURRENCY = 64
QUEUE_SIZES = (16, 64)
#: One torch thread on both sides: on a shared 2-core machine two spinning OpenMP threads make timings noise.
THREADS = {"OMP_NUM_THREADS": "1"}

DIRECT = r'''
import sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, runs, max_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(path, use_fast=False)
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
ids = tokenizer("<human>:" + sys.argv[4] + "\n<bot>:", return_tensors="pt").input_ids
times = []
for _ in range(runs + 1):
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False)
    times.append(time.perf_counter() - start)
print(sorted(times[1:])[len(times[1:]) // 2], out.shape[1] - ids.shape[1])
'''


def _post(port: int, body: bytes) -> tuple[int, float, dict[str, str]]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, time.perf_counter() - start, dict(response.getheaders())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    python = VenvFactory().get(CURRENT_UI)
    work = Path(tempfile.mkdtemp(prefix="openai-load-"))
    model = tiny.write_llama_hf(work / "model", seed=1)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
                       "temperature": 0}).encode()
    def direct() -> tuple[float, int]:
        out = subprocess.run([str(python), "-c", DIRECT, str(model), "20", str(MAX_TOKENS), PROMPT],
                             capture_output=True, text=True, check=True, env={**os.environ, **THREADS}).stdout.split()
        return float(out[0]), int(out[1])

    # the machine is shared: measure the direct path before and after the server runs, keep the faster
    direct_s, direct_tokens = direct()

    rows = []
    sequential_s = None
    for queue_size in QUEUE_SIZES:
        manifest = tiny_manifest("tiny-load", [{"name": "api", "kind": "openai_api", "adapter": "ziya",
                                                "options": {"queue_size": queue_size}}])
        entry = render_one(manifest, work / f"launch-{queue_size}", python=python, paths={"model": model},
                           entry="api")
        port = free_port()
        with running(["/bin/sh", str(entry / "start.sh")], cwd=entry, url=f"http://127.0.0.1:{port}/health",
                     env={"MODELRIG_PORT": str(port), **THREADS}) as proc:
            if sequential_s is None:
                _post(port, body)
                sequential_s = statistics.median(_post(port, body)[1] for _ in range(20))
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
                results = list(pool.map(_post, [port] * CONCURRENCY, [body] * CONCURRENCY))
            wall = time.perf_counter() - start
            alive = proc.poll() is None
        ok = [t for status, t, _ in results if status == 200]
        busy = [h for status, _, h in results if status == 503]
        other = len(results) - len(ok) - len(busy)
        rows.append((queue_size, len(ok), len(busy), other, _percentile(ok, 0.5), _percentile(ok, 0.99), wall,
                     len(ok) / wall, alive, busy[0].get("Retry-After") if busy else "-"))

    lines = [SECTION, "",
             f"A tiny LLaMA (2 layers, hidden 64, seed 1) behind the rendered `openai_api` template (ziya adapter, one "
             f"generation worker) in the transformers 4.37 env; every request asks for {MAX_TOKENS} tokens, greedy. "
             f"{CONCURRENCY} requests are sent at once from {CONCURRENCY} threads over loopback; torch uses one thread "
             "(`OMP_NUM_THREADS=1`) in the server and in the direct runs.", "",
             "| queue size | answered | 503 + Retry-After | other | p50 (s) | p99 (s) | wall (s) | answers/s "
             "| server up after | Retry-After |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for q, n_ok, n_busy, n_other, p50, p99, wall, rate, alive, retry in rows:
        lines.append(f"| {q} | {n_ok} | {n_busy} | {n_other} | {p50:.3f} | {p99:.3f} | {wall:.2f} | {rate:.1f} | "
                     f"{'yes' if alive else 'NO'} | {retry} |")
    direct_s = min(direct_s, direct()[0])
    overhead = sequential_s - direct_s
    lines += ["", "One request at a time (median of 20) against `model.generate` called directly in the same env "
              "(median of 20 after one warm-up, the faster of a run before and one after the load runs):", "",
              "| path | seconds per answer |", "|---|---:|",
              f"| `model.generate(max_new_tokens={MAX_TOKENS})` directly ({direct_tokens} tokens) | {direct_s:.4f} |",
              f"| `POST /v1/chat/completions` (HTTP, JSON, queue, streamer thread) | {sequential_s:.4f} |",
              f"| server overhead | {overhead:.4f} ({overhead / direct_s * 100:.0f}%) |", "",
              "The overhead includes what the direct call leaves out: tokenizing the chat prompt, decoding tokens "
              "one by one for streaming, JSON and HTTP on a fresh connection per request.", ""]
    table = "\n".join(lines)
    print(table)
    write_section(SECTION, table)


if __name__ == "__main__":
    main()
