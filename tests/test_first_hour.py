"""A new user's first hour: the README's setup puts `modelrig` on PATH for login shells, the demo's printed advice
works as printed (in new login shells, offline), `up` after `demo` reuses everything, the toolkit's torch is the
CPU build on Linux, the wheel carries the manifests and templates, and the errors and summaries a new user meets
say what to do."""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelrig.config import DataRoot, HostConfig, PipSettings
from modelrig.envs.build import build_env
from modelrig.errors import EnvBuildError
from modelrig.humansize import format_memory, format_size
from modelrig.orchestrate.demo import DEMO_MODEL, advice, pip_find_links
from modelrig.plan import EnvPlan, TorchBuild
from tests.conftest import FIXTURES, REPO
from tests.helpers.hub import write_manifest, write_repo
from tests.helpers.offline import offline
from tests.helpers.venvs import CACHE

#: The toolkit env running these tests (`make test` builds it: the checkout's .venv, or CI's own).
TOOLKIT = Path(sys.executable).parent.parent

TOOLKIT_TORCH = REPO / "scripts" / "toolkit_torch.py"
REAL_HOME = Path.home()


def _toolkit_torch():
    spec = importlib.util.spec_from_file_location("toolkit_torch", TOOLKIT_TORCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_folder(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on loopback (directory listings are a valid PEP 503 simple index)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- the toolkit's torch (scripts/bootstrap.sh) -------------------------------------------------------------------


def test_linux_takes_torch_from_the_cpu_index_pinned_to_the_cpu_build():
    tt = _toolkit_torch()
    args, message = tt.pip_args("torch==2.13.0", system="Linux", machine="x86_64", index=tt.CPU_INDEX,
                                reachable=True)
    assert args == ["--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"] and message == ""
    # aarch64 CPU wheels carry no local version; the index alone decides the build there.
    assert tt.pip_args("torch==2.13.0", system="Linux", machine="aarch64", index=tt.CPU_INDEX,
                       reachable=True)[0] == ["--index-url", tt.CPU_INDEX, "torch==2.13.0"]
    # macOS keeps PyPI's default wheels (CPU and MPS), with no index switch.
    assert tt.pip_args("torch==2.13.0", system="Darwin", machine="arm64", index=tt.CPU_INDEX,
                       reachable=True) == (["torch==2.13.0"], "")
    # An unreachable CPU index falls back to pip's configuration, and says so and what it means.
    args, message = tt.pip_args("torch==2.13.0", system="Linux", machine="x86_64", index=tt.CPU_INDEX,
                                reachable=False)
    assert args == ["torch==2.13.0"]
    assert "unreachable" in message and "PIP_FIND_LINKS" in message
    # Which build that gave is said after the install, from torch itself: a +cpu wheel from a mirror's folder is
    # not called the CUDA build.
    assert "CUDA" not in message
    assert tt.installed_build_message("2.13.0+cpu", None, system="Linux") == ""
    assert tt.installed_build_message("2.13.0", None, system="Darwin") == ""
    cuda = tt.installed_build_message("2.13.0", "12.8", system="Linux")
    assert cuda.startswith("bootstrap: the toolkit env got torch 2.13.0, the CUDA 12.8 build") and "+cpu" in cuda
    assert tt.cpu_requirement("torch>=2.1", machine="x86_64") == "torch>=2.1"
    assert tt.cpu_requirement("torch==2.13.0+cpu", machine="x86_64") == "torch==2.13.0+cpu"


@pytest.mark.slow
def test_with_no_pip_configuration_the_cpu_index_resolves_torch_to_the_cpu_build(tmp_path):
    """The command bootstrap runs, against a loopback stand-in for the CPU index holding a `+cpu` wheel, resolves
    to that CPU build (pip's own resolver, `--dry-run --report`), with pip's configuration and find-links off."""
    wheels = [Path(link) / p.name for link in pip_find_links() for p in Path(link).glob("torch-2.13.0+cpu-*.whl")]
    if not wheels:
        pytest.fail("no torch 2.13.0+cpu wheel in pip's find-links folders to stand in for the CPU index")
    index = tmp_path / "whl" / "cpu"
    (index / "torch").mkdir(parents=True)
    (index / "torch" / wheels[0].name).symlink_to(wheels[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    with http_folder(tmp_path) as url:
        cpu_index = f"{url}/whl/cpu"
        decided = subprocess.run([sys.executable, str(TOOLKIT_TORCH), "torch==2.13.0"], capture_output=True,
                                 text=True, env={**env, "MODELRIG_TORCH_INDEX": cpu_index}, check=True)
        args = decided.stdout.split()
        assert args == ["--index-url", cpu_index, "torch==2.13.0+cpu"] and decided.stderr == ""
        report = tmp_path / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                        "--report", str(report), "-q", *args], env=env, check=True, capture_output=True)
    installs = json.loads(report.read_text())["install"]
    assert [(i["metadata"]["name"], i["metadata"]["version"]) for i in installs] == [("torch", "2.13.0+cpu")]
    assert installs[0]["download_info"]["url"].startswith(cpu_index)


@pytest.mark.slow
def test_bootstrap_falls_back_to_pip_configuration_when_the_cpu_index_is_unreachable():
    env = {**os.environ, "MODELRIG_TORCH_INDEX": f"http://127.0.0.1:{closed_port()}/whl/cpu"}
    decided = subprocess.run([sys.executable, str(TOOLKIT_TORCH), "torch==2.13.0"], capture_output=True, text=True,
                             env=env, check=True, timeout=60)
    assert decided.stdout.split() == ["torch==2.13.0"]
    assert decided.stderr.startswith("bootstrap: the PyTorch CPU index http://127.0.0.1:")
    # And pip's configuration here (a local +cpu wheel) still gives the CPU build, as CI needs.
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                          "--report", "-", "-q", "torch==2.13.0"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["install"][0]["metadata"]["version"] == "2.13.0+cpu"


# --- modelrig on PATH ----------------------------------------------------------------------------------------------


def login_env(home: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: a fresh HOME (no ~/.profile yet), this machine's pip and uv caches."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "VENV", "MODELRIG_VENV", "MODELRIG_BIN_DIR")}
    env.update(HOME=str(home), UV_CACHE_DIR=str(CACHE / "uv"), SHELL="/bin/bash",
               PIP_CONFIG_FILE=str(REAL_HOME / ".config" / "pip" / "pip.conf"), **extra)
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


def make_setup(home: Path) -> subprocess.CompletedProcess[str]:
    """The README's setup, `make setup`, as that user; the toolkit env is the one running these tests (the
    checkout's `.venv`, or CI's), so setup finds it built and only links the command."""
    return subprocess.run(["make", "-C", str(REPO), "setup", f"VENV={TOOLKIT}"], capture_output=True, text=True,
                          env=login_env(home), timeout=900, check=False)


@pytest.mark.slow
def test_make_setup_puts_modelrig_on_path_for_new_login_shells_once(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    first = make_setup(home)
    assert first.returncode == 0, first.stderr
    link = home / ".local" / "bin" / "modelrig"
    assert link.is_symlink() and link.resolve() == (TOOLKIT / "bin" / "modelrig").resolve()
    assert f"added {home}/.local/bin to PATH in {home}/.profile" in first.stdout
    found = subprocess.run(["bash", "-lc", "command -v modelrig && modelrig --version"], capture_output=True,
                           text=True, env=login_env(home), check=True)
    assert found.stdout.split("\n")[:2] == [str(link), "modelrig 0.1.0"]
    # A second setup changes nothing: one PATH line, no new link message.
    second = make_setup(home)
    assert second.returncode == 0 and "modelrig command:" not in second.stdout
    assert (home / ".profile").read_text().count("# modelrig: put") == 1
    # A user with ~/.bash_profile gets the line there (bash would not read ~/.profile).
    other = tmp_path / "other"
    other.mkdir()
    (other / ".bash_profile").write_text("# mine\n")
    assert make_setup(other).returncode == 0
    assert "# modelrig: put" in (other / ".bash_profile").read_text() and not (other / ".profile").exists()
    assert subprocess.run(["bash", "-lc", "command -v modelrig"], capture_output=True, text=True,
                          env=login_env(other), check=True).stdout.strip() == str(other / ".local/bin/modelrig")


@pytest.mark.slow
def test_the_wheel_installed_with_uv_tool_install_finds_its_manifests_and_templates(tmp_path):
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    dist = tmp_path / "dist"
    subprocess.run([uv, "build", "--wheel", "--out-dir", str(dist), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    wheel = next(dist.glob("modelrig-*.whl"))
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch==2.13.0\n")  # the local +cpu wheel, not PyPI's CUDA build
    links = [arg for link in pip_find_links() for arg in ("--find-links", link)]
    env = {**os.environ, "UV_TOOL_DIR": str(tmp_path / "tools"), "UV_TOOL_BIN_DIR": str(tmp_path / "bin"),
           "UV_CACHE_DIR": str(CACHE / "uv")}
    env.pop("VIRTUAL_ENV", None)
    install = subprocess.run([uv, "tool", "install", "--python", sys.executable, *links, "--index-strategy",
                              "unsafe-best-match", "-c", str(constraints), str(wheel)], capture_output=True,
                             text=True, env=env, timeout=600, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    exe = tmp_path / "bin" / "modelrig"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_env = {**env, "MODELRIG_HOME": str(tmp_path / "root")}
    listed = subprocess.run([str(exe), "list"], capture_output=True, text=True, env=run_env, cwd=elsewhere,
                            check=True)
    assert DEMO_MODEL in listed.stdout and "ziya-llama-13b-v1.1" in listed.stdout
    rendered = subprocess.run([str(exe), "render", DEMO_MODEL, "--json"], capture_output=True, text=True,
                              env=run_env, cwd=elsewhere, check=True)
    entries = json.loads(rendered.stdout)["details"]["entries"]
    assert sorted(entries) == ["api", "chat"]
    assert (tmp_path / "root" / "launch" / DEMO_MODEL / "api" / "app.py").is_file()
    # The shipped folders are the wheel's own copies, not the checkout's.
    where = subprocess.run([str(tmp_path / "tools" / "modelrig" / "bin" / "python"), "-c",
                            "from modelrig.shipped import launch_dir, manifest_dirs; "
                            "print(launch_dir()); print(manifest_dirs()[-1])"],
                           capture_output=True, text=True, cwd=elsewhere, env=run_env, check=True)
    for line in where.stdout.split():
        assert line.startswith(str(tmp_path / "tools")) and line.endswith(("_launch", "_manifests"))


# --- the demo's advice, followed literally ---------------------------------------------------------------------------

#: Runs inside `unshare -n`: the demo in a login shell, then every command it printed, each in a new login shell.
DRIVER = textwrap.dedent("""
    import json, re, subprocess, sys
    def login(command):
        done = subprocess.run(["bash", "-lc", command], capture_output=True, text=True)
        return {"command": command, "rc": done.returncode, "out": done.stdout, "err": done.stderr[-3000:]}
    demo = login("modelrig demo")
    steps = []
    try:
        text = demo["out"]
        block = text.split("\\nNext:\\n", 1)[1] if "\\nNext:\\n" in text else ""
        commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("  modelrig ")]
        steps = [login(command) for command in commands]
    finally:
        cleanup = login("modelrig down demo-tiny-ziya")
    print(json.dumps({"demo": demo, "steps": steps, "which": login("command -v modelrig"), "cleanup": cleanup}))
""")


@pytest.mark.slow
def test_the_demo_advice_works_as_printed_in_new_login_shells_and_up_reuses_the_env(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert make_setup(home).returncode == 0
    # Online once, like test_demo: fills uv's cache so the offline demo can build its env.
    warm_root = tmp_path / "warm"
    warm_root.mkdir()
    (warm_root / "config.yaml").write_text(yaml.safe_dump(
        {"pip": {"find_links": pip_find_links(), "use_torch_index": False}}))
    warm = subprocess.run([str(TOOLKIT / "bin" / "modelrig"), "--data-root", str(warm_root), "env",
                           DEMO_MODEL], env=login_env(home), capture_output=True, text=True, timeout=900)
    assert warm.returncode == 0, warm.stderr
    root = tmp_path / "root"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = login_env(home, MODELRIG_HOME=str(root), MODELRIG_NO_PROGRESS="1")
    done = subprocess.run(offline([sys.executable, str(driver)]), capture_output=True, text=True, env=env,
                          timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["which"]["out"].strip() == str(home / ".local" / "bin" / "modelrig")
    assert report["demo"]["rc"] == 0, report["demo"]["err"]
    assert "is not on this shell's PATH" not in report["demo"]["out"]
    steps = {" ".join(s["command"].split()[:2]): s for s in report["steps"]}
    assert list(steps) == ["modelrig up", "modelrig down", "modelrig list", "modelrig doctor", "modelrig plan"]
    for step in report["steps"]:
        assert "command not found" not in step["err"] and "Traceback" not in step["err"], step
    up = steps["modelrig up"]
    assert up["rc"] == 0, up["err"]
    stages = {line.split()[0]: line.split()[1] for line in up["out"].splitlines()
              if re.match(r"^(env|fetch|convert|render|launch)\s", line)}
    assert stages == dict.fromkeys(["env", "fetch", "convert", "render", "launch"], "unchanged"), up["out"]
    demo_env = re.search(r"env\s+changed\s+built venv env (\w+)", report["demo"]["out"]).group(1)
    assert f"exists venv env {demo_env}" in up["out"]
    assert [p.name for p in (root / "envs").iterdir() if p.is_dir()] == [demo_env]
    assert steps["modelrig down"]["rc"] == 0 and "stopped" in steps["modelrig down"]["out"]
    assert steps["modelrig list"]["rc"] == 0 and DEMO_MODEL in steps["modelrig list"]["out"]
    # The real model's checks answer for this host: what fits, or why not and what would (a FAIL / exit 3).
    doctor = steps["modelrig doctor"]
    assert doctor["rc"] in (0, 1) and re.search(r"^(OK|FAIL)\s+model\s", doctor["out"], re.M), doctor
    plan = steps["modelrig plan"]
    assert plan["rc"] == 0 or (plan["rc"] == 3 and "[plan_refused]" in plan["err"]), plan


def test_demo_advice_says_how_to_get_modelrig_on_path_when_it_is_missing():
    text = advice("/data/config.yaml", on_path=False)
    assert "not on this shell's PATH" in text and "uv tool install" in text
    assert "not on this shell's PATH" not in advice(on_path=True)
    assert text.endswith("go in /data/config.yaml.")


# --- messages and summaries ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unreachable_torch_index_names_the_settings_that_avoid_it(tmp_path, monkeypatch):
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    dead = f"http://127.0.0.1:{closed_port()}/whl"
    config = HostConfig(pip=PipSettings(torch_index_base=dead))
    env = EnvPlan(python="3.11", torch=TorchBuild(version="2.13.0", variant="cpu", index_url=f"{dead}/cpu",
                                                  requirements=["torch==2.13.0"]),
                  packages=["transformers==4.37.0"], tokenizers=None, env_vars={})
    with pytest.raises(EnvBuildError) as info:
        build_env(env, data=DataRoot(tmp_path / "root"), config=config, installer="uv")
    message = str(info.value)
    assert "\n" not in message and f"{dead}/cpu" in message
    for setting in ("pip.use_torch_index: false", "pip.find_links", "pip.index_url", "pip.torch_index_base"):
        assert setting in message
    assert info.value.fields["torch_index_url"] == f"{dead}/cpu"
    assert str(tmp_path / "root" / "config.yaml") in message


def test_sizes_read_in_one_decimal_format():
    cases = {0: "0 B", 999: "999 B", 1536: "1.5 kB", 999_960: "1 MB", 25_213_000_000: "25.2 GB", 117e9: "117 GB",
             26.0e9: "26 GB", -2e9: "-2 GB", 3e18: "3000 PB"}
    assert {n: format_size(n) for n in cases} == cases
    assert format_size(None) == "unknown"


def test_the_toolkit_envs_ansible_playbook_starts_without_warnings():
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stderr == "", done.stderr


def test_machine_memory_reads_in_the_binary_sizes_it_is_sold_in():
    """A "16 GB" Mac and a "192 GB" Mac Studio read 16 GiB and 192 GiB, not 17.2 GB and 206 GB."""
    cases = {16 * 2**30: "16 GiB", 192 * 2**30: "192 GiB", 24564 * 2**20: "24 GiB", 16_700_000_000: "15.6 GiB",
             512: "512 B", 2**40: "1 TiB"}
    assert {n: format_memory(n) for n in cases} == cases


def test_quiet_plan_prints_its_one_line_result(cli):
    code, out, _ = cli("-q", "plan", DEMO_MODEL)
    assert code == 0
    assert out.count("\n") == 1 and out.startswith(f"{DEMO_MODEL}: fits, cpu, torch 2.13.0 [cpu], fp32, download ")


def test_the_same_quantity_reads_the_same_in_facts_plan_and_doctor(cli, tmp_path):
    facts = json.loads((FIXTURES / "hosts" / "cpu-only.json").read_text())
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts))
    ram = format_memory(facts["ram_bytes"])
    disk = format_size(facts["disk_free_bytes"])
    host = tmp_path / "recorded"
    host.mkdir()
    (host / "host.json").write_text(json.dumps({k: facts[k] for k in ("os", "arch", "ram_bytes",
                                                                      "disk_free_bytes")}))
    _, facts_out, _ = cli("facts", "--from-dir", host)
    assert f"RAM:       {ram}\n" in facts_out and f"Disk:      {disk} free" in facts_out
    manifest = write_manifest(tmp_path, "needs-ram", {"model": {"local": {"var": "w", "path": str(tmp_path)}}},
                              convert=[{"to_safetensors": {"input": "model", "output": "st"}}],
                              resources={"params_b": 0.001, "memory_gb": {"fp32": 1}, "convert_ram_gb": 4096})
    _, plan_out, plan_err = cli("plan", manifest, "--facts", path)
    assert f"this host has {ram}:" in plan_err and f"of {disk} free" in plan_out
    _, doctor_out, _ = cli("doctor", "--facts", path)
    assert f"({ram} RAM)" in doctor_out and f"{disk} free at" in doctor_out


def test_an_unchanged_render_says_its_entries_are_unchanged(cli, data_root):
    assert cli("render", DEMO_MODEL)[0] == 0
    code, out, _ = cli("render", DEMO_MODEL)
    assert code == 0 and "2 launch entries unchanged in " in out and "rendered 0" not in out


@pytest.mark.slow
def test_modelscope_fallback_prints_one_warning_not_the_clients_retry_log(tmp_path):
    hub_dir = tmp_path / "hub"
    files = {"config.json": b"{}\n", "model.safetensors": b"x" * 1000}
    write_repo(hub_dir, "org/tiny", {"main": files, "v1.0": files}, settings={"tags": ["v1.0"]})
    manifest = write_manifest(tmp_path, "ms-first", {"model": {
        "huggingface": {"repo": "org/tiny", "revision": "v1.0"},
        "modelscope": {"repo": "msorg/tiny", "revision": "v1.0.0"}, "prefer": "modelscope"}})
    from modelrig.hub.server import serve_in_thread

    url, stop = serve_in_thread(hub_dir)
    try:
        done = subprocess.run([sys.executable, "-m", "modelrig", "fetch", str(manifest), "--hf-endpoint", url,
                               "--modelscope-endpoint", f"http://127.0.0.1:{closed_port()}"], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "MODELRIG_NO_PROGRESS": "1"})
    finally:
        stop()
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "modelscope unreachable" in lines[0] and "falling back to huggingface" in lines[0]


def test_a_branch_fetched_before_is_used_from_the_store_when_no_hub_answers(cli, tmp_path):
    hub_dir = tmp_path / "hub"
    write_repo(hub_dir, "org/tiny", {"main": {"config.json": b"{}\n", "model.safetensors": b"x" * 1000}})
    manifest = write_manifest(tmp_path, "branch-model", {"model": {
        "huggingface": {"repo": "org/tiny", "revision": "main", "to_pin": True}}})
    from modelrig.hub.server import serve_in_thread

    url, stop = serve_in_thread(hub_dir)
    try:
        assert cli("fetch", manifest, "--hf-endpoint", url)[0] == 0
    finally:
        stop()
    dead = f"http://127.0.0.1:{closed_port()}"
    code, out, err = cli("fetch", manifest, "--hf-endpoint", dead, "--modelscope-endpoint", dead, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert not result["changed"]
    assert any("no hub reachable; using commit" in n for n in result["details"]["notes"])
    assert "modelrig: warning: model: no hub reachable; using commit" in err
    # Without an earlier fetch the same call is the one-line hub_unreachable error with the hint.
    other = write_manifest(tmp_path, "never-fetched", {"model": {
        "huggingface": {"repo": "org/other", "revision": "main", "to_pin": True}}})
    code, _, err = cli("fetch", other, "--hf-endpoint", dead, "--modelscope-endpoint", dead)
    assert code == 5 and "[hub_unreachable]" in err and "nothing listens there" in err
