#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: run a model's conversion steps with `modelrig convert`."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_convert
short_description: Convert a model's fetched weights with modelrig
description:
  - Runs C(modelrig convert MODEL --json) in the host's toolkit env, which runs the manifest's conversion steps
    (Meta LLaMA to HF, delta merge, TensorFlow to PyTorch, pickle to safetensors) into
    C(<data root>/models/<id>/<output>/),
    each step stamped with the digests of its inputs.
  - Idempotent, steps whose stamps match are C(unchanged). A manifest without conversion steps is C(unchanged).
version_added: "0.1.0"
author: modelrig
extends_documentation_fragment: modelrig
options:
  model:
    description: Model id from the catalog (or a path to a manifest YAML file on the host).
    type: str
    required: true
  input:
    description: Folders to use instead of fetched sources, by source name.
    type: dict
    default: {}
  local:
    description: Paths of user-supplied weights, by the name a manifest's C(local:) source uses.
    type: dict
    default: {}
  tf_python:
    description: A Python with tensorflow-cpu for TF1 checkpoints (default, an env the engine builds).
    type: path
  prune_sources:
    description:
      - Once the conversion is done and stamped, delete the hub-fetched sources only it reads (C(--prune-sources));
        their fetch stamps keep every file's sha256 and C(modelrig_fetch) downloads them again when the conversion
        must run again. False leaves it to the host config's C(convert.prune_sources).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Merge the demo model's delta and write safetensors.
  modelrig_convert:
    model: demo-tiny-ziya

- name: Convert LLaMA weights the user copied to the host.
  modelrig_convert:
    model: ziya-llama-13b
    local:
      llama_13b: /data/llama/13B
"""

RETURN = r"""
changed:
  description: Whether any step ran (or would run).
  returned: always
  type: bool
converted:
  description:
    - Whether any step ran (or would run). Unlike C(changed), false when only pruning changed something, so services
      reading the converted weights need no restart.
  returned: success
  type: bool
summary:
  description: The engine's one-line summary.
  returned: success
  type: str
details:
  description: The steps, their outputs and digests.
  returned: success
  type: dict
reasons:
  description: Which steps ran (or would run) and why.
  returned: always
  type: list
  elements: str
results:
  description: The engine's JSON answers, unchanged.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.modelrig_runner import (
    ModelrigRunner,
    argument_spec,
    as_bool,
    as_opt,
    as_pairs,
    check_model,
)

FORMATS = dict(input=as_pairs("--input"), local=as_pairs("--local"), tf_python=as_opt("--tf-python"),
               prune_sources=as_bool("--prune-sources"))


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            model=dict(type="str", required=True),
            input=dict(type="dict", default={}),
            local=dict(type="dict", default={}),
            tf_python=dict(type="path"),
            prune_sources=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    check_model(module)
    runner = ModelrigRunner(module, FORMATS)
    answer = runner.run("convert", [module.params["model"]], FORMATS)
    details = answer.get("details") or {}
    runner.exit(answer, converted=bool(details.get("converted", answer.get("changed"))))


if __name__ == "__main__":
    main()
