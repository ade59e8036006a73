"""NVIDIA facts: the nvidia-smi table, --query-gpu CSV, -L and --version parsers on real outputs, and merging."""

from __future__ import annotations

import pytest

from modelrig.facts import nvidia
from modelrig.facts.gpus import known_gpus, lookup_capability
from tests.conftest import HOST_OUTPUTS, fixture_files

HOSTS = HOST_OUTPUTS

# file -> (smi version, driver, CUDA max, [(index, name, MiB, MIG mode)], complete)
TABLES = {
    "nvidia-smi_1x-of-N_rtx-pro-6000-blackwell_580.95.05_truncated-name_TRUNCATED.txt": (
        "580.95.05", "580.95.05", "13.0", [(0, "NVIDIA RTX PRO 6000 Blac...", 97887, "Disabled")], False),
    "nvidia-smi_1x_a100-sxm4-40gb_450.119.03_TRUNCATED.txt": (
        "450.119.03", "450.119.03", "11.0", [(0, "A100-SXM4-40GB", 40537, "Disabled")], False),
    "nvidia-smi_1x_h100-80gb-hbm3_535.104.12.txt": (
        "535.104.12", "535.104.12", "12.2", [(0, "NVIDIA H100 80GB HBM3", 81559, "Disabled")], True),
    "nvidia-smi_1x_h100-80gb-hbm3_590.48.01_cuda13.1.txt": (
        "590.48.01", "590.48.01", "13.1", [(0, "NVIDIA H100 80GB HBM3", 81559, "Disabled")], True),
    "nvidia-smi_1x_h100-80gb-hbm3_MIG-enabled_590.48.01.txt": (
        "590.48.01", "590.48.01", "13.1", [(0, "NVIDIA H100 80GB HBM3", 81559, "Enabled")], True),
    "nvidia-smi_1x_h200_590.48.01.txt": (
        "590.48.01", "590.48.01", "13.1", [(0, "NVIDIA H200", 143771, "Disabled")], True),
    "nvidia-smi_1x_l40s_595.80.txt": ("595.80", "595.80", "13.2", [(0, "NVIDIA L40S", 46068, "N/A")], True),
    "nvidia-smi_1x_rtx2080super_591.86_windows_wddm.txt": (
        "591.86", "591.86", "13.1", [(0, "NVIDIA GeForce RTX 2080 ...", 8192, "N/A")], True),
    "nvidia-smi_1x_rtx2080super_610.57.04_linux_KMD-UMD-header.txt": (
        "610.57.04", "610.57.04", "13.3", [(0, "NVIDIA GeForce RTX 2080 ...", 8192, "N/A")], True),
    "nvidia-smi_1x_rtx2080super_610.62_windows_KMD-UMD-header.txt": (
        "610.62", "610.62", "13.3", [(0, "NVIDIA GeForce RTX 2080 ...", 8192, "N/A")], True),
    "nvidia-smi_1x_rtx3090_580.142_cuda13.0_TRUNCATED-processes.txt": (
        "580.142", "580.142", "13.0", [(0, "NVIDIA GeForce RTX 3090", 24576, "N/A")], True),
    "nvidia-smi_1x_rtx4080super_595.71.05_linux_truncated-name.txt": (
        "595.71.05", "595.71.05", "13.2", [(0, "NVIDIA GeForce RTX 4080 ...", 16376, "N/A")], True),
    "nvidia-smi_1x_rtx5070_575.64.03_freebsd_cuda-NA_TRUNCATED.txt": (
        "575.64.03", "575.64.03", None, [(0, "NVIDIA GeForce RTX 5070", 12227, "N/A")], True),
    "nvidia-smi_1x_rtx5090_595.71.05_cuda13.2_TRUNCATED-processes.txt": (
        "595.71.05", "595.71.05", "13.2", [(0, "NVIDIA GeForce RTX 5090", 32607, "N/A")], True),
    "nvidia-smi_1x_tesla-p100-pcie-16gb_560.35.03_kaggle.txt": (
        "560.35.03", "560.35.03", "12.6", [(0, "Tesla P100-PCIE-16GB", 16384, "N/A")], True),
    "nvidia-smi_1x_tesla-p100-pcie-16gb_570.172.08_kaggle.txt": (
        "570.172.08", "570.172.08", "12.8", [(0, "Tesla P100-PCIE-16GB", 16384, "N/A")], True),
    "nvidia-smi_1x_v100-sxm2-16gb_colab_smi450.66_driver418.67_TRUNCATED-processes.txt": (
        "450.66", "418.67", "10.1", [(0, "Tesla V100-SXM2...", 16130, "ERR!")], True),
    "nvidia-smi_2x-of-N_a100-sxm4-40gb_580.126.09_bottlerocket_TRUNCATED.txt": (
        "580.126.09", "580.126.09", "13.0",
        [(0, "NVIDIA A100-SXM4-40GB", 40960, "Disabled"), (1, "NVIDIA A100-SXM4-40GB", 40960, "Disabled")], False),
    "nvidia-smi_2x-of-N_b200_610.43.02_KMD-UMD-header_TRUNCATED.txt": (
        "610.43.02", "610.43.02", "13.3",
        [(0, "NVIDIA B200", 183359, "Disabled"), (1, "NVIDIA B200", 183359, "Disabled")], False),
    "nvidia-smi_2x_mixed_rtx5090+rtx4090_580.82.09_TRUNCATED.txt": (
        "580.82.09", "580.82.09", "13.0",
        [(0, "NVIDIA GeForce RTX 5090", 32607, "N/A"), (1, "NVIDIA GeForce RTX 4090", 24564, "N/A")], False),
    "nvidia-smi_2x_mixed_tesla-p100+gtx1070_580.82.07_local.txt": (
        "580.82.07", "580.82.07", "13.0",
        [(0, "Tesla P100-PCIE-16GB", 16384, "N/A"), (1, "NVIDIA GeForce GTX 1070", 8192, "N/A")], True),
    "nvidia-smi_2x_rtx4090_535.146.02_lxd_container.txt": (
        "535.146.02", "535.146.02", "12.2", [(i, "NVIDIA GeForce RTX 4090", 24564, "N/A") for i in range(2)], True),
    "nvidia-smi_2x_rtx5090_610.57.04_KMD-UMD-header_TRUNCATED.txt": (
        "610.57.04", "610.57.04", "13.3",
        [(i, "NVIDIA GeForce RTX 5090", 32607, "N/A") for i in range(2)], False),
    "nvidia-smi_4x_rtx-a6000_510.73.05.txt": (
        "510.73.05", "510.73.05", "11.6", [(i, "NVIDIA RTX A6000", 49140, "N/A") for i in range(4)], True),
    "nvidia-smi_4x_rtx4090_535.146.02_supermicro_host.txt": (
        "535.146.02", "535.146.02", "12.2", [(i, "NVIDIA GeForce RTX 4090", 24564, "N/A") for i in range(4)], True),
    "nvidia-smi_8x_tesla-p100-sxm2_440.33.01_pre-MIG-format.txt": (
        "440.33.01", "440.33.01", "10.2", [(i, "Tesla P100-SXM2...", 16280, None) for i in range(8)], True),
}


def test_every_table_fixture_has_expectations():
    assert sorted(p.name for p in HOSTS.glob("nvidia-smi_*")) == sorted(TABLES)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_gives_driver_cuda_and_every_gpu(name: str):
    smi, driver, cuda, gpus, complete = TABLES[name]
    table = nvidia.parse_table((HOSTS / name).read_text())
    assert (table.smi_version, table.driver_version, table.cuda_driver_max) == (smi, driver, cuda)
    assert [(g.index, g.name, g.memory_mib, g.mig_mode) for g in table.gpus] == gpus
    assert table.complete is complete


def test_r610_kmd_header_counts_as_driver_version():
    table = nvidia.parse_table((HOSTS / "nvidia-smi_1x_rtx2080super_610.57.04_linux_KMD-UMD-header.txt").read_text())
    assert table.driver_version == "610.57.04" and table.cuda_driver_max == "13.3"


def test_mig_enabled_table_counts_mig_devices_and_marks_the_gpu():
    text = (HOSTS / "nvidia-smi_1x_h100-80gb-hbm3_MIG-enabled_590.48.01.txt").read_text()
    table = nvidia.parse_table(text)
    assert table.mig_devices == 4
    merged = nvidia.merge(table=table)
    assert [g.mig for g in merged.gpus] == [True]
    plain = nvidia.merge(table=nvidia.parse_table((HOSTS / "nvidia-smi_1x_h200_590.48.01.txt").read_text()))
    assert [g.mig for g in plain.gpus] == [False]


def test_truncated_names_are_flagged():
    table = nvidia.parse_table((HOSTS / "nvidia-smi_1x_rtx4080super_595.71.05_linux_truncated-name.txt").read_text())
    assert table.gpus[0].name_truncated
    full = nvidia.parse_table((HOSTS / "nvidia-smi_1x_l40s_595.80.txt").read_text())
    assert not full.gpus[0].name_truncated


def test_text_without_a_table_gives_no_gpus():
    table = nvidia.parse_table("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n")
    assert table.gpus == [] and table.driver_version is None


def test_table_cut_inside_a_gpu_block_keeps_the_gpu_and_reports_incomplete():
    lines = (HOSTS / "nvidia-smi_4x_rtx-a6000_510.73.05.txt").read_text().splitlines()
    cut = "\n".join(lines[:19])  # ends inside GPU 2's block
    table = nvidia.parse_table(cut)
    assert [g.index for g in table.gpus] == [0, 1, 2]
    assert not table.complete


# file -> [(index, name, memory.total MiB or None, compute_cap, driver)]
CSVS = {
    "query-gpu-csv_h100_590.48.01.csv": [("0", "NVIDIA H100 80GB HBM3", 81559, "9.0", "590.48.01")],
    "query-gpu-csv_rtx4080super_595.71.05.csv": [("0", "NVIDIA GeForce RTX 4080 SUPER", 16376, "8.9", "595.71.05")],
    "query-gpu-csv_rtx2080super_610.57.04_kmd.csv": [("0", "NVIDIA GeForce RTX 2080 SUPER", 8192, "7.5", "610.57.04")],
    "query-gpu-csv_2x-mixed_titanv+rtx5880ada_570.86.15.txt": [
        ("0", "NVIDIA TITAN V", None, "7.0", "570.86.15"),
        ("1", "NVIDIA RTX 5880 Ada Generation", None, "8.9", "570.86.15")],
    "query-gpu-csv_autodl_5x-nvidia-vgpu-32gb_compute-cap.txt": [(None, "NVIDIA vGPU-32GB", None, "8.9", None)] * 5,
    "query-gpu-csv_compute_cap_only_8.9.txt": [(None, None, None, "8.9", None)],
}


def test_every_csv_fixture_has_expectations():
    assert sorted(p.name for p in HOSTS.glob("query-gpu-csv_*") if p.suffix != ".cmd") == sorted(CSVS)


@pytest.mark.parametrize("name", sorted(CSVS))
def test_query_csv_rows(name: str):
    rows = nvidia.parse_query_csv((HOSTS / name).read_text())
    got = [(r.get("index"), r.get("name"), nvidia.memory_mib(r.get("memory.total")), r.get("compute_cap"),
            r.get("driver_version")) for r in rows]
    assert got == CSVS[name]


def test_every_full_csv_fixture_has_its_recorded_command():
    commands = fixture_files(HOSTS, "query-gpu-csv_*.cmd")
    assert sorted(p.with_suffix(".csv").name for p in commands) == sorted(n for n in CSVS if n.endswith(".csv"))


@pytest.mark.parametrize("cmd", [p.name for p in fixture_files(HOSTS, "query-gpu-csv_*.cmd")])
def test_recorded_command_names_the_csv_columns(cmd: str):
    fields = nvidia.fields_from_command((HOSTS / cmd).read_text())
    header = (HOSTS / cmd).with_suffix(".csv").read_text().splitlines()[0].split(", ")
    assert len(fields) > 200
    assert fields[:5] == [h.split(" [")[0] for h in header[:5]]
    assert {"name", "memory.total", "compute_cap", "uuid"} <= set(fields)
    # The same data read with the command's field list and no header row.
    body = "\n".join((HOSTS / cmd).with_suffix(".csv").read_text().splitlines()[1:])
    rows = nvidia.parse_query_csv(body, fields=fields)
    assert len(rows) == 1 and rows[0]["compute_cap"] and rows[0]["name"].startswith("NVIDIA")


def test_noheader_nounits_csv_reads_with_modelrig_fields():
    text = "0, NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.104.05, GPU-1234\n1, NVIDIA A100-SXM4-80GB, 81920, 8.0, " \
           "535.104.05, GPU-5678\n"
    rows = nvidia.parse_query_csv(text, fields=nvidia.QUERY_FIELDS)
    assert [(r["index"], nvidia.memory_mib(r["memory.total"]), r["uuid"]) for r in rows] == [
        ("0", 81920, "GPU-1234"), ("1", 81920, "GPU-5678")]


LISTS = {
    "nvidia-smi-L_2x-mixed_titanv+rtx5880ada.txt": [
        (0, "NVIDIA TITAN V", "GPU-b5169cef-2205-c30e-f2b3-220cfa14bafd"),
        (1, "NVIDIA RTX 5880 Ada Generation", "GPU-7518f6b0-991f-ce2b-3d37-c779130d3137")],
    "nvidia-smi-L_h100_590.48.01.txt": [(0, "NVIDIA H100 80GB HBM3", "GPU-00000000-0000-0000-0000-000000000000")],
    "nvidia-smi-L_rtx4080super_595.71.05.txt": [
        (0, "NVIDIA GeForce RTX 4080 SUPER", "GPU-00000000-0000-0000-0000-000000000000")],
}


@pytest.mark.parametrize("name", sorted(LISTS))
def test_gpu_list(name: str):
    assert [(g.index, g.name, g.uuid) for g in nvidia.parse_list((HOSTS / name).read_text())] == LISTS[name]


def test_gpu_list_counts_mig_devices():
    text = ("GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)\n"
            "  MIG 3g.20gb     Device  0: (UUID: MIG-0e9a5b7c-1c5c-5f76-9b66-1c4b5a8c7d21)\n"
            "  MIG 3g.20gb     Device  1: (UUID: MIG-1e9a5b7c-1c5c-5f76-9b66-1c4b5a8c7d21)\n")
    assert [g.mig_devices for g in nvidia.parse_list(text)] == [2]


@pytest.mark.parametrize(("name", "expected"), [
    ("nvidia-smi--version_h100_590.48.01.txt", ("590.48.01", "590.48.01", "13.1")),
    ("nvidia-smi--version_rtx2080super_610.57.04_KMD.txt", ("610.57.04", "610.57.04", "13.3")),
])
def test_version_output_including_r610_deprecations(name: str, expected: tuple[str, str, str]):
    version = nvidia.parse_version((HOSTS / name).read_text())
    assert (version.smi_version, version.driver_version, version.cuda_driver_max) == expected


def test_merge_takes_exact_names_and_capability_from_csv_and_cuda_from_table():
    table = nvidia.parse_table((HOSTS / "nvidia-smi_1x_rtx4080super_595.71.05_linux_truncated-name.txt").read_text())
    query = nvidia.parse_query_csv((HOSTS / "query-gpu-csv_rtx4080super_595.71.05.csv").read_text())
    merged = nvidia.merge(table=table, query=query)
    (gpu,) = merged.gpus
    assert (gpu.name, gpu.memory_mib, gpu.compute_capability, gpu.capability_source, gpu.name_truncated) == (
        "NVIDIA GeForce RTX 4080 SUPER", 16376, "8.9", "nvidia-smi", False)
    assert (merged.driver_version, merged.cuda_driver_max, merged.warnings) == ("595.71.05", "13.2", [])


def test_merge_takes_exact_names_from_gpu_list():
    table = nvidia.parse_table((HOSTS / "nvidia-smi_1x_rtx4080super_595.71.05_linux_truncated-name.txt").read_text())
    listed = nvidia.parse_list((HOSTS / "nvidia-smi-L_rtx4080super_595.71.05.txt").read_text())
    (gpu,) = nvidia.merge(table=table, listed=listed).gpus
    assert (gpu.name, gpu.compute_capability, gpu.capability_source) == ("NVIDIA GeForce RTX 4080 SUPER", "8.9",
                                                                        "table")


def test_merge_without_compute_cap_uses_the_table_and_warns_on_partial_names():
    table = nvidia.parse_table((HOSTS / "nvidia-smi_8x_tesla-p100-sxm2_440.33.01_pre-MIG-format.txt").read_text())
    merged = nvidia.merge(table=table)
    assert {(g.compute_capability, g.capability_source, g.name_truncated) for g in merged.gpus} == {
        ("6.0", "table-prefix", True)}
    assert len(merged.gpus) == 8 and len(merged.warnings) == 8
    assert "partial name match" in merged.warnings[0]


def test_merge_of_mixed_gpus_keeps_each_capability():
    text = (HOSTS / "nvidia-smi_2x_mixed_rtx5090+rtx4090_580.82.09_TRUNCATED.txt").read_text()
    merged = nvidia.merge(table=nvidia.parse_table(text))
    assert [(g.name, g.compute_capability) for g in merged.gpus] == [
        ("NVIDIA GeForce RTX 5090", "12.0"), ("NVIDIA GeForce RTX 4090", "8.9")]
    assert merged.warnings == ["nvidia-smi output was cut off: there may be more GPUs than listed"]


def test_merge_of_csv_without_memory_or_index_uses_row_order_and_warns():
    query = nvidia.parse_query_csv((HOSTS / "query-gpu-csv_autodl_5x-nvidia-vgpu-32gb_compute-cap.txt").read_text())
    merged = nvidia.merge(query=query)
    assert [g.index for g in merged.gpus] == [0, 1, 2, 3, 4]
    assert {g.compute_capability for g in merged.gpus} == {"8.9"}
    assert len([w for w in merged.warnings if "memory size unknown" in w]) == 5
    assert any("highest supported CUDA version" in w for w in merged.warnings)


def test_freebsd_cuda_na_gives_no_cuda_maximum_and_a_warning():
    text = (HOSTS / "nvidia-smi_1x_rtx5070_575.64.03_freebsd_cuda-NA_TRUNCATED.txt").read_text()
    merged = nvidia.merge(table=nvidia.parse_table(text))
    assert merged.cuda_driver_max is None
    assert any("CUDA Version: N/A" in w for w in merged.warnings)


def test_version_output_fills_driver_and_cuda_when_the_table_is_missing():
    query = nvidia.parse_query_csv((HOSTS / "query-gpu-csv_h100_590.48.01.csv").read_text())
    version = nvidia.parse_version((HOSTS / "nvidia-smi--version_h100_590.48.01.txt").read_text())
    merged = nvidia.merge(query=query, version=version)
    assert (merged.driver_version, merged.cuda_driver_max) == ("590.48.01", "13.1")
    assert merged.gpus[0].memory_mib == 81559


@pytest.mark.parametrize(("name", "capability", "match"), [
    ("NVIDIA H100 80GB HBM3", "9.0", "exact"),
    ("A100-SXM4-40GB", "8.0", "exact"),  # drivers before 2021 print no "NVIDIA " prefix
    ("GeForce RTX 3090", "8.6", "exact"),
    ("NVIDIA GeForce RTX 3090", "8.6", "exact"),
    ("Tesla T4", "7.5", "exact"),
    ("NVIDIA B200", "10.0", "exact"),
    ("NVIDIA GeForce RTX 4080 ...", "8.9", "prefix"),
    ("NVIDIA GeForce RTX 2080 ...", "7.5", "prefix"),
    ("NVIDIA RTX PRO 6000 Blac...", "12.0", "prefix"),
    ("Tesla V100-SXM2...", "7.0", "prefix"),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", "8.9", "prefix"),
    ("NVIDIA A1...", None, "none"),  # A100 (8.0), A10 (8.6), A16 (8.6): cannot tell
    ("NVIDIA vGPU-32GB", None, "none"),
])
def test_capability_lookup(name: str, capability: str | None, match: str):
    found = lookup_capability(name)
    assert (found.capability, found.match) == (capability, match)
    assert (found.note is None) == (match == "exact")


def test_ambiguous_partial_name_lists_the_candidates():
    note = lookup_capability("NVIDIA A1...").note
    assert "NVIDIA A100-SXM4-40GB (8.0)" in note and "NVIDIA A10 (8.6)" in note


def test_capability_table_covers_every_gpu_in_the_fixtures():
    names = {g.name for name in TABLES for g in nvidia.parse_table((HOSTS / name).read_text()).gpus}
    for name in names:
        assert lookup_capability(name).capability, name
    assert all(cap.count(".") == 1 for cap in known_gpus().values())
