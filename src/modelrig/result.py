"""The machine-readable result every stage returns: did it change anything, what, and how long it took."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StageResult:
    """Outcome of one stage run; `changed` is False when everything was already in place."""

    stage: str
    changed: bool
    summary: str
    model: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    #: Why the stage changed (or, in check mode, would change): "no stamp", "input digest differs", ...
    reasons: list[str] = field(default_factory=list)
    #: True when this is the answer of `--check`: nothing was touched.
    check: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the documented `--json` shape)."""
        data = {"ok": True, **asdict(self)}
        data["seconds"] = round(self.seconds, 3)
        return data

    def to_json(self) -> str:
        """The result as one JSON document."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def line(self) -> str:
        """One human line: `stage  changed|unchanged  summary  (1.2s)`."""
        if self.check:
            state = "would change" if self.changed else "unchanged"
            why = f" ({'; '.join(self.reasons)})" if self.reasons and self.changed else ""
            return f"{self.stage:<8} {state:<12} {self.summary}{why}"
        state = "changed" if self.changed else "unchanged"
        return f"{self.stage:<8} {state:<9} {self.summary} ({self.seconds:.1f}s)"


def combine(stage: str, model: str | None, results: list[StageResult], *, summary: str | None = None) -> StageResult:
    """One result for a stage run over several entries: changed when any changed; each in `details.results`."""
    return StageResult(stage=stage, model=model, changed=any(r.changed for r in results),
                       check=any(r.check for r in results), seconds=sum(r.seconds for r in results),
                       reasons=[reason for r in results for reason in r.reasons],
                       summary=summary or "; ".join(r.summary for r in results),
                       details={"results": [r.to_dict() for r in results]})


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """Measure a block: `with timed() as t: ...; t['seconds']`."""
    box = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start
