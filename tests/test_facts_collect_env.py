"""torch collect_env reports: OS, GPUs, driver, CPU and the "sm_XX is not compatible" warning, from real reports."""

from __future__ import annotations

import pytest

from modelrig.facts.collect_env import parse_collect_env
from modelrig.facts.gpus import lookup_capability
from tests.conftest import HOST_OUTPUTS

HOSTS = HOST_OUTPUTS

# file -> (torch, torch CUDA, OS, arch, CUDA available, GPUs, driver, CPU, CPU count)
REPORTS = {
    "collect_env_linux_h100-80gb-hbm3_torch2.9.1+cu126_driver580.126.09_TRUNCATED.txt": (
        "2.9.1+cu126", "12.6", "Ubuntu 22.04.5 LTS", "x86_64", True, ["NVIDIA H100 80GB HBM3"], "580.126.09", None,
        224),
    "collect_env_linux_h100-pcie_torch2.0.1+cu117_sm90-incompatible_TRUNCATED.txt": (
        "2.0.1+cu117", "11.7", "Ubuntu 22.04.3 LTS", "x86_64", True, ["NVIDIA H100 PCIe"], "535.104.12", None, None),
    "collect_env_macos-arm64_apple-m2-max_torch2.10-nightly.txt": (
        "2.10.0.dev20251008", None, "macOS 13.7.4", "arm64", False, [], None, "Apple M2 Max", None),
    "collect_env_macos-arm64_m1-macbookpro13_torch1.13-nightly_mps-built-not-available.txt": (
        "1.13.0.dev20220525", None, "macOS 12.2.1", "arm64", False, [], None, None, None),
}


def test_every_collect_env_fixture_has_expectations():
    assert sorted(p.name for p in HOSTS.glob("collect_env_*")) == sorted(REPORTS)


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_collect_env_report(name: str):
    r = parse_collect_env((HOSTS / name).read_text())
    assert (r.torch_version, r.torch_cuda, r.os_name, r.arch, r.cuda_available, r.gpu_names, r.driver_version,
            r.cpu, r.cpu_count) == REPORTS[name]


def test_incompatible_gpu_warning_gives_its_capability_and_agrees_with_the_table():
    r = parse_collect_env((HOSTS / "collect_env_linux_h100-pcie_torch2.0.1+cu117_sm90-incompatible_TRUNCATED.txt")
                          .read_text())
    assert r.incompatible_gpus == {"NVIDIA H100 PCIe": "9.0"}
    assert lookup_capability("NVIDIA H100 PCIe").capability == "9.0"


def test_multi_gpu_report_lists_every_gpu():
    text = "GPU models and configuration: \nGPU 0: NVIDIA A100-SXM4-80GB\nGPU 1: NVIDIA A100-SXM4-80GB\n\n" \
           "Nvidia driver version: 535.104.05\n"
    r = parse_collect_env(text)
    assert r.gpu_names == ["NVIDIA A100-SXM4-80GB"] * 2 and r.driver_version == "535.104.05"


def _from_dir(tmp_path, fixture: str, **extra: str):
    from modelrig.facts.collect import facts_from_dir

    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "collect_env.txt").write_text((HOSTS / fixture).read_text())
    for name, text in extra.items():
        (folder / name).write_text(text)
    return facts_from_dir(folder, data_root=tmp_path)


def test_a_mac_collect_env_report_in_from_dir_gives_chip_os_and_mps(tmp_path):
    facts = _from_dir(tmp_path, "collect_env_macos-arm64_apple-m2-max_torch2.10-nightly.txt")
    assert (facts.os, facts.os_version, facts.arch) == ("darwin", "13.7.4", "arm64")
    assert facts.apple_chip == "Apple M2 Max" and facts.cpu == "Apple M2 Max"
    assert facts.mps_available is True and facts.platform == "mps"


def test_a_report_saying_mps_is_not_available_is_believed(tmp_path):
    facts = _from_dir(tmp_path, "collect_env_macos-arm64_m1-macbookpro13_torch1.13-nightly_mps-built-not-available.txt")
    assert facts.os == "darwin" and facts.mps_available is False and facts.platform == "cpu"


def test_a_linux_report_fills_driver_and_os_but_gpus_need_nvidia_smi(tmp_path):
    name = "collect_env_linux_h100-pcie_torch2.0.1+cu117_sm90-incompatible_TRUNCATED.txt"
    facts = _from_dir(tmp_path, name)
    assert (facts.os, facts.os_version, facts.driver_version) == ("linux", "Ubuntu 22.04.3 LTS", "535.104.12")
    assert facts.gpus == []
    assert any("NVIDIA H100 PCIe but not their memory" in w for w in facts.warnings)
    assert any("not built for NVIDIA H100 PCIe (sm_90)" in w for w in facts.warnings)
    table = (HOSTS / "nvidia-smi_1x_h100-80gb-hbm3_535.104.12.txt").read_text()
    (tmp_path / "b").mkdir()
    with_smi = _from_dir(tmp_path / "b", name, **{"nvidia-smi.txt": table})
    assert [g.name for g in with_smi.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert not any("not their memory" in w for w in with_smi.warnings)
