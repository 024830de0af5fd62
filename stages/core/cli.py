"""The thin ``main()`` shared by every stage: parse ``--params``, validate, run, report.

User errors (bad params, bad data) print one line to stderr and exit 2; anything
else is a bug and keeps its stack trace. The stage runs holding the checkout's run lock
(``stages.core.locks``), so it never interleaves with a Prefect flow run or another stage on the
same checkout: it waits up to ``CV_FINETUNE_LOCK_TIMEOUT`` seconds, then says so in one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.core import locks
from stages.core.errors import UserError
from stages.core.params import DEFAULT_PARAMS_FILE, Params, load_params

log = logging.getLogger("stages")


def configure_logging() -> None:
    """Plain timestamped lines: readable in a terminal, in DVC's output and in CI logs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def stage_main(name: str, run: Callable[[Params], Any], argv: list[str] | None = None) -> int:
    """Run one stage from the command line; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=run.__doc__)
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS_FILE, help="params file (default: params.yaml)"
    )
    args = parser.parse_args(argv)
    configure_logging()
    started = time.perf_counter()
    try:
        params = load_params(args.params)
        lock = locks.checkout_lock(Path.cwd(), params.paths.cache)
        with locks.held(lock, locks.default_timeout(), "this checkout"):
            summary = run(params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s done in %.1f s: %s", name, time.perf_counter() - started, summary)
    return 0


def exit_with(name: str, run: Callable[[Params], Any]) -> None:
    """``if __name__ == "__main__": exit_with(...)`` in every stage module."""
    sys.exit(stage_main(name, run))
