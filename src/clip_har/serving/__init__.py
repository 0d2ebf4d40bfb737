"""The inference service: a FastAPI app over one Predictor and the dynamic batcher.

Two protocols share it: the friendly REST API (``/v1``) and the Open Inference Protocol
(KServe v2 REST, ``/v2``). See docs/serving.md.
"""
