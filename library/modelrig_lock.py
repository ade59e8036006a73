#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: write a model's lock, verify a host against a lock, or rebuild a host from one, with modelrig."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_lock
short_description: Lock, verify or rebuild a model with modelrig
description:
  - O(state=locked) runs C(modelrig lock MODEL --out TMP --json) and puts the lock at O(lock) (default
    C(<data root>/locks/<model>.lock.yaml)) only when its content differs, so an unchanged host reports
    C(changed=false) and the file keeps its mtime. In check mode the lock is written to a temporary file only.
  - O(state=verified) runs C(modelrig verify --lock LOCK --json) (and C(--full)); it never changes anything and
    fails when the host drifted from the lock, with every drift line in C(msg) and C(drift).
  - O(state=rebuilt) runs C(modelrig rebuild LOCK --json) (and C(--bundle BUNDLE)), which puts the env, weights,
    conversions and launch files exactly as locked, starts the demos and verifies the host. In check mode
    the host is only verified against the lock; any drift is what a rebuild would change.
  - The lock is a file on the host (O(lock)) or its text (O(lock_content)), written to a private temporary file
    for the run and removed afterwards.
version_added: "0.1.0"
author: modelrig
extends_documentation_fragment: modelrig
options:
  model:
    description:
      - Model id from the catalog (or a path to a manifest YAML file on the host). Required for O(state=locked);
        for the other states the lock names the model.
    type: str
  state:
    description: Write the lock, compare the host with it, or rebuild the host from it.
    type: str
    choices: [locked, verified, rebuilt]
    default: locked
  lock:
    description:
      - The lock file on the host. O(state=locked) writes it (default C(<data root>/locks/<model>.lock.yaml));
        O(state=verified) and O(state=rebuilt) read it (default the same path, from O(model)).
    type: path
  lock_content:
    description: The lock's text, used instead of O(lock) by O(state=verified) and O(state=rebuilt).
    type: str
  bundle:
    description: A C(modelrig bundle) archive on the host; O(state=rebuilt) provisions from it with no network.
    type: path
  full:
    description: O(state=verified) re-hashes every weight and converted file and asks the hub again (C(--full)).
    type: bool
    default: false
  offline:
    description:
      - Run the engine in a new network namespace with only loopback up (C(unshare -n)), proving that it needs
        no network (O(state=rebuilt) with O(bundle)). Needs root and util-linux's C(unshare).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Lock the demo model where verify looks for it.
  modelrig_lock:
    model: demo-tiny-ziya
    state: locked

- name: Fail when the host drifted from its lock (every file re-hashed).
  modelrig_lock:
    model: demo-tiny-ziya
    state: verified
    full: true

- name: Rebuild from a lock and a bundle with no network.
  modelrig_lock:
    state: rebuilt
    lock: /srv/modelrig/locks/demo-tiny-ziya.lock.yaml
    bundle: /srv/modelrig/bundles/demo-tiny-ziya.tar
    offline: true
"""

RETURN = r"""
changed:
  description: Whether the lock file changed (locked) or the rebuild changed anything (rebuilt); never for verified.
  returned: always
  type: bool
lock:
  description: The lock file written (locked) or read (verified, rebuilt; absent with O(lock_content)).
  returned: success
  type: str
model:
  description: The model id.
  returned: success
  type: str
drift:
  description: One line per difference from the lock (what, expected, found).
  returned: when O(state=verified) fails on drift, or in check mode of O(state=rebuilt)
  type: list
  elements: str
urls:
  description: The URLs of the started entries after a rebuild, by entry name.
  returned: when O(state=rebuilt)
  type: dict
cmd:
  description: The rebuild's command line (with O(offline), inside C(unshare -n)).
  returned: when O(state=rebuilt)
  type: list
  elements: str
reasons:
  description: What changed (or would change).
  returned: always
  type: list
  elements: str
results:
  description: The engine's JSON answers, unchanged.
  returned: always
  type: list
  elements: dict
code:
  description: The engine's error code on failure (drift, lock_invalid, not_reproduced, not_provisioned, ...).
  returned: failure
  type: str
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.modelrig_runner import (
    ModelrigRunner,
    argument_spec,
    as_bool,
    as_opt,
    check_model,
    engine_line,
    parse_answer,
)

FORMATS = dict(out=as_opt("--out"), lock_opt=as_opt("--lock"), bundle=as_opt("--bundle"), full=as_bool("--full"))
#: Runs the command that follows in a new network namespace with only loopback up.
OFFLINE_PREFIX = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "offline"]


class LockRunner(ModelrigRunner):
    """The runner for the lock verbs: they have no `--check` (check mode is handled here), and `offline` wraps
    the engine in `unshare -n`."""

    def command(self, verb, positional, options):
        cmd = [part for part in ModelrigRunner.command(self, verb, positional, options) if part != "--check"]
        return OFFLINE_PREFIX + cmd if self.module.params["offline"] else cmd

    def attempt(self, verb, positional=(), options=()):
        """Run one verb; return (rc, answer, stderr, cmd) without failing the module."""
        cmd = self.command(verb, positional, options)
        rc, out, err = self.module.run_command(cmd, environ_update=self.environ(), check_rc=False)
        return rc, parse_answer(out) or {}, err, cmd


def default_lock(runner, model):
    """`<data root>/locks/<model>.lock.yaml`, the engine's default lock path (the data root must be given, and the
    model must be an id: a path never names a file under the data root)."""
    root = runner.module.params.get("data_root")
    if not root:
        runner.module.fail_json(msg="lock is unset and so is data_root: give one of them")
    check_model(runner.module, path_allowed=False)
    return os.path.join(root, "locks", "%s.lock.yaml" % model)


def read_bytes(path):
    """The file's content, or None when it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def locked(module, runner):
    """Write the lock to a temporary file beside the target and move it there only when it differs."""
    params = module.params
    if not params["model"]:
        module.fail_json(msg="model is required with state=locked")
    target = params["lock"] or default_lock(runner, params["model"])
    folder = os.path.dirname(target)
    scratch = tempfile.mkdtemp(prefix=".modelrig-lock-", dir=folder if os.path.isdir(folder) else None)
    try:
        params["out"] = os.path.join(scratch, os.path.basename(target))
        answer = runner.run("lock", [params["model"]], ["out"])
        new, old = read_bytes(params["out"]), read_bytes(target)
        changed = new != old
        if changed and not module.check_mode:
            if not os.path.isdir(folder):
                os.makedirs(folder)
            shutil.move(params["out"], target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    reasons = ["%s: %s" % (target, "written" if old is None else "the host differs from its previous lock")] \
        if changed else []
    result = dict(changed=changed, reasons=reasons, results=[answer], lock=target, model=answer.get("model"))
    if module._diff and changed:
        result["diff"] = dict(before_header=target, after_header=target,
                              before=(old or b"").decode("utf-8", "replace"), after=new.decode("utf-8", "replace"))
    module.exit_json(**result)


def lock_file(module, runner, scratch):
    """The lock to read: O(lock_content) written into `scratch`, else O(lock), else the default path of O(model)."""
    params = module.params
    if params["lock_content"] is not None:
        path = os.path.join(scratch, "lock.yaml")
        with open(path, "w") as handle:
            handle.write(params["lock_content"])
        return path, None
    if params["lock"]:
        return params["lock"], params["lock"]
    if not params["model"]:
        module.fail_json(msg="give lock, lock_content or model")
    path = default_lock(runner, params["model"])
    return path, path


def verify(module, runner, path):
    """`modelrig verify --lock PATH`: (answer, drift lines); fails the module on any error but drift."""
    module.params["lock_opt"] = path
    rc, answer, err, cmd = runner.attempt("verify", [], ["lock_opt", "full"])
    error = answer.get("error") or {}
    if rc == 0 and answer.get("ok"):
        return answer, []
    if error.get("code") == "drift":
        return answer, [str(line) for line in (error.get("fields") or {}).get("drift") or []]
    module.fail_json(msg=engine_line(err) or error.get("message") or "modelrig verify exited with %d" % rc, rc=rc,
                     cmd=cmd, code=error.get("code"), fields=error.get("fields", {}), stderr=err)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            model=dict(type="str"),
            state=dict(type="str", choices=["locked", "verified", "rebuilt"], default="locked"),
            lock=dict(type="path"),
            lock_content=dict(type="str"),
            bundle=dict(type="path"),
            full=dict(type="bool", default=False),
            offline=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("lock", "lock_content")],
        supports_check_mode=True,
    )
    check_model(module)
    runner = LockRunner(module, FORMATS)
    if not os.access(runner.modelrig, os.X_OK):
        module.fail_json(msg="%s is not an executable file: install the toolkit env first (the modelrig role) or "
                             "set toolkit_env" % runner.modelrig)
    if module.params["state"] == "locked":
        locked(module, runner)
    scratch = tempfile.mkdtemp(prefix="modelrig-lock-")
    try:
        path, shown = lock_file(module, runner, scratch)
        if module.params["state"] == "verified" or module.check_mode:
            answer, drift = verify(module, runner, path)
            model = answer.get("model") or (answer.get("error") or {}).get("fields", {}).get("model")
            if drift and module.params["state"] == "verified":
                module.fail_json(msg="%s: %d difference(s) from its lock (%s):\n%s" % (
                    model, len(drift), shown or "lock_content", "\n".join(drift)), code="drift", drift=drift,
                    model=model, results=[answer])
            module.exit_json(changed=bool(drift), reasons=drift, drift=drift, results=[answer], lock=shown,
                             model=model)
        answer = runner.run("rebuild", [path], ["bundle"])
        runner.exit(answer, lock=shown, urls=answer.get("urls") or {},
                    cmd=runner.command("rebuild", [path], ["bundle"]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
