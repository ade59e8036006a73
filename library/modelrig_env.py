#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: build a model's isolated environment with `modelrig env`."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_env
short_description: Build a model's isolated Python environment with modelrig
description:
  - Runs C(modelrig env MODEL --json) in the host's toolkit env. The engine plans the env (Python, a torch build
    matched to the host's CUDA driver or Apple MPS, the manifest's pinned packages) and builds it under
    C(<data root>/envs/<spec hash>/), smoke-checked; identical specs share one env.
  - Idempotent, an env whose stamp matches is C(unchanged). The module decides nothing itself.
version_added: "0.1.0"
author: modelrig
extends_documentation_fragment: modelrig
options:
  model:
    description: Model id from the catalog (or a path to a manifest YAML file on the host).
    type: str
    required: true
  backend:
    description: C(venv) from a Python of the manifest's version, or C(conda) in an existing Miniforge/conda.
    type: str
    choices: [venv, conda]
    default: venv
  python:
    description: Base interpreter for the venv backend (default is found by the engine).
    type: path
  installer:
    description: Package installer inside the env.
    type: str
    choices: [auto, uv, pip]
    default: auto
  offline:
    description: Install only from uv's cache (pip, only from find-links).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Build the demo model's env.
  modelrig_env:
    model: demo-tiny-ziya
    toolkit_env: /opt/modelrig/.venv
    environment:
      UV_CACHE_DIR: /var/cache/uv

- name: Build it with conda in an existing Miniforge.
  modelrig_env:
    model: bluelm-7b-chat
    backend: conda
"""

RETURN = r"""
changed:
  description: Whether the engine built (or would build) the env.
  returned: always
  type: bool
stage:
  description: The engine's stage name.
  returned: success
  type: str
  sample: env
summary:
  description: The engine's one-line summary.
  returned: success
  type: str
details:
  description: The engine's details (env folder, python, torch build, versions).
  returned: success
  type: dict
reasons:
  description: Why the engine changed (or would change) something.
  returned: always
  type: list
  elements: str
results:
  description: The engine's JSON answers, unchanged.
  returned: always
  type: list
  elements: dict
code:
  description: The engine's error code on failure.
  returned: failure
  type: str
  sample: plan_refused
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.modelrig_runner import (
    ModelrigRunner,
    argument_spec,
    as_bool,
    as_opt,
    check_model,
)

FORMATS = dict(backend=as_opt("--backend"), python=as_opt("--python"), installer=as_opt("--installer"),
               offline=as_bool("--offline"))


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            model=dict(type="str", required=True),
            backend=dict(type="str", choices=["venv", "conda"], default="venv"),
            python=dict(type="path"),
            installer=dict(type="str", choices=["auto", "uv", "pip"], default="auto"),
            offline=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    check_model(module)
    runner = ModelrigRunner(module, FORMATS)
    runner.exit(runner.run("env", [module.params["model"]], FORMATS))


if __name__ == "__main__":
    main()
