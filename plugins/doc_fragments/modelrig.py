# -*- coding: utf-8 -*-
"""Options every modelrig module shares (module_utils/modelrig_runner.py COMMON_ARGS)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Documentation of the shared options."""

    DOCUMENTATION = r"""
options:
  toolkit_env:
    description:
      - The toolkit env on the managed host (the C(modelrig) role creates it); C(<toolkit_env>/bin/modelrig) is run.
    type: path
    default: /opt/modelrig/.venv
  data_root:
    description:
      - Data root passed as C(modelrig --data-root); unset uses modelrig's default (C($MODELRIG_HOME), AutoDL's
        C(/root/autodl-tmp/modelrig), or C(~/.local/share/modelrig)).
    type: path
  config:
    description:
      - Host config file passed as C(modelrig --config); unset uses C(<data root>/config.yaml).
    type: path
  hf_token:
    description:
      - Hugging Face Hub token for gated repos, handed to the engine as C(HF_TOKEN) in its environment, never on
        a command line.
    type: str
  modelscope_token:
    description:
      - ModelScope token, handed to the engine as C(MODELSCOPE_API_TOKEN) in its environment.
    type: str
  environment:
    description:
      - Extra environment variables for the engine (for example C(UV_CACHE_DIR), C(HF_ENDPOINT)).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    details: C(--check) is passed to the engine, which reports what it would change and changes nothing.
  diff_mode:
    support: full
    details: The diff lists the engine's reasons for a change.
notes:
  - "The engine prints one JSON object; C(changed) is the engine's own answer, C(msg) on failure is its one-line
    error (C(modelrig: error: ... [code])), with C(code) and C(fields) from its error object."
requirements:
  - The modelrig toolkit env on the managed host.
"""
