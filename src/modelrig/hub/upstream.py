"""The upstream of a pull-through hub: which hubs it asks, and asking them (commits, file lists, file bytes).

Everything an upstream answers is checked before use: a commit is 40 hex digits, a path is a relative name
with no `..`, sizes are integers and digests are hex of the right length. The fleet's tokens are the only ones
sent upstream, each only to its own hub: the Hub token (`--upstream-token-file`) to the Hugging Face upstream, the
ModelScope token (`--upstream-modelscope-token-file`) to the ModelScope upstream (as a Bearer header and the
`m_session_id` cookie ModelScope's clients send). The Hub token reaches the ModelScope upstream only when both are
one server (`--upstream URL`) and no ModelScope token is given. A client's own token never leaves the hub.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from modelrig.errors import UsageError

PUBLIC = {"huggingface": ("https://huggingface.co", None), "modelscope": (None, "https://www.modelscope.cn")}
#: Seconds to wait for an upstream to answer (connect, or any read).
TIMEOUT = 30
#: The largest metadata answer (JSON) read from an upstream.
MAX_METADATA = 64 << 20
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "gitsha1": re.compile(r"[0-9a-f]{40}")}
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class UpstreamError(Exception):
    """An upstream answered with an error (`status`, the hub's error code and message) or not at all
    (`status` 0: unreachable, timed out, or an answer that is not what the protocol promises)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", headers: dict[str, str] | None = None,
                 body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.body = body

    @property
    def unreachable(self) -> bool:
        """True when the upstream gave no usable answer (as opposed to a definite one such as 404 or 401)."""
        return self.status == 0 or self.status >= 500


@dataclass(frozen=True)
class Upstream:
    """Where a pull-through hub sends Hub-protocol (`hf`) and ModelScope-protocol (`ms`) requests it cannot
    answer itself, and the fleet's tokens for gated repos there (never printed)."""

    hf: str | None
    ms: str | None
    token: str | None = field(default=None, repr=False)
    ms_token: str | None = field(default=None, repr=False)

    def token_for(self, protocol: str) -> str | None:
        """The token sent to the `protocol` upstream: its own; the Hub token goes to ModelScope only when both
        protocols are one server and no ModelScope token was given."""
        if protocol == "hf":
            return self.token
        return self.ms_token or (self.token if self.ms is not None and self.ms == self.hf else None)


@dataclass(frozen=True)
class FileEntry:
    """One file of an upstream commit: its size and the digest it is verified against (`sha256` for LFS files and
    every ModelScope file; `gitsha1`, the git blob id, for the Hub's small files)."""

    path: str
    size: int
    algo: str
    digest: str
    oid: str
    lfs: bool


@dataclass(frozen=True)
class Snapshot:
    """One upstream commit of a repo: what it holds and whether the upstream gates it."""

    protocol: str
    repo: str
    commit: str
    gated: bool
    files: tuple[FileEntry, ...]

    def file(self, path: str) -> FileEntry | None:
        """The file at `path`, or None."""
        return next((f for f in self.files if f.path == path), None)

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "repo": self.repo, "commit": self.commit, "gated": self.gated,
                "files": [f.__dict__ for f in self.files]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(protocol=str(data["protocol"]), repo=str(data["repo"]), commit=str(data["commit"]),
                   gated=bool(data["gated"]), files=tuple(FileEntry(**f) for f in data["files"]))


def parse_upstreams(values: list[str], token_file: Path | None = None,
                    ms_token_file: Path | None = None) -> Upstream:
    """`--upstream` values: `huggingface`, `modelscope`, a URL (serving both protocols, like `modelrig hub
    serve`), or `hf=URL` / `ms=URL` for a mirror of one; repeatable; and the token files of each hub. Bad values
    are a UsageError naming the flag."""
    hf: str | None = None
    ms: str | None = None
    for value in values:
        if value in PUBLIC:
            pub_hf, pub_ms = PUBLIC[value]
            hf, ms = pub_hf or hf, pub_ms or ms
            continue
        kind, sep, url = value.partition("=")
        if not sep:
            kind, url = "both", value
        if kind not in ("hf", "ms", "both") or not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
            raise UsageError(f"--upstream {value}: expected huggingface, modelscope, an http(s) URL, or hf=URL / "
                             "ms=URL", flag="--upstream", value=value)
        url = url.rstrip("/")
        if kind in ("hf", "both"):
            hf = url
        if kind in ("ms", "both"):
            ms = url
    return Upstream(hf=hf, ms=ms, token=read_token(token_file, "--upstream-token-file"),
                    ms_token=read_token(ms_token_file, "--upstream-modelscope-token-file"))


def read_token(path: Path | None, flag: str) -> str | None:
    """The one token of a token file (None without a file); a UsageError naming `flag` when it cannot be read or
    holds anything but one token on one line."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it: {exc.strerror}", flag=flag, value=str(path)) from None
    if token is None or any(c.isspace() for c in token):
        raise UsageError(f"{flag} {path}: expected one token on one line", flag=flag, value=str(path))
    return token


def valid_repo(repo: str) -> bool:
    """Whether `repo` is `org/name` made of the characters hubs allow."""
    parts = repo.split("/")
    return len(parts) == 2 and all(_REPO_PART.fullmatch(p) and ".." not in p for p in parts)


def is_commit(rev: str) -> bool:
    return bool(_COMMIT.fullmatch(rev))


def snapshot(upstream: Upstream, protocol: str, repo: str, revision: str) -> Snapshot:
    """Ask the upstream which commit `revision` of `repo` is and what files it holds (one request for the Hub,
    two for ModelScope: the file list and the repo's gate)."""
    if protocol == "hf":
        data = _json(upstream, "hf", f"{_base(upstream, 'hf')}/api/models/{repo}/revision/"
                     f"{quote(revision, safe='')}?blobs=true")
        return _hf_snapshot(repo, data)
    base = f"{_base(upstream, 'ms')}/api/v1/models/{repo}"
    listing = _json(upstream, "ms", f"{base}/repo/files?" + urlencode({"Revision": revision, "Recursive": "True"}))
    info = _json(upstream, "ms", base)
    return _ms_snapshot(repo, listing, info)


def passthrough(upstream: Upstream, protocol: str, path: str) -> bytes:
    """The raw JSON answer of an upstream route that is only forwarded (ModelScope repo info and revisions, the
    Hub's refs)."""
    body = _get(upstream, protocol, f"{_base(upstream, protocol)}{path}").read(MAX_METADATA + 1)
    if len(body) > MAX_METADATA:
        raise UpstreamError(f"{path}: the upstream's answer is larger than {MAX_METADATA} bytes")
    return body


def open_file(upstream: Upstream, snap: Snapshot, entry: FileEntry, offset: int) -> tuple[BinaryIO, int]:
    """Start reading `entry` of `snap` from the upstream at `offset` (Range); returns (stream, where it starts):
    0 when the upstream ignored the Range and sends the whole file."""
    if snap.protocol == "hf":
        url = f"{_base(upstream, 'hf')}/{snap.repo}/resolve/{snap.commit}/{quote(entry.path)}"
    else:
        url = (f"{_base(upstream, 'ms')}/api/v1/models/{snap.repo}/repo?"
               + urlencode({"Revision": snap.commit, "FilePath": entry.path}))
    resp = _get(upstream, snap.protocol, url, {"Range": f"bytes={offset}-"} if offset else {})
    return resp, offset if resp.status == 206 else 0


def _base(upstream: Upstream, protocol: str) -> str:
    base = upstream.hf if protocol == "hf" else upstream.ms
    if base is None:
        raise UpstreamError(f"no {'Hugging Face' if protocol == 'hf' else 'ModelScope'} upstream is configured",
                            status=404, code="RepoNotFound")
    return base


def _get(upstream: Upstream, protocol: str, url: str, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "modelrig-hub-pull", **(headers or {})})
    token = upstream.token_for(protocol)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
        if protocol == "ms":
            request.add_header("Cookie", f"m_session_id={token}")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        body = exc.read(1 << 16)
        exc.close()
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("x-error-code", "x-error-message",
                                                                      "content-type")}
        raise UpstreamError(f"{url}: upstream answered {exc.code}", status=exc.code,
                            code=exc.headers.get("X-Error-Code", ""), headers=kept, body=body) from None
    except (urllib.error.URLError, OSError) as exc:
        raise UpstreamError(f"{url}: upstream unreachable: {getattr(exc, 'reason', exc)}") from None


def _json(upstream: Upstream, protocol: str, url: str) -> Any:
    with _get(upstream, protocol, url) as resp:
        body = resp.read(MAX_METADATA + 1)
    try:
        if len(body) > MAX_METADATA:
            raise ValueError("too large")
        return json.loads(body)
    except ValueError:
        raise UpstreamError(f"{url}: the upstream's answer is not the JSON the protocol promises") from None


def _checked_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise ValueError(f"bad path {path!r}")
    if any(part in ("", ".", "..") for part in PurePosixPath(path).parts) or "//" in path:
        raise ValueError(f"bad path {path!r}")
    return path


def _checked_digest(algo: str, value: Any) -> str:
    digest = str(value or "").lower().strip('"')
    if not _HEX[algo].fullmatch(digest):
        raise ValueError(f"bad {algo} {value!r}")
    return digest


def _checked_size(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"bad size {value!r}")
    return value


def _hf_snapshot(repo: str, data: Any) -> Snapshot:
    try:
        commit = str(data["sha"])
        if not is_commit(commit):
            raise ValueError(f"bad commit {commit!r}")
        files = []
        for sib in data["siblings"]:
            path = _checked_path(sib["rfilename"])
            lfs = sib.get("lfs")
            oid = _checked_digest("gitsha1", sib.get("blobId"))
            if lfs:
                files.append(FileEntry(path, _checked_size(lfs["size"]), "sha256",
                                       _checked_digest("sha256", lfs["sha256"]), oid, True))
            else:
                files.append(FileEntry(path, _checked_size(sib["size"]), "gitsha1", oid, oid, False))
        gated = bool(data.get("gated")) or bool(data.get("private"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(f"{repo}: the upstream's repo info is not usable: {exc}") from None
    return Snapshot("hf", repo, commit, gated, tuple(sorted(files, key=lambda f: f.path)))


def _ms_snapshot(repo: str, listing: Any, info: Any) -> Snapshot:
    try:
        entries = [e for e in listing["Data"]["Files"] if e.get("Type") != "tree"]
        commits = {str(e["Revision"]) for e in entries}
        if len(commits) != 1 or not is_commit(next(iter(commits))):
            raise ValueError(f"the files name {len(commits)} commits, not one commit id")
        files = tuple(sorted((FileEntry(_checked_path(e["Path"]), _checked_size(e["Size"]), "sha256",
                                        _checked_digest("sha256", e["Sha256"]), str(e.get("Id") or ""),
                                        bool(e.get("IsLFS"))) for e in entries), key=lambda f: f.path))
        data = info["Data"]
        gated = bool(data.get("Gated")) or bool(data.get("Private"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(f"{repo}: the upstream's file list is not usable: {exc}") from None
    return Snapshot("ms", repo, next(iter(commits)), gated, files)
