#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: describe the host with `modelrig facts --json`."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_facts
short_description: Describe a host the way modelrig's planner sees it
description:
  - Runs C(modelrig facts --json) in the host's toolkit env and returns the result as the fact C(modelrig_host), with
    OS, CPU, RAM, free disk of the data root, NVIDIA GPUs with driver and highest CUDA version, Apple chip and
    MPS availability, environment hints (C(autodl), C(docker)).
  - Never changes anything. The C(host_facts) role installs the same data as the local fact
    C(ansible_local.modelrig).
version_added: "0.1.0"
author: modelrig
extends_documentation_fragment: modelrig
options:
  timeout:
    description: Seconds each probe (nvidia-smi, system_profiler) may take.
    type: float
"""

EXAMPLES = r"""
- name: Describe the host.
  modelrig_facts:
    toolkit_env: /opt/modelrig/.venv

- name: Show its GPUs.
  ansible.builtin.debug:
    msg: "{{ modelrig_host.gpus | map(attribute='name') | list }}"
"""

RETURN = r"""
ansible_facts:
  description: The host description as C(modelrig_host).
  returned: success
  type: dict
  contains:
    modelrig_host:
      description: The engine's facts document (see C(modelrig facts --json)).
      type: dict
      sample: {os: linux, arch: x86_64, gpus: [], ram_bytes: 25000000000, cuda_driver_max: null}
changed:
  description: Always false.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.modelrig_runner import ModelrigRunner, argument_spec, as_opt

FORMATS = dict(timeout=as_opt("--timeout"))


def main():
    module = AnsibleModule(argument_spec=argument_spec(timeout=dict(type="float")), supports_check_mode=True)
    runner = ModelrigRunner(module, FORMATS)
    check_mode, module.check_mode = module.check_mode, False  # describing the host changes nothing
    answer = runner.run("facts", [], FORMATS)
    module.check_mode = check_mode
    facts = answer.get("details") if "stage" in answer and isinstance(answer.get("details"), dict) else answer
    facts = dict((k, v) for k, v in facts.items() if k not in ("ok", "check"))
    module.exit_json(changed=False, ansible_facts=dict(modelrig_host=facts))


if __name__ == "__main__":
    main()
