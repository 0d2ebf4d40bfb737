"""Export ceiling: how fast could ONNX Runtime be against torch eager on this CPU, if every
operator other than the matrix products cost nothing?

    .venv/bin/python benchmarks/bench_export_ceiling.py [--rounds 9]

``clip-vit-b16-random`` at batch 8 is dominated by its matrix products. This measures, side
by side in one process with the same thread count, every distinct matrix product of the
image tower (patch embedding, q/k/v/out projections, MLP, attention scores and values,
final projection) with three kernels: torch's ``F.linear``/``matmul`` (what torch eager
runs), ONNX Runtime's fp32 ``MatMul`` and its dynamic int8 ``DynamicQuantizeMatMul``
(what ``onnx-int8`` runs; attention stays fp32 there), and the whole torch eager batch.

Bounds, all times per batch of 8:

* ``onnx_fp32_vs_torch_b8_ceiling`` = torch eager batch / Σ ORT fp32 matrix products;
* ``onnx_int8_vs_torch_b8_ceiling`` = torch eager batch / (Σ ORT int8 projections +
  Σ ORT fp32 attention products);
* ``torch_matmul_share`` = Σ torch matrix products / torch eager batch.

A ceiling under its goal (1.3 and 3.0, from ``bench_export.py``) means that goal cannot be
met by ONNX Runtime's CPU kernels on this machine, whatever the graph. Writes
``benchmarks/results/export_ceiling.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _results import print_ratios, write_results
from bench_export import GOALS, MODEL, build_bundle
from onnx import TensorProto, helper, numpy_helper

from clip_har.export.benchmark import usable_cores
from clip_har.inference.engines import EngineOptions, create_engine
from clip_har.models.bundle import open_bundle

BATCH = 8


@dataclass(frozen=True)
class Product:
    """One distinct matrix product of the image tower: ``[*batch, M, K] @ [K, N]`` (a
    projection with a constant weight) or ``[*batch, M, K] @ [*batch, K, N]`` (attention)."""

    name: str
    batch: tuple[int, ...]
    m: int
    k: int
    n: int
    count: int
    weight: bool

    @property
    def flops(self) -> int:
        return 2 * int(np.prod(self.batch, dtype=np.int64)) * self.m * self.k * self.n


def image_tower_products(config: Any, batch: int) -> list[Product]:
    """The matrix products of a CLIP vision transformer's forward pass on ``batch`` images."""
    vision = getattr(config, "vision_config", config)
    hidden, layers, heads = vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens = patches + 1
    rows = batch * tokens
    head_dim = hidden // heads
    projection = getattr(config, "projection_dim", hidden)
    return [
        Product("patch embedding", (), batch * patches, 3 * vision.patch_size**2, hidden, 1, True),
        Product("q/k/v/out projection", (), rows, hidden, hidden, 4 * layers, True),
        Product("mlp up", (), rows, hidden, vision.intermediate_size, layers, True),
        Product("mlp down", (), rows, vision.intermediate_size, hidden, layers, True),
        Product("attention scores", (batch, heads), tokens, head_dim, tokens, layers, False),
        Product("attention values", (batch, heads), tokens, tokens, head_dim, layers, False),
        Product("final projection", (), batch, hidden, projection, 1, True),
    ]


def _session(node: Any, inputs: list[Any], output: Any, weights: list[Any]) -> Any:
    graph = helper.make_graph([node], "product", inputs, [output], weights)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=opsets).SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def kernels(product: Product, rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    """The product as torch, ORT fp32 and (for projections) ORT dynamic int8 calls."""
    left = rng.standard_normal((*product.batch, product.m, product.k), dtype=np.float32)
    right = rng.standard_normal((*product.batch, product.k, product.n), dtype=np.float32)
    left_t, right_t = torch.from_numpy(left), torch.from_numpy(right)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(left.shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [*product.batch, product.m, None])
    feeds = {"x": left}
    if not product.weight:
        w = helper.make_tensor_value_info("w", TensorProto.FLOAT, list(right.shape))
        fp32 = _session(helper.make_node("MatMul", ["x", "w"], ["y"]), [x, w], y, [])
        return {
            "torch": lambda: torch.matmul(left_t, right_t),
            "ort_fp32": lambda: fp32.run(None, {"x": left, "w": right}),
        }
    weight_t = right_t.T.contiguous() * 0.02
    bias_t = torch.zeros(product.n)
    quantized = rng.integers(-127, 128, right.shape).astype(np.int8)
    fp32 = _session(
        helper.make_node("MatMul", ["x", "w"], ["y"]), [x], y, [numpy_helper.from_array(right, "w")]
    )
    int8 = _session(
        helper.make_node(
            "DynamicQuantizeMatMul", ["x", "w", "scale", "zero"], ["y"], domain="com.microsoft"
        ),
        [x],
        y,
        [
            numpy_helper.from_array(quantized, "w"),
            numpy_helper.from_array(np.array(1e-3, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ],
    )
    return {
        "torch": lambda: torch.nn.functional.linear(left_t, weight_t, bias_t),
        "ort_fp32": lambda: fp32.run(None, feeds),
        "ort_int8": lambda: int8.run(None, feeds),
    }


def timed(call: Callable[[], object], min_seconds: float = 0.2) -> float:
    """Seconds per call: one untimed call (wakes the thread pool after another runtime
    ran), then repeated until ``min_seconds`` have passed."""
    call()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or calls < 2:
        call()
        calls += 1
    return elapsed / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=usable_cores())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as work:
        bundle = open_bundle(build_bundle(Path(work) / "bundle"))
        engine = create_engine(bundle, "torch", EngineOptions(threads=args.threads))
        config = engine.backbone.model.config  # type: ignore[attr-defined]
        pixels = np.random.default_rng(0).random((BATCH, 3, 224, 224), dtype=np.float32)
        products = image_tower_products(config, BATCH)
        rng = np.random.default_rng(0)
        calls = {product.name: kernels(product, rng) for product in products}
        with torch.inference_mode():
            engine.predict(pixels)  # warm-up
            for kernel in calls.values():
                for call in kernel.values():
                    call()
            eager: list[float] = []
            seconds: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):  # interleaved: every round times everything once
                eager.append(timed(lambda: engine.predict(pixels), min_seconds=0.0))
                for name, kernel in calls.items():
                    for kind, call in kernel.items():
                        seconds.setdefault((name, kind), []).append(timed(call))

    median = {key: statistics.median(values) for key, values in seconds.items()}
    torch_batch = statistics.median(eager)
    rows: list[dict[str, Any]] = []
    totals = {"torch": 0.0, "ort_fp32": 0.0, "ort_int8": 0.0}
    for product in products:
        row: dict[str, Any] = {
            "product": product.name,
            "shape": f"{'x'.join(map(str, product.batch)) + ' x ' if product.batch else ''}"
            f"[{product.m}x{product.k}] @ [{product.k}x{product.n}]",
            "per_batch": product.count,
        }
        for kind in ("torch", "ort_fp32", "ort_int8"):
            # int8 runs only the projections; attention stays fp32 in the onnx-int8 graph
            key = (product.name, kind if (product.name, kind) in median else "ort_fp32")
            per_batch = median[key] * product.count
            totals[kind] += per_batch
            row[f"{kind}_ms_per_batch"] = round(per_batch * 1e3, 1)
            row[f"{kind}_gflops"] = round(product.flops / median[key] / 1e9, 1)
        rows.append(row)
    rows.append(
        {
            "product": "all matrix products",
            **{f"{kind}_ms_per_batch": round(total * 1e3, 1) for kind, total in totals.items()},
        }
    )
    rows.append({"product": "torch eager batch", "torch_ms_per_batch": round(torch_batch * 1e3, 1)})
    ratios = {
        "onnx_fp32_vs_torch_b8_ceiling": round(torch_batch / totals["ort_fp32"], 2),
        "onnx_int8_vs_torch_b8_ceiling": round(torch_batch / totals["ort_int8"], 2),
        "torch_matmul_share": round(totals["torch"] / torch_batch, 2),
    }
    goals = {
        "onnx_fp32_vs_torch_b8_ceiling": GOALS["onnx_fp32_vs_torch_b8"],
        "onnx_int8_vs_torch_b8_ceiling": GOALS["onnx_int8_vs_torch_b8"],
    }
    notes = (
        f"{MODEL} image tower at batch {BATCH}, {args.threads} threads for torch and ORT, "
        f"{args.rounds} interleaved rounds (medians). Each ceiling assumes every operator "
        "other than the matrix products (LayerNorm, softmax, GELU, residual adds, transposes, "
        "activation quantisation) is free, so the real ratio is always below it. ORT's "
        "int8 kernel is DynamicQuantizeMatMul with int8 weights (u8 x s8, VNNI where the CPU "
        "has it), exactly what onnx-int8 runs; its attention products stay fp32. "
        f"Total wall time {time.perf_counter() - started:.0f} s."
    )
    paths = write_results("export_ceiling", rows, ratios, goals, notes)
    print_ratios(ratios, goals, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
