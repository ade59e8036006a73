"""Broken manifests: each problem is reported as `file:line: field.path: message`, all at once, with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrig.errors import ManifestError
from modelrig.manifest import load_manifest

# A valid manifest; every case below changes it in place so the line numbers stay as numbered here.
BASE = """\
id: m
title: M
license: {name: mit}
trust_remote_code: false
weights:
  model:
    huggingface: {repo: org/m, revision: main}
    size_gb: 1.0
convert:
  - to_safetensors: {input: model, output: final}
env:
  python: "3.10"
  torch: ">=2.1"
  packages: [transformers==4.40.0]
resources:
  params_b: 1
  memory_gb: {fp16: 2}
launch:
  - {name: chat, kind: gradio_chat, adapter: chat_template, port: 7860}
"""

ADAPTERS = "blip2, bluelm, chat_template, joycaption, llava, minicpm, qwen2_vl, qwen_vl, ziya, ziya_blip2"
STEP_KINDS = "'llama_meta_to_hf', 'apply_delta', 'tf_to_pt', 'to_safetensors'"
GIT_REQ = "transformers @ git+https://github.com/huggingface/transformers"

# (case id, old text, new text, expected "line: field: message")
CASES = [
    ("unknown_field", "trust_remote_code: false", "trust_remote_cod: false",
     "4: trust_remote_cod: unknown field (check the spelling; see model_manifests/README.md for the schema)"),
    ("missing_required_field", "title: M", "description: d",
     "1: title: required field is missing"),
    ("yaml_syntax_error", "title: M", "title: [M",
     "3: not valid YAML: expected ',' or ']', but got ':'"),
    ("wrong_type", "params_b: 1", "params_b: lots",
     "16: resources.params_b: Input should be a valid number, unable to parse string as a number (got 'lots')"),
    ("remote_code_on_a_branch_without_to_pin", "trust_remote_code: false", "trust_remote_code: true",
     "7: weights.model.huggingface.revision: trust_remote_code needs a full 40-hex commit, got 'main' "
     "(or mark it `to_pin: true`: `modelrig fetch` resolves it to a commit before code runs)"),
    ("bad_repo_id", "repo: org/m", "repo: org m",
     "7: weights.model.huggingface.repo: expected a repo id 'owner/name' (letters, digits, '.', '_', '-') "
     "(got 'org m')"),
    ("bad_step_kind", "- to_safetensors:", "- merge_lora:",
     f"10: convert[0]: unknown step kind; expected one of {STEP_KINDS}"),
    ("dangling_step_input", "{input: model,", "{input: weights_x,",
     "10: convert[0].to_safetensors.input: refers to 'weights_x', which is neither a weight source nor an earlier "
     "step's output (known: model)"),
    ("duplicate_output_name", "output: final}", "output: model}",
     "10: convert[0].to_safetensors.output: output name 'model' is already used; give this step a distinct "
     "`output:`"),
    ("duplicate_launch_port", "port: 7860}\n",
     "port: 7860}\n  - {name: api, kind: openai_api, adapter: chat_template, port: 7860}\n",
     "20: launch[1].port: port 7860 is already used by 'chat'"),
    ("duplicate_launch_name", "port: 7860}\n",
     "port: 7860}\n  - {name: chat, kind: openai_api, adapter: chat_template, port: 7861}\n",
     "20: launch[1].name: duplicate launch name 'chat'"),
    ("unknown_adapter", "adapter: chat_template", "adapter: llama2",
     f"19: launch[0]: unknown adapter 'llama2'; known: {ADAPTERS}"),
    ("chat_kind_without_adapter", "adapter: chat_template, ", "",
     f"19: launch[0]: kind: gradio_chat needs an adapter (one of: {ADAPTERS})"),
    ("vllm_on_mps", "{name: chat, kind: gradio_chat, adapter: chat_template, port: 7860}",
     "{name: serve, kind: vllm_serve, platforms: [mps], port: 7860}",
     "19: launch[0]: kind: vllm_serve runs only on CUDA hosts; platforms must be [cuda]"),
    ("upstream_script_without_upstream", "{name: chat, kind: gradio_chat, adapter: chat_template, port: 7860}",
     "{name: web, kind: upstream_script, port: 7860}",
     "19: launch[0]: kind: upstream_script needs an upstream: {repo, ref, script} block"),
    ("upstream_script_on_a_branch", "{name: chat, kind: gradio_chat, adapter: chat_template, port: 7860}",
     "{name: web, kind: upstream_script, upstream: {repo: QwenLM/Qwen-VL, ref: main, script: web_demo_mm.py}}",
     "19: launch[0].upstream.ref: upstream scripts run code: pin a full 40-hex commit, got 'main' "
     "(or mark it `to_pin: true`)"),
    ("bad_requirement_string", "packages: [transformers==4.40.0]", "packages: [transformers==4.40.0, 'x y z']",
     "14: env.packages[1]: not a valid requirement such as 'transformers==4.33.1' "),
    ("git_requirement_without_ref", "packages: [transformers==4.40.0]", f"packages: ['{GIT_REQ}']",
     f"14: env.packages[0]: a git requirement must pin a ref: 'name @ git+URL@<tag-or-commit>' (got '{GIT_REQ}')"),
    ("bad_torch_specifier", 'torch: ">=2.1"', 'torch: "2.1+"',
     "13: env.torch: not a version specifier such as '==2.1.2' or '>=2.1,<2.4' (got '2.1+')"),
    ("bad_python_version", 'python: "3.10"', 'python: "3"',
     "12: env.python: expected a Python version such as '3.10' (or a release such as '3.11.7') (got '3')"),
    ("id_not_matching_file_name", "id: m", "id: other",
     "1: id: 'other' must match the file name 'm' (one file per model, named after its id)"),
    ("empty_weights", "weights:\n  model:\n    huggingface: {repo: org/m, revision: main}\n    size_gb: 1.0\n",
     "weights: {}\n\n\n\n",
     "5: weights: needs at least one entry"),
    ("two_source_kinds_in_one_source", "    size_gb: 1.0", "    local: {var: m_dir}",
     "6: weights.model: give exactly one kind of source: huggingface and/or modelscope, or local, or model"),
    ("prefer_naming_a_missing_hub", "    size_gb: 1.0", "    prefer: modelscope",
     "6: weights.model: prefer: 'modelscope' names a hub this source does not have"),
    ("bad_memory_precision_key", "memory_gb: {fp16: 2}", "memory_gb: {fp17: 2}",
     "17: resources.memory_gb.fp17: expected 'fp32', 'bf16', 'fp16', 'int8' or 'int4' (got 'fp17')"),
    ("memory_figure_not_positive", "memory_gb: {fp16: 2}", "memory_gb: {fp16: 0}",
     "17: resources.memory_gb.fp16: Input should be greater than 0 (got 0)"),
    ("tokenizers_git_without_ref", "packages: [transformers==4.40.0]",
     "tokenizers: {source: git, repo: huggingface/tokenizers}",
     "14: env.tokenizers: source: git needs both repo and ref (a tag or commit)"),
    ("port_out_of_range", "port: 7860}", "port: 70000}",
     "19: launch[0].port: Input should be less than or equal to 65535 (got 70000)"),
    ("bad_shard_size", "output: final}", "output: final, max_shard_size: 5 gigs}",
     "10: convert[0].to_safetensors.max_shard_size: expected a size such as 5GB or 500MB (got '5 gigs')"),
    ("unknown_delta_convention", "  - to_safetensors: {input: model, output: final}",
     "  - apply_delta: {base: model, delta: model, convention: merge}",
     "10: convert[0].apply_delta.convention: expected 'replace', 'add', 'zero-pad-add' or 'slice-add' "
     "(got 'merge')"),
    ("top_level_not_a_mapping", BASE, "- a\n- b\n",
     "1: expected a mapping of manifest fields at the top level"),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_base_manifest_is_valid(tmp_path: Path):
    assert load_manifest(_write(tmp_path, BASE)).id == "m"


def test_there_are_at_least_twenty_distinct_broken_manifests():
    assert len({case[0] for case in CASES}) == len(CASES) >= 20
    assert len({case[2] for case in CASES}) >= 20


@pytest.mark.parametrize(("old", "new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_manifest_names_file_line_field_and_problem(tmp_path: Path, cli, old: str, new: str, expected: str):
    assert old in BASE
    path = _write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (problem,) = info.value.problems
    if expected.endswith(" "):  # the parser's own wording follows; pin the part modelrig writes
        assert problem.startswith(f"{path}:{expected}")
    else:
        assert problem == f"{path}:{expected}"

    code, out, err = cli("validate", path)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [f"modelrig: error: {problem} [manifest_invalid]"]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path, cli):
    text = (BASE.replace("title: M", "description: d")
            .replace("trust_remote_code: false", "trust_remote_cod: false")
            .replace("repo: org/m", "repo: org m")
            .replace('python: "3.10"', 'python: "3"')
            .replace("id: m", "id: other"))
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    fields = [p.split(": ")[1] for p in info.value.problems]
    assert fields == ["title", "id", "trust_remote_cod", "weights.model.huggingface.repo", "env.python"]
    code, _, err = cli("validate", path)
    assert code == 2
    assert len(err.splitlines()) == 5


def test_validate_reports_every_bad_file_and_still_lists_the_good_ones(tmp_path: Path, cli):
    good = tmp_path / "good" / "m.yaml"
    bad = tmp_path / "bad" / "m.yaml"
    good.parent.mkdir()
    bad.parent.mkdir()
    good.write_text(BASE, encoding="utf-8")
    bad.write_text(BASE.replace('python: "3.10"', 'python: "3"'), encoding="utf-8")
    code, out, err = cli("validate", good, bad)
    assert code == 2
    assert out.splitlines() == ["ok  m"]
    assert err.startswith(f"modelrig: error: {bad}:12: env.python:")


def test_a_dependency_on_an_unknown_model_is_reported(tmp_path: Path, cli):
    text = BASE.replace("    size_gb: 1.0\n", "  llm: {model: no-such-model}\n")
    path = _write(tmp_path, text)
    code, _, err = cli("validate", path)
    assert code == 2
    assert err.strip() == (f"modelrig: error: {path}:8: weights.llm.model: no manifest with id 'no-such-model' "
                           "[manifest_invalid]")
