"""Finding manifests by id or path, and validating a set of them together (cross-manifest references)."""

from __future__ import annotations

from pathlib import Path

from modelrig.errors import ManifestError, ModelNotFoundError
from modelrig.manifest import Manifest, load_manifest
from modelrig.shipped import manifest_dirs
from modelrig.yamlpos import line_for, load_with_lines


def manifest_paths() -> list[Path]:
    """Every manifest file, earlier folders shadowing later ones with the same id."""
    seen: dict[str, Path] = {}
    for folder in manifest_dirs():
        for path in sorted(folder.glob("*.yaml")):
            seen.setdefault(path.stem, path)
    return sorted(seen.values(), key=lambda p: p.stem)


def resolve_model(name: str) -> Path:
    """Turn a model id or a path to a YAML file into the manifest's path."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ModelNotFoundError(f"{name}: manifest file not found")
        return candidate
    for path in manifest_paths():
        if path.stem == name:
            return path
    known = ", ".join(p.stem for p in manifest_paths())
    raise ModelNotFoundError(f"no manifest with id {name!r} (known: {known}); or give a path to a YAML file")


def load_model(name: str) -> Manifest:
    """Load the manifest named by id or path, and the manifests it depends on must exist."""
    manifest = load_manifest(resolve_model(name))
    for source_name, source in manifest.weights.items():
        if source.model is not None:
            try:
                resolve_model(source.model)
            except ModelNotFoundError:
                path = resolve_model(name)
                raise ManifestError(
                    [f"{path}:{_line(path, ('weights', source_name, 'model'))}: weights.{source_name}.model: "
                     f"no manifest with id {source.model!r}"]
                ) from None
    return manifest


def dependency_manifests(manifest: Manifest) -> dict[str, Manifest]:
    """Every manifest reachable through `model:` sources (a vision model's merged LLM, ...), by id."""
    found: dict[str, Manifest] = {}
    pending = [s.model for s in manifest.weights.values() if s.model]
    while pending:
        model_id = pending.pop()
        if model_id is None or model_id in found:
            continue
        dep = load_model(model_id)
        found[model_id] = dep
        pending.extend(s.model for s in dep.weights.values() if s.model)
    return found


def validate_files(paths: list[Path]) -> tuple[list[Manifest], list[str]]:
    """Validate files, returning the good manifests and every problem line of the bad ones."""
    good: list[Manifest] = []
    problems: list[str] = []
    known_ids = {p.stem for p in manifest_paths()} | {p.stem for p in paths}
    for path in paths:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        dangling = [f"{path}:{_line(path, ('weights', n, 'model'))}: weights.{n}.model: no manifest with id "
                    f"{s.model!r}" for n, s in manifest.weights.items()
                    if s.model is not None and s.model not in known_ids]
        if dangling:
            problems.extend(dangling)
            continue
        good.append(manifest)
    return good, problems


def _line(path: Path, loc: tuple[str, ...]) -> int:
    """The line of a field in a manifest that already parsed."""
    _, lines = load_with_lines(path)
    return line_for(lines, loc) or 1
