"""The fetch stage: download a manifest's weight sources from the Hub or ModelScope at a resolved commit, verified.

Each hub source lands in `<store>/<hub>/<org>--<name>/` (the store defaults to `<data root>/store`). The folder
is complete only when its stamp (`.modelrig-stamp.json`) matches: the stamp records hub, repo, revision, commit,
the include/exclude patterns and every file's path, size and sha256, and is written last. A re-run whose stamp
matches downloads nothing and hashes nothing (`verify=True` re-hashes everything). Fetch deletes files of other
revisions only in folders that are its own (a stamp, or the `.modelrig-fetch-owned` marker it writes into a new or
empty folder); a folder holding anything else is refused, untouched.

Downloads go through `huggingface_hub.hf_hub_download` and ModelScope's `HubApi.download_file`, one call per file
in a small thread pool. Both write to a temporary file and rename it into place, so a partial file is never
taken for a complete one. ModelScope resumes a partial file with Range; huggingface_hub (>= 1.18) restarts an
interrupted file from zero, so resume there is per file: finished files are kept, the interrupted one is
downloaded again, and its orphaned temporary file is removed by the next run.
"""

from modelrig.fetch.remote import Endpoints, endpoints_for, resolve_source
from modelrig.fetch.sources import DEFAULT_HEADROOM, HUBS, RemoteFile, SourcePlan, human, parse_size, select_files
from modelrig.fetch.stage import FetchOptions, fetch_model

__all__ = [
    "DEFAULT_HEADROOM", "HUBS", "Endpoints", "FetchOptions", "RemoteFile", "SourcePlan", "endpoints_for",
    "fetch_model", "human", "parse_size", "resolve_source", "select_files",
]
