#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: ask, in one engine run, which stages of each model are already in place (`modelrig state`)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_state
short_description: Ask which stages of each model are already in place on a host, in one engine run
description:
  - Runs C(modelrig state MODEL... --json) in the host's toolkit env. For each model the engine asks every stage's
    own check (the env's stamp, the fetch stamps and the hub's commit for a moving revision, the conversion
    records, the rendered launch files, the running and healthy demos) and takes the lock as C(modelrig lock)
    would, comparing it with the lock file in place.
  - A model is C(settled) when no stage would change anything; the stage roles then skip it. A model that is not
    settled runs every stage as usual, each stage asking for itself.
  - Changes nothing, in check mode or not, so it always reports C(changed=false).
version_added: "0.2.0"
author: modelrig
extends_documentation_fragment: modelrig
options:
  models:
    description: Model ids from the catalog.
    type: list
    elements: str
    required: true
  backend:
    description: The env backend the O(models) are built with (as M(modelrig_env) is given).
    type: str
    choices: [venv, conda]
    default: venv
  installer:
    description: Package installer inside the env (as M(modelrig_env) is given).
    type: str
    choices: [auto, uv, pip]
    default: auto
  offline:
    description: Whether envs install only from caches (as M(modelrig_env) is given).
    type: bool
    default: false
  hub:
    description: Which hub the weights come from (as M(modelrig_fetch) is given).
    type: str
    choices: [auto, huggingface, modelscope]
    default: auto
  store:
    description: Store folder (default C(<data root>/store)).
    type: path
  hf_endpoint:
    description: Hugging Face Hub endpoint a moving revision is resolved on (as M(modelrig_fetch) is given).
    type: str
  modelscope_endpoint:
    description: ModelScope endpoint (as M(modelrig_fetch) is given).
    type: str
  prune_sources:
    description: Whether fetched sources only a conversion reads are pruned once converted.
    type: bool
    default: false
  supervisor:
    description: The supervisor the demos run under; C(auto) is the engine's own choice.
    type: str
    choices: [auto, process, systemd, launchd]
    default: auto
"""

EXAMPLES = r"""
- name: Ask which models have every stage in place.
  modelrig_state:
    models: [demo-tiny-ziya]
    toolkit_env: /opt/modelrig/.venv
  register: state

- name: Build only the envs of models that are not settled.
  modelrig_env:
    model: "{{ item }}"
  loop: "{{ state.models | dict2items | rejectattr('value.settled') | map(attribute='key') | list }}"
"""

RETURN = r"""
changed:
  description: Always false (the engine only asks).
  returned: always
  type: bool
settled:
  description: Whether every model is settled.
  returned: success
  type: bool
models:
  description:
    - Per model id, the engine's answer. C(settled), C(stages) (stage name to whether it would change),
      C(reasons), C(tokenizers) (the plan's tokenizers build, if any), C(supervisor) and C(entries) (each
      demo's C(modelrig status) row), C(lock) (the lock file's path on the host).
  returned: success
  type: dict
code:
  description: The engine's error code on failure.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.modelrig_runner import MODEL_ID, ModelrigRunner, argument_spec, as_bool, as_opt

FORMATS = dict(backend=as_opt("--backend"), installer=as_opt("--installer"), offline=as_bool("--offline"),
               hub=as_opt("--hub"), store=as_opt("--store"), hf_endpoint=as_opt("--hf-endpoint"),
               modelscope_endpoint=as_opt("--modelscope-endpoint"), supervisor=as_opt("--supervisor"),
               prune_sources=lambda value: ["--prune-sources" if value else "--no-prune-sources"])


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            models=dict(type="list", elements="str", required=True),
            backend=dict(type="str", choices=["venv", "conda"], default="venv"),
            installer=dict(type="str", choices=["auto", "uv", "pip"], default="auto"),
            offline=dict(type="bool", default=False),
            hub=dict(type="str", choices=["auto", "huggingface", "modelscope"], default="auto"),
            store=dict(type="path"),
            hf_endpoint=dict(type="str"),
            modelscope_endpoint=dict(type="str"),
            prune_sources=dict(type="bool", default=False),
            supervisor=dict(type="str", choices=["auto", "process", "systemd", "launchd"], default="auto"),
        ),
        supports_check_mode=True,
    )
    models = module.params["models"]
    for model in models:
        if not MODEL_ID.match(model):
            module.fail_json(msg="models: %r is not a model id (lowercase letters, digits, '.', '_', '-'; first a "
                                 "letter or digit)" % (model,), code="usage")
    if not models:
        module.exit_json(changed=False, settled=True, models={})
    runner = ModelrigRunner(module, FORMATS)
    answer = runner.run("state", models, sorted(FORMATS))
    module.exit_json(changed=False, settled=bool(answer.get("settled")), models=answer.get("models") or {})


if __name__ == "__main__":
    main()
