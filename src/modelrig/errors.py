"""Error classes of the engine; the CLI turns each into one clear line and an exit code."""

from __future__ import annotations


class ModelrigError(Exception):
    """Base class: a problem the user can act on. `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(ModelrigError):
    """Bad command-line input (a missing option, an unknown model id)."""

    exit_code = 2


class ManifestError(ModelrigError):
    """One or more problems in a manifest file; `problems` holds every one of them, each a full line."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ModelNotFoundError(UsageError):
    """No manifest has the requested id."""


class ConfigError(ModelrigError):
    """The host configuration file is invalid."""

    exit_code = 2


class HostCannotRunError(ModelrigError):
    """The planner refuses: this host cannot run the model as described. The message says what would."""

    exit_code = 3


class DiskSpaceError(ModelrigError):
    """Not enough free disk for a download or conversion; nothing was started."""

    exit_code = 4


class FetchError(ModelrigError):
    """A download failed: missing repo or revision, unreachable endpoint, gated repo, hash mismatch."""

    exit_code = 5


class ConversionError(ModelrigError):
    """A conversion step failed on its input (missing shard, mismatched shapes, wrong convention)."""

    exit_code = 6


class EnvBuildError(ModelrigError):
    """A model environment could not be built; nothing was marked complete."""

    exit_code = 7


class LaunchError(ModelrigError):
    """Rendering or starting a demo failed, or it did not become healthy in time."""

    exit_code = 8
