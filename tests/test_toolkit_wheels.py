"""The toolkit's wheels a bundle carries: modelrig's own dependencies as installed here (plus uv), nothing else."""

from __future__ import annotations

from importlib import metadata

from modelrig.config import PipSettings
from modelrig.lock.toolkit_wheels import toolkit_indexes, toolkit_pins


def test_the_pins_are_the_toolkits_dependency_closure_as_installed():
    pins = dict(p.split("==", 1) for p in toolkit_pins())
    for name in ("huggingface-hub", "modelscope", "pydantic", "pydantic-core", "torch", "uv", "ansible-core"):
        assert pins[name] == metadata.version(name), name
    # modelrig itself is built, not pinned; the test and lint tools of this checkout's env are not the toolkit's
    assert not {"modelrig", "pytest", "ruff", "ansible-lint", "pip"} & set(pins)
    assert list(pins) == sorted(pins)


def test_the_toolkits_torch_comes_from_the_cpu_index_unless_pytorchs_index_is_off():
    mirror = PipSettings(index_url="https://pypi.mirror.example/simple", find_links=["/srv/wheels"],
                         torch_index_base="https://torch.mirror.example/whl")
    assert toolkit_indexes(mirror).torch_index_url == "https://torch.mirror.example/whl/cpu"
    off = toolkit_indexes(mirror.model_copy(update={"use_torch_index": False}))
    assert (off.torch_index_url, off.index_url, off.find_links) == (None, "https://pypi.mirror.example/simple",
                                                                  ["/srv/wheels"])
