"""Escaping for every language a launch file is written in: Python literals, POSIX shell words, systemd unit
settings, one-line comments. Every template hole goes through one of `FILTERS`; nothing from a manifest reaches a
launch file unescaped."""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelrig.errors import LaunchError


def py_literal(value: Any) -> str:
    """A Python literal for a JSON-like value (paths become strings); `repr` escapes quotes, backslashes and every
    unprintable character, so the literal is one token on one line whatever the text."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    raise LaunchError(f"cannot put {type(value).__name__} {value!r} into a launch script")


def sh_word(value: Any) -> str:
    """One POSIX shell word that expands to exactly `value` (nothing in it is evaluated)."""
    text = str(value)
    if "\0" in text:
        raise LaunchError(f"cannot put {text!r} into a shell script: it contains a NUL byte")
    return shlex.quote(text)


_SH_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_./:@+=,-]+$")


def sh_name(value: Any) -> str:
    """An environment variable name, checked: anything else would be shell code after `export`."""
    text = str(value)
    if not _SH_NAME.match(text):
        raise LaunchError(f"{text!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return text


def plain_word(value: Any) -> str:
    """A value the schema restricts to letters, digits, '.', '_', '-' (ids, entry names, kinds), checked again."""
    text = str(value)
    if not _WORD.match(text):
        raise LaunchError(f"{text!r} is not a plain name (letters, digits, '.', '_', '-')")
    return text


def _printable(text: str) -> str:
    return "".join(c if c == " " or c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def comment_text(value: Any) -> str:
    """Text for a `#` comment: unprintable characters (newlines, NUL, line separators) shown as escapes, so the
    comment stays one line."""
    return _printable(str(value))


def _no_controls(text: str, what: str) -> str:
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text):
        raise LaunchError(f"cannot put {text!r} into a {what}: it contains control characters")
    return text


def systemd_word(value: Any) -> str:
    """One systemd command-line word (ExecStart=): quoted when needed, `\\` and `"` escaped, `%` specifiers and `$`
    variable references doubled so they stay literal."""
    text = _no_controls(str(value), "systemd unit")
    text = text.replace("%", "%%")
    if _SYSTEMD_PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def systemd_path(value: Any) -> str:
    """A path for a systemd setting that takes one path (WorkingDirectory=): `%` doubled, no control characters;
    the setting takes the rest of the line verbatim."""
    text = _no_controls(str(value), "systemd unit")
    if not text.startswith("/"):
        raise LaunchError(f"{text!r}: systemd needs an absolute path")
    return text.replace("%", "%%")


def systemd_text(value: Any) -> str:
    """Free text for a one-line systemd setting (Description=): `%` doubled, unprintable characters escaped."""
    return _printable(str(value)).replace("%", "%%")


#: Filters every template hole goes through, by target language: `py` (Python literal), `sh` (shell word),
#: `sh_name` (checked variable name), `word` (checked plain name), `comment` (one-line comment text), `systemd`
#: (ExecStart= word), `systemd_path` (WorkingDirectory=), `systemd_text` (Description=).
FILTERS = {"py": py_literal, "sh": sh_word, "sh_name": sh_name, "word": plain_word, "comment": comment_text,
           "systemd": systemd_word, "systemd_path": systemd_path, "systemd_text": systemd_text}
