"""Host facts: parser speed on the real fixtures, and the wall time of `modelrig facts --json` (it runs on every
Ansible fact gathering) next to the alternative of asking torch."""

from __future__ import annotations

import json
import sys
import time
import timeit
from pathlib import Path

from modelrig.facts import macos, nvidia
from modelrig.facts.collect import collect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import median_wall, publish  # noqa: E402

HOSTS = REPO.parent / "shared" / "fixtures" / "hosts"
BIN = Path(sys.executable).parent
SECTION = "## Host facts (benchmarks/bench_facts.py)"


def _parse_rows() -> list[tuple[str, int, float]]:
    groups = {
        "nvidia-smi table": (sorted(HOSTS.glob("nvidia-smi_*")), nvidia.parse_table),
        "--query-gpu CSV": (sorted(HOSTS.glob("query-gpu-csv_*.csv")), nvidia.parse_query_csv),
        "system_profiler": (sorted(HOSTS.glob("system_profiler_*")), macos.parse_system_profiler),
    }
    rows = []
    for label, (files, parse) in groups.items():
        texts = [f.read_text() for f in files]
        n = 200
        seconds = timeit.timeit(lambda texts=texts, parse=parse: [parse(t) for t in texts], number=n)
        rows.append((label, len(texts), seconds / n / len(texts) * 1e6))
    return rows


def main() -> None:
    parse_rows = _parse_rows()
    start = time.perf_counter()
    for _ in range(5):
        collect(Path("/tmp/modelrig-bench"))
    in_process = (time.perf_counter() - start) / 5
    cli = median_wall([str(BIN / "modelrig"), "--data-root", "/tmp/modelrig-bench", "facts", "--json"])
    bare = median_wall([sys.executable, "-c", "pass"])
    torch_probe = median_wall([sys.executable, "-c", "import torch; torch.cuda.is_available()"], runs=3)
    json.dumps(collect(Path("/tmp/modelrig-bench")).to_dict())

    lines = [SECTION, "",
             "Parsing the real outputs in `shared/fixtures/hosts/` (mean per file, 200 rounds):", "",
             "| output | files | µs per file |", "|---|---:|---:|"]
    lines += [f"| {label} | {count} | {us:.0f} |" for label, count, us in parse_rows]
    lines += ["", "Describing this host (no GPU, so nvidia-smi is absent; median of 5 runs, torch of 3):", "",
              "| how | seconds |", "|---|---:|",
              f"| `collect()` in-process | {in_process:.3f} |",
              f"| `modelrig facts --json` (new process, what the Ansible fact runs) | {cli:.2f} |",
              f"| `python -c pass` (interpreter start, for scale) | {bare:.2f} |",
              f"| `python -c 'import torch; torch.cuda.is_available()'` (the alternative probe) | {torch_probe:.2f} |",
              ""]
    table = "\n".join(lines)
    publish(SECTION, table)


if __name__ == "__main__":
    main()
