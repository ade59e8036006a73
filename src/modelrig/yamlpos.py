"""YAML loading that remembers the line of every value, so errors can point at `file:line`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]
#: libyaml's loader when PyYAML was built with it (several times faster), else the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlSyntaxError(ValueError):
    """The file is not valid YAML; `line` is 1-based."""

    def __init__(self, message: str, line: int | None) -> None:
        self.line = line
        super().__init__(message)


def load_with_lines(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse `path` and return the data and a map from each value's path (keys and list indices) to its line."""
    text = path.read_text(encoding="utf-8")
    try:
        node, data = _parse(text, _LOADER)
    except yaml.YAMLError:
        # Parse again with the pure-Python loader: its messages are the clearer ones, and errors are rare.
        try:
            node, data = _parse(text, yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise YamlSyntaxError(f"{exc.problem or exc}", line) from None
        except yaml.YAMLError as exc:
            raise YamlSyntaxError(str(exc), None) from None
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def _parse(text: str, loader_class: type) -> tuple[yaml.Node | None, Any]:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*loc, key), lines)
            lines[(*loc, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), lines)


def line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of `loc`, or of its nearest ancestor that has one."""
    loc = tuple(loc)
    while True:
        if loc in lines:
            return lines[loc]
        if not loc:
            return None
        loc = loc[:-1]
