"""What a route handler gets (a parsed request) and gives back (a response: JSON, bytes, or a file to stream)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrig.hub.layout import HubFile, HubRepo


@dataclass(frozen=True)
class Request:
    """A parsed request: method, decoded path segments, query parameters, and the few headers routes need."""

    method: str
    segments: tuple[str, ...]
    query: dict[str, str]
    host: str
    token: str | None
    root: Path

    def authorized(self, repo: HubRepo, tokens: frozenset[str]) -> bool:
        """True when the repo is public or the request carries one of the accepted tokens."""
        return not repo.gated or (self.token is not None and self.token in tokens)


@dataclass
class Response:
    """A response: a status, headers, and either a body, a file to stream, or a `stream(start, stop)` of `size`
    bytes still arriving (the last two with Range support)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: HubFile | None = None
    stream: Callable[[int, int], Iterator[bytes]] | None = None
    size: int = 0
    #: False: a Range request gets the whole file (200), so a client drops bytes it kept from an earlier try.
    ranges: bool = True


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    body = json.dumps(value).encode()
    return Response(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)
