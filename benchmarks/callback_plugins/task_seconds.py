"""Ansible callback for the benchmarks: each task's wall time, from its start on the first host to the start of the
next task (or the end of the run), and each host's own seconds in it, written as JSON to $TASK_SECONDS_FILE when
the run ends. Enable it with ANSIBLE_CALLBACK_PLUGINS=benchmarks/callback_plugins ANSIBLE_CALLBACKS_ENABLED=
task_seconds (ansible-core ships no profile_tasks; ansible.posix's is not installed)."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_seconds
type: aggregate
short_description: each task's wall time and each host's seconds in it, as JSON
description:
  - "Writes a JSON object (total seconds; each task's name and start; each host's name, task, status and seconds)
    and each ok result's task, host, module, count of runs (loop items not skipped) and delegate_to
    to the file named by the TASK_SECONDS_FILE environment variable when the run ends."
requirements:
  - TASK_SECONDS_FILE set in the environment
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_seconds"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.start = time.time()
        self.tasks = []
        self.hosts = []
        self.started = {}
        self.runs = []

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.tasks.append([task.get_name(), round(time.time() - self.start, 3)])

    def v2_runner_on_start(self, host, task):
        self.started[(host.get_name(), task._uuid)] = time.time()

    def _done(self, result, status):
        host, task = result._host.get_name(), result._task
        began = self.started.pop((host, task._uuid), time.time())
        self.hosts.append([task.get_name(), host, status, round(time.time() - began, 3)])

    def v2_runner_on_ok(self, result):
        self._done(result, "ok")
        # what ran on the host: the task's module and how many times (a loop's items that were not skipped)
        items = result._result.get("results")
        count = 1 if items is None else sum(1 for item in items if not item.get("skipped"))
        self.runs.append([result._task.get_name(), result._host.get_name(), result._task.action, count,
                          result._task.delegate_to or ""])

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._done(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._done(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("TASK_SECONDS_FILE")
        if path:
            with open(path, "w") as out:
                json.dump({"total": round(time.time() - self.start, 3), "tasks": self.tasks, "hosts": self.hosts,
                           "runs": self.runs}, out)
