"""HTTP details of the local hub shared by its routes and server: header escaping, Range parsing, tokens."""

from __future__ import annotations

from pathlib import Path

from modelrig.errors import UsageError

_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    ord("\r"): "\\r", ord("\n"): "\\n", ord("\t"): "\\t", ord("\\"): "\\\\"}


def header_safe(value: str) -> str:
    """A header value that cannot break the response: control characters (CR, LF, NUL, ...) and backslashes
    become backslash escapes (`\\r`, `\\x00`, `\\\\`), and non-ASCII text is escaped the same way
    (`\\u8bf4`), since header values go out as latin-1."""
    return value.translate(_ESCAPES).encode("ascii", "backslashreplace").decode("ascii")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=A-B`, `bytes=A-` or `bytes=-N` as an inclusive (start, end); None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:
            count = int(last)
            return (max(size - count, 0), size - 1) if count > 0 and size else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def request_token(authorization: str | None, cookie: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    for item in (cookie or "").split(";"):
        key, _, value = item.strip().partition("=")
        if key == "m_session_id" and value:
            return value
    return None


def read_tokens(token_file: Path | None) -> frozenset[str]:
    """Accepted tokens: one per non-empty line of the token file."""
    if token_file is None:
        return frozenset()
    try:
        return frozenset(line.strip() for line in token_file.read_text(encoding="utf-8").splitlines()
                         if line.strip())
    except OSError as exc:
        raise UsageError(f"{token_file}: cannot read the token file: {exc.strerror}") from None
