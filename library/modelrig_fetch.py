#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: download and verify a model's weights with `modelrig fetch`."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_fetch
short_description: Download and verify a model's weights with modelrig
description:
  - Runs C(modelrig fetch MODEL --json) in the host's toolkit env. Every hub source of the manifest is
    downloaded at its revision resolved to a commit, each file checked against the hub's sha256, into
    C(<store>/<hub>/<org>--<name>/).
  - Idempotent, a store folder whose stamp matches downloads and hashes nothing and is C(unchanged).
  - Tokens for gated repos go through O(hf_token) / O(modelscope_token), which reach the engine only through its
    environment.
version_added: "0.1.0"
author: modelrig
extends_documentation_fragment: modelrig
options:
  model:
    description: Model id from the catalog (or a path to a manifest YAML file on the host).
    type: str
    required: true
  hub:
    description: Which hub to use; C(auto) tries the preferred one and falls back to the other.
    type: str
    choices: [auto, huggingface, modelscope]
    default: auto
  store:
    description: Store folder (default C(<data root>/store)), for example a data disk.
    type: path
  hf_endpoint:
    description: Hugging Face Hub endpoint (a mirror or C(modelrig hub serve)).
    type: str
  modelscope_endpoint:
    description: ModelScope endpoint.
    type: str
  local:
    description: Paths of user-supplied weights, by the name a manifest's C(local:) source uses.
    type: dict
    default: {}
  verify:
    description: Re-hash every file even when the stamp says it is in place, repairing what differs.
    type: bool
    default: false
  headroom:
    description: Free space to keep beyond the download (C(1GiB), C(500MB)).
    type: str
  take_over:
    description:
      - Stop a fetch still downloading into the same store folder (one a play interrupted with Ctrl-C left running
        on the host) and go on from the files it finished and the partial ones it left, instead of failing C(busy).
        The result's C(details.notes) names it (pid, how long it ran).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Download the demo model's weights from a local hub.
  modelrig_fetch:
    model: demo-tiny-ziya
    hf_endpoint: http://127.0.0.1:8080
    hf_token: "{{ vault_hf_token }}"

- name: Download BlueLM from ModelScope onto AutoDL's data disk.
  modelrig_fetch:
    model: bluelm-7b-chat
    hub: modelscope
    store: /root/autodl-tmp/modelrig/store
"""

RETURN = r"""
changed:
  description: Whether anything was (or would be) downloaded or repaired.
  returned: always
  type: bool
summary:
  description: The engine's one-line summary.
  returned: success
  type: str
details:
  description: Per source the hub, repo, revision, commit, path and files (path, size, sha256).
  returned: success
  type: dict
reasons:
  description: What the engine downloaded (or would download) and why.
  returned: always
  type: list
  elements: str
results:
  description: The engine's JSON answers, unchanged.
  returned: always
  type: list
  elements: dict
code:
  description: The engine's error code on failure (gated_repo, repo_not_found, hash_mismatch, disk_full, ...).
  returned: failure
  type: str
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

FORMATS = dict(hub=as_opt("--hub"), store=as_opt("--store"), hf_endpoint=as_opt("--hf-endpoint"),
               modelscope_endpoint=as_opt("--modelscope-endpoint"), local=as_pairs("--local"),
               verify=as_bool("--verify"), headroom=as_opt("--headroom"), take_over=as_bool("--take-over"))


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            model=dict(type="str", required=True),
            hub=dict(type="str", choices=["auto", "huggingface", "modelscope"], default="auto"),
            store=dict(type="path"),
            hf_endpoint=dict(type="str"),
            modelscope_endpoint=dict(type="str"),
            local=dict(type="dict", default={}),
            verify=dict(type="bool", default=False),
            headroom=dict(type="str"),
            take_over=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    check_model(module)
    runner = ModelrigRunner(module, FORMATS)
    runner.exit(runner.run("fetch", [module.params["model"]], FORMATS))


if __name__ == "__main__":
    main()
