"""scripts/gpu_pack.py's choice of wheels: a `uv pip compile` output less torch and what only torch needs."""

from __future__ import annotations

import importlib.util

from tests.helpers.sshhosts import REPO_ROOT

_spec = importlib.util.spec_from_file_location("gpu_pack", REPO_ROOT / "scripts" / "gpu_pack.py")
assert _spec is not None and _spec.loader is not None
gpu_pack = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_pack)

COMPILED = """\
accelerate==1.15.0
    # via -r demo.in
filelock==4.1.0
    # via
    #   huggingface-hub
    #   torch
huggingface-hub==0.36.2
    # via
    #   accelerate
    #   transformers
jinja2==3.1.6
    # via torch
markupsafe==3.0.4
    # via jinja2
mpmath==1.3.0
    # via sympy
numpy==1.26.4
    # via
    #   -r demo.in
    #   accelerate
nvidia-cublas==13.1.1.3
    # via
    #   cuda-toolkit
    #   nvidia-cudnn-cu13
cuda-toolkit==13.0.3.0
    # via torch
nvidia-cudnn-cu13==9.24.0.43
    # via torch
sympy==1.14.0
    # via torch
torch==2.13.0
    # via
    #   -r demo.in
    #   accelerate
transformers==4.37.0
    # via -r demo.in
pyyaml==6.0.4
    # via
    #   -c constraints.txt
    #   transformers
"""


def test_torch_and_what_only_torch_needs_are_left_to_the_gpu_machine() -> None:
    assert gpu_pack.without_machine_packages(COMPILED) == [
        "accelerate==1.15.0", "filelock==4.1.0", "huggingface-hub==0.36.2", "numpy==1.26.4", "pyyaml==6.0.4",
        "transformers==4.37.0"]


def test_nothing_is_left_out_when_the_machine_provides_nothing() -> None:
    assert len(gpu_pack.without_machine_packages(COMPILED, provided=())) == 14


def test_the_toolkit_requirements_are_pyprojects_and_uv() -> None:
    requirements = gpu_pack.toolkit_requirements()
    assert requirements[0] == "pyyaml>=6.0,<7" and requirements[-1] == "uv" and "torch>=2.1" in requirements
    assert gpu_pack.demo_requirements()[-1] == "torch==2.13.0" and not [
        r for r in gpu_pack.demo_requirements() if r.startswith("gradio")]
