"""The planner's disk figure follows fused conversions: downloads + final output + headroom; intermediates priced."""

from __future__ import annotations

import json
from pathlib import Path

from modelrig.catalog import dependency_manifests, load_model
from modelrig.facts import HostFacts
from modelrig.plan import DISK_HEADROOM, DISK_RESERVE_GB, make_plan, plan_disk

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
GB = 1e9


def _a100() -> HostFacts:
    return HostFacts.from_dict(json.loads((HOSTS / "a100-40gb.json").read_text(encoding="utf-8")))


def test_ziya_blip2_on_the_recorded_a100_needs_beyond_downloads_only_the_final_output_and_headroom(cli):
    manifest = load_model("ziya-blip2-14b-visual-v1")
    plan = make_plan(manifest, _a100(), manifests=dependency_manifests(manifest))
    final_output = 26 * GB  # the merged Ziya-LLaMA-13B in fp16: the only conversion output written
    headroom = (plan.download_bytes + final_output) * DISK_HEADROOM + DISK_RESERVE_GB * GB
    assert plan.fits
    assert plan.disk_needed_bytes - plan.download_bytes <= final_output + headroom + 1

    code, out, err = cli("plan", "ziya-blip2-14b-visual-v1", "--facts", HOSTS / "a100-40gb.json")
    assert code == 0, err
    assert "disk needed 64.2 GB" in out
    assert "base_hf, merged not written" in out and "52 GB more disk" in out


def test_keeping_intermediates_is_priced_and_a_kept_step_counts_in_full():
    manifest = load_model("ziya-llama-13b-v1")
    fused = plan_disk(manifest)
    assert fused.convert_bytes == int(26 * GB) and fused.intermediate_bytes == int(52 * GB)
    steps = [s.model_copy(update={"keep": True}) if s.output_name == "base_hf" else s for s in manifest.convert]
    kept = plan_disk(manifest.model_copy(update={"convert": steps}))
    assert kept.convert_bytes == int(52 * GB) and kept.intermediate_bytes == int(26 * GB)
    assert kept.needed_bytes - fused.needed_bytes == int(26 * GB * (1 + DISK_HEADROOM))


def test_sources_and_outputs_already_on_disk_take_no_more_disk():
    manifest = load_model("ziya-llama-13b-v1")
    empty = plan_disk(manifest)
    hub = [name for name, source in manifest.weights.items() if source.hubs]
    fetched = plan_disk(manifest, present=hub)
    assert fetched.download_bytes == 0 and fetched.convert_bytes == empty.convert_bytes
    assert fetched.present_bytes == empty.download_bytes
    done = plan_disk(manifest, present=[*hub, manifest.output_name])
    assert done.convert_bytes == 0 and done.present_bytes == empty.download_bytes + empty.convert_bytes
    assert done.needed_bytes == int(DISK_RESERVE_GB * GB)


def test_a_host_short_of_disk_is_refused_by_the_plan_but_still_gets_its_launch_files(cli, tmp_path):
    facts = json.loads((HOSTS / "a100-40gb.json").read_text(encoding="utf-8"))
    small = tmp_path / "small-disk.json"
    small.write_text(json.dumps({**facts, "disk_free_bytes": 10**9}))
    code, _, err = cli("plan", "bluelm-7b-chat", "--facts", small)
    assert code == 3 and "of disk" in err and "only 1 GB free" in err
    assert not make_plan(load_model("bluelm-7b-chat"), HostFacts.from_dict({**facts, "disk_free_bytes": 10**9})).fits
    code, out, err = cli("render", "bluelm-7b-chat", "--facts", small, "--out", tmp_path / "launch",
                         "--python", "/envs/x/bin/python", "--weights", f"model={tmp_path / 'weights'}", "--json")
    assert code == 0, err
    assert set(json.loads(out)["details"]["entries"]) == {"chat", "api"}
    assert (tmp_path / "launch" / "api" / "app.py").is_file()
