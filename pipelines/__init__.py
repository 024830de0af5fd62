"""Orchestration around the stages: Prefect flows and the CI metric gate.

They call the stages' own ``run(...)`` functions (no second implementation); importing this
package first makes the process offline, exactly as ``stages`` does.
"""

from stages.core.offline import apply_offline_environment

apply_offline_environment()
