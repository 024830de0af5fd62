"""The HTTP service: FastAPI app around one predictor (``pipelines.serve`` runs it with uvicorn).

- ``POST /predict``: one image as multipart (field ``file``, or the first file) or as the raw body;
  answers the JSON ``pipelines.predict`` writes per image. Optional ``?conf=&iou=`` for a detector.
- ``GET /health``; ``GET /model``: task, classes, thresholds, limits, metrics with intervals,
  code and training-params digests.

Bad input is always a 4xx with one sentence in ``detail``: 413 when the body exceeds
``max_request_bytes`` (checked on Content-Length and again while reading) or the image exceeds
the pixel limit before decoding; 422 for bytes that are not a decodable image; 400 for a
malformed or empty form. A 500 means a bug.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from stages.dataprep.imaging import ImageReadError
from stages.serving.images import TooManyPixels, load_bytes
from stages.serving.predictor import Predictor


def _error(status: int, sentence: str) -> JSONResponse:
    return JSONResponse({"detail": sentence}, status_code=status)


def model_card(predictor: Predictor, max_request_bytes: int, source: str) -> dict[str, Any]:
    info = predictor.info
    provenance = dict(info.provenance)
    return {
        "model": source,
        "task": info.task,
        "classes": info.classes,
        "preprocessing": info.preprocessing,
        "thresholds": {"conf": info.conf, "iou": info.iou, "max_det": info.max_det}
        if info.task == "detect"
        else {"top_k": info.top_k}
        if info.task == "classify"
        else {},
        "limits": {"max_request_bytes": max_request_bytes, "max_pixels": info.max_pixels},
        "metrics": provenance.pop("metrics", {}),
        "code_digest": provenance.pop("code_digest", None),
        "train_params_digest": provenance.pop("train_params_digest", None),
        "provenance": provenance,
    }


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (the rest is not read)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _image_bytes(request: Request, body: bytes) -> tuple[bytes, str] | JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return body, "the request body"
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except Exception:  # python-multipart's parse errors: a malformed form is the client's
        return _error(400, "The multipart form could not be parsed; send one image as the field 'file'.")
    uploads = [v for k, v in form.multi_items() if k == "file" and not isinstance(v, str)]
    uploads = uploads or [v for _, v in form.multi_items() if not isinstance(v, str)]
    if not uploads:
        return _error(400, "The form has no file; send one image as the multipart field 'file'.")
    upload = uploads[0]
    data = await upload.read()
    return data, f"'{upload.filename or 'file'}'"


def create_app(predictor: Predictor, max_request_bytes: int, source: str = "model") -> FastAPI:
    app = FastAPI(title="cv-finetune model service", docs_url=None, redoc_url=None, openapi_url=None)
    card = model_card(predictor, max_request_bytes, source)
    # Decoding and prediction run in the thread pool, off the event loop, and overlap: onnxruntime
    # sessions are thread-safe (the PyTorch predictor takes its own lock). One forward pass at a
    # time was measured too (bench/bench_export.py, 2 cores): 25-28 requests/s against 37-45
    # without the limit, since preprocessing is serialised with it.

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return card

    @app.post("/predict")
    async def predict(request: Request, conf: float | None = None, iou: float | None = None) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_request_bytes:
            return _error(413, f"The request has {length} bytes, more than the limit of {max_request_bytes}.")
        body = await _read_limited(request, max_request_bytes)
        if body is None:
            return _error(413, f"The request is larger than the limit of {max_request_bytes} bytes.")
        found = await _image_bytes(request, body)
        if isinstance(found, JSONResponse):
            return found
        data, name = found
        for key, value in (("conf", conf), ("iou", iou)):
            if value is not None and not 0 <= value <= 1:
                return _error(422, f"The query parameter {key} must be between 0 and 1.")
        if predictor.info.task != "detect" and (conf is not None or iou is not None):
            kind = "classifier" if predictor.info.task == "classify" else "segmentation model"
            return _error(422, f"conf and iou apply to a detector; this model is a {kind}.")
        try:
            image = await anyio.to_thread.run_sync(load_bytes, data, predictor.info.max_pixels, name)
        except TooManyPixels as exc:
            return _error(413, exc.detail[0].upper() + exc.detail[1:])
        except ImageReadError as exc:
            return _error(422, exc.detail[0].upper() + exc.detail[1:])
        except Exception as exc:  # any decoder failure on user bytes is the input's fault, not ours
            return _error(422, f"{name} cannot be decoded as an image ({type(exc).__name__}).")
        thresholds = {k: v for k, v in (("conf", conf), ("iou", iou)) if v is not None}
        (result,) = await anyio.to_thread.run_sync(lambda: predictor.predict([image], **thresholds))
        return result

    return app
