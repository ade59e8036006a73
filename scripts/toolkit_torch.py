"""Decide how `scripts/bootstrap.sh` installs torch into the toolkit env (standard library only: it runs first).

The toolkit needs only CPU tensors (conversions, tiny test models). On Linux PyPI's `torch` wheel is the CUDA
build plus about twenty nvidia-*/cuda-* wheels and triton (several GB), so Linux gets the CPU build from
PyTorch's CPU index (`https://download.pytorch.org/whl/cpu`, about 200 MB) with the `+cpu` local version pinned
on x86_64, so that nothing but a CPU build can satisfy it. macOS keeps PyPI's default wheels (CPU and MPS).

When the CPU index does not answer (a mirror-only network, an air-gapped host), the plain requirement is
installed with pip's own configuration (`PIP_INDEX_URL`, `PIP_FIND_LINKS`, pip.conf mirrors and local wheel
folders), and a message on stderr says so. Which build that gave is said after the install, from the installed
torch itself (`--installed`): a mirror's wheel folder may well hold the CPU build.

Usage: `python scripts/toolkit_torch.py REQUIREMENT` prints the arguments for `pip install`, one per line;
`python scripts/toolkit_torch.py --installed` (with the toolkit env's Python) says which torch build it has.
Knobs: `MODELRIG_TORCH_INDEX` (the CPU index; empty: always use pip's configuration).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import urllib.error
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT = 5.0
_EXACT_PIN = re.compile(r"^\s*torch\s*==\s*([0-9][0-9A-Za-z.]*)\s*$")


def cpu_requirement(requirement: str, *, machine: str) -> str:
    """`torch==X` becomes `torch==X+cpu` on x86_64 (the CPU index's local version; its aarch64 wheels have none).

    Anything else (a range, a version that already has a local part) is returned unchanged.
    """
    match = _EXACT_PIN.match(requirement)
    if match and machine in ("x86_64", "amd64", "AMD64") and "+" not in match.group(1):
        return f"torch=={match.group(1)}+cpu"
    return requirement


def index_reachable(url: str, *, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when the index answers an HTTP request for its torch page (any HTTP status counts as an answer)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/torch/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pip_args(requirement: str, *, system: str, machine: str, index: str, reachable: bool) -> tuple[list[str], str]:
    """The `pip install` arguments for torch, and a message for the user ("" when there is nothing to say).

    `system`/`machine` are `platform.system()`/`platform.machine()`; `index` the CPU index ("" for none).
    """
    if system != "Linux" or not index:
        return [requirement], ""
    if reachable:
        return ["--index-url", index, cpu_requirement(requirement, machine=machine)], ""
    message = (f"bootstrap: the PyTorch CPU index {index} is unreachable; installing {requirement} with pip's own "
               "configuration instead (PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf)")
    return [requirement], message


def installed_build_message(version: str, cuda: str | None, *, system: str) -> str:
    """What bootstrap says of the torch it installed ("" for a CPU or macOS build: nothing to fix)."""
    if system != "Linux" or not cuda:
        return ""
    return (f"bootstrap: the toolkit env got torch {version}, the CUDA {cuda} build (several GB with its nvidia "
            "wheels; conversions need only the CPU build): for the CPU build point PIP_FIND_LINKS at a folder with "
            "a torch +cpu wheel, or MODELRIG_TORCH_INDEX at a mirror of the CPU index, and run make setup again")


def describe_installed() -> int:
    """Print (stderr) what installed_build_message says of this interpreter's torch."""
    import torch

    message = installed_build_message(torch.__version__, torch.version.cuda, system=platform.system())
    if message:
        print(message, file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """Print the pip arguments for the requirement in argv[1], one per line; a message goes to stderr."""
    if argv[1:] == ["--installed"]:
        return describe_installed()
    if len(argv) != 2:
        print("usage: toolkit_torch.py REQUIREMENT", file=sys.stderr)
        return 2
    requirement = argv[1]
    index = os.environ.get("MODELRIG_TORCH_INDEX", CPU_INDEX)
    system, machine = platform.system(), platform.machine()
    reachable = bool(index) and system == "Linux" and index_reachable(index)
    args, message = pip_args(requirement, system=system, machine=machine, index=index, reachable=reachable)
    if message:
        print(message, file=sys.stderr)
    print("\n".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
