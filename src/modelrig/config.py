"""Host configuration (mirrors, endpoints, local weight paths) and the data-root layout every stage writes to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from modelrig.errors import ConfigError, UsageError
from modelrig.manifest import LocalRef

#: AutoDL containers mount their large, persistent data disk here; the system disk is small.
AUTODL_DATA_DISK = Path("/root/autodl-tmp")


def default_data_root() -> Path:
    """`$MODELRIG_HOME`, else AutoDL's data disk when present, else `~/.local/share/modelrig`."""
    if env := os.environ.get("MODELRIG_HOME"):
        return Path(env).expanduser()
    if os.access(AUTODL_DATA_DISK.parent, os.X_OK) and AUTODL_DATA_DISK.is_dir():  # /root is 0700 for other users
        return AUTODL_DATA_DISK / "modelrig"
    return Path.home() / ".local" / "share" / "modelrig"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HubSettings(_Strict):
    """Which hub to use and where it is (mirrors such as a China Hub mirror or a local `modelrig hub serve`)."""

    prefer: Literal["auto", "huggingface", "modelscope"] = "auto"
    hf_endpoint: str | None = None
    modelscope_endpoint: str | None = None
    #: A file holding the Hub token for gated repos (the HF_TOKEN environment variable wins).
    token_file: str | None = None


class PipSettings(_Strict):
    """Package indexes for model environments."""

    index_url: str | None = None
    extra_index_urls: list[str] = []
    find_links: list[str] = []
    #: Base of the PyTorch wheel indexes; the plan appends the variant (`/cu121`, `/cpu`).
    torch_index_base: str = "https://download.pytorch.org/whl"
    #: Use the torch variant index at all (off: take torch from the normal index, e.g. a local mirror).
    use_torch_index: bool = True


class PythonSettings(_Strict):
    """Where a venv's Python comes from when the host has no interpreter of the version a plan or lock names."""

    #: uv: `uv python install` (python-build-standalone builds, each checked against the sha256 in uv's downloads
    #: list); never: refuse, naming the version to install.
    install: Literal["uv", "never"] = "uv"
    #: A mirror of python-build-standalone's release downloads (uv's UV_PYTHON_INSTALL_MIRROR).
    mirror: str | None = None
    #: A downloads list in uv's JSON form (UV_PYTHON_DOWNLOADS_JSON_URL): builds uv does not know, with sha256.
    downloads_json_url: str | None = None


class CondaSettings(_Strict):
    """An existing Miniforge/conda install and its channels (e.g. a mirror)."""

    prefix: str | None = None
    channels: list[str] = ["conda-forge"]


class ServeSettings(_Strict):
    """How demos listen: loopback unless a host says otherwise (then auth is required)."""

    bind: str = "127.0.0.1"
    supervisor: Literal["auto", "systemd", "launchd", "process"] = "auto"
    #: launchd: `system` (LaunchDaemons with UserName: start with nobody logged in, back after a reboot; needs root
    #: or passwordless sudo) or `gui` (LaunchAgents of a console login).
    launchd_domain: Literal["system", "gui"] = "system"
    #: Ports by `MODEL/ENTRY`, over the manifest's (e.g. AutoDL forwards only 6006: `bluelm-7b-chat/chat: 6006`).
    ports: dict[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*/[a-z][a-z0-9_-]*$")],
                Annotated[int, Field(ge=1, le=65535)]] = {}


class ConvertSettings(_Strict):
    """What conversions do with their inputs."""

    #: Delete the hub-fetched sources a finished, stamped conversion read (`--prune-sources`): the fetch stamps
    #: keep every file's sha256, and they are downloaded again when the conversion must run again.
    prune_sources: StrictBool = False


class HostConfig(_Strict):
    """Everything about this host that is not in a manifest."""

    hub: HubSettings = HubSettings()
    pip: PipSettings = PipSettings()
    python: PythonSettings = PythonSettings()
    conda: CondaSettings = CondaSettings()
    serve: ServeSettings = ServeSettings()
    convert: ConvertSettings = ConvertSettings()
    #: Paths of user-supplied weights, by the `var` a manifest's `local:` source names.
    local: dict[str, str] = {}


def store_folder(store: Path, hub: str, repo: str) -> Path:
    """The folder of hub repo `repo` in store folder `store`: `<store>/<hub>/<org>--<name>`."""
    return store / hub / repo.replace("/", "--")


@dataclass(frozen=True)
class DataRoot:
    """The layout under the data root: one folder per stage."""

    root: Path

    @property
    def store(self) -> Path:
        """Fetched weights: `store/<hub>/<org>--<name>/`."""
        return self.root / "store"

    @property
    def models(self) -> Path:
        """Conversion outputs: `models/<model-id>/<output-name>/`."""
        return self.root / "models"

    @property
    def envs(self) -> Path:
        """Model environments, keyed by a hash of their resolved spec: `envs/<hash>/`."""
        return self.root / "envs"

    @property
    def launch(self) -> Path:
        """Rendered launch scripts: `launch/<model-id>/<entry>/`."""
        return self.root / "launch"

    @property
    def run(self) -> Path:
        """Pidfiles and logs of supervised processes: `run/<model-id>/`."""
        return self.root / "run"

    @property
    def cache(self) -> Path:
        """Download and package caches (uv, pip, hub clients)."""
        return self.root / "cache"

    @property
    def config_file(self) -> Path:
        """The host configuration file."""
        return self.root / "config.yaml"

    def store_dir(self, hub: str, repo: str) -> Path:
        """Where a hub repo is downloaded to."""
        return store_folder(self.store, hub, repo)

    def output_dir(self, model_id: str, output: str) -> Path:
        """Where a conversion step of a model writes its result."""
        return self.models / model_id / output


def load_host_config(path: Path | None, data_root: DataRoot) -> HostConfig:
    """Read the host config from `path`, `$MODELRIG_CONFIG`, or `<data root>/config.yaml`; defaults if none exists."""
    chosen = path or (Path(p) if (p := os.environ.get("MODELRIG_CONFIG")) else data_root.config_file)
    if not chosen.is_file():
        if path is not None:
            raise ConfigError(f"{path}: config file not found")
        return HostConfig()
    try:
        data = yaml.safe_load(chosen.read_text(encoding="utf-8")) or {}
        return HostConfig.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{chosen}: {where}: {first['msg']}") from None


def record_settings(path: Path, section: str, values: Mapping[str, object]) -> bool:
    """Set `section.KEY` to each of `values` in the host config file `path` (created when missing), keeping every
    other setting; the file is rewritten (atomically, without its comments) only when a value differs. Returns
    True when it was. A file that is not a valid host config is refused as `load_host_config` refuses it."""
    from modelrig.stamp import atomic_write_text

    data: dict[str, object] = {}
    if path.is_file():
        load_host_config(path, DataRoot(path.parent))
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    found = data.get(section)
    current = dict(found) if isinstance(found, dict) else {}
    if all(current.get(key) == value for key, value in values.items()):
        return False
    data[section] = {**current, **values}
    HostConfig.model_validate(data)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return True


@dataclass(frozen=True)
class Context:
    """What every command gets: the data root, the host config, and output switches."""

    data: DataRoot
    config: HostConfig
    quiet: bool = False
    as_json: bool = False


def local_weights_dir(name: str, ref: LocalRef, *, given: Mapping[str, str], config: HostConfig) -> Path:
    """The folder of user-supplied weights: `--local VAR=PATH`, else host config `local.VAR`, else the manifest's
    default `path`; a one-line usage error says how to give it when none is set or it is not a folder."""
    value = given.get(ref.var) or config.local.get(ref.var) or ref.path
    if not value:
        raise UsageError(f"{name}: local weights {ref.var!r} not given: pass --local {ref.var}=PATH or set "
                         f"local.{ref.var} in the host config")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UsageError(f"{name}: local weights {ref.var}={path}: not a directory")
    return path
