"""The plan stage: pure functions from a manifest and host facts to a `Plan`.

`model` holds the plan's dataclasses, `torch` the torch build table and the choice of a build, `precision` the
precision and quantization that fit, `disk` the disk figure, `steps` which conversion steps run fused, and
`planner` the whole plan (and `plan_model`, the plan for this host or recorded facts).
"""

from modelrig.plan.disk import DISK_HEADROOM, DISK_RESERVE_GB, DiskPlan, plan_disk
from modelrig.plan.model import EnvPlan, Plan, TorchBuild
from modelrig.plan.planner import make_plan, plan_model
from modelrig.plan.precision import PrecisionChoice, gpu_usable_gb, mps_usable_gb, plan_precision
from modelrig.plan.torch import TORCH_BUILDS_FILE, TorchTable, load_torch_table, plan_torch_build

__all__ = [
    "DISK_HEADROOM", "DISK_RESERVE_GB", "TORCH_BUILDS_FILE", "DiskPlan", "EnvPlan", "Plan", "PrecisionChoice",
    "TorchBuild", "TorchTable", "gpu_usable_gb", "load_torch_table", "make_plan", "mps_usable_gb", "plan_disk",
    "plan_model", "plan_precision", "plan_torch_build",
]
