"""Real virtual environments for tests, built with uv and cached by their spec."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: torch 2.13.0 is the CPU build available from pip's find-links on these machines; other versions pull CUDA.
TORCH = "torch==2.13.0"
CACHE = Path(os.environ.get("MODELRIG_TEST_CACHE", Path.home() / ".cache" / "modelrig-tests"))


def pip_find_links() -> list[str]:
    """find-links folders from pip's own configuration, so uv sees the same local wheels as pip."""
    links = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p]
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if "find-links" in line:
            links += line.split("=", 1)[1].strip().strip("'\"").split()
    return sorted({link for link in links if Path(link).is_dir()})


class VenvFactory:
    """`get(name, packages)` returns the python of a venv holding exactly those packages."""

    def __init__(self, root: Path = CACHE / "venvs") -> None:
        self.root = root
        self.uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv") or "uv"

    def get(self, packages: list[str], *, python: str | None = None) -> Path:
        """Build (once) and return `<venv>/bin/python` for this package list."""
        python = python or sys.executable
        spec = {"packages": sorted(packages), "python": _python_version(python)}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        venv = self.root / key
        done = venv / ".complete"
        if done.is_file():
            return venv / "bin" / "python"
        self.root.mkdir(parents=True, exist_ok=True)
        # One builder per spec at a time: two test sessions sharing the cache must not build into one folder.
        with open(self.root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.is_file():
                self._build(venv, python, packages)
                done.write_text(json.dumps(spec))
        return venv / "bin" / "python"

    def _build(self, venv: Path, python: str, packages: list[str]) -> None:
        shutil.rmtree(venv, ignore_errors=True)
        env = {**os.environ, "UV_CACHE_DIR": str(CACHE / "uv"), "VIRTUAL_ENV": str(venv)}
        subprocess.run([self.uv, "venv", "-q", "-p", python, str(venv)], check=True, env=env)
        cmd = [self.uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
               "--index-strategy", "unsafe-best-match"]
        for link in pip_find_links():
            cmd += ["--find-links", link]
        subprocess.run([*cmd, *packages], check=True, env=env)


def _python_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys;print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


#: A launch-era env: LLaMA loading as of transformers 4.37.
T437 = [TORCH, "transformers==4.37.0", "tokenizers", "sentencepiece", "accelerate", "protobuf", "numpy<2"]
#: The conversion env: tensorflow-cpu plus the last transformers with TF loaders and convert_llama_weights_to_hf.
TF_CONVERT = [TORCH, "transformers==4.47.1", "sentencepiece", "protobuf", "tiktoken", "blobfile", "accelerate",
              "numpy<2", "tensorflow-cpu", "tf-keras", "h5py"]
#: Launch templates, old side: gradio 3.x (`.style()`, `queue(concurrency_count=...)`, tuple Chatbot) over the
#: Ziya-era transformers 4.30.2 / tokenizers 0.13.3 (which need protobuf 3.20.x).
OLD_GRADIO = [TORCH, "transformers==4.30.2", "tokenizers==0.13.3", "sentencepiece", "accelerate", "protobuf==3.20.3",
              "numpy<2", "gradio==3.50.2", "gradio_client==0.6.1", "httpx<0.28", "fastapi<0.113", "pillow<11"]
#: Launch templates, current side: gradio 6 (messages Chatbot) and streamlit over T437.
CURRENT_UI = [*T437, "gradio>=6,<7", "streamlit", "pillow"]
#: Launch templates, Gradio 5 side: the pins of the Qwen2-VL/JoyCaption era (processor chat templates, gradio 5).
GRADIO5_VLM = [TORCH, "transformers==4.47.1", "tokenizers", "sentencepiece", "accelerate", "protobuf", "numpy<2",
               "pillow", "gradio>=5.4,<6"]
