"""scripts/gpu-check.sh on this machine, which has no GPU: `--pack DIR` fills DIR with what the check needs on a
GPU machine with no network (checked here by installing the toolkit and the demo's packages from DIR alone, in a
network namespace with loopback only, over a Python that has nothing but torch), and the check itself stops at its
GPU step with one line and exit 3. The CUDA steps after it never ran here (README "Platforms: what ran where")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.sshhosts import REPO_ROOT

pytestmark = pytest.mark.slow
SCRIPT = REPO_ROOT / "scripts" / "gpu-check.sh"
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
#: The toolkit env running these tests (the checkout's .venv, or CI's own env elsewhere) makes the pack.
TOOLKIT = {**os.environ, "MODELRIG_TOOLKIT_PYTHON": sys.executable}


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("gpu-pack") / "pack"
    made = subprocess.run([str(SCRIPT), "--pack", str(folder), "--python-version", HERE], capture_output=True,
                          text=True, check=False, timeout=1200, env=TOOLKIT)
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.startswith(f"gpu-check --pack: {folder} ready for Python {HERE} (")
    yield folder


def test_the_pack_holds_the_toolkit_the_demo_packages_and_the_tiny_hub(pack: Path) -> None:
    record = json.loads((pack / "pack.json").read_text())
    assert record["pythons"] == [HERE] and record["demo"] == "demo-tiny-ziya"
    assert (pack / record["modelrig_wheel"]).is_file()
    assert len(list(pack.glob("pip-*-py3-none-any.whl"))) == 1
    toolkit = (pack / f"toolkit-{HERE}.txt").read_text().split()
    demo = (pack / f"demo-{HERE}.txt").read_text().split()
    names = {pin.split("==")[0] for pin in toolkit + demo}
    # torch and what only torch needs are the GPU machine's own; the UI is not part of the check
    assert not names & {"torch", "triton", "sympy", "networkx", "gradio"}
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-"))]
    assert "transformers==4.37.0" in demo and "ansible-core" in {pin.split("==")[0] for pin in toolkit}
    wheels = {p.name.split("-")[0].lower().replace("_", "-") for p in pack.glob("*.whl")}
    assert {pin.split("==")[0].replace("_", "-") for pin in toolkit + demo} <= wheels
    assert (pack / "hub" / ".modelrig-hub-tokens").is_file()
    assert sorted(p.name for p in (pack / "hub" / "modelrig-tiny").iterdir()) == ["llama-meta", "ziya-delta"]


def _offline(script: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a network namespace of its own with loopback only."""
    path = tmp / "offline.sh"
    path.write_text("set -eu\nip link set lo up\n" + script)
    return subprocess.run(["unshare", "-n", "bash", str(path)], capture_output=True, text=True, check=False,
                          timeout=900)


def test_the_toolkit_and_the_demo_packages_install_from_the_pack_with_no_network(pack: Path, tmp_path: Path) -> None:
    """As the check installs them on the GPU machine: venvs over a Python whose site holds torch and nothing of the
    toolkit (here a venv of this machine's Python with the CPU torch), pip run from the pack's wheel, no index."""
    machine = tmp_path / "machine"
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", "/usr/bin/python3", str(machine)], check=True)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(machine / "bin" / "python"), "torch==2.13.0+cpu",
                    "--find-links", "/opt/wheels"], check=True, timeout=900)
    pip = next(pack.glob("pip-*.whl"))
    lines = []
    for env, spec in (("toolkit", f"{next(pack.glob('modelrig-*.whl'))} -c {pack}/toolkit-{HERE}.txt"),
                      ("demo", f"-r {pack}/demo-{HERE}.txt")):
        lines += [f"{machine}/bin/python -m venv --without-pip {tmp_path}/{env}",
                  f"{machine}/bin/python -c 'import sys; print(\"\\n\".join(p for p in sys.path if "
                  f"p.endswith(\"site-packages\")))' > $({tmp_path}/{env}/bin/python -c 'import sysconfig; "
                  f"print(sysconfig.get_paths()[\"purelib\"])')/machine-python.pth",
                  f"{tmp_path}/{env}/bin/python {pip}/pip install -q --disable-pip-version-check --no-index "
                  f"--find-links {pack} {spec}"]
    lines += [f"{tmp_path}/toolkit/bin/modelrig facts --json > {tmp_path}/facts.json",
              f"{tmp_path}/toolkit/bin/modelrig plan demo-tiny-ziya --facts {tmp_path}/facts.json --json "
              f"> {tmp_path}/plan.json",
              f"{tmp_path}/demo/bin/python -c 'import torch, transformers, accelerate, sentencepiece; "
              f"print(torch.__version__, transformers.__version__)'"]
    run = _offline("\n".join(lines) + "\n", tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.split()[-2:] == ["2.13.0+cpu", "4.37.0"]
    assert json.loads((tmp_path / "facts.json").read_text())["gpus"] == []
    assert json.loads((tmp_path / "plan.json").read_text())["model"] == "demo-tiny-ziya"


def test_without_an_nvidia_gpu_the_check_stops_with_one_line(pack: Path, tmp_path: Path) -> None:
    env = {**TOOLKIT, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    run = subprocess.run([str(SCRIPT), str(pack), str(tmp_path / "out")], capture_output=True, text=True,
                         check=False, env=env, timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (3, "", "gpu-check: no NVIDIA GPU found: nvidia-smi is not "
                                                               "on PATH\n")


def test_a_folder_that_is_no_pack_is_named(tmp_path: Path) -> None:
    run = subprocess.run([str(SCRIPT), str(tmp_path), str(tmp_path / "out")], capture_output=True, text=True,
                         check=False, timeout=60)
    assert (run.returncode, run.stderr) == (2, f"gpu-check: {tmp_path}/pack.json: missing: DIR must be made by "
                                               f"`{SCRIPT} --pack DIR`\n")
