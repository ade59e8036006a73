"""`--check` in every stage: after a real run it says unchanged; after each kind of change it says changed, with
the reason; the data root is byte-identical before and after a check."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from modelrig.catalog import manifest_paths
from modelrig.launch.render import render
from modelrig.manifest import load_manifest
from tests.helpers.demo_root import demo_root, run
from tests.helpers.launching import plan_for

REPO = Path(__file__).resolve().parent.parent


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under `root` with its sha256, mode and mtime: a check must leave all of it as it was."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode,
                                      p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _bluelm():
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "bluelm-7b-chat"))
    paths = {name: f"/w/{name}" for name in manifest.weights}
    paths.update({step.output_name: f"/w/{step.output_name}" for step in manifest.convert})
    return manifest, paths


def test_render_check_reports_each_kind_of_change_and_writes_nothing(tmp_path):
    manifest, paths = _bluelm()
    plan = plan_for(manifest)
    out = tmp_path / "launch"
    fresh = render(manifest, plan, out, paths=paths, python="/e/bin/python", check=True)
    assert fresh.check and fresh.changed and not out.exists()
    assert "chat: app.py not rendered yet" in fresh.reasons

    render(manifest, plan, out, paths=paths, python="/e/bin/python")
    before = snapshot(out)
    same = render(manifest, plan, out, paths=paths, python="/e/bin/python", check=True)
    assert not same.changed and same.reasons == []
    assert snapshot(out) == before

    app = out / "chat" / "app.py"
    app.write_text(app.read_text() + "\n# edited\n")
    edited = snapshot(out)
    found = render(manifest, plan, out, paths=paths, python="/e/bin/python", check=True)
    assert found.changed and found.reasons == ["chat: app.py differs from its rendering: edited since it was rendered"]
    assert snapshot(out) == edited
    repaired = render(manifest, plan, out, paths=paths, python="/e/bin/python")
    assert repaired.changed and repaired.details["entries"]["chat"]["written"] == ["app.py"]
    assert snapshot(out)["chat/app.py"][0] == before["chat/app.py"][0]

    other = render(manifest, plan_for(manifest, dtype="bf16"), out, paths=paths, python="/e/bin/python", check=True)
    assert other.changed
    assert "chat: app.py differs from its rendering: the manifest, plan, paths or host config changed" \
        in other.reasons

    (out / "chat" / "start.sh").unlink()
    missing = render(manifest, plan, out, paths=paths, python="/e/bin/python", check=True)
    assert missing.reasons == ["chat: start.sh is missing"]


def test_cli_render_check_json(cli, tmp_path):
    out = tmp_path / "launch"
    args = ["render", "bluelm-7b-chat", "--python", "/e/bin/python", "--out", out, "--facts",
            Path(__file__).parent / "fixtures" / "hosts" / "a100-40gb.json",
            *[f"--weights={name}=/w/{name}" for name in ("model",)]]
    code, stdout, err = cli(*args, "--check", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["ok"] and result["check"] and result["changed"] and result["stage"] == "render"
    assert not out.exists()
    assert cli(*args)[0] == 0
    code, stdout, _ = cli(*args, "--check", "--json")
    assert json.loads(stdout)["changed"] is False


# ---------------------------------------------------------------------------------------------------------
# Every stage on a real data root: the demo pipeline (local hub, real env, conversions, a running API).

MODEL = "check-tiny-ziya"
STAGES = ["plan", "env", "fetch", "convert", "render", "launch"]


def checked(root: Path, *args: object) -> dict:
    """`modelrig ARGS --check --json` on `root`, which must leave `root` exactly as it was."""
    before = data_root_snapshot(root)
    code, out, err = run(root, *args, "--check", "--json")
    assert code == 0, err
    assert data_root_snapshot(root) == before, "a check changed the data root"
    result = json.loads(out)
    assert result["ok"] is True and result["check"] is True
    return result


def data_root_snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """The data root, less what running services write themselves (their logs) and the uv cache."""
    if not root.exists():
        return {}
    return {name: value for name, value in snapshot(root).items()
            if not (name.startswith("run/") and name.endswith(".log")) and not name.startswith("cache/uv")}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """A data root after a real `up` of a copy of the demo model (its API on a free port), and its local hub."""
    with demo_root(tmp_path_factory, MODEL) as demo:
        yield demo.root, demo.config, demo.manifests


def fresh_root(tmp_path: Path, pipeline: tuple[Path, str, Path]) -> Path:
    """An empty data root with the pipeline's host config only."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(pipeline[1])
    return fresh


@pytest.mark.slow
def test_up_check_after_a_real_run_says_every_stage_unchanged(pipeline):
    root, _, _ = pipeline
    report = checked(root, "up", MODEL)
    assert [s["stage"] for s in report["stages"]] == STAGES
    assert report["changed"] is False, report["reasons"]
    assert all(not s["changed"] and s["reasons"] == [] for s in report["stages"])


@pytest.mark.slow
def test_up_check_on_a_fresh_data_root_says_what_every_stage_would_do(pipeline, tmp_path):
    fresh = fresh_root(tmp_path, pipeline)
    report = checked(fresh, "up", MODEL)
    by_stage = {s["stage"]: s for s in report["stages"]}
    assert all(by_stage[stage]["changed"] for stage in STAGES)
    assert by_stage["env"]["reasons"][0].startswith("no env with this spec")
    assert any("not downloaded yet" in r for r in by_stage["fetch"]["reasons"])
    assert by_stage["render"]["reasons"][0] == "api: app.py not rendered yet"
    assert by_stage["launch"]["reasons"] == ["api: not rendered yet"]
    assert sorted(p.name for p in fresh.iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_fetch_check_finds_a_truncated_file_and_fetch_repairs_it(pipeline):
    root, _, _ = pipeline
    assert checked(root, "fetch", MODEL)["changed"] is False
    delta = root / "store" / "huggingface" / "modelrig-tiny--ziya-delta"
    weights = next(p for p in sorted(delta.iterdir()) if p.suffix == ".bin")
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size - 10)
    result = checked(root, "fetch", MODEL)
    assert result["changed"] and result["reasons"] == [
        f"delta: {weights.name} has {size - 10} bytes, the hub's has {size}"]
    assert run(root, "fetch", MODEL)[0] == 0
    assert weights.stat().st_size == size
    assert checked(root, "fetch", MODEL)["changed"] is False


@pytest.mark.slow
def test_convert_check_finds_an_edited_output_and_convert_rebuilds_it(pipeline):
    root, _, _ = pipeline
    assert checked(root, "convert", MODEL)["changed"] is False
    final = root / "models" / MODEL / "final"
    shard = next(p for p in sorted(final.iterdir()) if p.suffix == ".safetensors")
    good = shard.read_bytes()
    time.sleep(0.01)
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    result = checked(root, "convert", MODEL)
    assert result["changed"] and f"final: output {shard.name} was modified after it was built" in result["reasons"]
    assert run(root, "convert", MODEL)[0] == 0
    assert shard.read_bytes() == good
    assert checked(root, "convert", MODEL)["changed"] is False


@pytest.mark.slow
def test_env_check_says_a_changed_pin_builds_a_new_env_beside_the_old(pipeline):
    root, _, manifests = pipeline
    assert checked(root, "env", MODEL)["changed"] is False
    path = manifests / f"{MODEL}.yaml"
    original = path.read_text()
    changed = yaml.safe_load(original)
    changed["env"]["packages"] = [p.replace("accelerate", "accelerate==1.0.1") for p in changed["env"]["packages"]]
    path.write_text(yaml.safe_dump(changed))
    try:
        result = checked(root, "env", MODEL)
        assert result["changed"]
        (reason,) = result["reasons"]
        assert reason.startswith("no env with this spec") and "builds a new env beside them" in reason
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_render_and_launch_checks_follow_an_edit_and_a_stopped_service(pipeline):
    root, _, _ = pipeline
    start_sh = root / "launch" / MODEL / "api" / "start.sh"
    text = start_sh.read_text()
    start_sh.write_text(text + "# edited by hand\n")
    os.chmod(start_sh, 0o755)
    assert checked(root, "render", MODEL)["reasons"] == [
        "api: start.sh differs from its rendering: edited since it was rendered"]
    assert checked(root, "up", MODEL)["changed"] is True
    assert run(root, "render", MODEL)[0] == 0 and start_sh.read_text() == text

    assert checked(root, "down", MODEL)["reasons"] == ["api: running"]
    assert checked(root, "stop", MODEL)["changed"] is True
    assert run(root, "stop", MODEL)[0] == 0
    launch = checked(root, "launch", MODEL)
    assert launch["changed"] and launch["reasons"] == ["api: service is stopped"]
    assert checked(root, "down", MODEL)["changed"] is False
    code, _, err = run(root, "up", MODEL)
    assert code == 0, err
    assert checked(root, "up", MODEL)["changed"] is False


@pytest.mark.slow
def test_state_settles_a_provisioned_model_and_names_each_stage_that_would_change(pipeline):
    root, _, _ = pipeline
    code, _, err = run(root, "up", MODEL)
    assert code == 0, err
    assert run(root, "lock", MODEL)[0] == 0
    lock = root / "locks" / f"{MODEL}.lock.yaml"
    answer = checked(root, "state", MODEL)
    assert answer["settled"] is True and answer["changed"] is False
    state = answer["models"][MODEL]
    assert state["settled"] is True and state["reasons"] == []
    assert state["stages"] == dict.fromkeys(["env", "fetch", "convert", "render", "launch", "lock"], False)
    assert state["lock"] == str(lock) and state["supervisor"] == "process"
    assert [(e["entry"], e["running"], e["healthy"]) for e in state["entries"]] == [("api", True, True)]

    text = lock.read_text()
    lock.write_text(text.replace(f"model: {MODEL}", f"model: {MODEL}-edited"))
    edited = checked(root, "state", MODEL)["models"][MODEL]
    assert edited["settled"] is False and edited["reasons"] == [f"lock: {lock}: the host differs from its lock"]
    lock.write_text(text)

    assert run(root, "stop", MODEL)[0] == 0
    stopped = checked(root, "state", MODEL)["models"][MODEL]
    assert stopped["settled"] is False and stopped["reasons"] == ["launch: api: service is stopped"]
    assert "lock" not in stopped["stages"]  # not asked once a stage below it would change
    code, _, err = run(root, "up", MODEL)
    assert code == 0, err
    assert checked(root, "state", MODEL)["models"][MODEL]["settled"] is True


@pytest.mark.slow
def test_state_on_a_fresh_data_root_stops_at_the_env_and_an_unknown_model_is_unsettled(pipeline, tmp_path):
    fresh = fresh_root(tmp_path, pipeline)
    answer = checked(fresh, "state", MODEL, "no-such-model")
    assert answer["settled"] is False
    state = answer["models"][MODEL]
    assert state["stages"]["env"] is True and state["reasons"][0].startswith("env: no env with this spec")
    assert "render" not in state["stages"] and state["entries"] == [] and state["lock"] is None
    unknown = answer["models"]["no-such-model"]
    assert unknown["settled"] is False and unknown["stages"] == {"error": True}
    assert unknown["reasons"][0].startswith("no manifest with id 'no-such-model'")
    assert sorted(p.name for p in fresh.iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_every_stage_result_validates_against_the_documented_schema(pipeline):
    from tests.helpers.result_schema import validate

    root, _, _ = pipeline
    seen = set()
    for args in (["env", MODEL], ["fetch", MODEL], ["convert", MODEL], ["render", MODEL], ["up", MODEL],
                 ["launch", MODEL], ["up", MODEL, "--check"], ["env", MODEL, "--check"], ["fetch", MODEL, "--check"],
                 ["convert", MODEL, "--check"], ["render", MODEL, "--check"], ["launch", MODEL, "--check"],
                 ["down", MODEL, "--check"], ["stop", MODEL, "--check"], ["stop", MODEL], ["down", MODEL],
                 ["fetch", "no-such-model"]):
        code, out, err = run(root, *args, "--json")
        document = json.loads(out)
        assert (code == 0) == document["ok"], err
        validate(document)
        seen.add(document.get("stage") or document["error"]["code"])
        for stage in document.get("stages", []):
            seen.add(stage["stage"])
    assert seen == {"plan", "env", "fetch", "convert", "render", "launch", "up", "stop", "down", "model_not_found"}


def test_a_host_config_port_overrides_the_manifest_and_a_bad_one_is_one_line(cli, tmp_path, data_root):
    manifest, paths = _bluelm()
    from modelrig.config import HostConfig

    config = HostConfig.model_validate({"serve": {"ports": {"bluelm-7b-chat/chat": 6006}}})
    result = render(manifest, plan_for(manifest), tmp_path / "launch", paths=paths, python="/e/bin/python",
                    config=config)
    assert result.details["entries"]["chat"]["port"] == 6006
    info = json.loads((tmp_path / "launch" / "chat" / "entry.json").read_text())
    assert info["port"] == 6006 and info["health"]["url"].endswith(":6006/_stcore/health")
    bad = tmp_path / "config.yaml"
    bad.write_text("serve:\n  ports:\n    bluelm-7b-chat/chat: abc\n")
    code, _, err = cli("--config", bad, "plan", "bluelm-7b-chat", "--facts",
                       Path(__file__).parent / "fixtures" / "hosts" / "a100-80gb.json")
    assert code == 2 and err.count("\n") == 1
    assert "serve.ports.bluelm-7b-chat/chat" in err and str(bad) in err
