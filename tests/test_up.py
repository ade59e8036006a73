"""`modelrig up` runs plan, env, fetch, convert, render and launch in order with one line each; a re-run with
nothing changed does nothing and says so within seconds; `modelrig down` stops what `up` started."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

from modelrig.cli import main
from modelrig.hub.server import serve_in_thread
from modelrig.hub.tiny_repos import TOKEN_FILE
from modelrig.orchestrate.demo import ANSWER, chat, pip_find_links
from tests.helpers.hub import demo_repos
from tests.helpers.launching import DEMO_PORTS, free_port, ports_held
from tests.helpers.venvs import CACHE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
MODEL = "demo-tiny-ziya"
STAGES = ["plan", "env", "fetch", "convert", "render", "launch"]
API_PORT = free_port()
API = f"http://127.0.0.1:{API_PORT}/v1"


def run(root: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--data-root", str(root), *args])
    return code, out.getvalue(), err.getvalue()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A data root whose host config points at a local hub holding the demo's tiny repos; `up` of the api entry."""
    root = tmp_path_factory.mktemp("up-root")
    hub = tmp_path_factory.mktemp("up-hub")
    demo_repos(tmp_path_factory, hub)
    url, stop_hub = serve_in_thread(hub, token_file=hub / TOKEN_FILE)
    # A free port over the manifest's 18000 (the host config's serve.ports), so a running demo does not collide:
    # the demo's default ports are held for the whole module, as by a running `make demo`.
    (root / "config.yaml").write_text(yaml.safe_dump({
        "hub": {"hf_endpoint": url, "token_file": str(hub / TOKEN_FILE)},
        "pip": {"find_links": pip_find_links(), "use_torch_index": False},
        "serve": {"ports": {f"{MODEL}/api": API_PORT}},
    }))
    with pytest.MonkeyPatch.context() as mp, ports_held(DEMO_PORTS):
        mp.setenv("UV_CACHE_DIR", str(CACHE / "uv"))
        first = run(root, "up", MODEL, "--entry", "api")
        try:
            yield root, first
        finally:
            run(root, "down", MODEL)
            stop_hub()


def stage_lines(out: str) -> list[list[str]]:
    return [line.split(None, 2) for line in out.splitlines() if line.split(None, 1)[0] in STAGES]


def test_up_serves_on_its_own_port_while_the_demos_default_ports_are_taken(served):
    _, (code, out, err) = served
    assert code == 0, err
    for port in DEMO_PORTS:  # held by the module's fixture (or by a demo running on this machine)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert f"api      {API}" in out and "18000" not in out, out
    assert chat(API) == ANSWER


def test_up_runs_every_stage_in_order_with_one_line_each_and_a_summary_with_urls(served):
    root, (code, out, err) = served
    assert code == 0, err
    lines = stage_lines(out)
    assert [line[0] for line in lines] == STAGES
    assert all(line[1] == "changed" for line in lines), out
    assert all(line[2].rstrip().endswith("s)") for line in lines)
    assert f"{MODEL}: ready" in out
    assert f"api      {API}" in out
    assert chat(API) == ANSWER
    state = json.loads((root / "run" / MODEL / "up.json").read_text())
    assert set(state["entries"]) == {"api"} and alive(state["entries"]["api"]["pid"])


def test_rerun_with_nothing_changed_does_nothing_and_says_so_within_seconds(served):
    root, _ = served
    start = time.perf_counter()
    code, out, err = run(root, "up", MODEL, "--entry", "api")
    assert code == 0, err
    assert time.perf_counter() - start < 10
    assert [(line[0], line[1]) for line in stage_lines(out)] == [(s, "unchanged") for s in STAGES]
    assert "already up, nothing changed" in out


def test_up_json_reports_every_stage(served):
    root, _ = served
    code, out, err = run(root, "up", MODEL, "--entry", "api", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["stage"] for s in report["stages"]] == STAGES
    assert report["changed"] is False
    assert report["urls"] == {"api": API}


def test_a_rerun_fits_on_a_disk_the_first_run_filled_but_a_fresh_data_root_would_not(served, tmp_path):
    root, _ = served
    code, out, err = run(root, "facts", "--json")
    assert code == 0, err
    facts = json.loads(out)
    elsewhere = tmp_path / "facts-elsewhere.json"
    elsewhere.write_text(json.dumps({**facts, "data_root": str(tmp_path / "empty-root")}))
    code, out, err = run(root, "plan", MODEL, "--facts", str(elsewhere), "--json")
    assert code == 0, err
    empty = json.loads(out)
    assert empty["present_bytes"] == 0 and empty["download_bytes"] > 0
    # free space one byte short of what the whole job needs on an empty data root
    tight = {**facts, "disk_free_bytes": empty["disk_needed_bytes"] - 1}
    here = tmp_path / "facts-here.json"
    here.write_text(json.dumps(tight))
    code, out, err = run(root, "plan", MODEL, "--facts", str(here), "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["fits"] and plan["download_bytes"] == 0 and plan["present_bytes"] > 0
    assert plan["disk_needed_bytes"] < empty["disk_needed_bytes"]
    code, out, err = run(root, "up", MODEL, "--entry", "api", "--facts", str(here))
    assert code == 0, err
    assert [(line[0], line[1]) for line in stage_lines(out)] == [(s, "unchanged") for s in STAGES]
    elsewhere.write_text(json.dumps({**tight, "data_root": str(tmp_path / "empty-root")}))
    code, _, err = run(root, "up", MODEL, "--entry", "api", "--facts", str(elsewhere))
    assert code == 3 and "disk" in err and err.count("\n") == 1


def test_a_crashed_service_is_started_again_and_only_launch_reports_a_change(served):
    root, _ = served
    state = json.loads((root / "run" / MODEL / "up.json").read_text())
    old_pid = state["entries"]["api"]["pid"]
    os.killpg(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    code, out, err = run(root, "up", MODEL, "--entry", "api")
    assert code == 0, err
    changed = [line[0] for line in stage_lines(out) if line[1] == "changed"]
    assert changed == ["launch"]
    new_pid = json.loads((root / "run" / MODEL / "up.json").read_text())["entries"]["api"]["pid"]
    assert new_pid != old_pid and alive(new_pid)
    assert chat(API) == ANSWER


def test_a_model_dependency_is_fetched_and_converted_first(served, tmp_path, monkeypatch):
    root, _ = served
    demo = yaml.safe_load((REPO / "model_manifests" / f"{MODEL}.yaml").read_text())
    consumer = {"id": "tiny-ziya-consumer", "title": "serves the merged tiny Ziya", "license": {"name": "test"},
                "weights": {"llm": {"model": MODEL}}, "env": demo["env"], "resources": demo["resources"]}
    (tmp_path / "tiny-ziya-consumer.yaml").write_text(yaml.safe_dump(consumer))
    monkeypatch.setenv("MODELRIG_MANIFESTS", str(tmp_path))
    fresh = tmp_path / "fresh-root"
    fresh.mkdir()
    (fresh / "config.yaml").write_text((root / "config.yaml").read_text())
    code, out, err = run(fresh, "up", "tiny-ziya-consumer")
    assert code == 0, err
    lines = [line.split(None, 3) for line in out.splitlines() if line.split(None, 1)[0] in STAGES]
    assert [(line[0], line[2]) for line in lines[2:4]] == [("fetch", f"[{MODEL}]"), ("convert", f"[{MODEL}]")]
    assert [line[0] for line in lines] == ["plan", "env", "fetch", "convert", "fetch", "render", "launch"]
    assert list((fresh / "models" / MODEL / "final").glob("*.safetensors"))
    code, out, err = run(fresh, "up", "tiny-ziya-consumer")
    assert code == 0, err
    assert [line.split(None, 2)[:2] for line in out.splitlines() if line.split(None, 1)[0] in STAGES] == [
        [s, "unchanged"] for s in ("plan", "env", "fetch", "render", "launch")]


def test_down_stops_what_up_started_and_a_second_down_changes_nothing(served):
    root, _ = served
    pid = json.loads((root / "run" / MODEL / "up.json").read_text())["entries"]["api"]["pid"]
    code, out, err = run(root, "down", MODEL)
    assert code == 0, err
    assert "stopped api" in out
    assert not alive(pid)
    code, out, _ = run(root, "down", MODEL)
    assert code == 0 and "nothing was running" in out


def test_down_of_a_model_never_started_is_one_clear_error(tmp_path):
    code, _, err = run(tmp_path, "down", MODEL)
    assert code == 2
    assert err.count("\n") == 1 and "modelrig up" in err


def test_up_refuses_a_host_that_cannot_run_the_model_before_building_anything(tmp_path):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"os": "linux", "arch": "x86_64", "cpu": "tiny", "cpu_count": 1,
                                 "ram_bytes": 1 << 30, "disk_free_bytes": 1 << 20, "data_root": str(tmp_path)}))
    code, _, err = run(tmp_path / "root", "up", MODEL, "--facts", str(facts))
    assert code == 3
    assert "cannot run on this host" in err and "disk" in err
    assert not (tmp_path / "root" / "envs").exists()
