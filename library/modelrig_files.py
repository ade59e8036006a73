#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: modelrig maintainers
# Apache License 2.0 (see pyproject.toml; https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: a host's modelrig folders and small text files, checked and written in one module run."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: modelrig_files
short_description: Write a host's modelrig folders and small text files in one module run
description:
  - Creates folders and writes small text files (rendered on the controller) with their modes, each only when it
    is missing or its content or mode differs; a file is written to a temporary file in its own folder and renamed
    over the old one, so a reader never sees half of it.
  - Also answers, without changing them, whether files the controller knows the sha1 of are there (O(expect)),
    and whether paths exist (O(probe)), so a role needs no C(stat) task per path and a second run costs one module
    run for everything already in place.
  - Every path must be absolute; a relative one fails the task with one line naming the option and the item.
version_added: "0.1.0"
author: modelrig maintainers (!UNKNOWN)
options:
  directories:
    description: Folders to create (with missing parents) and the mode each must have.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path of the folder.
        type: path
        required: true
      mode:
        description: Octal mode of the folder, as a string (C("0755")).
        type: str
        default: "0755"
  files:
    description:
      - Text files to write; a missing parent folder is created (mode 0755).
      - The diff shows each changed file's old and new text.
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: Absolute path of the file.
        type: path
        required: true
      content:
        description: The whole text of the file (written as UTF-8).
        type: str
        required: true
      mode:
        description: Octal mode of the file, as a string (C("0644")).
        type: str
        default: "0644"
  secrets:
    description:
      - Files like O(files) whose content is secret, never shown in output or in a diff.
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: Absolute path of the file.
        type: path
        required: true
      content:
        description: The whole text of the file.
        type: str
        required: true
      mode:
        description: Octal mode of the file, as a string.
        type: str
        default: "0600"
  expect:
    description:
      - Files that should have a given sha1; only reported in RV(differs) when missing or different, never written.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path of the file.
        type: path
        required: true
      checksum:
        description: The sha1 (40 hex digits) the file should have.
        type: str
        required: true
  probe:
    description: Paths to look at; RV(probe) says of each whether it exists, is a folder, is executable.
    type: list
    elements: path
    default: []
  require:
    description:
      - Paths that must be there before anything is written; the first one that is not fails the task and
        nothing is changed.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path that must exist.
        type: path
        required: true
      kind:
        description: What it must be.
        type: str
        choices: [file, directory, executable]
        default: file
      msg:
        description: The failure message; by default it names the path and what it is not.
        type: str
attributes:
  check_mode:
    support: full
    description: Reports what would be created or written and writes nothing.
  diff_mode:
    support: full
    description: The old and new text of each changed file of O(files); O(secrets) are left out.
  platform:
    support: full
    platforms: posix
    description: Any POSIX host with Python.
notes:
  - Files are written with the module's user as owner; only the mode is set.
"""

EXAMPLES = r"""
- name: Write the data root, the host config and the token file; report the wheel and the toolkit.
  modelrig_files:
    directories:
      - {path: /srv/modelrig, mode: "0755"}
      - {path: /srv/modelrig/secrets, mode: "0700"}
    files:
      - dest: /srv/modelrig/config.yaml
        content: "{{ lookup('ansible.builtin.template', 'config.yaml.j2') }}"
    secrets:
      - dest: /srv/modelrig/secrets/hf_token
        content: "{{ modelrig_hf_token }}\n"
    expect:
      - path: /srv/modelrig/wheels/modelrig-0.1.0-py3-none-any.whl
        checksum: 8b4a2f0c9d1e7f6a5b3c2d1e0f9a8b7c6d5e4f3a
    probe:
      - /srv/modelrig/toolkit/bin/modelrig
  register: modelrig_files_done

- name: Copy the wheel only when the host lacks it.
  ansible.builtin.copy:
    src: modelrig-0.1.0-py3-none-any.whl
    dest: /srv/modelrig/wheels/modelrig-0.1.0-py3-none-any.whl
    mode: "0644"
  when: modelrig_files_done.differs | length > 0
"""

RETURN = r"""
changed_paths:
  description: Folders and files created or changed (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [/srv/modelrig/config.yaml]
differs:
  description: The O(expect) paths that are missing or have another sha1 (before this run wrote anything).
  returned: always
  type: list
  elements: str
probe:
  description:
    - For each O(probe) path, whether it exists, is a folder, and is executable by the module's user.
    - As the host was before this run wrote anything.
  returned: always
  type: dict
  sample: {"/srv/modelrig/toolkit/bin/modelrig": {"exists": true, "isdir": false, "executable": true}}
"""

import hashlib
import os
import re
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

_MODE = re.compile(r"^0?[0-7]{3}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
#: Old text larger than this is not put into a diff.
_DIFF_MAX = 100 * 1024


def _argument_spec():
    text_file = dict(dest=dict(type="path", required=True), content=dict(type="str", required=True),
                     mode=dict(type="str", default="0644"))
    secret_file = dict(text_file, content=dict(type="str", required=True, no_log=True),
                       mode=dict(type="str", default="0600"))
    return dict(
        directories=dict(type="list", elements="dict", default=[], options=dict(
            path=dict(type="path", required=True), mode=dict(type="str", default="0755"))),
        files=dict(type="list", elements="dict", default=[], options=text_file),
        secrets=dict(type="list", elements="dict", default=[], no_log=False, options=secret_file),
        expect=dict(type="list", elements="dict", default=[], options=dict(
            path=dict(type="path", required=True), checksum=dict(type="str", required=True))),
        probe=dict(type="list", elements="path", default=[]),
        require=dict(type="list", elements="dict", default=[], options=dict(
            path=dict(type="path", required=True),
            kind=dict(type="str", choices=["file", "directory", "executable"], default="file"),
            msg=dict(type="str"))),
    )


def check_params(params):
    """The first thing wrong with the options, as one line naming the option and item, or None."""
    for option, key in (("directories", "path"), ("files", "dest"), ("secrets", "dest"), ("expect", "path"),
                        ("require", "path")):
        for i, item in enumerate(params[option]):
            if not os.path.isabs(item[key]):
                return "%s[%d].%s must be an absolute path, got %r" % (option, i, key, item[key])
            if "mode" in item and not _MODE.match(item["mode"]):
                return "%s[%d].mode must be an octal mode such as '0644', got %r" % (option, i, item["mode"])
    for i, path in enumerate(params["probe"]):
        if not os.path.isabs(path):
            return "probe[%d] must be an absolute path, got %r" % (i, path)
    for i, item in enumerate(params["expect"]):
        if not _SHA1.match(item["checksum"]):
            return "expect[%d].checksum must be a sha1 (40 lowercase hex digits), got %r" % (i, item["checksum"])
    seen = {}
    for option in ("files", "secrets"):
        for i, item in enumerate(params[option]):
            where = "%s[%d]" % (option, i)
            if item["dest"] in seen:
                return "%s.dest %s is already %s.dest" % (where, item["dest"], seen[item["dest"]])
            seen[item["dest"]] = where
    return None


def _sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def probe(path):
    """Whether `path` exists, is a folder, and is executable (a file or folder the user may execute/enter)."""
    return dict(exists=os.path.exists(path), isdir=os.path.isdir(path), executable=os.access(path, os.X_OK))


def unmet(require):
    """The failure message of the first requirement not met, or None."""
    for item in require:
        path, kind = item["path"], item["kind"]
        if kind == "directory":
            met, what = os.path.isdir(path), "a directory"
        elif kind == "executable":
            met, what = os.path.isfile(path) and os.access(path, os.X_OK), "an executable file"
        else:
            met, what = os.path.isfile(path), "a file"
        if not met:
            return item["msg"] or "%s is not %s" % (path, what)
    return None


def _current_mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _write_atomically(dest, data, mode):
    """Write `data` beside `dest` in a temporary file with `mode`, then rename it over `dest`."""
    folder = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".%s." % os.path.basename(dest), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Writer(object):
    """Applies the wanted state path by path (or only records it in check mode)."""

    def __init__(self, check_mode):
        self.check_mode = check_mode
        self.changed_paths = []
        self.diff = []
        self._made = set()  # folders created, or in check mode that would be

    def directory(self, path, mode, parents_only=False):
        if path in self._made:
            return
        if os.path.isdir(path):
            if not parents_only and _current_mode(path) != mode:
                self.changed_paths.append(path)
                self.diff.append(dict(before_header=path, after_header=path,
                                      before=dict(path=path, mode="%04o" % _current_mode(path)),
                                      after=dict(path=path, mode="%04o" % mode)))
                if not self.check_mode:
                    os.chmod(path, mode)
            return
        if os.path.lexists(path):
            raise OSError("%s exists and is not a directory" % path)
        parent = os.path.dirname(path)
        if parent != path:
            self.directory(parent, 0o755, parents_only=True)
        self._made.add(path)
        self.changed_paths.append(path)
        self.diff.append(dict(before_header=path, after_header=path, before=dict(path=path, state="absent"),
                              after=dict(path=path, state="directory", mode="%04o" % mode)))
        if not self.check_mode:
            os.mkdir(path, mode)
            os.chmod(path, mode)  # the umask took bits off

    def file(self, dest, content, mode, secret):
        data = content.encode("utf-8")
        self.directory(os.path.dirname(dest), 0o755, parents_only=True)
        old = None
        if os.path.isfile(dest):
            with open(dest, "rb") as handle:
                old = handle.read()
        elif os.path.isdir(dest):
            raise OSError("%s exists and is not a file" % dest)
        if old == data and _current_mode(dest) == mode:
            return
        self.changed_paths.append(dest)
        if not secret:
            self.diff.append(self._text_diff(dest, old, content, mode))
        if self.check_mode:
            return
        if old == data:
            os.chmod(dest, mode)
        else:
            _write_atomically(dest, data, mode)

    @staticmethod
    def _text_diff(dest, old, content, mode):
        if old is None:
            before = ""
        elif len(old) > _DIFF_MAX:
            before = "(%d bytes, too large to show)\n" % len(old)
        else:
            before = old.decode("utf-8", "replace")
        old_mode = "" if old is None else " (mode %04o)" % _current_mode(dest)
        return dict(before_header=dest + old_mode, after_header="%s (mode %04o)" % (dest, mode),
                    before=before, after=content)


def main():
    module = AnsibleModule(argument_spec=_argument_spec(), supports_check_mode=True)
    params = module.params
    problem = check_params(params)
    if problem:
        module.fail_json(msg=problem)
    failed = unmet(params["require"])
    if failed:
        module.fail_json(msg=failed, changed=False)
    probed = dict((path, probe(path)) for path in params["probe"])
    differs = [item["path"] for item in params["expect"]
               if not os.path.isfile(item["path"]) or _sha1(item["path"]) != item["checksum"]]
    writer = _Writer(module.check_mode)
    try:
        for item in params["directories"]:
            writer.directory(item["path"], int(item["mode"], 8))
        for option in ("files", "secrets"):
            for item in params[option]:
                writer.file(item["dest"], item["content"], int(item["mode"], 8), secret=option == "secrets")
    except OSError as exc:
        module.fail_json(msg=str(exc), changed=bool(writer.changed_paths) and not module.check_mode,
                         changed_paths=writer.changed_paths)
    result = dict(changed=bool(writer.changed_paths), changed_paths=writer.changed_paths, differs=differs,
                  probe=probed)
    if module._diff and writer.diff:
        result["diff"] = writer.diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
