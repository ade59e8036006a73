"""The routes of a pull-through hub: the Hub and ModelScope routes the local hub speaks, answered from what it
keeps and, for what it lacks, from its upstream (see pull_store for how files are fetched once and verified).

Revisions: a commit id is answered from the stored snapshot without asking upstream; a branch or tag is asked
upstream at most once per REF_TTL seconds, and when the upstream cannot be reached the commit it named last is
used. Gated (or private) repos are answered only to clients presenting one of the hub's accepted tokens; the
upstream sees only the fleet's token.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from modelrig.hub import hf_routes, ms_routes
from modelrig.hub import upstream as up
from modelrig.hub.layout import HubFile, Revision
from modelrig.hub.protocol import Request, Response, json_response
from modelrig.hub.pull_store import REFUSED_BACKOFF, REFUSED_TTL, PullStore
from modelrig.hub.upstream import FileEntry, Snapshot, Upstream, UpstreamError

#: Seconds a branch or tag name is taken to still name the commit the upstream last gave for it.
REF_TTL = 30.0
_DEFAULT_REVISION = {"hf": "main", "ms": "master"}


class PullThrough:
    """Answers Hub and ModelScope requests from `root`'s pull store, filling it from `upstream`."""

    def __init__(self, root: Path, upstream: Upstream, *, log: Callable[[str], None] | None = None) -> None:
        self.store = PullStore(root)
        self.upstream = upstream
        self.log = log or (lambda line: print(f"modelrig-hub: {line}", file=sys.stderr, flush=True))

    def handle(self, req: Request, tokens: frozenset[str]) -> Response | None:
        """Answer a request, or None when the path is not a route of either protocol."""
        seg = req.segments
        try:
            if seg[:2] == ("api", "v1"):
                return self._modelscope(req, tokens)
            if len(seg) >= 4 and seg[:2] == ("api", "models"):
                return self._hf_api(req, tokens, f"{seg[2]}/{seg[3]}", seg[4:])
            if len(seg) >= 5 and seg[2] == "resolve":
                return self._hf_file(req, tokens, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), lfs_route=False)
            if len(seg) >= 5 and seg[0] == hf_routes.LFS_PREFIX:
                return self._hf_file(req, tokens, f"{seg[1]}/{seg[2]}", seg[3], "/".join(seg[4:]), lfs_route=True)
        except UpstreamError as exc:
            return _upstream_error("ms" if seg[:2] == ("api", "v1") else "hf", exc)
        return None

    # -- snapshots ----------------------------------------------------------------------------------------------
    def snapshot(self, protocol: str, repo: str, revision: str) -> Snapshot:
        """The snapshot `revision` names: stored (a commit id, or a fresh branch name) or asked upstream (once,
        however many clients ask at the same time)."""
        with self.store.lock("snapshot", protocol, repo, revision):
            return self._snapshot(protocol, repo, revision)

    def _snapshot(self, protocol: str, repo: str, revision: str) -> Snapshot:
        ref = None
        if up.is_commit(revision):
            stored = self.store.snapshot(protocol, repo, revision)
            if stored is not None:
                return stored
        else:
            ref = self.store.ref(protocol, repo, revision)
            if ref is not None and ref[1] < REF_TTL:
                stored = self.store.snapshot(protocol, repo, ref[0])
                if stored is not None:
                    return stored
        try:
            snap = up.snapshot(self.upstream, protocol, repo, revision)
        except UpstreamError as exc:
            stored = self.store.snapshot(protocol, repo, ref[0]) if ref is not None and exc.unreachable else None
            if stored is None:
                raise
            self.log(f"upstream unreachable, {repo}@{revision} answered with the last commit it named "
                     f"({stored.commit[:12]}): {exc}")
            return stored
        self.store.save(snap, revision)
        return snap

    def _revision(self, snap: Snapshot, name: str) -> Revision:
        files = tuple(HubFile(path=f.path, size=f.size, sha256=f.digest if f.algo == "sha256" else "",
                              oid=f.oid or f.digest, lfs=f.lfs, local=self.store.blob(f),
                              repo_folder=self.store.blobs) for f in snap.files)
        return Revision(repo=snap.repo, name=name, kind="branch", commit=snap.commit, files=files)

    # -- Hugging Face -------------------------------------------------------------------------------------------
    def _hf_api(self, req: Request, tokens: frozenset[str], repo: str, rest: tuple[str, ...]) -> Response:
        if not up.valid_repo(repo):
            return hf_routes.error(401, "RepoNotFound", f"Repository Not Found for url: {repo}.")
        if rest == ("refs",):
            gate = self._hf_snapshot(req, tokens, repo, "main")
            if isinstance(gate, Response):
                return gate
            return self._forwarded("hf", repo, "refs", f"/api/models/{repo}/refs")
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            revision = rest[1] if rest else "main"
            snap = self._hf_snapshot(req, tokens, repo, revision)
            if isinstance(snap, Response):
                return snap
            return hf_routes.info_response(req, repo, snap.gated, self._revision(snap, revision))
        if rest[0] == "tree" and len(rest) >= 2:
            snap = self._hf_snapshot(req, tokens, repo, rest[1])
            if isinstance(snap, Response):
                return snap
            return hf_routes.tree_response(req, self._revision(snap, rest[1]), "/".join(rest[2:]))
        return hf_routes.error(404, "NotFound", f"unknown route for {repo}")

    def _hf_snapshot(self, req: Request, tokens: frozenset[str], repo: str, revision: str) -> Snapshot | Response:
        snap = self.snapshot("hf", repo, revision)
        if snap.gated and req.token not in tokens:
            return hf_routes.error(401, "GatedRepo", f"Access to model {repo} is restricted. You must be "
                                   "authenticated with a token that has access to it.")
        return snap

    def _hf_file(self, req: Request, tokens: frozenset[str], repo: str, revision: str, path: str, *,
                 lfs_route: bool) -> Response:
        if not up.valid_repo(repo):
            return hf_routes.error(401, "RepoNotFound", f"Repository Not Found for url: {repo}.")
        snap = self._hf_snapshot(req, tokens, repo, revision)
        if isinstance(snap, Response):
            return snap
        entry = snap.file(path)
        if entry is None or (lfs_route and not entry.lfs):
            return hf_routes.entry_not_found(path, snap.commit)
        headers = {"X-Repo-Commit": snap.commit, "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.digest}"', "X-Linked-Size": str(entry.size)})
        if entry.lfs and not lfs_route:
            headers.update({"ETag": f'"{entry.oid}"', "Location": f"http://{req.host}/{hf_routes.LFS_PREFIX}/"
                            f"{quote(repo)}/{snap.commit}/{quote(entry.path)}"})
            return Response(302, headers)
        headers["ETag"] = f'"{entry.digest}"'
        return self._file(req, snap, entry, headers)

    # -- ModelScope ---------------------------------------------------------------------------------------------
    def _modelscope(self, req: Request, tokens: frozenset[str]) -> Response:
        seg = req.segments
        if len(seg) < 5 or seg[2] != "models" or not up.valid_repo(f"{seg[3]}/{seg[4]}"):
            return ms_routes.error(404, f"not served by this hub: /{'/'.join(seg)}")
        repo, rest = f"{seg[3]}/{seg[4]}", seg[5:]
        if not rest or rest == ("revisions",):
            info = self._forwarded("ms", repo, "info", f"/api/v1/models/{repo}")
            if info.status != 200:
                return info
            if _ms_gated(info.body) and req.token not in tokens:
                return ms_routes.error(401, f"model {repo} needs an access token with permission to it")
            return info if not rest else self._forwarded("ms", repo, "revisions", f"/api/v1/models/{repo}/revisions")
        if rest not in (("repo", "files"), ("repo", "tree"), ("repo",)):
            return ms_routes.error(404, f"unknown route for {repo}")
        revision = req.query.get("Revision") or _DEFAULT_REVISION["ms"]
        snap = self.snapshot("ms", repo, revision)
        if snap.gated and req.token not in tokens:
            return ms_routes.error(401, f"model {repo} needs an access token with permission to it")
        if rest != ("repo",):
            return ms_routes.files_response(req, self._revision(snap, revision))
        path = req.query.get("FilePath", "").lstrip("/")
        entry = snap.file(path)
        if entry is None:
            return ms_routes.error(404, f"file {path} does not exist in {repo} at {revision}")
        return self._file(req, snap, entry, {"Accept-Ranges": "bytes", "ETag": f'"{entry.digest}"',
                                             "X-Repo-Commit": snap.commit})

    # -- shared -------------------------------------------------------------------------------------------------
    def _file(self, req: Request, snap: Snapshot, entry: FileEntry, headers: dict[str, str]) -> Response:
        """The file: from the store when verified there, else streamed from the one transfer fetching it."""
        final = self.store.blob(entry)
        refused = self.store.refused_since(entry)
        ranges = refused is None or refused >= REFUSED_TTL
        if final.is_file():
            return Response(200, headers, file=HubFile(path=entry.path, size=entry.size, sha256=entry.digest,
                                                       oid=entry.oid, lfs=entry.lfs, local=final,
                                                       repo_folder=self.store.blobs), ranges=ranges)
        if req.method == "HEAD":
            return Response(200, headers, stream=_nothing, size=entry.size)
        if refused is not None and refused < REFUSED_BACKOFF:
            message = (f"{snap.repo}@{snap.commit[:12]}: {entry.path}: the upstream sent bytes that do not match "
                       f"its {entry.algo} {int(refused)} s ago; asking again in {REFUSED_BACKOFF - int(refused)} s")
            return json_response(502, {"error": message, "Code": 502, "Success": False, "Message": message},
                                 {"Retry-After": str(REFUSED_BACKOFF - int(refused)),
                                  "X-Error-Message": message[:hf_routes.MAX_HEADER_MESSAGE]})
        transfer = self.store.transfer(entry, lambda offset: up.open_file(self.upstream, snap, entry, offset),
                                       self.log)
        return Response(200, headers, stream=transfer.read, size=entry.size, ranges=ranges)

    def _forwarded(self, protocol: str, repo: str, key: str, path: str) -> Response:
        """An upstream JSON answer forwarded as is: kept, given from the store for REF_TTL seconds and whenever the
        upstream is down."""
        with self.store.lock("raw", protocol, repo, key):
            kept = self.store.raw(protocol, repo, key)
            if kept is not None and kept[1] < REF_TTL:
                return Response(200, {"Content-Type": "application/json; charset=utf-8"}, kept[0])
            return self._forward(protocol, repo, key, path, kept[0] if kept else None)

    def _forward(self, protocol: str, repo: str, key: str, path: str, kept: bytes | None) -> Response:
        try:
            body = up.passthrough(self.upstream, protocol, path)
            json.loads(body)
            self.store.save_raw(protocol, repo, key, body)
        except ValueError:
            return _upstream_error(protocol, UpstreamError(f"{path}: the upstream's answer is not JSON"))
        except UpstreamError as exc:
            if kept is None or not exc.unreachable:
                return _upstream_error(protocol, exc)
            body = kept
        return Response(200, {"Content-Type": "application/json; charset=utf-8"}, body)


def _nothing(start: int, stop: int) -> Iterator[bytes]:
    return iter(())


def _ms_gated(body: bytes) -> bool:
    try:
        data = json.loads(body)["Data"]
        return bool(data.get("Gated")) or bool(data.get("Private"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return True  # an answer that cannot be read is treated as gated: never served past the token check


def _upstream_error(protocol: str, exc: UpstreamError) -> Response:
    """A definite upstream error (401, 403, 404) forwarded with its code and message; anything else a 502."""
    if exc.status in (401, 403, 404):
        return Response(exc.status, dict(exc.headers), exc.body)
    message = f"upstream: {exc}"
    if protocol == "ms":
        return json_response(502, {"Code": 502, "Success": False, "Message": message, "RequestId": "local"})
    return json_response(502, {"error": message}, {"X-Error-Message": message[:hf_routes.MAX_HEADER_MESSAGE]})

