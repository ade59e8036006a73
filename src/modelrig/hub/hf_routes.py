"""The Hugging Face Hub HTTP routes that `huggingface_hub` (0.x and 2.x) and `transformers` use to download.

Repo info (`/api/models/{repo}[/revision/{rev}]`), the recursive tree listing, refs, `HEAD`/`GET`
`/{repo}/resolve/{rev}/{path}` (LFS files answer with a redirect carrying `X-Linked-Etag`/`X-Linked-Size`, like
the real Hub's CDN redirect), and errors mapped through `X-Error-Code` (RepoNotFound, RevisionNotFound,
EntryNotFound with `X-Repo-Commit`, GatedRepo). Only model repos are served.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import quote

from modelrig.hub.layout import HubFile, HubPathError, HubRepo, Revision, open_repo, resolve_revision
from modelrig.hub.protocol import Request, Response, json_response

#: Route prefix of the "CDN" that LFS redirects point to.
LFS_PREFIX = "_lfs"
#: The longest error message put in a header (the body always carries it whole).
MAX_HEADER_MESSAGE = 500
_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc).isoformat().replace("+00:00", ".000Z")


def handle(req: Request, tokens: frozenset[str]) -> Response | None:
    """Answer a Hub request, or None when the path is not a Hub route."""
    seg = req.segments
    if len(seg) >= 4 and seg[0] == "api" and seg[1] == "models":
        repo_id = f"{seg[2]}/{seg[3]}"
        rest = seg[4:]
        repo_or_error = _repo(req, repo_id, tokens)
        if isinstance(repo_or_error, Response):
            return repo_or_error
        repo = repo_or_error
        if not rest:
            return _info(req, repo, None)
        if rest[0] == "revision" and len(rest) == 2:
            return _info(req, repo, rest[1])
        if rest[0] == "tree" and len(rest) >= 2:
            return _tree(req, repo, rest[1], "/".join(rest[2:]))
        if rest == ("refs",):
            return _refs(repo)
        return _error(404, "NotFound", f"unknown route for {repo_id}")
    if seg and (seg[0] in ("datasets", "spaces") or seg[:2] in (("api", "datasets"), ("api", "spaces"))):
        return _error(401, "RepoNotFound", "this hub serves model repos only")
    if len(seg) >= 5 and seg[2] == "resolve":
        repo_or_error = _repo(req, f"{seg[0]}/{seg[1]}", tokens)
        if isinstance(repo_or_error, Response):
            return repo_or_error
        return _resolve(req, repo_or_error, seg[3], "/".join(seg[4:]))
    if len(seg) >= 5 and seg[0] == LFS_PREFIX:
        repo_or_error = _repo(req, f"{seg[1]}/{seg[2]}", tokens)
        if isinstance(repo_or_error, Response):
            return repo_or_error
        return _lfs_object(req, repo_or_error, seg[3], "/".join(seg[4:]))
    return None


def _repo(req: Request, repo_id: str, tokens: frozenset[str]) -> HubRepo | Response:
    try:
        repo = open_repo(req.root, repo_id)
    except HubPathError:
        return _error(401, "RepoNotFound", f"Repository Not Found for url: {repo_id}. Check the repo id and "
                      "that you are authenticated.")
    if not req.authorized(repo, tokens):
        return _error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated "
                      "with a token that has access to it.")
    return repo


def _revision(repo: HubRepo, rev: str | None) -> Revision | Response:
    try:
        return resolve_revision(repo, rev)
    except HubPathError:
        return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")


def _info(req: Request, repo: HubRepo, rev: str | None) -> Response:
    revision = _revision(repo, rev)
    if isinstance(revision, Response):
        return revision
    return info_response(req, repo.repo, repo.gated, revision)


def info_response(req: Request, repo_id: str, gated: bool, revision: Revision) -> Response:
    """The repo info answer (`/api/models/{repo}[/revision/{rev}]`) for a resolved revision."""
    blobs = req.query.get("blobs", "").lower() == "true"
    siblings = []
    for f in revision.files:
        entry: dict[str, object] = {"rfilename": f.path}
        if blobs:
            entry.update(size=f.size, blobId=f.oid)
            if f.lfs:
                entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
        siblings.append(entry)
    org = repo_id.split("/")[0]
    return json_response(200, {
        "_id": revision.commit[:24], "id": repo_id, "modelId": repo_id, "author": org, "sha": revision.commit,
        "lastModified": _EPOCH, "createdAt": _EPOCH, "private": False, "disabled": False,
        "gated": "manual" if gated else False, "downloads": 0, "likes": 0, "tags": [], "library_name": None,
        "siblings": siblings, "spaces": [], "cardData": {},
    })


def _tree(req: Request, repo: HubRepo, rev: str, prefix: str) -> Response:
    revision = _revision(repo, rev)
    if isinstance(revision, Response):
        return revision
    return tree_response(req, revision, prefix)


def tree_response(req: Request, revision: Revision, prefix: str) -> Response:
    """The tree listing answer (`/api/models/{repo}/tree/{rev}[/{prefix}]`) for a resolved revision."""
    recursive = req.query.get("recursive", "").lower() == "true"
    base = prefix.strip("/")
    entries: list[dict[str, object]] = []
    dirs: set[str] = set()
    for f in revision.files:
        if base and not f.path.startswith(base + "/"):
            continue
        rel = f.path[len(base) + 1:] if base else f.path
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            if not recursive and depth > 1:
                break
            dirs.add("/".join(filter(None, [base, *parts[:depth]])))
        if not recursive and len(parts) > 1:
            continue
        entry: dict[str, object] = {"type": "file", "oid": f.oid, "size": f.size, "path": f.path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        entries.append(entry)
    if base and not entries and not dirs:
        return _error(404, "EntryNotFound", f"{base} does not exist at {revision.commit}",
                      {"X-Repo-Commit": revision.commit})
    entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
    return json_response(200, sorted(entries, key=lambda e: str(e["path"])))


def _refs(repo: HubRepo) -> Response:
    branches, tags = [], []
    for name in repo.revision_names():
        rev = resolve_revision(repo, name)
        kind, bucket = ("tags", tags) if rev.kind == "tag" else ("heads", branches)
        bucket.append({"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": rev.commit})
    return json_response(200, {"branches": branches, "tags": tags, "converts": []})


def _resolve(req: Request, repo: HubRepo, rev: str, path: str) -> Response:
    revision = _revision(repo, rev)
    if isinstance(revision, Response):
        return revision
    hub_file = revision.file(path)
    if hub_file is None:
        return entry_not_found(path, revision.commit)
    headers = {"X-Repo-Commit": revision.commit, "Accept-Ranges": "bytes"}
    if hub_file.lfs:
        location = (f"http://{req.host}/{LFS_PREFIX}/{quote(repo.repo)}/{revision.commit}/"
                    f"{quote(hub_file.path)}")
        headers.update({"Location": location, "X-Linked-Etag": f'"{hub_file.sha256}"',
                        "X-Linked-Size": str(hub_file.size), "ETag": f'"{hub_file.oid}"'})
        return Response(302, headers)
    headers["ETag"] = f'"{hub_file.oid}"'
    return Response(200, headers, file=hub_file)


def _lfs_object(req: Request, repo: HubRepo, commit: str, path: str) -> Response:
    revision = _revision(repo, commit)
    if isinstance(revision, Response):
        return revision
    hub_file: HubFile | None = revision.file(path)
    if hub_file is None or not hub_file.lfs:
        return _error(404, "EntryNotFound", f"{path} is not an LFS object at {commit}",
                      {"X-Repo-Commit": revision.commit})
    return Response(200, {"X-Repo-Commit": revision.commit, "ETag": f'"{hub_file.sha256}"',
                          "X-Linked-Etag": f'"{hub_file.sha256}"', "X-Linked-Size": str(hub_file.size),
                          "Accept-Ranges": "bytes"}, file=hub_file)


def entry_not_found(path: str, commit: str) -> Response:
    """The Hub's 404 for a file a commit does not have."""
    return _error(404, "EntryNotFound", f"{path} does not exist at {commit}", {"X-Repo-Commit": commit})


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Hub error answer (see `_error`)."""
    return _error(status, code, message, headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Hub error: the full message in the JSON body, and cut to MAX_HEADER_MESSAGE characters in the
    `X-Error-Message` header (it echoes request text, and clients refuse oversized response heads)."""
    shown = message if len(message) <= MAX_HEADER_MESSAGE else message[:MAX_HEADER_MESSAGE] + "..."
    return json_response(status, {"error": message},
                         {"X-Error-Code": code, "X-Error-Message": shown, **(headers or {})})
