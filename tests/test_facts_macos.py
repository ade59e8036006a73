"""macOS facts: system_profiler and sysctl parsers on real outputs, Apple chip, unified memory and MPS support."""

from __future__ import annotations

import pytest

from modelrig.facts import macos
from modelrig.facts.collect import facts_from_outputs
from modelrig.facts.collect_env import parse_collect_env
from tests.conftest import HOST_OUTPUTS

HOSTS = HOST_OUTPUTS
GiB = 1024**3

# file -> (model identifier, chip, cores, core kinds, memory bytes)
PROFILES = {
    "system_profiler_SPHardwareDataType_m1-pro_macbookpro18-1.txt": (
        "MacBookPro18,1", "Apple M1 Pro", 10, {"performance": 8, "efficiency": 2}, 16 * GiB),
    "system_profiler_SPHardwareDataType_m1_macbookair10-1_partial.txt": (
        "MacBookAir10,1", "Apple M1", 8, {"performance": 4, "efficiency": 4}, 8 * GiB),
    "system_profiler_SPHardwareDataType_m2-pro_mac14-10.txt": (
        "Mac14,10", "Apple M2 Pro", 12, {"performance": 8, "efficiency": 4}, 16 * GiB),
    "system_profiler_SPHardwareDataType_m5_mac17-2_partial_super-cores.txt": (
        "Mac17,2", "Apple M5", 10, {"super": 4, "efficiency": 6}, 32 * GiB),
}


def test_every_system_profiler_fixture_has_expectations():
    assert sorted(p.name for p in HOSTS.glob("system_profiler_*")) == sorted(PROFILES)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_system_profiler_gives_chip_cores_and_memory(name: str):
    hw = macos.parse_system_profiler((HOSTS / name).read_text())
    assert (hw.model_identifier, hw.chip, hw.cores, hw.core_kinds, hw.memory_bytes) == PROFILES[name]


def test_intel_mac_has_a_processor_and_no_chip():
    text = "Hardware:\n\n    Hardware Overview:\n\n      Model Name: MacBook Pro\n" \
           "      Processor Name: Quad-Core Intel Core i7\n      Total Number of Cores: 4\n      Memory: 16 GB\n"
    hw = macos.parse_system_profiler(text)
    assert (hw.chip, hw.processor, hw.cores, hw.memory_bytes) == (None, "Quad-Core Intel Core i7", 4, 16 * GiB)
    facts = facts_from_outputs({"system_profiler": text}, host={"arch": "x86_64"})
    assert (facts.apple_chip, facts.cpu, facts.mps_available, facts.platform) == (
        None, "Quad-Core Intel Core i7", False, "cpu")


def test_sysctl_on_macos_11_names_no_chip():
    info = macos.parse_sysctl((HOSTS / "sysctl_machdep.cpu_m1_2020_apple-processor.txt").read_text())
    assert (info.brand, info.apple_chip, info.cpu_count, info.translated) == ("Apple processor", None, 8, False)
    facts = facts_from_outputs({"sysctl": (HOSTS / "sysctl_machdep.cpu_m1_2020_apple-processor.txt").read_text()},
                               host={})
    assert (facts.os, facts.arch, facts.cpu_count) == ("darwin", "arm64", 8)
    assert facts.apple_chip == "Apple Silicon (unnamed)"
    assert any("Apple processor" in w for w in facts.warnings)


def test_sysctl_with_x86_keys_on_an_m1_is_flagged_as_rosetta():
    text = (HOSTS / "sysctl_machdep.cpu_m1_grep_TRUNCATED.txt").read_text()
    info = macos.parse_sysctl(text)
    assert (info.brand, info.apple_chip, info.cpu_count, info.translated) == ("Apple M1", "Apple M1", 8, True)
    facts = facts_from_outputs({"sysctl": text}, host={})
    assert facts.apple_chip == "Apple M1" and facts.arch == "arm64"
    assert any("Rosetta" in w for w in facts.warnings)


def test_sysctl_memsize_and_ncpu():
    info = macos.parse_sysctl("hw.memsize: 206158430208\nhw.ncpu: 24\nmachdep.cpu.brand_string: Apple M2 Ultra\n")
    assert (info.memsize, info.cpu_count, info.apple_chip, info.translated) == (192 * GiB, 24, "Apple M2 Ultra", False)


def test_apple_facts_report_chip_unified_memory_and_mps():
    outputs = {
        "system_profiler": (HOSTS / "system_profiler_SPHardwareDataType_m1-pro_macbookpro18-1.txt").read_text(),
        "sw_vers": "ProductName:\t\tmacOS\nProductVersion:\t\t14.2.1\nBuildVersion:\t\t23C71\n",
    }
    facts = facts_from_outputs(outputs, host={"disk_free_bytes": 10, "data_root": "/d"})
    assert (facts.os, facts.arch, facts.cpu, facts.cpu_count) == ("darwin", "arm64", "Apple M1 Pro", 10)
    assert (facts.apple_chip, facts.ram_bytes, facts.unified_memory_bytes) == ("Apple M1 Pro", 16 * GiB, 16 * GiB)
    assert (facts.os_version, facts.mps_available, facts.platform) == ("14.2.1", True, "mps")


@pytest.mark.parametrize(("version", "arch", "expected"), [
    ("12.2.1", "arm64", False), ("12.3", "arm64", True), ("13.7.4", "arm64", True), ("26.0", "arm64", True),
    (None, "arm64", None), ("14.0", "x86_64", False),
])
def test_mps_needs_apple_silicon_and_macos_12_3(version: str | None, arch: str, expected: bool | None):
    assert macos.mps_supported(version, arch=arch) is expected


def test_mps_rule_agrees_with_torch_on_a_real_m1_report():
    report = parse_collect_env((HOSTS / "collect_env_macos-arm64_m1-macbookpro13_torch1.13-nightly_mps-built-not-"
                                         "available.txt").read_text())
    assert (report.os_name, report.arch, report.mps_available) == ("macOS 12.2.1", "arm64", False)
    assert macos.mps_supported(report.os_name.split()[-1], arch=report.arch) is report.mps_available


def test_sw_vers_product_version():
    assert macos.parse_sw_vers("14.6.1\n") == "14.6.1"
    assert macos.parse_sw_vers("ProductName: macOS\nProductVersion: 15.1\n") == "15.1"
    assert macos.parse_sw_vers("") is None
