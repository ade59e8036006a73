"""The manifest schema: weights, conversion steps, environment, resources and launch entries (pydantic, strict)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypedDict

from modelrig.manifest.fields import (
    _GIT_REF,
    _REPO,
    _SCRIPT,
    _SIZE,
    _SLUG,
    _UPSTREAM_REPO,
    ADAPTER_KINDS,
    ADAPTERS,
    CUDA_ONLY_KINDS,
    FULL_COMMIT,
    BindAddress,
    DeltaConvention,
    EnvName,
    LaunchKind,
    OneLine,
    Platform,
    Precision,
    RequirementStr,
    WeightFormat,
    _check_specifier,
)


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


#: The model types a `tf_to_pt` step converts (convert.tf1_types describes each; a test keeps the two equal).
TF1_MODEL_TYPES = ("albert", "bert", "electra", "funnel", "gpt", "gpt2", "lxmert", "rembert", "t5", "transfo_xl",
                   "xlm", "xlnet")


class TfToPt(_Step):
    """TensorFlow weights (an original TF release, or an HF `tf_model.h5`) to PyTorch."""

    kind: Literal["tf_to_pt"] = "tf_to_pt"
    input: str
    #: One of the types `transformers-cli convert` took; omitted, it comes from the config.
    model_type: str | None = None
    #: A config file inside the input, e.g. bert_config.json.
    config: str | None = None
    #: The checkpoint inside the input when it holds more than one: a TF1 prefix (model.ckpt-1000000) or XLM's .pth.
    checkpoint: str | None = None
    #: XLNet only: the GLUE or SQuAD task the checkpoint was fine-tuned on.
    finetuning_task: Annotated[str, Field(pattern=r"^[a-z0-9_.-]+$")] | None = None

    @field_validator("model_type")
    @classmethod
    def _model_type(cls, value: str | None) -> str | None:
        if value is not None and value not in TF1_MODEL_TYPES:
            raise ValueError(f"{value!r} is not a convertible type; supported: {', '.join(TF1_MODEL_TYPES)}")
        return value

    @field_validator("config", "checkpoint")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/")):
            raise ValueError("a path inside the input (relative, no '..')")
        return value


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

    #: "3.10" takes any 3.10 release the host has; "3.10.13" exactly that one (installed with uv when missing).
    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}(\.\d{1,3})?$")]
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
