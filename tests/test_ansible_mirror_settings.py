"""The modelrig role's host settings for mirror-only and proxied networks, rendered by ansible-playbook from the role's
own defaults, vars and templates: one switch turns PyTorch's index off for the toolkit too, every host-config
setting is an inventory variable, the proxy leaves the configured mirrors alone, and a bundle means no index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.sshhosts import REPO_ROOT, playbook, recap

ROLE = REPO_ROOT / "roles" / "modelrig"

PLAY = """
- name: Render the modelrig role's templates for one set of inventory variables.
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/Linux.yml
  vars:
    modelrig_root: /data/modelrig
    modelrig_wheel_file: /tmp/modelrig-wheel/modelrig-0.1.0-py3-none-any.whl
    modelrig_wheel_checksum: 0123abcd
    modelrig_toolkit_links: []
    role_path: {role}
  tasks:
    - name: Render them.
      ansible.builtin.copy:
        content: "{{{{ lookup('ansible.builtin.template', '{role}/templates/' ~ item) }}}}"
        dest: "{out}/{{{{ item }}}}"
        mode: "0644"
      loop: [requirements.txt.j2, config.yaml.j2, proxy_env.j2, pip_env.j2]
"""


def render(tmp_path: Path, **variables: object) -> dict[str, str]:
    out = tmp_path / "out"
    out.mkdir(parents=True)
    (tmp_path / "play.yml").write_text(PLAY.format(role=ROLE, out=out))
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}))
    book = tmp_path / "play.yml"
    run = playbook(tmp_path, tmp_path / "hosts.yml", str(book), "-e", f"@{tmp_path / 'vars.json'}")
    assert run.returncode == 0 and recap(run.stdout)["localhost"]["failed"] == 0, run.stdout[-3000:]
    return {p.name.removesuffix(".j2"): p.read_text() for p in out.iterdir()}


def options(requirements: str) -> list[str]:
    return [line for line in requirements.splitlines() if line.startswith("--")]


@pytest.mark.slow
def test_use_torch_index_false_keeps_the_toolkit_off_pytorchs_index_too(tmp_path):
    files = render(tmp_path, modelrig_pip={"find_links": ["http://127.0.0.1:8000/wheels/"], "use_torch_index": False})
    assert options(files["requirements.txt"]) == ["--find-links http://127.0.0.1:8000/wheels/"]
    config = yaml.safe_load(files["config.yaml"])
    assert config["pip"] == {"index_url": None, "extra_index_urls": [], "find_links": ["http://127.0.0.1:8000/wheels/"],
                             "use_torch_index": False, "torch_index_base": "https://download.pytorch.org/whl"}


@pytest.mark.slow
def test_every_host_config_setting_is_an_inventory_variable(tmp_path):
    files = render(tmp_path, modelrig_pip={"index_url": "https://pypi.mirror.example/simple", "use_torch_index": True,
                                           "torch_index_base": "https://torch.mirror.example/whl"},
                   modelrig_python_mirror="file:///srv/python-mirror", modelrig_python_install="uv",
                   modelrig_python_downloads_json_url="/srv/python-mirror/downloads.json",
                   modelrig_prune_sources=True)
    assert options(files["requirements.txt"]) == ["--index-url https://pypi.mirror.example/simple",
                                                  "--extra-index-url https://torch.mirror.example/whl/cpu"]
    config = yaml.safe_load(files["config.yaml"])
    assert config["pip"]["torch_index_base"] == "https://torch.mirror.example/whl"
    assert config["python"] == {"install": "uv", "mirror": "file:///srv/python-mirror",
                                "downloads_json_url": "/srv/python-mirror/downloads.json"}
    assert config["convert"] == {"prune_sources": True}
    from modelrig.config import HostConfig

    loaded = HostConfig.model_validate(config)  # what the engine reads: every field the engine has
    assert set(HostConfig.model_fields) - set(config) == set()
    assert loaded.pip.torch_index_base == "https://torch.mirror.example/whl"


@pytest.mark.slow
def test_the_download_proxy_leaves_the_configured_mirrors_alone(tmp_path):
    files = render(tmp_path, modelrig_proxy={"http_proxy": "http://proxy.example:3128", "https_proxy": "",
                                             "no_proxy": "intranet.example"},
                   modelrig_pip={"index_url": "https://pypi.mirror.example/simple",
                                 "find_links": ["/opt/wheels", "http://127.0.0.9:8000/wheels/"],
                                 "torch_index_base": "https://download.pytorch.org/whl"},
                   modelrig_hf_endpoint="https://hf.mirror.example", modelrig_python_mirror="https://py.mirror.example/pbs")
    env = json.loads(files["proxy_env"])
    assert env["no_proxy"] == env["NO_PROXY"] == ("intranet.example,127.0.0.1,localhost,::1,pypi.mirror.example,"
                                                  "127.0.0.9,hf.mirror.example,py.mirror.example")
    assert env["http_proxy"] == "http://proxy.example:3128"
    direct = render(tmp_path / "off", modelrig_proxy={"http_proxy": "http://proxy.example:3128",
                                                      "mirrors_direct": False},
                    modelrig_pip={"index_url": "https://pypi.mirror.example/simple"})
    assert json.loads(direct["proxy_env"])["no_proxy"] == "127.0.0.1,localhost,::1"


@pytest.mark.slow
def test_a_bundles_wheels_install_the_toolkit_with_no_index(tmp_path):
    files = render(tmp_path, modelrig_toolkit_links=["/data/modelrig/bundles/toolkit-ab/modelrig"],
                   modelrig_pip={"index_url": "https://pypi.mirror.example/simple", "use_torch_index": True})
    assert options(files["requirements.txt"]) == ["--no-index",
                                                  "--find-links /data/modelrig/bundles/toolkit-ab/modelrig"]
    assert json.loads(files["pip_env"]) == {"PIP_NO_INDEX": "1",
                                            "PIP_FIND_LINKS": "/data/modelrig/bundles/toolkit-ab/modelrig"}
