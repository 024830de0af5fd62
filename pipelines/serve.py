"""The model as an HTTP service (FastAPI + uvicorn).

``python -m pipelines.serve MODEL [--host 127.0.0.1] [--port 8000] [--threads N]
[--max-request-bytes B] [--params params.yaml]``

Binds 127.0.0.1 unless told otherwise: put a reverse proxy (TLS, auth, rate limits) in front
to expose it (docs/deploy.md). Limits: the request body (``export.max_request_bytes``, or the
flag) and the image's pixels (the model's metadata: ``validate.max_pixels`` at export).
Endpoints and answers: ``stages/serving/app.py``.
"""

from __future__ import annotations

import pipelines  # noqa: F401  (offline environment first)

# isort: split
import argparse
import sys
from pathlib import Path

from stages.core.errors import UserError
from stages.core.params import DEFAULT_PARAMS_FILE, ExportSection, load_params


def request_limit(params_file: Path, flag: int | None) -> int:
    """The flag, else ``export.max_request_bytes`` of the params file when there is one, else the default."""
    if flag is not None:
        return flag
    if params_file.is_file():
        return load_params(params_file).export.max_request_bytes
    return ExportSection().max_request_bytes


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=summary)
    parser.add_argument("model", type=Path, help="a .onnx from stages.export or a .pt from train")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: local only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, help="CPU threads for inference (default: the runtime's)")
    parser.add_argument("--max-request-bytes", type=int, help="default: export.max_request_bytes")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_FILE, help="for the request limit")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        import uvicorn

        from stages.serving.app import create_app
        from stages.serving.predictor import load_predictor

        limit = request_limit(args.params, args.max_request_bytes)
        app = create_app(load_predictor(args.model, args.threads), limit, args.model.name)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
