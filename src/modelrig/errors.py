"""Error classes of the engine: a stable `code`, structured fields, and one clear line for the CLI.

Every error carries a machine-readable `code` (stable across releases, listed in `docs/result-json.md`) and
the fields a program needs to act on it (`repo_id`, `path`, `port`, ...). The CLI prints one line and exits
with `exit_code`; `--json` results carry `{"code", "message", "fields"}`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModelrigError(Exception):
    """Base class: a problem the user can act on.

    Args:
        message: the one line shown to the user (what went wrong and what to do).
        code: overrides the class's `code` for a more specific case (e.g. `revision_not_found`).
        **fields: structured details for programs (JSON-serialisable values).
    """

    exit_code: ClassVar[int] = 1
    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.fields: dict[str, Any] = fields

    def to_json(self) -> dict[str, Any]:
        """The error as the `error` member of a `--json` result."""
        return {"code": self.code, "message": str(self), "exit_code": self.exit_code, "fields": dict(self.fields)}


class UsageError(ModelrigError):
    """Bad command-line input (a missing option, an unknown model id)."""

    exit_code = 2
    code = "usage"


class ManifestError(ModelrigError):
    """One or more problems in a manifest file; `problems` holds every one of them, each a full line."""

    exit_code = 2
    code = "manifest_invalid"

    def __init__(self, problems: list[str], **fields: Any) -> None:
        self.problems = problems
        super().__init__("\n".join(problems), problems=problems, **fields)


class ModelNotFoundError(UsageError):
    """No manifest has the requested id."""

    code = "model_not_found"


class ConfigError(ModelrigError):
    """The host configuration file is invalid."""

    exit_code = 2
    code = "config_invalid"


class HostCannotRunError(ModelrigError):
    """The planner refuses: this host cannot run the model as described. The message says what would."""

    exit_code = 3
    code = "plan_refused"


class DiskSpaceError(ModelrigError):
    """Not enough free disk for a download or conversion; nothing was started."""

    exit_code = 4
    code = "disk_space"


class DiskFullError(DiskSpaceError):
    """The disk filled up while writing; what was being written was removed, finished work is kept."""

    code = "disk_full"


class FetchError(ModelrigError):
    """A download failed: unreachable endpoint or another hub error."""

    exit_code = 5
    code = "fetch_failed"


class GatedRepoError(FetchError):
    """The repo is gated and no (valid) token was given."""

    code = "gated_repo"


class RepoNotFoundError(FetchError):
    """The hub has no such repo (or hides it)."""

    code = "repo_not_found"


class RevisionNotFoundError(FetchError):
    """The repo has no such branch, tag or commit."""

    code = "revision_not_found"


class HashMismatchError(FetchError):
    """A file's content does not match the hash the hub (or a lock) publishes for it."""

    code = "hash_mismatch"


class HubUnreachableError(FetchError):
    """The hub endpoint could not be reached (connection refused, DNS, timeout)."""

    code = "hub_unreachable"


class ConversionError(ModelrigError):
    """A conversion step failed on its input (missing shard, mismatched shapes, wrong convention)."""

    exit_code = 6
    code = "conversion_failed"


class EnvBuildError(ModelrigError):
    """A model environment could not be built; nothing was marked complete."""

    exit_code = 7
    code = "env_build_failed"


class LaunchError(ModelrigError):
    """Rendering or starting a demo failed."""

    exit_code = 8
    code = "launch_failed"


class PortBusyError(LaunchError):
    """The port a demo should listen on is already taken by another process."""

    code = "port_busy"


class HealthCheckError(LaunchError):
    """A started demo did not become healthy in time, or the process answering is not the one started."""

    code = "health_check_failed"


class LockError(ModelrigError):
    """A lock file is missing, not YAML or has a bad field (the message names the file and the field)."""

    exit_code = 2
    code = "lock_invalid"


class BundleError(ModelrigError):
    """A bundle is not a plain tar shaped as its lock says (compressed, a link, a member the lock does not name, a
    size or a bundle.json of the wrong shape); nothing of it was used (the message names the bundle and member)."""

    exit_code = 2
    code = "bundle_invalid"


class DriftError(ModelrigError):
    """The host differs from its lock; the `drift` field lists every difference (what, expected, found)."""

    exit_code = 9
    code = "drift"


class NotReproducedError(DriftError):
    """A rebuild could not reproduce what its lock says (a package, file or step differs)."""

    code = "not_reproduced"
