"""The documented `--json` result schema (docs), loaded and checked, and validation against it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "result-json.md"


def result_schema() -> dict:
    """The JSON Schema block of docs/result-json.md."""
    (block,) = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    schema = json.loads(block)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate(document: dict) -> None:
    """Validate one `--json` document against the documented schema."""
    jsonschema.Draft202012Validator(result_schema()).validate(document)
