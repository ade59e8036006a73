"""The planner: a manifest plus host facts become a concrete plan (torch build, precision, disk, steps)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TorchBuild:
    """The PyTorch build for this host."""

    version: str  # "2.1.2"
    #: "cu121", "cu118", ... on CUDA hosts; "cpu" without a GPU; "default" for the PyPI wheels (macOS arm64, MPS).
    variant: str
    #: The wheel index to install torch (and torch_companions) from; None means the default index.
    index_url: str | None
    #: Requirement strings to install from that index, torch first: ["torch==2.1.2", "torchvision==0.16.2"].
    requirements: list[str]


@dataclass(frozen=True)
class EnvPlan:
    """The resolved environment spec; its digest keys the env directory."""

    python: str
    torch: TorchBuild
    #: Manifest packages plus this platform's extras, in order.
    packages: list[str]
    #: None, or {"source": "wheel"|"git", "version"?, "repo"?, "ref"?} from the manifest.
    tokenizers: dict[str, Any] | None
    #: Environment variables for every process in the env (manifest env + platform env).
    env_vars: dict[str, str]


@dataclass(frozen=True)
class Plan:
    """What `modelrig up` will do for one model on one host. `--json` prints `to_dict()` (documented, stable)."""

    model: str
    platform: str  # "cuda" | "mps" | "cpu"
    device: str  # "cuda" | "mps" | "cpu"
    #: Weights precision: "fp32" | "bf16" | "fp16"; with quantization, the compute dtype.
    dtype: str
    #: None, "int8" or "int4" (bitsandbytes; CUDA only).
    quantization: str | None
    #: Estimated memory at the chosen precision, and what the device offers, in GB (1e9 bytes).
    memory_needed_gb: float
    memory_available_gb: float
    env: EnvPlan
    download_bytes: int
    disk_needed_bytes: int
    disk_free_bytes: int
    #: Ordered stages: "env", "fetch", "convert", "render", "launch", each with a one-line description.
    steps: list[dict[str, str]]
    #: Launch entry names that can run on this host.
    launch: list[str]
    fits: bool
    #: Why the host cannot run the model and what would (set when fits is False).
    refusal: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: GPUs the weights are spread over: 1 on one GPU, more with device_map="auto"; 0 on MPS and CPU hosts.
    gpus: int = 0
    #: Ids of the `model:` dependencies built (or reused) first, in build order.
    dependencies: list[str] = field(default_factory=list)
    #: Downloaded bytes `--prune-sources` frees once the conversions that read them are done.
    prunable_bytes: int = 0
    #: Downloads and conversion outputs already on the data root; download_bytes and disk_needed_bytes leave them
    #: out (a re-run of a host the first run filled still fits).
    present_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)
