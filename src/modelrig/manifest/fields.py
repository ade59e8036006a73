"""The manifest's field types: patterns, literals and validators of one value (requirements, binds, one line)."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import AfterValidator, Field

FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SLUG = r"^[a-z0-9][a-z0-9._-]*$"
_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: An upstream demo repository: a GitHub `owner/name`, or a git URL / absolute path in a shell-inert alphabet.
_UPSTREAM_REPO = (r"^([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
                  r"|(https|http|ssh|git|file)://[A-Za-z0-9._~:/@%+=-]+"
                  r"|git@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-]+"
                  r"|/[A-Za-z0-9._~/@+-]+)$")
_GIT_REF = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
_SCRIPT = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"
_HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")

Precision = Literal["fp32", "bf16", "fp16", "int8", "int4"]
Platform = Literal["cuda", "mps", "cpu"]
WeightFormat = Literal["hf", "meta-llama", "tf1-checkpoint", "tf2-h5"]
LaunchKind = Literal[
    "gradio_chat",
    "gradio_vision_chat",
    "streamlit_chat",
    "openai_api",
    "upstream_script",
    "vllm_serve",
    "batch_caption",
]
DeltaConvention = Literal["replace", "add", "zero-pad-add", "slice-add"]

#: Chat adapters known to the launch templates: how a model is prompted and how history and images are passed.
ADAPTERS = frozenset(
    {
        "ziya",  # <human>:...\n<bot>:  (Ziya-LLaMA)
        "ziya_blip2",  # model.chat(previous_querys, previous_outputs) with a separately loaded Ziya LLM
        "bluelm",  # [|Human|]:...[|AI|]:  with </s> between turns
        "qwen_vl",  # tokenizer.from_list_format + model.chat(history) (remote code)
        "minicpm",  # model.chat(msgs=[{role, content: [image, text]}]) (remote code)
        "blip2",  # captioning, and "Question: ... Answer:" VQA
        "joycaption",  # LLaVA chat template without a duplicated BOS
        "llava",  # generic LLaVA processor chat template
        "qwen2_vl",  # processor.apply_chat_template with image placeholders
        "chat_template",  # any tokenizer that ships a chat template
    }
)
#: Launch kinds that talk to a user and so need a chat adapter.
ADAPTER_KINDS = frozenset({"gradio_chat", "gradio_vision_chat", "streamlit_chat", "openai_api", "batch_caption"})
#: Launch kinds that run only on CUDA hosts.
CUDA_ONLY_KINDS = frozenset({"vllm_serve"})


def _check_specifier(value: str) -> str:
    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise ValueError("not a version specifier such as '==2.1.2' or '>=2.1,<2.4'") from None
    return value


def _check_requirement(value: str) -> str:
    try:
        req = Requirement(value)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"not a valid requirement such as 'transformers==4.33.1' ({reason})") from None
    if req.url and req.url.startswith("git+") and "@" not in req.url.rsplit("/", 1)[-1]:
        raise ValueError("a git requirement must pin a ref: 'name @ git+URL@<tag-or-commit>'")
    return value


#: A PEP 508 requirement string; git URLs must name a tag or commit.
RequirementStr = Annotated[str, AfterValidator(_check_requirement)]


def _check_one_line(value: str) -> str:
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise ValueError("must be one line of text: control characters (newline, tab, NUL, ...) are not allowed")
    return value


#: Text shown on one line (titles, names, revisions): no newline, NUL or other control character.
OneLine = Annotated[str, AfterValidator(_check_one_line)]


def is_bind_address(value: str) -> bool:
    """True for an IP address (IPv6 optionally in brackets) or a DNS hostname: what a server can listen on."""
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == value and bool(_HOSTNAME.match(value))


def _check_bind(value: str) -> str:
    if not is_bind_address(value):
        raise ValueError("expected an IP address or a hostname to listen on, such as 127.0.0.1, 0.0.0.0, :: or "
                         "gpu-box.local")
    return value


#: A listen address: an IP address or a hostname.
BindAddress = Annotated[str, AfterValidator(_check_bind)]
#: An environment variable name as a shell `export` takes it.
EnvName = Annotated[str, Field(pattern=_ENV_NAME)]
