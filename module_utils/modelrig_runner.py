# -*- coding: utf-8 -*-
"""Run `modelrig <verb> ... --json` in a host's toolkit env and turn its answer into an Ansible result.

Every modelrig module declares only its own options; this runner owns the rest: the options every module shares
(`COMMON_ARGS`: toolkit env, data root, config, tokens, extra environment), how each option becomes a flag
(`as_opt`, `as_bool`, `as_pairs`), check mode (`--check` is passed to the engine, which reports what it would do
and changes nothing), and reading the one JSON object the engine prints: `changed` comes from the engine, `diff`
from its reasons, `msg` from its one-line error. Tokens reach the engine only through its environment
(HF_TOKEN, MODELSCOPE_API_TOKEN), never on its command line.

Option values come from inventories that several people edit, so none of them can become an option of the
engine: every flag is written `--flag=VALUE` and the positional values follow a `--`; model ids and entry names
are checked against the manifest's patterns before anything runs (`check_model`, `check_entry`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

#: Options every modelrig module accepts (merged into each module's argument_spec).
COMMON_ARGS = dict(
    toolkit_env=dict(type="path", default="/opt/modelrig/.venv"),
    data_root=dict(type="path"),
    config=dict(type="path"),
    hf_token=dict(type="str", no_log=True),
    modelscope_token=dict(type="str", no_log=True),
    environment=dict(type="dict", default={}),
)

#: Environment variable that carries each token option to the engine.
TOKEN_ENV = dict(hf_token="HF_TOKEN", modelscope_token="MODELSCOPE_API_TOKEN")


#: A model id, as the manifest schema spells it (`id:`); a leading `-` or a `/` can never match.
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: A launch entry name, as the manifest schema spells it (`launch[].name`).
ENTRY_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
#: A path to a manifest file given instead of a model id: absolute, a YAML file, no control characters.
MANIFEST_PATH = re.compile(r"^/[^\x00-\x1f\x7f]*\.ya?ml$")


def check_model(module, name="model", path_allowed=True):
    """Fail the module with one line unless option `name` is a model id (or, where `path_allowed`, an absolute
    path to a manifest YAML file). A value that is neither never reaches the engine."""
    value = module.params.get(name)
    if value is None or MODEL_ID.match(value) or (path_allowed and MANIFEST_PATH.match(value)):
        return value
    shapes = "a model id (lowercase letters, digits, '.', '_', '-'; first a letter or digit)"
    if path_allowed:
        shapes += " or an absolute path to a manifest .yaml file"
    module.fail_json(msg="%s=%r: not %s" % (name, value, shapes), code="usage")


def check_entry(module, name="entry"):
    """Fail the module with one line unless option `name` is unset or a launch entry name."""
    value = module.params.get(name)
    if value is None or ENTRY_NAME.match(value):
        return value
    module.fail_json(msg="%s=%r: not a launch entry name (lowercase letters, digits, '_', '-'; first a letter)"
                         % (name, value), code="usage")


def as_opt(flag):
    """`--flag=VALUE` when the option is set (one word, so a VALUE that looks like an option stays a value)."""
    return lambda value: [] if value in (None, "") else ["%s=%s" % (flag, value)]


def as_bool(flag):
    """`--flag` when the option is true."""
    return lambda value: [flag] if value else []


def as_pairs(flag):
    """`--flag=NAME=VALUE` once per item of a dict option."""
    return lambda value: ["%s=%s=%s" % (flag, name, value[name]) for name in sorted(value or {})]


def as_list(flag):
    """`--flag=ITEM` once per item of a list option."""
    return lambda value: ["%s=%s" % (flag, item) for item in (value or [])]


def argument_spec(**own):
    """The module's own options plus COMMON_ARGS."""
    spec = dict(COMMON_ARGS)
    spec.update(own)
    return spec


class ModelrigRunner:
    """Builds and runs modelrig commands for one module invocation."""

    def __init__(self, module, formats=None):
        self.module = module
        self.formats = formats or {}
        params = module.params
        self.modelrig = os.path.join(params["toolkit_env"], "bin", "modelrig")

    def command(self, verb, positional, options):
        """The full command line: global options, the verb, the named options' flags, --json, then `--` and the
        positionals, if any (so that no value, whatever it looks like, is read as an option)."""
        params = self.module.params
        cmd = [self.modelrig]
        if params.get("data_root"):
            cmd.append("--data-root=%s" % params["data_root"])
        if params.get("config"):
            cmd.append("--config=%s" % params["config"])
        cmd += list(verb) if isinstance(verb, (list, tuple)) else [verb]
        for name in options:
            cmd += self.formats[name](params.get(name))
        cmd.append("--json")
        if self.module.check_mode:
            cmd.append("--check")
        values = [str(p) for p in positional if p not in (None, "")]
        return [*cmd, "--", *values] if values else cmd

    def environ(self):
        """The engine's extra environment: the `environment` option, then the tokens."""
        env = dict((k, str(v)) for k, v in (self.module.params.get("environment") or {}).items())
        for option, variable in TOKEN_ENV.items():
            if self.module.params.get(option):
                env[variable] = self.module.params[option]
        return env

    def run(self, verb, positional=(), options=()):
        """Run one verb; return the engine's JSON answer, or fail the module with the engine's one line."""
        if not os.access(self.modelrig, os.X_OK):
            self.module.fail_json(msg="%s is not an executable file: install the toolkit env first (the modelrig "
                                      "role) or set toolkit_env" % self.modelrig)
        cmd = self.command(verb, positional, options)
        rc, out, err = self.module.run_command(cmd, environ_update=self.environ(), check_rc=False)
        answer = parse_answer(out)
        if rc != 0 or answer is None or answer.get("ok") is False:
            error = (answer or {}).get("error") or {}
            line = engine_line(err) or error.get("message") or ("modelrig exited with %d and no JSON answer" % rc)
            self.module.fail_json(msg=line, rc=rc, cmd=cmd, code=error.get("code"), fields=error.get("fields", {}),
                                  stderr=err)
        return answer

    def exit(self, answers, **extra):
        """Exit with `changed` from the engine, a diff built from its reasons, and its answers."""
        answers = answers if isinstance(answers, list) else [answers]
        changed = any(bool(a.get("changed")) for a in answers)
        reasons = [r for a in answers for r in reasons_of(a)]
        result = dict(changed=changed, reasons=reasons, results=answers, **extra)
        if self.module._diff and changed:
            label = " ".join(str(a.get("stage", "")) for a in answers).strip() or "modelrig"
            result["diff"] = dict(before_header=label, after_header=label, before="",
                                  after="".join("%s\n" % r for r in reasons))
        if len(answers) == 1:
            for key in ("stage", "summary", "model", "details", "seconds"):
                if key in answers[0]:
                    result[key] = answers[0][key]
        self.module.exit_json(**result)


def parse_answer(out):
    """The JSON object the engine printed (tolerating lines before it); None when there is none."""
    text = (out or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        start = text.find("\n{")
        if start < 0:
            return None
        try:
            value = json.loads(text[start + 1:])
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def entry_results(answer):
    """The per-entry results of a `launch`/`stop` answer (`details.results`, docs/result-json.md)."""
    nested = (answer.get("details") or {}).get("results")
    return [item for item in nested if isinstance(item, dict)] if isinstance(nested, list) else []


def reasons_of(answer):
    """What the engine did or would do: its `reasons`, else its summary (and those of nested results)."""
    if answer.get("reasons"):
        return [str(r) for r in answer["reasons"]]
    nested = entry_results(answer)
    if nested:
        return [r for item in nested if isinstance(item, dict) and item.get("changed") for r in reasons_of(item)]
    if answer.get("changed") and answer.get("summary"):
        return [str(answer["summary"])]
    return []


def engine_line(err):
    """The engine's one-line error (`modelrig: error: ... [code]`) from its stderr, if it printed one."""
    for line in reversed((err or "").splitlines()):
        if line.startswith("modelrig: error:") or line.startswith("modelrig: "):
            return line.strip()
    lines = [line for line in (err or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None
