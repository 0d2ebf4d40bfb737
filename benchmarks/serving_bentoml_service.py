"""The BentoML baseline of ``bench_serving.py``: the bundle's ONNX file behind a BentoML
service with adaptive batching, preprocessed by the same :class:`clip_har.imaging.Preprocessor`.

It runs in a venv of its own (bentoml, onnxruntime, numpy, pillow, numba, pydantic) with
the repository's ``src`` on ``PYTHONPATH``, so only ``clip_har.imaging`` (no torch) loads.
``BENCH_SERVING_BENTOML_CONFIG`` names a JSON file: ``onnx`` (the model file),
``image_config`` (the bundle's preprocessing), ``threads`` (ORT intra-op threads),
``max_batch_size`` and ``max_latency_ms``.

    bentoml serve serving_bentoml_service:ClipHarOnnx --host 127.0.0.1 --port P
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort
from PIL import Image

from clip_har.imaging import ImageConfig, Preprocessor

CONFIG = json.loads(Path(os.environ["BENCH_SERVING_BENTOML_CONFIG"]).read_text())


@bentoml.service(workers=1, traffic={"timeout": 120, "max_concurrency": 1024})
class ClipHarOnnx:
    """POST /predict with multipart ``images``: probabilities ``[N, C]``."""

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = int(CONFIG["threads"])
        self.session = ort.InferenceSession(
            CONFIG["onnx"], options, providers=["CPUExecutionProvider"]
        )
        self.preprocessor = Preprocessor(ImageConfig.model_validate(CONFIG["image_config"]))

    @bentoml.api(
        batchable=True,
        max_batch_size=int(CONFIG["max_batch_size"]),
        max_latency_ms=int(CONFIG["max_latency_ms"]),
    )
    def predict(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.preprocessor.batch(images)
        probabilities: np.ndarray = self.session.run(["probabilities"], {"pixels": pixels})[0]
        return probabilities
