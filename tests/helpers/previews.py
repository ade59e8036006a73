"""Requests for the controller's planner preview (`python -m modelrig.orchestrate.preview`): recorded hosts and a
user manifest that needs Rust, shared by the preview and rust_toolchain tests."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
OUTPUTS = REPO / "tests" / "fixtures" / "host_outputs"
#: seed 002's Mac Studio as `sysctl` and `sw_vers` answer (tests/test_ansible_mac.py gives the same answers).
MAC = {"host": {"os": "darwin", "arch": "arm64", "disk_free_bytes": 500 * 10**9, "data_root": "/Users/demo/m"},
       "outputs": {"sysctl": "hw.memsize: 206158430208\nhw.ncpu: 24\nmachdep.cpu.brand_string: Apple M2 Ultra\n",
                   "sw_vers": "ProductName:\t\tmacOS\nProductVersion:\t\t14.3.1\nBuildVersion:\t\t23D60\n"}}
#: A Linux server with one H100 (a recorded nvidia-smi table, driver 535: CUDA 12.2 at most) and 256 GB.
H100 = {"host": {"os": "linux", "arch": "x86_64", "disk_free_bytes": 500 * 10**9, "data_root": "/srv/m"},
        "outputs": {"nvidia-smi": (OUTPUTS / "nvidia-smi_1x_h100-80gb-hbm3_535.104.12.txt").read_text(),
                    "meminfo": "MemTotal:       263856228 kB\n"}}


def rust_manifest(folder: Path, model: str = "rust-tiny-ziya") -> Path:
    """The demo manifest as a user manifest whose env builds tokenizers from a pinned source ref (needs Rust)."""
    data = yaml.safe_load((REPO / "model_manifests" / "demo-tiny-ziya.yaml").read_text())
    data["id"] = model
    data["env"]["tokenizers"] = {"source": "git", "repo": "huggingface/tokenizers", "ref": "v0.15.2"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder
