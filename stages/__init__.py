"""Pipeline stages, one module each, run as ``python -m stages.<name> [--params FILE]``."""

from stages.core.offline import apply_offline_environment

apply_offline_environment()
