"""The planner on recorded hosts: torch build, precision, quantization and fit for every seed model.

The expected table below was worked out by hand from the rules in docs/plan-json.md (torch: newest allowed release
with a variant the driver runs through CUDA minor version compatibility and whose kernels cover the GPU; memory:
the manifest's figure + 10% against each GPU's memory less 1 GB, Metal's 2/3-3/4 of RAM, or 3/4 of RAM on CPU;
disk: downloads + conversion outputs + 10% + 2 GB) and the host facts under tests/fixtures/hosts/.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from modelrig.catalog import dependency_manifests, load_model
from modelrig.config import HostConfig, PipSettings
from modelrig.errors import HostCannotRunError
from modelrig.facts import Gpu, HostFacts
from modelrig.manifest import Manifest
from modelrig.plan import load_torch_table, make_plan, mps_usable_gb, plan_disk, plan_precision, plan_torch_build

HOSTS = Path(__file__).parent / "fixtures" / "hosts"

# torch: version+variant ("none": no usable build); quant "-": none; gpus: GPUs the weights are spread over.
EXPECTED = """
# model                   host                  torch          dtype quant fits  gpus
blip2-opt-2.7b            a100-40gb-driver450   2.7.1+cu118    fp16  -     yes   1
blip2-opt-2.7b            a100-40gb             2.14.1+cu132   fp16  -     yes   1
blip2-opt-2.7b            a100-80gb             2.14.1+cu126   fp16  -     yes   1
blip2-opt-2.7b            h100                  2.14.1+cu132   fp16  -     yes   1
blip2-opt-2.7b            rtx3090-old-driver    2.7.1+cu118    fp16  -     yes   1
blip2-opt-2.7b            rtx4090               2.14.1+cu126   fp16  -     yes   1
blip2-opt-2.7b            rtx5090               2.14.1+cu132   fp16  -     yes   1
blip2-opt-2.7b            t4                    2.14.1+cu126   fp16  -     yes   1
blip2-opt-2.7b            v100                  none           fp16  -     no    1
blip2-opt-2.7b            m2-ultra-192gb        2.14.1+default fp16  -     yes   0
blip2-opt-2.7b            m2-pro-16gb           2.14.1+default fp16  -     yes   0
blip2-opt-2.7b            cpu-only              2.14.1+cpu     fp32  -     yes   0
bluelm-7b-chat            a100-40gb-driver450   2.7.1+cu118    bf16  -     yes   1
bluelm-7b-chat            a100-40gb             2.14.1+cu132   bf16  -     yes   1
bluelm-7b-chat            a100-80gb             2.14.1+cu126   bf16  -     yes   1
bluelm-7b-chat            h100                  2.14.1+cu132   bf16  -     yes   1
bluelm-7b-chat            rtx3090-old-driver    2.7.1+cu118    bf16  -     yes   1
bluelm-7b-chat            rtx4090               2.14.1+cu126   bf16  -     yes   1
bluelm-7b-chat            rtx5090               2.14.1+cu132   bf16  -     yes   1
bluelm-7b-chat            t4                    2.14.1+cu126   fp16  int8  yes   1
bluelm-7b-chat            v100                  none           fp16  int8  no    1
bluelm-7b-chat            m2-ultra-192gb        2.14.1+default fp16  -     yes   0
bluelm-7b-chat            m2-pro-16gb           2.14.1+default fp16  -     no    0
bluelm-7b-chat            cpu-only              2.14.1+cpu     bf16  -     yes   0
joycaption-alpha-two      a100-40gb-driver450   2.7.1+cu118    bf16  -     yes   1
joycaption-alpha-two      a100-40gb             2.14.1+cu132   bf16  -     yes   1
joycaption-alpha-two      a100-80gb             2.14.1+cu126   bf16  -     yes   1
joycaption-alpha-two      h100                  2.14.1+cu132   bf16  -     yes   1
joycaption-alpha-two      rtx3090-old-driver    2.7.1+cu118    bf16  -     yes   1
joycaption-alpha-two      rtx4090               2.14.1+cu126   bf16  -     yes   1
joycaption-alpha-two      rtx5090               2.14.1+cu132   bf16  -     yes   1
joycaption-alpha-two      t4                    2.14.1+cu126   fp16  int4  yes   1
joycaption-alpha-two      v100                  none           fp16  int4  no    1
joycaption-alpha-two      m2-ultra-192gb        2.14.1+default fp16  -     yes   0
joycaption-alpha-two      m2-pro-16gb           2.14.1+default fp16  -     no    0
joycaption-alpha-two      cpu-only              2.14.1+cpu     bf16  -     yes   0
minicpm-v-2_6             a100-40gb-driver450   2.7.1+cu118    bf16  -     yes   1
minicpm-v-2_6             a100-40gb             2.14.1+cu132   bf16  -     yes   1
minicpm-v-2_6             a100-80gb             2.14.1+cu126   bf16  -     yes   1
minicpm-v-2_6             h100                  2.14.1+cu132   bf16  -     yes   1
minicpm-v-2_6             rtx3090-old-driver    2.7.1+cu118    bf16  -     yes   1
minicpm-v-2_6             rtx4090               2.14.1+cu126   bf16  -     yes   1
minicpm-v-2_6             rtx5090               2.14.1+cu132   bf16  -     yes   1
minicpm-v-2_6             t4                    2.14.1+cu126   fp16  int4  yes   1
minicpm-v-2_6             v100                  none           fp16  int4  no    1
minicpm-v-2_6             m2-ultra-192gb        2.14.1+default fp16  -     yes   0
minicpm-v-2_6             m2-pro-16gb           2.14.1+default fp16  -     no    0
minicpm-v-2_6             cpu-only              2.14.1+cpu     bf16  -     yes   0
minicpm-o-2_6             a100-40gb-driver450   2.3.1+cu118    bf16  -     yes   1
minicpm-o-2_6             a100-40gb             2.3.1+cu121    bf16  -     yes   1
minicpm-o-2_6             a100-80gb             2.3.1+cu121    bf16  -     yes   1
minicpm-o-2_6             h100                  2.3.1+cu121    bf16  -     yes   1
minicpm-o-2_6             rtx3090-old-driver    2.3.1+cu118    bf16  -     yes   1
minicpm-o-2_6             rtx4090               2.3.1+cu121    bf16  -     yes   1
minicpm-o-2_6             rtx5090               none           bf16  -     no    1
minicpm-o-2_6             t4                    2.3.1+cu121    fp16  int4  yes   1
minicpm-o-2_6             v100                  none           fp16  int4  no    1
minicpm-o-2_6             m2-ultra-192gb        2.3.1+default  fp16  -     yes   0
minicpm-o-2_6             m2-pro-16gb           2.3.1+default  fp16  -     no    0
minicpm-o-2_6             cpu-only              2.3.1+cpu      bf16  -     yes   0
qwen-vl-chat              a100-40gb-driver450   2.7.1+cu118    bf16  -     yes   1
qwen-vl-chat              a100-40gb             2.14.1+cu132   bf16  -     yes   1
qwen-vl-chat              a100-80gb             2.14.1+cu126   bf16  -     yes   1
qwen-vl-chat              h100                  2.14.1+cu132   bf16  -     yes   1
qwen-vl-chat              rtx3090-old-driver    2.7.1+cu118    bf16  -     no    1
qwen-vl-chat              rtx4090               2.14.1+cu126   bf16  -     yes   2
qwen-vl-chat              rtx5090               2.14.1+cu132   bf16  -     yes   1
qwen-vl-chat              t4                    2.14.1+cu126   fp16  -     no    1
qwen-vl-chat              v100                  none           fp16  -     no    1
qwen-vl-chat              m2-ultra-192gb        2.14.1+default fp16  -     yes   0
qwen-vl-chat              m2-pro-16gb           2.14.1+default fp16  -     no    0
qwen-vl-chat              cpu-only              2.14.1+cpu     bf16  -     yes   0
qwen2-vl-7b-instruct      a100-40gb-driver450   2.7.1+cu118    bf16  -     yes   1
qwen2-vl-7b-instruct      a100-40gb             2.14.1+cu132   bf16  -     yes   1
qwen2-vl-7b-instruct      a100-80gb             2.14.1+cu126   bf16  -     yes   1
qwen2-vl-7b-instruct      h100                  2.14.1+cu132   bf16  -     yes   1
qwen2-vl-7b-instruct      rtx3090-old-driver    2.7.1+cu118    bf16  -     yes   1
qwen2-vl-7b-instruct      rtx4090               2.14.1+cu126   bf16  -     yes   1
qwen2-vl-7b-instruct      rtx5090               2.14.1+cu132   bf16  -     yes   1
qwen2-vl-7b-instruct      t4                    2.14.1+cu126   fp16  int4  yes   1
qwen2-vl-7b-instruct      v100                  none           fp16  int4  no    1
qwen2-vl-7b-instruct      m2-ultra-192gb        2.14.1+default fp16  -     yes   0
qwen2-vl-7b-instruct      m2-pro-16gb           2.14.1+default fp16  -     no    0
qwen2-vl-7b-instruct      cpu-only              2.14.1+cpu     bf16  -     yes   0
ziya-llama-13b-v1         a100-40gb-driver450   2.7.1+cu118    fp16  -     yes   1
ziya-llama-13b-v1         a100-40gb             2.14.1+cu132   fp16  -     yes   1
ziya-llama-13b-v1         a100-80gb             2.14.1+cu126   fp16  -     yes   1
ziya-llama-13b-v1         h100                  2.14.1+cu132   fp16  -     yes   1
ziya-llama-13b-v1         rtx3090-old-driver    2.7.1+cu118    bf16  int8  no    1
ziya-llama-13b-v1         rtx4090               2.14.1+cu126   fp16  -     yes   2
ziya-llama-13b-v1         rtx5090               2.14.1+cu132   fp16  -     yes   1
ziya-llama-13b-v1         t4                    2.14.1+cu126   fp16  int8  yes   1
ziya-llama-13b-v1         v100                  none           fp16  int8  no    1
ziya-llama-13b-v1         m2-ultra-192gb        2.14.1+default fp16  -     yes   0
ziya-llama-13b-v1         m2-pro-16gb           2.14.1+default fp16  -     no    0
ziya-llama-13b-v1         cpu-only              2.14.1+cpu     bf16  -     no    0
ziya-blip2-14b-visual-v1  a100-40gb-driver450   2.7.1+cu118    fp16  -     yes   1
ziya-blip2-14b-visual-v1  a100-40gb             2.14.1+cu132   fp16  -     yes   1
ziya-blip2-14b-visual-v1  a100-80gb             2.14.1+cu126   fp16  -     yes   1
ziya-blip2-14b-visual-v1  h100                  2.14.1+cu132   fp16  -     yes   1
ziya-blip2-14b-visual-v1  rtx3090-old-driver    2.7.1+cu118    bf16  int4  no    1
ziya-blip2-14b-visual-v1  rtx4090               2.14.1+cu126   fp16  -     yes   2
ziya-blip2-14b-visual-v1  rtx5090               2.14.1+cu132   fp16  -     yes   1
ziya-blip2-14b-visual-v1  t4                    2.14.1+cu126   fp16  int4  yes   1
ziya-blip2-14b-visual-v1  v100                  none           fp16  int4  no    1
ziya-blip2-14b-visual-v1  m2-ultra-192gb        2.14.1+default fp16  -     yes   0
ziya-blip2-14b-visual-v1  m2-pro-16gb           2.14.1+default fp16  -     no    0
ziya-blip2-14b-visual-v1  cpu-only              2.14.1+cpu     bf16  -     no    0
"""


def _rows() -> list[tuple[str, ...]]:
    rows = []
    for line in EXPECTED.strip().splitlines():
        if line.startswith("#"):
            continue
        rows.append(tuple(line.split()))
    return rows


def facts(name: str) -> HostFacts:
    return HostFacts.from_dict(json.loads((HOSTS / f"{name}.json").read_text(encoding="utf-8")))


def plan_for(model: str, host: str | HostFacts, config: HostConfig | None = None):
    manifest = load_model(model)
    host_facts = facts(host) if isinstance(host, str) else host
    return make_plan(manifest, host_facts, config, manifests=dependency_manifests(manifest))


def with_torch(manifest: Manifest, torch: str, companions: list[str] | None = None) -> Manifest:
    update = {"torch": torch}
    if companions is not None:
        update["torch_companions"] = companions
    return manifest.model_copy(update={"env": manifest.env.model_copy(update=update)})


def test_the_table_covers_every_seed_model_on_every_required_host():
    rows = _rows()
    models = {r[0] for r in rows}
    hosts = {r[1] for r in rows}
    assert models >= {"ziya-llama-13b-v1", "ziya-blip2-14b-visual-v1", "qwen-vl-chat", "qwen2-vl-7b-instruct",
                      "blip2-opt-2.7b", "joycaption-alpha-two", "minicpm-o-2_6", "minicpm-v-2_6",
                      "bluelm-7b-chat"}
    assert hosts >= {"a100-40gb", "a100-80gb", "rtx3090-old-driver", "rtx4090", "h100", "v100", "t4",
                     "m2-ultra-192gb", "cpu-only"}
    assert len(rows) == len(models) * len(hosts)


@pytest.mark.parametrize(("model", "host", "torch", "dtype", "quant", "fits", "gpus"), _rows(),
                         ids=[f"{r[0]}@{r[1]}" for r in _rows()])
def test_seed_model_plan_on_recorded_host(model, host, torch, dtype, quant, fits, gpus):
    plan = plan_for(model, host)
    build = plan.env.torch
    assert (f"{build.version}+{build.variant}" if build.version else build.variant) == torch
    assert (plan.dtype, plan.quantization or "-", plan.fits, plan.gpus) == (dtype, quant, fits == "yes", int(gpus))
    assert (plan.refusal is None) == plan.fits


@pytest.mark.parametrize("host", ["a100-40gb", "rtx3090-old-driver", "rtx4090", "t4", "m2-ultra-192gb", "cpu-only"])
def test_ziya_v1_1_plans_like_v1(host):
    v1, v11 = plan_for("ziya-llama-13b-v1", host), plan_for("ziya-llama-13b-v1.1", host)
    assert (v11.env.torch, v11.dtype, v11.quantization, v11.fits) == (v1.env.torch, v1.dtype, v1.quantization,
                                                                       v1.fits)


# --- the torch build table ------------------------------------------------------------------------------------


def test_torch_1_12_1_published_only_cu102_cu113_cu116():
    assert sorted(load_torch_table().release("1.12.1").variants) == ["cu102", "cu113", "cu116"]


def test_hopper_needs_a_cu118_or_newer_build():
    h100 = facts("h100")
    manifest = load_model("blip2-opt-2.7b")
    assert plan_torch_build(h100, with_torch(manifest, "==2.0.1").env, config=HostConfig()).variant == "cu118"
    with pytest.raises(HostCannotRunError, match=r"\(sm_90\): it needs torch >= 2\.0\.0 \(cu118 or newer\)"):
        plan_torch_build(h100, with_torch(manifest, "<2.0").env, config=HostConfig())


def test_blackwell_needs_cu128_and_torch_2_7():
    rtx5090 = facts("rtx5090")
    manifest = load_model("blip2-opt-2.7b")
    build = plan_torch_build(rtx5090, with_torch(manifest, ">=2.6,<2.8").env, config=HostConfig())
    assert (build.version, build.variant) == ("2.7.1", "cu128")
    with pytest.raises(HostCannotRunError, match=r"\(sm_120\): it needs torch >= 2\.7\.0 \(cu128 or newer\)"):
        plan_torch_build(rtx5090, with_torch(manifest, "==2.6.0").env, config=HostConfig())


def test_old_driver_picks_an_older_cuda_variant():
    spec = with_torch(load_model("blip2-opt-2.7b"), "==2.1.2").env
    assert plan_torch_build(facts("a100-80gb"), spec, config=HostConfig()).variant == "cu121"
    assert plan_torch_build(facts("rtx3090-old-driver"), spec, config=HostConfig()).variant == "cu118"
    old_torch = with_torch(load_model("blip2-opt-2.7b"), "==1.12.1").env
    # 470.82.01 runs every CUDA 11.x build (>= 450.80.02); known only by its "CUDA Version: 11.4", 11.3 is the limit.
    assert plan_torch_build(facts("rtx3090-old-driver"), old_torch, config=HostConfig()).variant == "cu116"
    cuda_only = replace(facts("rtx3090-old-driver"), driver_version=None)
    assert plan_torch_build(cuda_only, old_torch, config=HostConfig()).variant == "cu113"


def test_pascal_gets_cu126_from_torch_2_8_whose_cu128_dropped_sm60():
    p100 = HostFacts(os="linux", arch="x86_64", cpu="x", cpu_count=8, ram_bytes=64 * 10**9,
                     disk_free_bytes=10**12, data_root="/d", driver_version="570.172.08", cuda_driver_max="12.8",
                     gpus=[Gpu(index=0, name="Tesla P100-PCIE-16GB", memory_mib=16384, compute_capability="6.0")])
    build = plan_torch_build(p100, with_torch(load_model("blip2-opt-2.7b"), "==2.8.0").env, config=HostConfig())
    assert build.variant == "cu126"


def test_a_driver_too_old_for_every_build_is_refused_with_the_driver_to_install():
    with pytest.raises(HostCannotRunError, match=r"driver 418\.67 supports CUDA 10\.1.*update the driver"):
        plan_torch_build(facts("v100"), load_model("blip2-opt-2.7b").env, config=HostConfig())


def test_an_exact_pin_missing_from_the_table_is_refused_on_cuda_and_accepted_elsewhere():
    spec = with_torch(load_model("blip2-opt-2.7b"), "==9.9.9").env
    with pytest.raises(HostCannotRunError, match=r"torch 9\.9\.9's CUDA variants are unknown: add it to "
                                                 r"torch_builds\.yaml"):
        plan_torch_build(facts("a100-80gb"), spec, config=HostConfig())
    warnings: list[str] = []
    cpu = plan_torch_build(facts("cpu-only"), spec, config=HostConfig(), warnings=warnings)
    assert (cpu.version, cpu.variant, cpu.requirements) == ("9.9.9", "cpu", ["torch==9.9.9"])
    assert warnings
    assert plan_torch_build(facts("m2-ultra-192gb"), spec, config=HostConfig()).variant == "default"


def test_torch_2_13_0_plans_on_a_cpu_host():
    build = plan_torch_build(facts("cpu-only"), with_torch(load_model("blip2-opt-2.7b"), "==2.13.0").env,
                             config=HostConfig())
    assert (build.version, build.variant, build.index_url) == ("2.13.0", "cpu", "https://download.pytorch.org/whl/cpu")


def test_host_config_decides_the_torch_index():
    spec = load_model("blip2-opt-2.7b").env
    mirror = HostConfig(pip=PipSettings(torch_index_base="https://mirror.example/whl/"))
    assert plan_torch_build(facts("a100-80gb"), spec, config=mirror).index_url == "https://mirror.example/whl/cu126"
    plain = HostConfig(pip=PipSettings(use_torch_index=False))
    assert plan_torch_build(facts("a100-80gb"), spec, config=plain).index_url is None
    assert plan_torch_build(facts("m2-ultra-192gb"), spec, config=HostConfig()).index_url is None


def test_torch_companions_are_pinned_from_the_table_and_can_steer_the_version():
    qwen = plan_for("qwen-vl-chat", "a100-80gb")
    assert qwen.env.torch.requirements == ["torch==2.14.1", "torchvision==0.29.1"]
    minicpm = plan_for("minicpm-o-2_6", "h100")
    assert minicpm.env.torch.requirements == ["torch==2.3.1", "torchvision==0.18.1", "torchaudio==2.3.1"]
    steered = with_torch(load_model("qwen-vl-chat"), ">=2.0", ["torchvision==0.16.2"])
    assert plan_torch_build(facts("a100-80gb"), steered.env, config=HostConfig()).version == "2.1.2"


# --- precision and memory ---------------------------------------------------------------------------------------


def test_ziya_blip2_on_a_24gb_rtx3090_needs_the_4bit_llm():
    choice = plan_precision(facts("rtx3090-old-driver"), load_model("ziya-blip2-14b-visual-v1").resources)
    assert (choice.dtype, choice.quantization, choice.fits) == ("bf16", "int4", True)
    assert choice.needed_gb == pytest.approx(13.2)


def test_bf16_runs_as_fp16_below_compute_capability_8_with_a_warning():
    manifest = load_model("blip2-opt-2.7b")
    bf16_only = manifest.resources.model_copy(update={"memory_gb": {"bf16": 7.21}})
    choice = plan_precision(facts("t4"), bf16_only)
    assert (choice.dtype, choice.fits) == ("fp16", True)
    assert any("no bf16" in w for w in choice.warnings)


def test_quantization_is_skipped_when_the_manifest_does_not_install_bitsandbytes():
    resources = load_model("bluelm-7b-chat").resources
    choice = plan_precision(facts("t4"), resources, quantization_available=False)
    assert not choice.fits
    assert "install bitsandbytes for int8 (9 GB)" in choice.refusal


def test_a_mac_never_gets_bitsandbytes_and_refuses_clearly():
    plan = plan_for("bluelm-7b-chat", "m2-pro-16gb")
    assert plan.quantization is None and not plan.fits
    assert plan.refusal == ("needs 17.6 GB at fp16 (16 GB + 10%); this Apple M2 Pro lets the GPU use 11.5 GB of "
                            "its 16 GiB (17.2 GB): use a Mac with 32 GiB of memory or more, or a CUDA GPU with "
                            "int8/int4 (bitsandbytes is CUDA-only)")


@pytest.mark.parametrize(("gib", "fits"), [(24, False), (32, True)])
def test_the_mac_the_refusal_advises_fits_and_the_size_below_does_not(gib, fits):
    """The advice follows the planner's own Metal share (2/3 up to 36 GB): a 24 GiB Mac is still refused."""
    mac = replace(facts("m2-pro-16gb"), ram_bytes=gib * 2**30, unified_memory_bytes=gib * 2**30)
    assert plan_for("bluelm-7b-chat", mac).fits is fits


def test_metal_working_set_is_two_thirds_of_small_and_three_quarters_of_large_macs():
    assert mps_usable_gb(16 * 10**9) == pytest.approx(16 * 2 / 3)
    assert mps_usable_gb(192 * 10**9) == pytest.approx(144)


def test_a_local_weights_folder_the_host_config_does_not_name_is_warned_about():
    unset = [w for w in plan_for("ziya-llama-13b-v1.1", "a100-80gb").warnings if "local weights" in w]
    assert unset == ["ziya-llama-13b-v1.1: base: local weights not set: set local.llama_13b_meta_dir in the host "
                     "config (or pass --local llama_13b_meta_dir=PATH to fetch and up) to the folder with the "
                     "meta-llama weights"]
    config = HostConfig(local={"llama_13b_meta_dir": "/data/llama-13b"})
    assert not [w for w in plan_for("ziya-llama-13b-v1.1", "a100-80gb", config).warnings if "local weights" in w]


def test_refusal_says_why_and_what_would_work_on_cuda():
    plan = plan_for("qwen-vl-chat", "rtx3090-old-driver")
    assert plan.refusal == ("needs 24.86 GB at bf16 (22.6 GB + 10%); this host's NVIDIA GeForce RTX 3090 has "
                            "24.4 GB usable: use a GPU with at least 26 GB")


def test_a_model_too_big_for_one_gpu_is_spread_over_two():
    plan = plan_for("ziya-llama-13b-v1", "rtx4090")
    assert (plan.gpus, plan.dtype, plan.quantization) == (2, "fp16", None)
    assert any("device_map" in w for w in plan.warnings)


def test_cpu_only_host_refuses_a_13b_model_with_the_ram_it_would_need():
    plan = plan_for("ziya-llama-13b-v1", "cpu-only")
    assert plan.refusal == ("needs 28.6 GB of RAM at bf16 (26 GB + 10%); this CPU-only host has 32 GiB (25.8 GB "
                            "usable): use a host with at least 36 GiB of RAM or a GPU")


# --- disk, dependencies, steps ---------------------------------------------------------------------------------


def test_ziya_blip2_plans_the_merged_ziya_llama_as_a_dependency():
    manifest = load_model("ziya-blip2-14b-visual-v1")
    deps = dependency_manifests(manifest)
    assert list(deps) == ["ziya-llama-13b-v1"]
    disk = plan_disk(manifest, manifests=deps)
    assert disk.download_bytes == int((4.38 + 26.2) * 1e9)
    assert disk.needed_bytes == int(((4.38 + 26.2 + 26) * 1.1 + 2) * 1e9)
    built = plan_disk(manifest, manifests=deps, built={"ziya-llama-13b-v1"})
    assert built.download_bytes == int(4.38 * 1e9)


def test_not_enough_disk_is_a_refusal_naming_the_sizes():
    plan = plan_for("ziya-llama-13b-v1", "rtx3090-old-driver")
    assert plan.refusal == ("needs 59.4 GB of disk under /root/autodl-tmp/modelrig (downloads 26.2 GB, conversions "
                            "26 GB, +10% and 2 GB); only 50 GB free: free space or use a data root on a bigger disk")


def test_steps_are_ordered_env_fetch_convert_render_launch_with_dependencies_first():
    plan = plan_for("ziya-blip2-14b-visual-v1", "a100-80gb")
    stages = [s["stage"] for s in plan.steps]
    assert stages == ["env", "fetch", "fetch", "fetch", "fetch", "convert", "convert", "convert", "render",
                      "launch"]
    assert [s["model"] for s in plan.steps[1:4]] == ["ziya-llama-13b-v1"] * 2 + ["ziya-blip2-14b-visual-v1"]
    assert plan.steps[5]["description"] == ("llama_meta_to_hf: base -> base_hf; read directly by the next step, "
                                            "not written")
    assert plan.dependencies == ["ziya-llama-13b-v1"]


def test_vllm_entries_are_planned_only_on_cuda_hosts():
    assert plan_for("joycaption-alpha-two", "h100").launch == ["chat", "vllm", "caption"]
    assert plan_for("joycaption-alpha-two", "m2-ultra-192gb").launch == ["chat", "caption"]


def test_the_plan_is_a_pure_function_of_its_inputs():
    assert plan_for("qwen-vl-chat", "h100") == plan_for("qwen-vl-chat", "h100")


# --- the CLI ------------------------------------------------------------------------------------------------------


def test_plan_json_is_the_documented_shape(cli):
    code, out, err = cli("plan", "bluelm-7b-chat", "--facts", HOSTS / "a100-80gb.json", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert list(data) == ["ok", "model", "platform", "device", "dtype", "quantization", "memory_needed_gb",
                          "memory_available_gb", "env", "download_bytes", "disk_needed_bytes", "disk_free_bytes",
                          "steps", "launch", "fits", "refusal", "warnings", "gpus", "dependencies",
                          "prunable_bytes", "present_bytes"]
    assert data["env"]["torch"] == {"version": "2.14.1", "variant": "cu126",
                                    "index_url": "https://download.pytorch.org/whl/cu126",
                                    "requirements": ["torch==2.14.1"]}
    assert data["env"]["packages"][-1] == "bitsandbytes>=0.41"


def test_plan_summary_for_a_host_that_fits(cli):
    code, out, _ = cli("plan", "ziya-blip2-14b-visual-v1", "--facts", HOSTS / "a100-40gb.json")
    assert code == 0
    assert "torch     2.14.1 [cu132] from https://download.pytorch.org/whl/cu132" in out
    assert "fits      yes" in out


def test_plan_refusal_exits_3_and_prints_plan_and_reason(cli):
    code, out, err = cli("plan", "minicpm-o-2_6", "--facts", HOSTS / "rtx5090.json")
    assert code == 3
    assert "fits      NO:" in out
    assert err.startswith("modelrig: error: minicpm-o-2_6 cannot run on this host: no torch build allowed by "
                          "env.torch '==2.3.1' has kernels for this NVIDIA GeForce RTX 5090 (sm_120)")


def test_plan_with_a_missing_facts_file_is_a_usage_error(cli, tmp_path):
    code, _, err = cli("plan", "bluelm-7b-chat", "--facts", tmp_path / "nope.json")
    assert code == 2
    assert "nope.json: facts file not found" in err


def test_conversion_ram_beyond_the_host_is_a_refusal():
    manifest = load_model("ziya-llama-13b-v1")
    in_memory_merge = manifest.model_copy(
        update={"resources": manifest.resources.model_copy(update={"convert_ram_gb": 64})})
    t4 = make_plan(in_memory_merge, facts("t4"))
    assert "the conversions need 64 GB of RAM; this host has 12 GiB:" in t4.refusal
    a100 = make_plan(in_memory_merge, facts("a100-80gb"))
    assert a100.fits


def test_a_companion_with_no_release_for_newer_torch_keeps_torch_where_it_exists():
    # torchaudio's last release is 2.11.0; 2.11 on a 535 driver: cu130 needs 580, so cu128.
    needs_audio = with_torch(load_model("blip2-opt-2.7b"), ">=2.0", ["torchaudio"])
    build = plan_torch_build(facts("a100-80gb"), needs_audio.env, config=HostConfig())
    assert (build.version, build.variant, build.requirements) == ("2.11.0", "cu128",
                                                                  ["torch==2.11.0", "torchaudio==2.11.0"])
