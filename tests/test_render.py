"""`modelrig render`: every shipped launch entry renders to scripts that compile under the model's Python."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from modelrig.catalog import manifest_paths
from modelrig.envs.tools import find_python
from modelrig.errors import EnvBuildError, LaunchError
from modelrig.launch.render import render, render_entry
from modelrig.manifest import load_manifest
from tests.helpers.launching import plan_for

HOSTS = Path(__file__).parent / "fixtures" / "hosts"


def interpreter_for(version: str) -> str:
    """The manifest's Python `version` ("3.10"), found the way `modelrig env` finds it (python3.10 on PATH, pyenv's
    versions, `uv python find`). None installed fails the test: compiling with another version proves nothing."""
    try:
        interp, _ = find_python(version)
    except EnvBuildError as exc:
        pytest.fail(f"the rendered scripts of manifests asking for Python {version} cannot be compiled: {exc} "
                    f"(or `uv python install {version}` where uv can download Pythons)", pytrace=False)
    return interp.path


def test_a_missing_manifest_python_fails_instead_of_using_another(monkeypatch, tmp_path):
    for var in ("PATH", "PYENV_ROOT", "UV_PYTHON_INSTALL_DIR"):
        monkeypatch.setenv(var, str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"Python 3\.10 cannot be compiled: no Python 3\.10 found"):
        interpreter_for("3.10")


def test_the_interpreter_found_is_of_the_asked_version():
    python = interpreter_for(f"{sys.version_info[0]}.{sys.version_info[1]}")
    done = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == str(tuple(sys.version_info[:2]))


def _paths(manifest) -> dict[str, Path]:
    names = list(manifest.weights) + [s.output_name for s in manifest.convert]
    return {n: Path(f"/data/models/{manifest.id}/{n}") for n in names}


def _revisions(manifest) -> dict[str, str]:
    """What `modelrig fetch` records for sources marked to_pin."""
    return {n: "0123456789abcdef0123456789abcdef01234567" for n in manifest.weights}


@pytest.mark.slow
def test_every_entry_of_every_shipped_manifest_renders_and_compiles(tmp_path):
    by_python: dict[str, list[str]] = {}
    shell: list[str] = []
    rendered = 0
    for path in manifest_paths():
        manifest = load_manifest(path)
        for entry in manifest.launch:
            platform = "cuda" if "cuda" in entry.allowed_platforms else sorted(entry.allowed_platforms)[0]
            plan = plan_for(manifest, platform=platform, quantization="int4" if platform == "cuda" else None)
            result = render(manifest, plan, tmp_path / manifest.id, paths=_paths(manifest),
                            python="/envs/x/bin/python", entries=[entry.name], revisions=_revisions(manifest))
            folder = Path(result.details["entries"][entry.name]["dir"])
            rendered += 1
            for file in folder.iterdir():
                if file.suffix == ".py":
                    by_python.setdefault(manifest.env.python, []).append(str(file))
                elif file.suffix == ".sh":
                    shell.append(str(file))
    assert rendered == sum(len(load_manifest(p).launch) for p in manifest_paths())
    assert by_python, "no rendered Python scripts"
    for version, files in by_python.items():
        python = interpreter_for(version)
        done = subprocess.run([python, "-c", "import py_compile, sys\nassert '%d.%d' % sys.version_info[:2] == "
                               "sys.argv[1], sys.version\nfor f in sys.argv[2:]: "
                               "py_compile.compile(f, doraise=True, cfile=f + 'c')", version, *files],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"Python {version} ({python}):\n{done.stderr}"
    for script in shell:
        done = subprocess.run(["sh", "-n", script], capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)


@pytest.mark.slow
def test_rendered_scripts_never_import_modelrig(tmp_path):
    for path in manifest_paths():
        manifest = load_manifest(path)
        plan = plan_for(manifest, platform="cuda")
        result = render(manifest, plan, tmp_path / manifest.id, paths=_paths(manifest), python="/e/bin/python",
                        revisions=_revisions(manifest))
        for entry in result.details["entries"].values():
            for file in Path(entry["dir"]).glob("*.py"):
                assert not re.search(r"^\s*(import|from)\s+modelrig\b", file.read_text(), re.M), file


def test_rerender_writes_nothing_and_reports_unchanged(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "bluelm-7b-chat"))
    plan = plan_for(manifest)
    first = render(manifest, plan, tmp_path, paths=_paths(manifest), python="/e/bin/python")
    assert first.changed
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    second = render(manifest, plan, tmp_path, paths=_paths(manifest), python="/e/bin/python")
    assert not second.changed
    assert all(not e["written"] for e in second.details["entries"].values())
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes
    third = render(manifest, plan_for(manifest, dtype="bf16"), tmp_path, paths=_paths(manifest),
                   python="/e/bin/python")
    assert third.changed
    assert sorted(third.details["entries"]["chat"]["written"]) == ["app.py", "entry.json"]


def test_a_folder_render_did_not_make_is_refused_and_left_alone(cli, tmp_path):
    out = tmp_path / "site"
    (out / "chat").mkdir(parents=True)
    (out / "chat" / "start.sh").write_text("#!/bin/sh\nexec my-own-server\n")
    (out / "index.html").write_text("<p>mine</p>\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for check in ([], ["--check"]):
        code, out_text, err = cli("render", "bluelm-7b-chat", "--out", out, "--python", "/e/bin/python",
                                  "--weights", f"model={tmp_path / 'weights'}", "--facts", HOSTS / "cpu-only.json",
                                  *check)
        assert code == 8 and out_text == ""
        assert err == (f"modelrig: error: {out}: this folder holds files that modelrig render did not write (chat, "
                       "no .modelrig-render); render would overwrite them, so it stops: give another --out or an "
                       "empty folder [out_not_ours]\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_render_claims_a_new_folder_and_rerenders_it_in_place(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "bluelm-7b-chat"))
    out = tmp_path / "launch"
    render(manifest, plan_for(manifest), out, paths=_paths(manifest), python="/e/bin/python")
    assert (out / ".modelrig-render").is_file()
    (out / ".modelrig-render").unlink()  # a folder rendered before the marker existed: only its entry folders
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = render(manifest, plan_for(manifest), out, paths=_paths(manifest), python="/e/bin/python")
    assert not again.changed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".modelrig-render"} == mtimes
    (out / "chat" / "app.py").write_text("edited\n")
    fixed = render(manifest, plan_for(manifest), out, paths=_paths(manifest), python="/e/bin/python")
    assert fixed.details["entries"]["chat"]["written"] == ["app.py"]


def test_device_dtype_and_quantization_come_from_the_plan(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "ziya-blip2-14b-visual-v1"))
    cuda = render(manifest, plan_for(manifest, platform="cuda", quantization="int4"), tmp_path / "cuda",
                  paths=_paths(manifest), python="/e/bin/python")
    app = (Path(cuda.details["entries"]["chat"]["dir"]) / "app.py").read_text()
    assert "DEVICE = os.environ.get(\"MODELRIG_DEVICE\", 'cuda')" in app
    assert "QUANTIZATION = 'int4'" in app
    assert "load_in_4bit=True" in app
    assert "'llm': '/data/models/ziya-blip2-14b-visual-v1/llm'" in app  # the separately loaded Ziya LLM
    mps = render(manifest, plan_for(manifest, platform="mps", dtype="fp16"), tmp_path / "mps",
                 paths=_paths(manifest), python="/e/bin/python")
    folder = Path(mps.details["entries"]["chat"]["dir"])
    assert "export PYTORCH_ENABLE_MPS_FALLBACK=1" in (folder / "start.sh").read_text()
    assert "QUANTIZATION = None\n" in (folder / "app.py").read_text()
    info = json.loads((folder / "entry.json").read_text())
    assert (info["device"], info["dtype"], info["port"], info["bind"]) == ("mps", "fp16", 7886, "127.0.0.1")


def test_start_script_sets_offline_hub_and_the_plan_env(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "bluelm-7b-chat"))
    plan = plan_for(manifest, env_vars={"PYTORCH_ENABLE_MPS_FALLBACK": "1", "OMP_NUM_THREADS": "4"})
    result = render(manifest, plan, tmp_path, paths=_paths(manifest), python="/envs/abc/bin/python",
                    cache_dir=tmp_path / "cache")
    start = (tmp_path / "chat" / "start.sh").read_text()
    assert "ENV_PREFIX=/envs/abc" in start
    assert "export HF_HUB_OFFLINE=1" in start
    assert "export OMP_NUM_THREADS=4" in start
    assert f"CACHE_DIR={tmp_path}/cache\n" in start and 'HF_HOME="${HF_HOME:-$CACHE_DIR/hf}"' in start
    assert "-m streamlit run app.py" in start and "--server.port \"$MODELRIG_PORT\"" in start
    assert stat.S_IMODE((tmp_path / "chat" / "start.sh").stat().st_mode) == 0o755
    assert result.details["entries"]["chat"]["port"] == 6006


def test_vllm_serve_is_refused_off_cuda(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "joycaption-alpha-two"))
    entry = next(e for e in manifest.launch if e.kind == "vllm_serve")
    for platform in ("mps", "cpu"):
        with pytest.raises(LaunchError, match="only on CUDA hosts"):
            render_entry(manifest, entry, plan_for(manifest, platform=platform), _paths(manifest),
                         config=_config(), python="/e/bin/python", entry_dir=tmp_path)
    files = render_entry(manifest, entry, plan_for(manifest, platform="cuda"), _paths(manifest), config=_config(),
                         python="/e/bin/python", entry_dir=tmp_path)
    serve = files["serve.sh"]
    assert "--max-model-len 4096" in serve and "--enable-prefix-caching" in serve
    assert "--trust-remote-code" not in serve


def test_vllm_runs_remote_code_only_from_pinned_revisions(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "minicpm-v-2_6"))
    entry = next(e for e in manifest.launch if e.kind == "vllm_serve")
    plan = plan_for(manifest, platform="cuda")
    with pytest.raises(LaunchError, match="unpinned revisions"):
        render_entry(manifest, entry, plan, _paths(manifest), config=_config(), python="/e/bin/python",
                     entry_dir=tmp_path)
    files = render_entry(manifest, entry, plan, _paths(manifest), config=_config(), python="/e/bin/python",
                         entry_dir=tmp_path, revisions=_revisions(manifest))
    assert "--trust-remote-code" in files["serve.sh"] and "--max-model-len 2048" in files["serve.sh"]


def test_listening_beyond_loopback_puts_a_generated_secret_in_a_0600_env_file(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "ziya-llama-13b-v1.1"))
    result = render(manifest, plan_for(manifest), tmp_path, paths=_paths(manifest), python="/e/bin/python",
                    bind="0.0.0.0")
    api, chat = tmp_path / "api", tmp_path / "chat"
    key = re.search(r"^MODELRIG_API_KEY=(\S+)$", (api / "secrets.env").read_text(), re.M).group(1)
    auth = re.search(r"^MODELRIG_UI_AUTH=(\S+)$", (chat / "secrets.env").read_text(), re.M).group(1)
    assert len(key) > 20 and auth.startswith("modelrig:")
    for folder in (api, chat):
        assert stat.S_IMODE((folder / "secrets.env").stat().st_mode) == 0o600
        for file in folder.iterdir():
            if file.name != "secrets.env" and not file.name.startswith("."):
                assert key not in file.read_text() and auth not in file.read_text(), file
    assert json.loads((api / "entry.json").read_text())["auth"] == ["MODELRIG_API_KEY"]
    again = render(manifest, plan_for(manifest), tmp_path, paths=_paths(manifest), python="/e/bin/python",
                   bind="0.0.0.0")
    assert not again.changed  # the key is kept, not regenerated
    assert result.details["entries"]["api"]["written"]


def test_upstream_demo_is_pinned_and_refuses_non_loopback(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "qwen-vl-chat"))
    entry = next(e for e in manifest.launch if e.name == "web")
    files = render_entry(manifest, entry, plan_for(manifest, platform="cpu"), _paths(manifest), config=_config(),
                         python="/e/bin/python", entry_dir=tmp_path)
    serve = files["serve.sh"]
    assert "REF=aa00ed0" in serve and "https://github.com/QwenLM/Qwen-VL.git" in serve
    assert ('exec python web_demo_mm.py -c /data/models/qwen-vl-chat/model --server-name "$HOST" '
            '--server-port "$PORT" --cpu-only') in serve
    with pytest.raises(LaunchError, match="no authentication"):
        render_entry(manifest, entry, plan_for(manifest), _paths(manifest), config=_config(),
                     python="/e/bin/python", entry_dir=tmp_path, bind="0.0.0.0")


def test_missing_weights_path_is_a_clear_error(tmp_path):
    manifest = load_manifest(next(p for p in manifest_paths() if p.stem == "bluelm-7b-chat"))
    with pytest.raises(LaunchError, match="no folder for weights 'model'"):
        render(manifest, plan_for(manifest), tmp_path, paths={}, python="/e/bin/python")


def test_cli_render_prints_json_and_is_idempotent(cli, tmp_path):
    args = ["render", "bluelm-7b-chat", "--out", tmp_path, "--python", "/envs/x/bin/python",
            "--weights", f"model={tmp_path / 'weights'}", "--facts", HOSTS / "cpu-only.json", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    first = json.loads(out)
    assert first["changed"] and set(first["details"]["entries"]) == {"chat", "api"}
    assert (tmp_path / "api" / "app.py").is_file()
    code, out, _ = cli(*args)
    assert code == 0 and json.loads(out)["changed"] is False
    code, _, err = cli("render", "bluelm-7b-chat", "--out", tmp_path, "--python", "/e/bin/python", "--entry", "nope",
                       "--facts", HOSTS / "cpu-only.json")
    assert code == 8 and "no launch entry 'nope'" in err


def _config():
    from modelrig.config import HostConfig

    return HostConfig()

