"""The model manifest schema (`model_manifests/*.yaml`) and its loader with file:line error reporting."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import TypedDict

from modelrig.errors import ManifestError
from modelrig.yamlpos import Loc, YamlSyntaxError, line_for, load_with_lines

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class License(_Strict):
    """The model's license; `gated` repos need a token (never written anywhere by modelrig)."""

    name: OneLine
    gated: bool = False
    url: OneLine | None = None


class HubRef(_Strict):
    """A repository on the Hugging Face Hub or ModelScope at a revision."""

    repo: Annotated[str, Field(pattern=_REPO)]
    revision: Annotated[OneLine, Field(min_length=1)]
    #: The revision is a moving ref (branch or tag): `modelrig fetch` resolves it to a commit, records it in the
    #: store's stamp and names it to pin in the manifest.
    to_pin: bool = False
    repo_type: Literal["model", "dataset"] = "model"

    @property
    def pinned(self) -> bool:
        """True when `revision` is a full 40-hex commit hash."""
        return bool(FULL_COMMIT.match(self.revision))


class LocalRef(_Strict):
    """Weights the user supplies on disk (license-gated originals); the path comes from host config or the CLI."""

    #: Name under which the path is given: host config `local: {NAME: PATH}` or `--local NAME=PATH`.
    var: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    path: str | None = None
    description: str = ""


class WeightSource(_Strict):
    """One named input of a model: a hub repo (HF and/or ModelScope), a local directory, or another model."""

    huggingface: HubRef | None = None
    modelscope: HubRef | None = None
    local: LocalRef | None = None
    #: Another manifest's final output (e.g. Ziya-BLIP2 needs the merged Ziya-LLaMA).
    model: Annotated[str, Field(pattern=_SLUG)] | None = None
    prefer: Literal["huggingface", "modelscope"] | None = None
    format: WeightFormat = "hf"
    include: list[str] = []
    exclude: list[str] = []
    #: Approximate download size in GB (1e9 bytes), used by the planner before any listing is fetched.
    size_gb: Annotated[float, Field(ge=0)] | None = None
    gated: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> WeightSource:
        hubs = self.huggingface is not None or self.modelscope is not None
        kinds = [hubs, self.local is not None, self.model is not None]
        if sum(kinds) != 1:
            raise ValueError(
                "give exactly one kind of source: huggingface and/or modelscope, or local, or model"
            )
        if self.prefer and getattr(self, self.prefer) is None:
            raise ValueError(f"prefer: {self.prefer!r} names a hub this source does not have")
        if (self.include or self.exclude) and not hubs:
            raise ValueError("include/exclude apply only to hub sources")
        return self

    @property
    def hubs(self) -> list[tuple[str, HubRef]]:
        """The hub references of this source, preferred one first."""
        refs = [(n, r) for n, r in (("huggingface", self.huggingface), ("modelscope", self.modelscope)) if r]
        if self.prefer:
            refs.sort(key=lambda item: item[0] != self.prefer)
        return refs


class _Step(_Strict):
    #: Name of what this step produces; later steps and `output` refer to it. Defaults to the step kind.
    output: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    #: Write this step's output to disk even when the next step could read it directly (a fused chain).
    keep: bool = False

    @property
    def output_name(self) -> str:
        """The name of this step's product."""
        return self.output or self.kind  # type: ignore[attr-defined]

    @property
    def inputs(self) -> list[str]:
        """The names this step reads (weight sources or earlier outputs)."""
        return [v for f in ("input", "base", "delta") if isinstance(v := getattr(self, f, None), str)]


class LlamaMetaToHf(_Step):
    """Meta's original LLaMA checkpoint (consolidated.NN.pth + params.json) to Hugging Face format."""

    kind: Literal["llama_meta_to_hf"] = "llama_meta_to_hf"
    input: str
    #: Checked against params.json and the shard count; omit it for checkpoints of no published size (tiny ones).
    size: Literal["7B", "13B", "30B", "33B", "65B"] | None = None


class ApplyDelta(_Step):
    """Base + delta = target, in one of the published delta conventions."""

    kind: Literal["apply_delta"] = "apply_delta"
    base: str
    delta: str
    convention: DeltaConvention


class TfToPt(_Step):
    """TensorFlow weights (a TF1 checkpoint or an HF `tf_model.h5`) to PyTorch."""

    kind: Literal["tf_to_pt"] = "tf_to_pt"
    input: str
    model_type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    #: A config file inside the input, e.g. bert_config.json.
    config: str | None = None


class ToSafetensors(_Step):
    """Pickle `.bin` weights to safetensors shards plus an index."""

    kind: Literal["to_safetensors"] = "to_safetensors"
    input: str | None = None
    max_shard_size: str = "5GB"
    allow_unsafe_pickle: bool = False

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _SIZE.match(value):
            raise ValueError("expected a size such as 5GB or 500MB")
        return value


ConvertStep = Annotated[LlamaMetaToHf | ApplyDelta | TfToPt | ToSafetensors, Field(discriminator="kind")]


class TokenizersSpec(_Strict):
    """How `tokenizers` is installed: a wheel from the index, or built with Rust from a pinned source ref."""

    source: Literal["wheel", "git"] = "wheel"
    version: str | None = None
    repo: OneLine | None = None
    ref: OneLine | None = None

    @model_validator(mode="after")
    def _check(self) -> TokenizersSpec:
        if self.version is not None:
            _check_specifier(self.version)
        if self.source == "git" and not (self.repo and self.ref):
            raise ValueError("source: git needs both repo and ref (a tag or commit)")
        if self.source == "wheel" and (self.repo or self.ref):
            raise ValueError("repo/ref apply only to source: git")
        return self


class PlatformExtras(_Strict):
    """Packages and environment variables added on one kind of host."""

    packages: list[RequirementStr] = []
    env: dict[EnvName, str] = {}


class EnvSpec(_Strict):
    """The model's isolated environment: Python, a torch requirement the planner resolves, pinned packages."""

    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}$")]
    torch: str = ""
    #: Installed from the same index as torch (their builds must match it), e.g. torchvision==0.16.2.
    torch_companions: list[RequirementStr] = []
    packages: list[RequirementStr] = []
    tokenizers: TokenizersSpec | None = None
    platform: dict[Platform, PlatformExtras] = {}
    env: dict[EnvName, str] = {}

    @field_validator("torch")
    @classmethod
    def _torch(cls, value: str) -> str:
        return _check_specifier(value)


class Resources(_Strict):
    """What running the model takes; `memory_gb` lists precisions in order of preference."""

    params_b: Annotated[float, Field(gt=0)]
    memory_gb: Annotated[dict[Precision, Annotated[float, Field(gt=0)]], Field(min_length=1)]
    #: Working disk in GB for downloads, conversions and outputs together; derived when absent.
    disk_gb: Annotated[float, Field(gt=0)] | None = None
    #: CPU RAM in GB that conversion needs (streaming conversions need little).
    convert_ram_gb: Annotated[float, Field(gt=0)] | None = None


class UpstreamRepo(_Strict):
    """The model's own demo script from its repository at a pinned commit (or a local mirror)."""

    repo: Annotated[str, Field(pattern=_UPSTREAM_REPO)]
    ref: Annotated[str, Field(pattern=_GIT_REF)]
    to_pin: bool = False
    script: Annotated[str, Field(pattern=_SCRIPT)]
    args: list[OneLine] = []
    requirements: list[RequirementStr] = []


class LaunchOptions(TypedDict, total=False):
    """Kind-specific entry options (see launch/README.md); any key is allowed, the ones below are checked."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    #: Listen address of this entry.
    bind: BindAddress
    served_model_name: OneLine
    health_path: OneLine


class LaunchEntry(_Strict):
    """One demo of the model: what kind, which chat adapter, which port, kind-specific options."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
    kind: LaunchKind
    adapter: OneLine | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    #: Which weight source or step output to serve; defaults to the model's output.
    weights: OneLine | None = None
    #: Restrict this entry to some kinds of host.
    platforms: list[Platform] | None = None
    upstream: UpstreamRepo | None = None
    options: LaunchOptions = {}

    @model_validator(mode="after")
    def _check(self) -> LaunchEntry:
        if self.kind == "upstream_script" and self.upstream is None:
            raise ValueError("kind: upstream_script needs an upstream: {repo, ref, script} block")
        if self.kind != "upstream_script" and self.upstream is not None:
            raise ValueError("upstream: applies only to kind: upstream_script")
        if self.kind in ADAPTER_KINDS and self.adapter is None:
            raise ValueError(f"kind: {self.kind} needs an adapter (one of: {', '.join(sorted(ADAPTERS))})")
        if self.adapter is not None and self.adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {self.adapter!r}; known: {', '.join(sorted(ADAPTERS))}")
        if self.kind in CUDA_ONLY_KINDS and self.platforms and set(self.platforms) - {"cuda"}:
            raise ValueError(f"kind: {self.kind} runs only on CUDA hosts; platforms must be [cuda]")
        return self

    @property
    def allowed_platforms(self) -> frozenset[str]:
        """The host kinds this entry can run on."""
        if self.kind in CUDA_ONLY_KINDS:
            return frozenset({"cuda"})
        return frozenset(self.platforms or ("cuda", "mps", "cpu"))


class Manifest(_Strict):
    """A model: where its weights come from, what is done to them, what env runs them, how its demos start."""

    id: Annotated[str, Field(pattern=_SLUG)]
    title: OneLine
    description: str = ""
    license: License
    architecture: OneLine | None = None
    trust_remote_code: bool = False
    weights: Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], WeightSource], Field(min_length=1)]
    convert: list[ConvertStep] = []
    #: Which weight source or step output is the model; defaults to the last step's output or the first source.
    output: OneLine | None = None
    env: EnvSpec
    resources: Resources
    launch: list[LaunchEntry] = []

    @field_validator("convert", mode="before")
    @classmethod
    def _single_key_steps(cls, value: Any) -> Any:
        """Accept the readable `- apply_delta: {base: ..., ...}` form: one key, the step kind."""
        if not isinstance(value, list):
            return value
        steps = []
        for item in value:
            if isinstance(item, dict) and len(item) == 1 and "kind" not in item:
                (kind, params), = item.items()
                params = params if isinstance(params, dict) else {}
                steps.append({"kind": kind, **params})
            else:
                steps.append(item)
        return steps

    @property
    def output_name(self) -> str:
        """The name of the weights the demos serve."""
        if self.output:
            return self.output
        if self.convert:
            return self.convert[-1].output_name
        return next(iter(self.weights))




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
    r"^3\.\d{1,2}$": "expected a Python version such as '3.10'",
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
