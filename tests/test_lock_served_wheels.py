"""Locks read wheel hashes from wheel folders served over HTTP (find-links URLs) and from index mirrors, as mirror-only
networks serve torch, not only from local folders: the wheel uv installed is hashed as the mirror serves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrig.envs.install import Indexes
from modelrig.lock.packages import hashes_for, link_pages, parse_line
from tests.helpers.pythons import sha256
from tests.helpers.served import serve_folder
from tests.helpers.venvs import TORCH, VenvFactory, pip_find_links

pytestmark = pytest.mark.slow

TORCH_FROZEN = parse_line("torch==2.13.0+cpu")


@pytest.fixture(scope="module")
def torch_wheel() -> Path:
    wheels = [w for link in pip_find_links() for w in Path(link).glob("torch-2.13.0+cpu-cp311-*.whl")]
    assert wheels, "this machine's find-links folder holds torch-2.13.0+cpu (cp311)"
    return wheels[0]


@pytest.fixture(scope="module")
def torch_python() -> Path:
    return VenvFactory().get([TORCH])


@pytest.fixture
def mirror(tmp_path: Path, torch_wheel: Path) -> Path:
    """A folder served as a mirror: `wheels/` (a find-links folder) and `simple/` (an index without hashes)."""
    root = tmp_path / "mirror"
    (root / "wheels").mkdir(parents=True)
    (root / "wheels" / torch_wheel.name).symlink_to(torch_wheel)
    (root / "wheels" / "torch-2.13.0+cpu-cp310-cp310-manylinux_2_28_x86_64.whl").write_bytes(b"another Python's")
    (root / "simple" / "torch").mkdir(parents=True)
    (root / "simple" / "torch" / "index.html").write_text(
        f'<html><body><a href="../../wheels/{torch_wheel.name.replace("+", "%2B")}">{torch_wheel.name}</a>\n'
        '<a href="../../wheels/torch-2.13.0%2Bcpu-cp310-cp310-manylinux_2_28_x86_64.whl">cp310</a></body></html>\n')
    return root


def test_find_links_url_gives_the_served_wheels_sha256(mirror, torch_wheel, torch_python):
    with serve_folder(mirror) as served:
        indexes = Indexes(index_url=f"{served.url}/empty-index/", find_links=[f"{served.url}/wheels/"])
        hashes = hashes_for([TORCH_FROZEN], python=torch_python, indexes=indexes)
    assert hashes == {"torch": [sha256(torch_wheel)]}
    # only the wheel the env's Python (cp311) installs is downloaded, not the cp310 one beside it
    assert [r for r in served.requests if r.endswith(".whl")] == [f"/wheels/{torch_wheel.name.replace('+', '%2B')}"]


def test_index_mirror_without_hashes_gives_the_served_wheels_sha256(mirror, torch_wheel, torch_python):
    with serve_folder(mirror) as served:
        indexes = Indexes(index_url=f"{served.url}/simple/")
        hashes = hashes_for([TORCH_FROZEN], python=torch_python, indexes=indexes)
    assert hashes == {"torch": [sha256(torch_wheel)]}


def test_a_sha256_the_index_declares_is_taken_without_downloading_the_wheel(mirror, torch_wheel, torch_python):
    page = mirror / "simple" / "torch" / "index.html"
    declared = "ab" * 32
    page.write_text(page.read_text().replace(".whl\">", f".whl#sha256={declared}\">", 1))
    with serve_folder(mirror) as served:
        hashes = hashes_for([TORCH_FROZEN], python=torch_python, indexes=Indexes(index_url=f"{served.url}/simple/"))
    assert hashes == {"torch": [declared]}
    assert not [r for r in served.requests if r.endswith(".whl")]


def test_link_pages_are_the_find_links_urls_and_each_indexs_project_page():
    indexes = Indexes(index_url="https://mirror/simple", extra_index_urls=["https://other/simple/"],
                      find_links=["/opt/wheels", "https://mirror/wheels/"], torch_index_url="https://mirror/whl/cpu")
    assert link_pages("Torch_Vision", indexes) == [
        "https://mirror/wheels/", "https://mirror/simple/torch-vision/", "https://other/simple/torch-vision/",
        "https://mirror/whl/cpu/torch-vision/"]
