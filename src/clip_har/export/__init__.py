"""Export: ONNX (optimised, int8, fp16), TorchScript and TensorRT artifacts inside a bundle,
each checked against torch fp32 by a parity gate, and a side-by-side benchmark.

See docs/export.md.
"""
