"""Serve the training flow as a Prefect deployment with a cron schedule, on this machine.

``python -m pipelines.deploy --cron "0 2 * * *"`` registers ``cv-finetune/nightly`` on the
Prefect server named by ``PREFECT_API_URL`` and runs its flow runs here until stopped (Ctrl-C
pauses the schedule). Teams with GPU workers use ``prefect.yaml`` and work pools instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect.client.schemas.schedules import CronSchedule
from prefect.schedules import Cron, Schedule
from prefect.settings import PREFECT_API_URL

from pipelines.flow import (
    CODE_ROOT,
    ProjectError,
    add_run_arguments,
    check_same_code,
    parse_override,
    plan_stages,
    training_pipeline,
    validate_params,
    working_directory,
)
from stages.core.errors import UserError

DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00


def deployment_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters every scheduled run gets (editable later in the UI)."""
    overrides = dict(parse_override(text) for text in args.overrides)
    parameters: dict[str, Any] = {"params_file": args.params}
    if overrides:
        parameters["overrides"] = overrides
    if args.target:
        parameters["target"] = args.target
    if args.pull:
        parameters["pull"] = True
    if args.push:
        parameters["push"] = True
    return parameters


def check_schedule(cron: str, timezone: str) -> Schedule:
    """The schedule, or a one-sentence error for a cron expression or time zone Prefect rejects."""
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError:
        raise ProjectError(
            f"--cron '{cron}' with --timezone '{timezone}' is not a valid schedule; write five fields "
            "(minute hour day month weekday), e.g. '0 2 * * *', and an IANA zone such as UTC."
        ) from None
    return Cron(cron, timezone=timezone)


def check_parameters(parameters: dict[str, Any]) -> None:
    """Validate the code, params, overrides and target now, so a typo fails here rather than at 02:00."""
    check_same_code(CODE_ROOT)
    validate_params(CODE_ROOT, parameters["params_file"], parameters.get("overrides"))
    with working_directory(CODE_ROOT):
        plan_stages(CODE_ROOT, parameters.get("target"))


def main(argv: list[str] | None = None) -> int:
    """Check everything, then serve (blocks); returns 2 with one line on a user error."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.deploy", description=__doc__)
    parser.add_argument("--name", default="nightly", help="deployment name (default: nightly)")
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default: '{DEFAULT_CRON}')")
    parser.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule (default: UTC)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if not PREFECT_API_URL.value():
        print(
            "error: PREFECT_API_URL is not set; start `prefect server start` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api, or the schedule would live in a temporary server.",
            file=sys.stderr,
        )
        return 2
    try:
        schedule = check_schedule(args.cron, args.timezone)
        parameters = deployment_parameters(args)
        check_parameters(parameters)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    training_pipeline.serve(
        name=args.name,
        schedules=[schedule],
        parameters=parameters,
        description="The DVC pipeline (ingest -> report), each stage a task; dvc.lock stays true.",
        tags=["cv-finetune"],
        limit=1,  # runs share one checkout and one dvc.lock: never two at once
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
