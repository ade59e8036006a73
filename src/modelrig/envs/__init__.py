"""Model environments: isolated venv or conda envs built from a plan's `EnvPlan`, keyed by a digest of the spec."""

from modelrig.envs.build import EnvBuildPlan, build_env, plan_env_build
from modelrig.envs.spec import env_key, resolved_spec

__all__ = ["EnvBuildPlan", "build_env", "env_key", "plan_env_build", "resolved_spec"]
