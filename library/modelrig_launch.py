#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: render a model's launch entries and start, stop or restart them with modelrig."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_launch
short_description: Render and start, stop or restart a model's demos with modelrig
description:
  - O(state=started) runs C(modelrig render MODEL --json) (scripts, C(start.sh), a systemd unit and a launchd
    plist under C(<data root>/launch/<id>/<entry>/); unchanged files are not rewritten), then
    C(modelrig launch MODEL [ENTRY] --json), which starts what is not running and waits for its health check.
    Systemd where it is init, launchd on macOS, else a supervised background process.
  - An entry that runs while its script, unit or plist is re-rendered is stopped and started again; the others
    are left running.
  - O(state=restarted) renders, stops and starts again (what a handler does when the env or the weights changed).
  - O(state=stopped) runs C(modelrig stop MODEL [ENTRY] --json).
version_added: "0.1.0"
author: modelrig
extends_documentation_fragment: modelrig
options:
  model:
    description: Model id from the catalog (its entries are rendered under C(<data root>/launch/<id>/)).
    type: str
    required: true
  entry:
    description: One launch entry (default every entry the plan keeps), by its name in the manifest.
    type: str
  state:
    description: What the entries should be.
    type: str
    choices: [started, stopped, restarted]
    default: started
  render:
    description: Render before starting (O(state=started) and O(state=restarted)).
    type: bool
    default: true
  bind:
    description: Listen address; anything but loopback makes the engine write an API key / UI password.
    type: str
  supervisor:
    description: How entries run.
    type: str
    choices: [auto, process, systemd, launchd]
  timeout:
    description: Seconds to wait for each health check (default per entry).
    type: float
  weights:
    description: Weight folders to render with, by conversion output or source name.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Render and start the demo model's chat UI and API.
  modelrig_launch:
    model: demo-tiny-ziya
    state: started

- name: Restart only the API after its weights changed.
  modelrig_launch:
    model: demo-tiny-ziya
    entry: api
    state: restarted

- name: Stop everything of a model.
  modelrig_launch:
    model: demo-tiny-ziya
    state: stopped
"""

RETURN = r"""
changed:
  description: Whether a file was rendered or a service started or stopped (or would be).
  returned: always
  type: bool
rendered_changed:
  description: Whether the render step changed a script, unit or plist.
  returned: when O(state) is started or restarted and O(render) is true
  type: bool
rendered_entries:
  description: The entries whose files the render step wrote or removed.
  returned: when O(state) is started or restarted and O(render) is true
  type: list
  elements: str
started_entries:
  description: The entries the launch step started (they were not running).
  returned: when O(state) is started or restarted
  type: list
  elements: str
urls:
  description: The URLs of the started entries, by entry name.
  returned: success
  type: dict
  sample: {chat: "http://127.0.0.1:17860/", api: "http://127.0.0.1:18000/v1"}
reasons:
  description: What was (or would be) rendered, started or stopped.
  returned: always
  type: list
  elements: str
results:
  description: The engine's JSON answers (render, stop, launch), unchanged.
  returned: always
  type: list
  elements: dict
code:
  description: The engine's error code on failure (port_busy, health_check_failed, ...).
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.modelrig_runner import (
    ModelrigRunner,
    argument_spec,
    as_list,
    as_opt,
    as_pairs,
    check_entry,
    check_model,
    entry_results,
)

FORMATS = dict(entries=as_list("--entry"), bind=as_opt("--bind"), weights=as_pairs("--weights"),
               supervisor=as_opt("--supervisor"), timeout=as_opt("--timeout"))


def urls_of(answers):
    """Entry name -> URL, from whatever the engine's launch answer carries."""
    urls = {}
    for answer in answers:
        for item in entry_results(answer):
            details = item.get("details") or {}
            url = details.get("url") or item.get("url")
            name = details.get("entry") or item.get("entry")
            if url and name:
                urls[name] = url
    return urls


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            model=dict(type="str", required=True),
            entry=dict(type="str"),
            state=dict(type="str", choices=["started", "stopped", "restarted"], default="started"),
            render=dict(type="bool", default=True),
            bind=dict(type="str"),
            supervisor=dict(type="str", choices=["auto", "process", "systemd", "launchd"]),
            timeout=dict(type="float"),
            weights=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    check_model(module, path_allowed=False)
    check_entry(module)
    params = module.params
    params["entries"] = [params["entry"]] if params["entry"] else []
    runner = ModelrigRunner(module, FORMATS)
    model, entry, state = params["model"], params["entry"], params["state"]
    answers, extra = [], {}
    if state == "stopped":
        answers.append(runner.run("stop", [model, entry], ["supervisor"]))
    else:
        if params["render"]:
            rendered = runner.run("render", [model], ["entries", "bind", "weights"])
            answers.append(rendered)
            extra["rendered_changed"] = bool(rendered.get("changed"))
            entries = (rendered.get("details") or {}).get("entries") or {}
            extra["rendered_entries"] = sorted(name for name, report in entries.items()
                                               if report.get("written") or report.get("removed"))
            if state == "started":
                # A running entry whose script, unit or plist changed runs the old one: stop it, the launch below
                # starts the new one.
                for name in extra["rendered_entries"]:
                    if entry in (None, name):
                        answers.append(runner.run("stop", [model, name], ["supervisor"]))
        if state == "restarted":
            answers.append(runner.run("stop", [model, entry], ["supervisor"]))
        answers.append(runner.run("launch", [model, entry], ["supervisor", "timeout"]))
        extra["urls"] = urls_of(answers[-1:])
        extra["started_entries"] = sorted(
            (item.get("details") or {}).get("entry") for item in entry_results(answers[-1])
            if item.get("changed") and (item.get("details") or {}).get("entry"))
    runner.exit(answers, **extra)


if __name__ == "__main__":
    main()
