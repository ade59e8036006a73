"""The `--json` schema of docs/result-json.md agrees with the dataclasses of `modelrig.outputs` and with real
results (those of every stage are validated in tests/test_check_mode.py, on a real data root)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jsonschema
import pytest

from modelrig import outputs
from tests.helpers.result_schema import result_schema, validate

DOC = Path(__file__).resolve().parent.parent / "docs" / "result-json.md"


DATACLASSES = [cls for cls in vars(outputs).values()
               if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == outputs.__name__]


def test_every_output_dataclass_is_documented():
    assert {cls.__name__ for cls in DATACLASSES} <= set(result_schema()["$defs"])
    assert len(DATACLASSES) >= 8


@pytest.mark.parametrize("cls", DATACLASSES, ids=lambda c: c.__name__)
def test_the_schema_names_exactly_the_dataclass_fields(cls):
    definition = result_schema()["$defs"][cls.__name__]
    fields = dataclasses.fields(cls)
    assert set(definition["properties"]) == {f.name for f in fields}
    required = {f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    assert set(definition["required"]) == required


def test_a_stage_result_and_an_error_validate_and_a_renamed_field_does_not(cli):
    code, out, _ = cli("plan", "no-such-model", "--json")
    assert code == 2
    failure = json.loads(out)
    validate(failure)
    failure["error"]["kode"] = failure["error"].pop("code")
    with pytest.raises(jsonschema.ValidationError):
        validate(failure)


def test_error_codes_in_the_document_are_the_engine_s():
    from modelrig import errors

    documented = set(re.findall(r"^\| `([a-z_]+)` \| \d", DOC.read_text(encoding="utf-8"), flags=re.M))
    classes = {cls.code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.ModelrigError) and cls is not errors.ModelrigError}
    assert classes <= documented, classes - documented


def test_typed_outputs_read_back_what_stages_write():
    fetched = {"sources": [{"name": "base", "hub": "huggingface", "repo": "o/m", "revision": "main",
                            "commit": "a" * 40, "path": "/s/o--m", "ref_kind": "branch", "pruned": False,
                            "files": [{"path": "config.json", "size": 2, "sha256": "b" * 64}]}],
               "store": "/s", "notes": [], "disk": {}}
    validate({"ok": True, "stage": "fetch", "changed": True, "check": False, "reasons": [], "summary": "s",
              "model": "m", "seconds": 0.1, "details": fetched})
    typed = outputs.from_dict(outputs.FetchOutput, fetched)
    assert typed.sources[0].files[0] == outputs.FileRecord(path="config.json", size=2, sha256="b" * 64)
    assert dataclasses.asdict(typed) == fetched
    del fetched["sources"][0]["commit"]
    with pytest.raises(KeyError, match=r"FetchedSource\.commit"):
        outputs.from_dict(outputs.FetchOutput, fetched)
