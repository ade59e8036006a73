"""The ModelScope HTTP routes (`/api/v1/models/...`) that `modelscope.snapshot_download` and `HubApi` use.

File listing (`repo/files`, `repo/tree`) with `Sha256` and the commit as `Revision`, raw file download
(`repo?FilePath=`, Range for resume), branches and tags (`revisions`), repo info, and JSON errors in
ModelScope's `{Code, Message, Success}` shape. A gated repo needs `Authorization: Bearer` or the
`m_session_id` cookie carrying an accepted token.
"""

from __future__ import annotations

from modelrig.hub.layout import HubPathError, HubRepo, Revision, open_repo, resolve_revision
from modelrig.hub.protocol import Request, Response, json_response


def handle(req: Request, tokens: frozenset[str]) -> Response | None:
    """Answer a ModelScope request, or None when the path is not a ModelScope route."""
    seg = req.segments
    if seg[:2] != ("api", "v1"):
        return None
    if len(seg) < 5 or seg[2] != "models":
        return _error(404, f"not served by this hub: /{'/'.join(seg)}")
    repo_id = f"{seg[3]}/{seg[4]}"
    try:
        repo = open_repo(req.root, repo_id)
    except HubPathError:
        return _error(404, f"model {repo_id} does not exist")
    if not req.authorized(repo, tokens):
        return _error(401, f"model {repo_id} needs an access token with permission to it")
    rest = seg[5:]
    if not rest:
        return _ok({"Id": repo_id, "Path": repo_id.split("/")[0], "Name": repo_id.split("/")[1],
                    "Private": False, "Gated": repo.gated, "ModelType": [], "Tags": []})
    if rest == ("revisions",):
        return _revisions(repo)
    if rest in (("repo", "files"), ("repo", "tree")):
        return _files(req, repo)
    if rest == ("repo",):
        return _raw(req, repo)
    return _error(404, f"unknown route for {repo_id}")


def _revision(repo: HubRepo, rev: str | None) -> Revision | Response:
    try:
        return resolve_revision(repo, rev)
    except HubPathError:
        return _error(404, f"revision {rev} of {repo.repo} does not exist")


def _revisions(repo: HubRepo) -> Response:
    branches, tags = [], []
    for name in repo.revision_names():
        rev = resolve_revision(repo, name)
        entry = {"Revision": name, "CommitId": rev.commit, "CreatedAt": 1704067200}
        (tags if rev.kind == "tag" else branches).append(entry)
    return _ok({"RevisionMap": {"Branches": branches, "Tags": tags}})


def _files(req: Request, repo: HubRepo) -> Response:
    revision = _revision(repo, req.query.get("Revision"))
    if isinstance(revision, Response):
        return revision
    return files_response(req, revision)


def files_response(req: Request, revision: Revision) -> Response:
    """The file listing answer (`repo/files`, `repo/tree`) for a resolved revision."""
    recursive = req.query.get("Recursive", "").lower() == "true"
    root = req.query.get("Root", "").strip("/")
    entries: list[dict[str, object]] = []
    dirs: set[str] = set()
    for f in revision.files:
        if root and not f.path.startswith(root + "/"):
            continue
        rel = f.path[len(root) + 1:] if root else f.path
        parts = rel.split("/")
        if len(parts) > 1:
            dirs.add("/".join(filter(None, [root, parts[0]])))
            if not recursive:
                continue
        entries.append({"Path": f.path, "Name": f.path.rsplit("/", 1)[-1], "Type": "blob", "Size": f.size,
                        "Sha256": f.sha256, "Revision": revision.commit, "IsLFS": f.lfs, "Id": f.oid,
                        "CommittedDate": 1704067200})
    entries += [{"Path": d, "Name": d.rsplit("/", 1)[-1], "Type": "tree", "Size": 0, "Revision": revision.commit}
                for d in sorted(dirs)]
    return _ok({"Files": entries, "IsTruncated": False})


def _raw(req: Request, repo: HubRepo) -> Response:
    revision = _revision(repo, req.query.get("Revision"))
    if isinstance(revision, Response):
        return revision
    path = req.query.get("FilePath", "").lstrip("/")
    hub_file = revision.file(path)
    if hub_file is None:
        return _error(404, f"file {path} does not exist in {repo.repo} at {revision.name}")
    return Response(200, {"Accept-Ranges": "bytes", "ETag": f'"{hub_file.sha256}"',
                          "X-Repo-Commit": revision.commit}, file=hub_file)


def _ok(data: object) -> Response:
    return json_response(200, {"Code": 200, "Success": True, "Message": "success", "Data": data,
                               "RequestId": "local"})


def error(status: int, message: str) -> Response:
    """A ModelScope error answer."""
    return _error(status, message)


def _error(status: int, message: str) -> Response:
    return json_response(status, {"Code": status, "Success": False, "Message": message, "RequestId": "local"})
