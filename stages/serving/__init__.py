"""Using a trained model: ONNX export and parity, INT8, batch prediction and the HTTP service.

The ``.onnx`` path (``metadata``, ``preprocess``, ``images``, ``inputs``, ``onnx_predictor``,
``predictor``, ``rows``, ``app``) imports no torch, so a CPU box with onnxruntime alone can run
it; the torch side (``torch_onnx`` with ``classifier_export`` and ``segmenter_export``,
``torch_predictor``, ``exporting``, ``quantize``'s caller) is imported only where it runs.
docs/deploy.md describes the whole.
"""
