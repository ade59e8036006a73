"""The few private details of huggingface_hub and modelscope_hub that fetch relies on, in one place.

Each is a detail of a supported version range, checked by `tests/test_fetch_compat.py` against the oldest and
the newest release of that range (see `SUPPORTED`):

- huggingface_hub writes a `local_dir` download to `<local_dir>/.cache/huggingface/download/<path>.<sha>....
  .incomplete` and renames it into place: fetch hashes that file while it grows (no second read), and removes
  ones orphaned by a killed run.
- modelscope_hub draws one tqdm bar per file with no switch of its own: its download module's `tqdm` is given
  `disable=True` when progress is off.
"""

from __future__ import annotations

import functools
from pathlib import Path

#: The client releases these details are tested with (also the ranges pyproject.toml declares).
SUPPORTED = {"huggingface_hub": (">=1.18", "<3"), "modelscope": (">=1.38", "<2"), "modelscope-hub": (">=0.4", "<1")}


def hf_download_tmp_dir(local_dir: Path) -> Path:
    """Where huggingface_hub keeps the temporary files of downloads into `local_dir`."""
    return Path(local_dir) / ".cache" / "huggingface" / "download"


def hf_incomplete_glob(local_dir: Path, path: str, sha256: str | None) -> tuple[Path, str]:
    """(folder, glob pattern) of the temporary file huggingface_hub writes while downloading LFS file `path`."""
    return (hf_download_tmp_dir(local_dir) / path).parent, f"*.{sha256}.*.incomplete"


def quiet_modelscope_bars() -> None:
    """Switch off modelscope_hub's per-file progress bars (it reads no environment variable for that)."""
    import modelscope_hub._download as download_module

    current = getattr(download_module, "tqdm", None)
    if current is not None and not isinstance(current, functools.partial):
        download_module.tqdm = functools.partial(current, disable=True)
