"""`modelrig doctor`: recorded hosts (facts fixtures and recorded command outputs), this machine, and this machine
inside `unshare -n` (hubs FAIL with the mirror hint, nothing hangs; a local hub makes the Hugging Face check OK;
loopback down is named with the command that brings it up)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from modelrig.facts.collect import OUTPUT_FILES
from modelrig.netcheck import LOOPBACK_HINT, MIRROR_HINT
from tests.conftest import FIXTURES
from tests.helpers.hub import client_env, write_repo
from tests.helpers.offline import offline, unshare_available

HOSTS = FIXTURES / "hosts"
OUTPUTS = FIXTURES / "host_outputs"
REAL_MODEL = "ziya-llama-13b-v1.1"


def by_name(report: dict) -> dict[str, dict]:
    """The checks of a `doctor --json` report by name (the first of each name)."""
    found: dict[str, dict] = {}
    for check in report["checks"]:
        found.setdefault(check["name"], check)
    return found


def test_recorded_a100_can_run_the_13b_model_and_says_so(cli):
    code, out, err = cli("doctor", REAL_MODEL, "--facts", HOSTS / "a100-80gb.json", "--json")
    assert code == 0, err
    report = json.loads(out)
    checks = by_name(report)
    assert report["ok"] and report["recorded"]
    assert checks["gpus"]["status"] == "ok" and "A100" in checks["gpus"]["detail"]
    assert checks["model"]["status"] == "ok" and checks["model"]["detail"].startswith(f"{REAL_MODEL}: fits, cuda")
    # A recorded host answers only what its facts say: nothing about this machine's Python or network.
    assert not {"python", "uv", "hf hub", "pip index", "loopback", "tokens"} & set(checks)


def test_recorded_host_disk_is_its_own_data_root_not_this_machines(cli, tmp_path):
    recorded = json.loads((HOSTS / "cpu-only.json").read_text())
    code, out, _ = cli("doctor", "--facts", HOSTS / "cpu-only.json", "--json")
    disk = by_name(json.loads(out))["disk"]
    assert code == 0
    assert disk["detail"] == f"200 GB free at {recorded['data_root']}"
    assert disk["data"] == {"path": recorded["data_root"], "free_bytes": recorded["disk_free_bytes"]}


def test_recorded_cpu_host_fails_the_model_with_what_would_work_and_exits_1(cli):
    code, out, _ = cli("doctor", REAL_MODEL, "--facts", HOSTS / "cpu-only.json")
    assert code == 1
    lines = out.splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith("FAIL  model"))
    assert f"{REAL_MODEL} cannot run on this host" in lines[fail]
    assert lines[fail + 1].strip().startswith("fix: ") and "GPU" in lines[fail + 1]
    assert lines[-1].startswith("doctor: ") and lines[-1].endswith("1 fail")


def test_recorded_nvidia_smi_output_gives_driver_cuda_and_gpus(cli, tmp_path):
    folder = tmp_path / "recorded"
    folder.mkdir()
    (folder / OUTPUT_FILES["nvidia-smi"]).write_text(
        (OUTPUTS / "nvidia-smi_1x_h100-80gb-hbm3_590.48.01_cuda13.1.txt").read_text())
    (folder / "host.json").write_text(json.dumps({"os": "linux", "arch": "x86_64", "ram_bytes": 200 * 10**9,
                                                  "disk_free_bytes": 10 * 10**9}))
    code, out, err = cli("doctor", "--from-dir", folder, "--json")
    assert code == 0, err
    checks = by_name(json.loads(out))
    assert checks["gpus"]["detail"].startswith("1x NVIDIA H100 80GB HBM3")
    assert checks["driver"] == {**checks["driver"], "status": "ok",
                                "detail": "NVIDIA driver 590.48.01, CUDA 13.1 at most"}
    # 10 GB is enough for the demo, not for real models: a WARN naming the fix.
    assert checks["disk"]["status"] == "warn" and "10 GB free" in checks["disk"]["detail"]
    assert "MODELRIG_HOME" in checks["disk"]["fix"]


def test_recorded_mac_reports_chip_and_mps(cli, tmp_path):
    folder = tmp_path / "recorded"
    folder.mkdir()
    (folder / OUTPUT_FILES["system_profiler"]).write_text(
        (OUTPUTS / "system_profiler_SPHardwareDataType_m5_mac17-2_partial_super-cores.txt").read_text())
    (folder / "sw_vers.txt").write_text("15.4\n")
    code, out, _ = cli("doctor", "--from-dir", folder, "--json")
    checks = by_name(json.loads(out))
    assert checks["apple"]["status"] == "ok" and checks["apple"]["detail"] == (
        "Apple M5, 32 GiB unified memory, MPS available")
    assert code == 0


def test_a_full_data_disk_is_a_fail_with_the_fix(cli, tmp_path):
    facts = json.loads((HOSTS / "rtx4090.json").read_text())
    facts["disk_free_bytes"] = 10**9
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts))
    code, out, _ = cli("doctor", "--facts", path, "--json")
    assert code == 1
    disk = by_name(json.loads(out))["disk"]
    assert disk["status"] == "fail" and disk["detail"].startswith("1 GB free at ")
    assert "MODELRIG_HOME" in disk["fix"]


@pytest.mark.slow
def test_this_machine_in_json_never_prints_token_values_or_proxy_passwords(tmp_path, data_root):
    env = {**client_env(tmp_path), "HF_TOKEN": "hf_secret_value_123", "MODELSCOPE_API_TOKEN": "ms_secret_456",
           "https_proxy": "http://alice:proxy-pass-789@127.0.0.1:9", "MODELRIG_HOME": str(data_root)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "modelrig", "doctor", "demo-tiny-ziya", "--json", "--timeout", "2"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    text = proc.stdout + proc.stderr
    for secret in ("hf_secret_value_123", "ms_secret_456", "proxy-pass-789", "alice"):
        assert secret not in text
    report = json.loads(proc.stdout)
    checks = by_name(report)
    assert checks["tokens"]["detail"] == "set: HF_TOKEN, MODELSCOPE_API_TOKEN"
    assert checks["proxy"]["data"]["proxies"] == {"https_proxy": "http://127.0.0.1:9"}
    # Every https endpoint goes through the (dead) proxy, as pip and the hub clients would: all fail, quickly.
    assert checks["hf hub"]["data"]["via_proxy"] and checks["hf hub"]["status"] == "fail"
    assert checks["model"]["status"] == "ok" and checks["python"]["status"] == "ok"
    assert sys.version.split()[0] in checks["python"]["detail"]
    assert proc.returncode == 1 and report["ok"] is False
    assert elapsed < 60


@pytest.mark.slow
def test_offline_namespace_hubs_fail_with_the_mirror_hint_and_nothing_hangs(tmp_path, data_root):
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(data_root)}
    started = time.perf_counter()
    proc = subprocess.run(offline([sys.executable, "-m", "modelrig", "doctor", "--json"]), capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 1, proc.stderr
    checks = by_name(json.loads(proc.stdout))
    assert checks["loopback"]["status"] == "ok"
    for name in ("hf hub", "modelscope", "pip index"):
        assert checks[name]["status"] == "fail", checks[name]
    assert checks["hf hub"]["fix"] == MIRROR_HINT
    assert "pip.index_url" in checks["pip index"]["fix"] and "--offline" in checks["pip index"]["fix"]
    assert "pip.use_torch_index: false" in checks["torch index"]["fix"]
    assert elapsed < 30


@pytest.mark.slow
def test_offline_namespace_with_a_local_hub_makes_the_hf_check_ok(tmp_path, data_root):
    hub_dir = tmp_path / "hub"
    write_repo(hub_dir, "org/tiny", {"main": {"config.json": b"{}"}})
    config = tmp_path / "config.yaml"
    script = tmp_path / "doctor.sh"
    script.write_text(textwrap.dedent(f"""\
        set -e
        {sys.executable} -m modelrig hub serve {hub_dir} --port 0 > {tmp_path}/serve.out 2> {tmp_path}/serve.err &
        SERVER=$!
        trap 'kill $SERVER 2>/dev/null || true' EXIT
        for i in $(seq 1 100); do grep -q http:// {tmp_path}/serve.out 2>/dev/null && break; sleep 0.1; done
        URL=$(grep -o 'http://[^ ]*' {tmp_path}/serve.out)
        printf 'hub: {{hf_endpoint: "%s", modelscope_endpoint: "http://127.0.0.1:9"}}\\n' "$URL" > {config}
        {sys.executable} -m modelrig --config {config} doctor --json || true
        """))
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(data_root)}
    proc = subprocess.run(offline(["bash", str(script)]), capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    checks = by_name(json.loads(proc.stdout))
    assert checks["hf hub"]["status"] == "ok", checks["hf hub"]
    assert checks["hf hub"]["data"]["url"] == yaml.safe_load(config.read_text())["hub"]["hf_endpoint"]
    # The other hub is down but fetch falls back to the one that answers: a WARN, not a FAIL.
    assert checks["modelscope"]["status"] == "warn"
    assert checks["modelscope"]["fix"].startswith("the other hub answers")


@pytest.mark.slow
def test_loopback_down_is_named_with_the_command_that_brings_it_up(tmp_path, data_root):
    if not unshare_available():
        pytest.fail("unshare -n is needed to take loopback away (run as root with util-linux and iproute2)")
    env = {**client_env(tmp_path), "MODELRIG_HOME": str(data_root)}
    doctor = subprocess.run(["unshare", "-n", sys.executable, "-m", "modelrig", "doctor", "--json"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    loop = by_name(json.loads(doctor.stdout))["loopback"]
    assert loop["status"] == "fail" and loop["fix"] == LOOPBACK_HINT
    assert "unshare -n sh -c 'ip link set lo up && make demo-engine'" in LOOPBACK_HINT
    demo = subprocess.run(["unshare", "-n", sys.executable, "-m", "modelrig", "demo"], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert demo.returncode == 8
    assert demo.stderr.count("\n") == 1 and "ip link set lo up && make demo-engine" in demo.stderr
    assert "[loopback_down]" in demo.stderr
    assert not (data_root / "demo-hub").exists()


def test_bad_timeout_is_a_usage_error(cli):
    code, _, err = cli("doctor", "--timeout", "0")
    assert code == 2 and err.startswith("modelrig: error: --timeout 0: must be more than 0 seconds")


def test_unknown_model_is_one_line(cli):
    code, _, err = cli("doctor", "no-such-model", "--facts", HOSTS / "cpu-only.json")
    assert code == 2 and err.count("\n") == 1 and "no-such-model" in err
