"""Talking to the hubs: endpoints and tokens, resolving a revision to a commit and its file list, errors as one line."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.config import HostConfig, store_folder
from modelrig.errors import (
    FetchError,
    GatedRepoError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UsageError,
)
from modelrig.fetch.sources import RemoteFile, SourcePlan, select_files
from modelrig.manifest import FULL_COMMIT, HubRef, WeightSource

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"


@dataclass(frozen=True)
class Endpoints:
    """Where each hub is, and the token for gated repos (never printed or written)."""

    huggingface: str
    modelscope: str
    token: str | None = field(default=None, repr=False)


def endpoints_for(config: HostConfig, *, hf_endpoint: str | None = None,
                  modelscope_endpoint: str | None = None) -> Endpoints:
    """Endpoints from the run's flags, else the host config, else the environment, else the public hubs; the token
    from HF_TOKEN / MODELSCOPE_API_TOKEN or the host config's token file."""
    hf = (hf_endpoint or config.hub.hf_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT)
    ms = (modelscope_endpoint or config.hub.modelscope_endpoint or os.environ.get("MODELSCOPE_ENDPOINT")
          or DEFAULT_MODELSCOPE_ENDPOINT)
    return Endpoints(huggingface=hf.rstrip("/"), modelscope=ms.rstrip("/"), token=_read_token(config))


def token_for(endpoints: Endpoints, hub: str) -> str | None:
    """The token to send to `hub`: its own environment variable first, then the shared token file."""
    return os.environ.get("HF_TOKEN" if hub == "huggingface" else "MODELSCOPE_API_TOKEN") or endpoints.token


def _read_token(config: HostConfig) -> str | None:
    path = config.hub.token_file
    if not path:
        return None
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").split()
    except OSError as exc:
        raise UsageError(f"hub.token_file {path}: cannot read it: {exc.strerror}") from None
    return lines[0] if lines else None


class HubUnreachable(Exception):
    """The endpoint could not be reached at all (connection refused, DNS, timeout): another hub may work.

    Internal to fetch (it triggers the fallback to the other hub); users see `HubUnreachableError`.
    """


def resolve_source(name: str, hub: str, ref: HubRef, source: WeightSource, *, endpoints: Endpoints,
                   store: Path) -> SourcePlan:
    """Ask `hub` for the commit `ref.revision` points at and the files there, filtered by the source's patterns."""
    token = token_for(endpoints, hub)
    if hub == "huggingface":
        commit, kind, files = _resolve_hf(ref, endpoint=endpoints.huggingface, token=token)
    else:
        commit, kind, files = _resolve_ms(ref, endpoint=endpoints.modelscope, token=token)
    chosen = select_files(files, include=source.include, exclude=source.exclude)
    if not chosen:
        raise FetchError(f"{hub}: {ref.repo}@{ref.revision}: no file matches include {source.include} / "
                         f"exclude {source.exclude}")
    return SourcePlan(name=name, hub=hub, repo=ref.repo, revision=ref.revision, commit=commit,
                      ref_kind=kind, files=tuple(chosen), target=store_folder(store, hub, ref.repo),
                      include=tuple(source.include), exclude=tuple(source.exclude))


def _resolve_hf(ref: HubRef, *, endpoint: str, token: str | None) -> tuple[str, str, list[RemoteFile]]:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token or False)
    with hf_errors(ref, endpoint):
        info = api.model_info(ref.repo, revision=ref.revision, files_metadata=True)
        commit = str(info.sha)
        files = [RemoteFile(path=e.rfilename, size=int(e.size or 0), sha256=e.lfs.sha256 if e.lfs else None,
                            git_oid=None if e.lfs else e.blob_id) for e in info.siblings or []]
        kind = "commit"
        if not ref.pinned:
            tags = {t.name for t in api.list_repo_refs(ref.repo).tags}
            kind = "tag" if ref.revision in tags else "branch"
    return commit, kind, files


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise these loggers to `level` for the duration (the ModelScope client logs a timestamped warning per
    retry; when a hub is probed and the other one is the fallback, one line from modelrig says it all)."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before, strict=True):
            logger.setLevel(old)


def _resolve_ms(ref: HubRef, *, endpoint: str, token: str | None) -> tuple[str, str, list[RemoteFile]]:
    api = ms_api(endpoint, token)
    with ms_errors(ref, endpoint, api), quiet_loggers("modelscope_hub", "modelscope_hub.legacy_api"):
        raw = api.legacy.list_repo_files(ref.repo, "model", revision=ref.revision, recursive=True)
        kind = "commit"
        if not ref.pinned:
            _branches, tags = api.legacy.list_revisions_detail(ref.repo, "model")
            kind = "tag" if ref.revision in {t.get("Revision") for t in tags} else "branch"
    files, commits = [], set()
    for entry in raw:
        if entry.get("Type", "blob") != "blob":
            continue
        files.append(RemoteFile(path=str(entry["Path"]), size=int(entry.get("Size") or 0),
                                sha256=entry.get("Sha256") or None))
        if FULL_COMMIT.match(str(entry.get("Revision", ""))):
            commits.add(str(entry["Revision"]))
    commit = commits.pop() if len(commits) == 1 else ref.revision
    return commit, kind, files


def ms_api(endpoint: str, token: str | None) -> Any:
    """A ModelScope client for `endpoint`; its per-file progress bars follow modelrig's progress switch."""
    from modelscope_hub import HubApi

    _quiet_modelscope_bars()
    return HubApi(endpoint=endpoint, token=token)


def _quiet_modelscope_bars() -> None:
    """The ModelScope client draws a tqdm bar per file with no switch of its own (tqdm reads `TQDM_DISABLE` only
    when it is imported), so when progress is off its module-level `tqdm` is given `disable=True`."""
    from modelrig.progress import progress_enabled

    if progress_enabled():
        return
    from modelrig.fetch.compat import quiet_modelscope_bars

    quiet_modelscope_bars()


@contextlib.contextmanager
def hf_errors(ref: HubRef, endpoint: str) -> Iterator[None]:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
    )
    from huggingface_hub.errors import GatedRepoError as HfGatedRepoError
    from huggingface_hub.errors import RepositoryNotFoundError as HfRepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError as HfRevisionNotFoundError

    try:
        yield
    except HfGatedRepoError:
        raise GatedRepoError(f"huggingface: {ref.repo} is gated: set HF_TOKEN or hub.token_file in the host config to "
                         "a token that has been granted access", hub="huggingface", repo_id=ref.repo) from None
    except HfRepositoryNotFoundError:
        raise RepoNotFoundError(f"huggingface: repo {ref.repo} not found at {endpoint} (or it is private and no "
                                "valid token was given)", hub="huggingface", repo_id=ref.repo,
                                endpoint=endpoint) from None
    except HfRevisionNotFoundError:
        raise RevisionNotFoundError(f"huggingface: revision {ref.revision!r} not found in {ref.repo}",
                                    hub="huggingface", repo_id=ref.repo, revision=ref.revision) from None
    except EntryNotFoundError as exc:
        raise FetchError(f"huggingface: {ref.repo}@{ref.revision}: {_first_line(exc)}") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and status >= 500:
            raise HubUnreachable(f"{endpoint} answered HTTP {status}") from None
        raise FetchError(f"huggingface: {ref.repo}: {_first_line(exc)}") from None
    except Exception as exc:
        if _is_connection_error(exc):
            raise HubUnreachable(f"cannot reach {endpoint}: {_first_line(exc)}") from None
        raise


@contextlib.contextmanager
def ms_errors(ref: HubRef, endpoint: str, api: Any) -> Iterator[None]:
    from modelscope_hub import errors as ms

    try:
        yield
    except (ms.AuthenticationError, ms.PermissionDeniedError):
        raise GatedRepoError(f"modelscope: {ref.repo} needs a token with access: set MODELSCOPE_API_TOKEN or "
                             "hub.token_file in the host config", hub="modelscope", repo_id=ref.repo) from None
    except ms.NotExistError:
        try:
            api.legacy.list_revisions(ref.repo, "model")
        except ms.NotExistError:
            raise RepoNotFoundError(f"modelscope: repo {ref.repo} not found at {endpoint}", hub="modelscope",
                                    repo_id=ref.repo, endpoint=endpoint) from None
        except Exception:  # the follow-up probe is only for a better message
            pass
        raise RevisionNotFoundError(f"modelscope: revision {ref.revision!r} not found in {ref.repo}",
                                    hub="modelscope", repo_id=ref.repo, revision=ref.revision) from None
    except ms.ServerError as exc:
        raise HubUnreachable(f"{endpoint} failed: {_first_line(exc)}") from None
    except ms.APIError as exc:
        raise FetchError(f"modelscope: {ref.repo}: {_first_line(exc)}") from None
    except Exception as exc:
        if _is_connection_error(exc):
            raise HubUnreachable(f"cannot reach {endpoint}: {_first_line(exc)}") from None
        raise


def _is_connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    connection = {"ConnectError", "ConnectTimeout", "TransportError", "TimeoutException", "NetworkError",
                  "ConnectionError", "Timeout", "OfflineModeIsEnabled", "RequestTimeoutError",
                  "LocalEntryNotFoundError", "ProxyError", "SSLError"}
    return bool(names & connection) or isinstance(exc, (ConnectionError, TimeoutError))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
