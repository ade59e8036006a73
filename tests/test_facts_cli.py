"""`modelrig facts`: live and recorded hosts, human and JSON output, environment hints, recorded planner hosts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from modelrig.facts import HostFacts
from modelrig.facts.collect import OUTPUT_FILES, cpu_count, detect_environment, facts_from_outputs, ram_bytes
from tests.conftest import FIXTURES, HOST_OUTPUTS, fixture_files
from tests.helpers.offline import offline

HOSTS = HOST_OUTPUTS
RECORDED = FIXTURES / "hosts"
PLANNER_HOSTS = ["a100-40gb", "a100-80gb", "rtx3090-old-driver", "rtx4090", "h100", "v100", "t4", "m2-ultra-192gb",
                 "cpu-only", "rtx5090"]


def _record(tmp_path: Path, files: dict[str, str]) -> Path:
    """A --from-dir folder holding real fixture outputs under their recorded names ("nvidia-smi" -> nvidia-smi.txt)."""
    folder = tmp_path / "recorded"
    folder.mkdir()
    for output, fixture in files.items():
        (folder / OUTPUT_FILES[output]).write_text((HOSTS / fixture).read_text())
    return folder


def test_live_facts_describe_this_host_as_json(cli, data_root):
    code, out, err = cli("facts", "--json")
    assert code == 0, err
    data = json.loads(out)
    facts = HostFacts.from_dict(data)
    assert (facts.os, facts.arch) == (platform.system().lower(), platform.machine().lower())
    assert facts.cpu_count == cpu_count() and 1 <= facts.cpu_count <= len(os.sched_getaffinity(0))
    assert facts.ram_bytes > 0 and facts.disk_free_bytes > 0
    assert facts.data_root == str(data_root)
    assert isinstance(data["gpus"], list) and "warnings" in data


def test_live_facts_without_nvidia_smi_report_a_cpu_host(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, no system_profiler
    code, out, _ = cli("facts", "--json")
    data = json.loads(out)
    assert code == 0 and data["gpus"] == [] and data["driver_version"] is None
    assert HostFacts.from_dict(data).platform == ("cpu" if sys.platform != "darwin" else "mps")


def test_live_facts_run_nvidia_smi_and_merge_table_and_csv(cli, monkeypatch, tmp_path):
    """A stand-in nvidia-smi printing the real H100 outputs: the table gives CUDA, the CSV the capability."""
    table = HOSTS / "nvidia-smi_1x_h100-80gb-hbm3_590.48.01_cuda13.1.txt"
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f'  --query-gpu=*) echo "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 590.48.01, GPU-abc" ;;\n'
        f"  *) cat {table} ;;\n"
        "esac\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    code, out, _ = cli("facts", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559,
                             "compute_capability": "9.0", "uuid": "GPU-abc", "mig": False, "name_truncated": False,
                             "capability_source": "nvidia-smi"}]
    assert (data["driver_version"], data["cuda_driver_max"], data["warnings"]) == ("590.48.01", "13.1", [])


def test_old_driver_without_compute_cap_falls_back_to_query_without_it(cli, monkeypatch, tmp_path):
    table = HOSTS / "nvidia-smi_1x_a100-sxm4-40gb_450.119.03_TRUNCATED.txt"
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=*compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2 ;;\n'
        '  --query-gpu=*) echo "0, A100-SXM4-40GB, 40537, 450.119.03, GPU-1" ;;\n'
        '  -L) echo "GPU 0: A100-SXM4-40GB (UUID: GPU-1)" ;;\n'
        f"  *) cat {table} ;;\n"
        "esac\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    code, out, _ = cli("facts", "--json")
    data = json.loads(out)
    assert code == 0
    assert [(g["name"], g["memory_mib"], g["compute_capability"], g["capability_source"], g["uuid"])
            for g in data["gpus"]] == [("A100-SXM4-40GB", 40537, "8.0", "table", "GPU-1")]
    assert data["cuda_driver_max"] == "11.0"


def test_saved_outputs_describe_the_same_host_through_from_dir(cli, monkeypatch, tmp_path):
    """`--save` on a (remote) host, `--from-dir` elsewhere: the same facts, old-driver fallbacks included."""
    table = HOSTS / "nvidia-smi_2x_rtx4090_535.146.02_lxd_container.txt"
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=*) printf "0, NVIDIA GeForce RTX 4090, 24564, 8.9, 535.146.02, GPU-a\\n'
        '1, NVIDIA GeForce RTX 4090, 24564, 8.9, 535.146.02, GPU-b\\n" ;;\n'
        f"  *) cat {table} ;;\n"
        "esac\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    code, live, _ = cli("facts", "--json", "--save", tmp_path / "rec")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["host.json", "nvidia-smi-query.csv",
                                                                   "nvidia-smi.txt"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, recorded, _ = cli("facts", "--json", "--from-dir", tmp_path / "rec")
    assert code == 0 and json.loads(recorded) == json.loads(live)
    assert [g["uuid"] for g in json.loads(live)["gpus"]] == ["GPU-a", "GPU-b"]
    code, _, err = cli("facts", "--from-dir", tmp_path / "rec", "--save", tmp_path / "again")
    assert code == 2 and "cannot be combined" in err


def test_hanging_nvidia_smi_times_out_and_counts_as_no_gpu(cli, monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexec sleep 30\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    code, out, _ = cli("facts", "--json", "--timeout", "0.5")
    assert code == 0 and json.loads(out)["gpus"] == []


def test_from_dir_reads_recorded_outputs_and_host_json(cli, tmp_path):
    folder = _record(tmp_path, {"nvidia-smi": "nvidia-smi_2x_mixed_rtx5090+rtx4090_580.82.09_TRUNCATED.txt"})
    (folder / "host.json").write_text(json.dumps({"os": "linux", "arch": "x86_64", "cpu": "AMD Ryzen 9 7950X",
                                                  "cpu_count": 32, "ram_bytes": 2**37, "disk_free_bytes": 10**12}))
    code, out, _ = cli("facts", "--json", "--from-dir", folder)
    data = json.loads(out)
    assert code == 0
    assert [(g["name"], g["memory_mib"], g["compute_capability"]) for g in data["gpus"]] == [
        ("NVIDIA GeForce RTX 5090", 32607, "12.0"), ("NVIDIA GeForce RTX 4090", 24564, "8.9")]
    assert (data["cpu"], data["ram_bytes"], data["driver_version"], data["cuda_driver_max"]) == (
        "AMD Ryzen 9 7950X", 2**37, "580.82.09", "13.0")
    assert data["warnings"] == ["nvidia-smi output was cut off: there may be more GPUs than listed"]


def test_from_dir_without_host_json_says_what_is_missing(cli, tmp_path):
    folder = _record(tmp_path, {"nvidia-smi": "nvidia-smi_1x_rtx2080super_610.62_windows_KMD-UMD-header.txt"})
    code, out, _ = cli("facts", "--json", "--from-dir", folder)
    data = json.loads(out)
    assert code == 0 and data["os"] == "windows" and data["driver_version"] == "610.62"
    assert any("no host.json" in w for w in data["warnings"])


def test_from_dir_human_summary(cli, tmp_path):
    folder = _record(tmp_path, {"nvidia-smi": "nvidia-smi_4x_rtx4090_535.146.02_supermicro_host.txt"})
    code, out, _ = cli("facts", "--from-dir", folder)
    assert code == 0
    assert "4x NVIDIA GeForce RTX 4090 (24 GiB, compute 8.9)" in out
    assert "535.146.02 (CUDA 12.2 at most)" in out
    assert "Platform:  cuda" in out


def test_from_dir_mac_summary_mentions_chip_and_unified_memory(cli, tmp_path):
    m5 = "system_profiler_SPHardwareDataType_m5_mac17-2_partial_super-cores.txt"
    folder = _record(tmp_path, {"system_profiler": m5})
    (folder / "sw_vers.txt").write_text("15.4\n")
    code, out, _ = cli("facts", "--from-dir", folder)
    assert code == 0
    assert "Apple:     Apple M5, 32 GiB unified memory, MPS available" in out
    assert "Platform:  mps" in out


def test_from_dir_errors_are_one_line(cli, tmp_path):
    code, _, err = cli("facts", "--from-dir", tmp_path / "missing")
    assert code == 2 and err.strip().count("\n") == 0 and "not a folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("facts", "--from-dir", empty)
    assert code == 2 and "nvidia-smi.txt" in err
    (empty / "host.json").write_text("{not json")
    code, _, err = cli("facts", "--from-dir", empty)
    assert code == 2 and "host.json: invalid JSON at line 1" in err


@pytest.mark.parametrize(("markers", "environ", "hostname", "expected"), [
    (["root/autodl-tmp/", ".dockerenv"], {}, "x", ["autodl", "docker"]),
    ([], {}, "autodl-container-8f1147b36e-a9e9d8a4", ["autodl"]),
    (["dev/lxd/sock"], {}, "x", ["lxd"]),
    ([], {"container": "lxc"}, "x", ["lxd"]),
    ([], {"COLAB_RELEASE_TAG": "release-colab_20240626"}, "x", ["colab"]),
    (["kaggle/working/"], {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "x", ["kaggle"]),
    ([], {}, "x", []),
])
def test_environment_detection(tmp_path, markers, environ, hostname, expected):
    for marker in markers:
        path = tmp_path / marker
        if marker.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    assert detect_environment(root=tmp_path, environ=environ, hostname=hostname) == expected


def test_container_limits_lower_cpu_and_ram(tmp_path):
    cgroup = tmp_path / "sys" / "fs" / "cgroup"
    cgroup.mkdir(parents=True)
    assert cpu_count(root=tmp_path) == len(os.sched_getaffinity(0))
    assert ram_bytes(root=tmp_path) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    (cgroup / "cpu.max").write_text("50000 100000\n")  # half a CPU counts as one
    (cgroup / "memory.max").write_text(f"{2**30}\n")
    assert cpu_count(root=tmp_path) == 1
    assert ram_bytes(root=tmp_path) == 2**30
    (cgroup / "cpu.max").write_text("max 100000\n")
    (cgroup / "memory.max").write_text("max\n")
    assert cpu_count(root=tmp_path) == len(os.sched_getaffinity(0))
    assert ram_bytes(root=tmp_path) > 2**30


def test_planner_host_files_exist_and_load():
    for name in PLANNER_HOSTS:
        data = json.loads((RECORDED / f"{name}.json").read_text())
        facts = HostFacts.from_dict(data)
        assert data["comment"], name
        assert {k: v for k, v in data.items() if k in facts.to_dict()} == facts.to_dict(), name
    platforms = {n: HostFacts.from_dict(json.loads((RECORDED / f"{n}.json").read_text())).platform
                 for n in PLANNER_HOSTS}
    assert platforms["m2-ultra-192gb"] == "mps" and platforms["cpu-only"] == "cpu"
    assert {p for n, p in platforms.items() if n not in ("m2-ultra-192gb", "cpu-only")} == {"cuda"}


@pytest.mark.parametrize("path", fixture_files(RECORDED, "*.json"), ids=lambda p: p.stem)
def test_recorded_host_matches_what_its_raw_outputs_give(path: Path):
    """Host files built from real outputs are re-derived from them, so they cannot drift from the parsers."""
    data = json.loads(path.read_text())
    if "derived_from" not in data:
        assert "hand" in data["comment"], f"{path.name}: a host file not derived from outputs must say so"
        return
    outputs = {name: (HOSTS / fixture).read_text() for name, fixture in data["derived_from"].items()}
    host = {key: data[key] for key in data["hand_set"]}
    derived = facts_from_outputs(outputs, host=host)
    assert derived.to_dict() == HostFacts.from_dict(data).to_dict()


@pytest.mark.slow
def test_console_script_prints_json_without_network(tmp_path):
    script = Path(sys.executable).parent / "modelrig"
    done = subprocess.run(offline([str(script), "--data-root", str(tmp_path), "facts", "--json"]),
                          capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(done.stdout)["data_root"] == str(tmp_path)
