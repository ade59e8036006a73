"""The model manifest (`model_manifests/*.yaml`): `fields` holds the value types and patterns, `schema` the
pydantic models, `load` the loader that reports every problem as `file:line: field: message`."""

from modelrig.manifest.fields import (
    ADAPTER_KINDS,
    ADAPTERS,
    CUDA_ONLY_KINDS,
    FULL_COMMIT,
    DeltaConvention,
    LaunchKind,
    Platform,
    Precision,
    WeightFormat,
    is_bind_address,
)
from modelrig.manifest.load import load_manifest, semantic_problems
from modelrig.manifest.schema import (
    ApplyDelta,
    ConvertStep,
    EnvSpec,
    HubRef,
    LaunchEntry,
    LaunchOptions,
    License,
    LlamaMetaToHf,
    LocalRef,
    Manifest,
    PlatformExtras,
    Resources,
    TfToPt,
    TokenizersSpec,
    ToSafetensors,
    UpstreamRepo,
    WeightSource,
)

__all__ = [
    "ADAPTERS", "ADAPTER_KINDS", "CUDA_ONLY_KINDS", "FULL_COMMIT", "ApplyDelta", "ConvertStep", "DeltaConvention",
    "EnvSpec", "HubRef", "LaunchEntry", "LaunchKind", "LaunchOptions", "License", "LlamaMetaToHf", "LocalRef",
    "Manifest", "Platform", "PlatformExtras", "Precision", "Resources", "TfToPt", "ToSafetensors", "TokenizersSpec",
    "UpstreamRepo", "WeightFormat", "WeightSource", "is_bind_address", "load_manifest", "semantic_problems",
]
