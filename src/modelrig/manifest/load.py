"""Loading a manifest file: schema and whole-manifest checks, every problem reported as `file:line: field: message`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelrig.errors import ManifestError
from modelrig.manifest.fields import (
    _ENV_NAME,
    _GIT_REF,
    _REPO,
    _SCRIPT,
    _SLUG,
    _UPSTREAM_REPO,
    FULL_COMMIT,
)
from modelrig.manifest.schema import Manifest
from modelrig.yamlpos import Loc, YamlSyntaxError, line_for, load_with_lines

# ---------------------------------------------------------------------------------------------------------
# Semantic checks that need the whole manifest (names that refer to each other, remote-code pinning).


def semantic_problems(manifest: Manifest) -> list[tuple[Loc, str]]:
    """Problems that span fields: dangling step inputs, duplicate names/ports, unpinned remote code."""
    problems: list[tuple[Loc, str]] = []
    known = set(manifest.weights)
    for index, step in enumerate(manifest.convert):
        for field in ("input", "base", "delta"):
            ref = getattr(step, field, None)
            if ref is not None and ref not in known:
                problems.append(
                    (("convert", index, step.kind, field), f"refers to {ref!r}, which is neither a weight "
                     f"source nor an earlier step's output (known: {', '.join(sorted(known))})")
                )
        if step.kind == "to_safetensors" and step.input is None and index == 0:
            problems.append((("convert", index, step.kind, "input"), "the first step must name its input"))
        if step.output_name in known:
            problems.append(
                (("convert", index, step.kind, "output"), f"output name {step.output_name!r} is already used; "
                 "give this step a distinct `output:`")
            )
        known.add(step.output_name)
    if manifest.output is not None and manifest.output not in known:
        problems.append((("output",), f"{manifest.output!r} is not a weight source or step output"))
    names: set[str] = set()
    ports: dict[int, str] = {}
    for index, entry in enumerate(manifest.launch):
        if entry.name in names:
            problems.append((("launch", index, "name"), f"duplicate launch name {entry.name!r}"))
        names.add(entry.name)
        if entry.port is not None:
            if entry.port in ports:
                problems.append(
                    (("launch", index, "port"), f"port {entry.port} is already used by {ports[entry.port]!r}")
                )
            ports[entry.port] = entry.name
        if entry.weights is not None and entry.weights not in known:
            problems.append((("launch", index, "weights"), f"{entry.weights!r} is not a weight source or output"))
    if manifest.trust_remote_code:
        for name, source in manifest.weights.items():
            for hub, ref in source.hubs:
                if not ref.pinned and not ref.to_pin:
                    problems.append(
                        (("weights", name, hub, "revision"),
                         f"trust_remote_code needs a full 40-hex commit, got {ref.revision!r} "
                         "(or mark it `to_pin: true`: `modelrig fetch` resolves it to a commit before code runs)")
                    )
    for index, entry in enumerate(manifest.launch):
        if entry.upstream and not FULL_COMMIT.match(entry.upstream.ref) and not entry.upstream.to_pin:
            problems.append(
                (("launch", index, "upstream", "ref"),
                 f"upstream scripts run code: pin a full 40-hex commit, got {entry.upstream.ref!r} "
                 "(or mark it `to_pin: true`)")
            )
    return problems


# ---------------------------------------------------------------------------------------------------------
# Loading.


def load_manifest(path: Path | str) -> Manifest:
    """Load and validate one manifest file; raise `ManifestError` listing every problem as `file:line: ...`."""
    path = Path(path)
    shown = _display(path)
    try:
        data, lines = load_with_lines(path)
    except FileNotFoundError:
        raise ManifestError([f"{shown}: file not found"]) from None
    except YamlSyntaxError as exc:
        where = f"{shown}:{exc.line}" if exc.line else shown
        raise ManifestError([f"{where}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ManifestError([f"{shown}:1: expected a mapping of manifest fields at the top level"])
    problems: list[str] = []
    if isinstance(data.get("id"), str) and data["id"] != path.stem:
        problems.append(f"{shown}:{line_for(lines, ('id',)) or 1}: id: {data['id']!r} must match the file "
                        f"name {path.stem!r} (one file per model, named after its id)")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems[:0] = [_format_error(shown, lines, err) for err in exc.errors()]
        raise ManifestError(_by_line(problems)) from None
    problems[:0] = [f"{shown}:{line_for(lines, loc) or 1}: {_dotted(loc)}: {msg}" for loc, msg in
                    semantic_problems(manifest)]
    if problems:
        raise ManifestError(_by_line(problems))
    return manifest


def _by_line(problems: list[str]) -> list[str]:
    """Problems in file order (stable for problems on the same line)."""
    def line(problem: str) -> int:
        parts = problem.split(":")
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return sorted(problems, key=line)


#: What a value that fails a pattern should look like, by pattern.
_PATTERN_MESSAGES = {
    _REPO: "expected a repo id 'owner/name' (letters, digits, '.', '_', '-')",
    _SLUG: "expected a lowercase id: a-z, 0-9, '.', '_', '-', starting with a letter or digit",
    r"^3\.\d{1,2}(\.\d{1,3})?$": "expected a Python version such as '3.10' (or a release such as '3.11.7')",
    r"^[a-z][a-z0-9_]*$": "expected a lowercase name: a-z, 0-9, '_', starting with a letter",
    r"^[a-z][a-z0-9_-]*$": "expected a lowercase name: a-z, 0-9, '_', '-', starting with a letter",
    _ENV_NAME: "expected an environment variable name: letters, digits, '_', not starting with a digit",
    _UPSTREAM_REPO: "expected a repository 'owner/name' (letters, digits, '.', '_', '-') or a git URL or absolute "
                    "path without spaces or shell characters",
    _GIT_REF: "expected a git commit, tag or branch (letters, digits, '.', '_', '/', '-'; not starting with '-')",
    _SCRIPT: "expected a script path inside the repository (letters, digits, '.', '_', '/', '-'; not starting "
             "with '-')",
}


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _format_error(shown: str, lines: dict[Loc, int], err: Any) -> str:
    loc: Loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        msg = "unknown field (check the spelling; see model_manifests/README.md for the schema)"
    elif kind == "missing":
        msg = "required field is missing"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif kind == "union_tag_invalid":
        msg = f"unknown step kind; expected one of {err['ctx'].get('expected_tags')}"
    elif kind == "literal_error":
        msg = f"expected {err['ctx'].get('expected')}"
    elif kind == "string_pattern_mismatch":
        msg = _PATTERN_MESSAGES.get(err["ctx"].get("pattern"), msg)
    elif kind == "too_short" and isinstance(err.get("input"), dict | list):
        msg = "needs at least one entry"
    if kind not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return f"{shown}:{line_for(lines, loc) or 1}: {_dotted(loc)}: {msg}"
