"""Planner: the cost of reading the torch table, of one plan, of validating every manifest, and of the CLI."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from modelrig.catalog import dependency_manifests, load_model, manifest_paths
from modelrig.facts import HostFacts
from modelrig.manifest import load_manifest
from modelrig.plan import TORCH_BUILDS_FILE, load_torch_table, make_plan

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.report import median_wall, publish  # noqa: E402

HOSTS = REPO / "tests" / "fixtures" / "hosts"
BIN = Path(sys.executable).parent
SECTION = "## Planner (benchmarks/bench_planner.py)"


def main() -> None:
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        load_torch_table.cache_clear()
        load_torch_table(TORCH_BUILDS_FILE)
    table_ms = (time.perf_counter() - start) / rounds * 1e3

    paths = manifest_paths()
    start = time.perf_counter()
    for _ in range(rounds):
        for path in paths:
            load_manifest(path)
    validate_ms = (time.perf_counter() - start) / rounds / len(paths) * 1e3

    hosts = [HostFacts.from_dict(json.loads(p.read_text())) for p in sorted(HOSTS.glob("*.json"))]
    models = [load_model(p.stem) for p in paths]
    deps = {m.id: dependency_manifests(m) for m in models}
    start = time.perf_counter()
    for _ in range(rounds):
        for m in models:
            for h in hosts:
                make_plan(m, h, manifests=deps[m.id])
    plan_us = (time.perf_counter() - start) / rounds / (len(models) * len(hosts)) * 1e6

    facts = str(HOSTS / "a100-80gb.json")
    modelrig = str(BIN / "modelrig")
    cli_plan = median_wall([modelrig, "plan", "ziya-blip2-14b-visual-v1", "--facts", facts, "--json"], check=False)
    cli_validate = median_wall([modelrig, "validate", "--json"], check=False)

    lines = [SECTION, "",
             f"In-process (mean of {rounds} rounds; {len(models)} manifests, {len(hosts)} recorded hosts):", "",
             "| what | time |", "|---|---:|",
             f"| parse `torch_builds.yaml` (cold) | {table_ms:.1f} ms |",
             f"| load and validate one manifest (file:line tracking included) | {validate_ms:.2f} ms |",
             f"| `make_plan` for one (model, host) | {plan_us:.0f} µs |",
             "", "New process (median of 5):", "",
             "| command | seconds |", "|---|---:|",
             f"| `modelrig plan ziya-blip2-14b-visual-v1 --facts a100-80gb.json --json` | {cli_plan:.2f} |",
             f"| `modelrig validate --json` (every shipped manifest) | {cli_validate:.2f} |",
             ""]
    table = "\n".join(lines)
    publish(SECTION, table)


if __name__ == "__main__":
    main()
