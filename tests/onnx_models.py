"""Small, real ONNX classifiers honouring the model contract, built without TensorFlow.

The graph averages each colour channel and scores labels from those means, so a
test can predict the answer: with labels red/green/blue, a red image is "red".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def color_classifier(
    path: Path,
    *,
    size: int = 16,
    kind: str = "softmax",
    input_name: str = "image",
    output_name: str = "probabilities",
    gain: float = 10.0,
    bias: float = 0.0,
    permute: tuple[int, int, int] = (0, 1, 2),
    busy_matmuls: int = 0,
    stall_on_blue: bool = False,
) -> Path:
    """Write an ONNX model: uint8 [N, size, size, 3] → softmax over (R, G, B) or sigmoid of G - R.

    ``busy_matmuls``: every run also multiplies 1024x1024 matrices this many times (about 2 GFLOP
    each, whatever the batch size) and adds 0 times the result: the same answers, from a model slow
    enough that requests queue behind it.

    ``stall_on_blue``: a batch holding a pixel whose blue exceeds its red and green together runs
    a loop of 4·10^9 empty steps per level of the excess (hours) before it answers: a run that
    never ends, as a hung GPU call would be. Other batches, and the warm-up's zeros, pass at once."""
    if kind == "softmax":
        # Channel c scores label permute[c]: the identity maps red→red, (1, 0, 2) maps red→green.
        weights = np.zeros((3, 3), dtype=np.float32)
        for channel, label in enumerate(permute):
            weights[channel, label] = gain
        head = helper.make_node("Softmax", ["logits"], [output_name], axis=-1)
        out_dim = 3
    else:
        weights = np.array([[-gain], [gain], [0.0]], dtype=np.float32)
        head = helper.make_node("Sigmoid", ["logits"], [output_name])
        out_dim = 1
    nodes = [
        helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["as_float", "scale"], ["scaled"]),
        helper.make_node("ReduceMean", ["scaled"], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["means", "weights"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["logits" if not busy_matmuls else "plain_logits"]),
        head,
    ]
    busy: list[onnx.TensorProto] = []
    if stall_on_blue:
        nodes[-2].output[0] = "unstalled_logits"
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["more"], ["more_out"]),
                helper.make_node("Add", ["count", "one"], ["count_out"]),
            ],
            "spin",
            [
                helper.make_tensor_value_info("step", TensorProto.INT64, []),
                helper.make_tensor_value_info("more", TensorProto.BOOL, []),
                helper.make_tensor_value_info("count", TensorProto.FLOAT, []),
            ],
            [
                helper.make_tensor_value_info("more_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("count_out", TensorProto.FLOAT, []),
            ],
        )
        nodes[-1:-1] = [
            # Blue less red and green, at its most over the batch: 255 for a pure blue pixel.
            helper.make_node("Split", ["as_float"], ["red", "green", "blue"], axis=3),
            helper.make_node("Sub", ["blue", "red"], ["blue_less_red"]),
            helper.make_node("Sub", ["blue_less_red", "green"], ["blueness"]),
            helper.make_node("ReduceMax", ["blueness"], ["bluest"], keepdims=0),
            helper.make_node("Relu", ["bluest"], ["bluest_or_zero"]),
            helper.make_node("Cast", ["bluest_or_zero"], ["bluest_int"], to=TensorProto.INT64),
            helper.make_node("Mul", ["bluest_int", "steps_per_level"], ["steps"]),
            helper.make_node("Loop", ["steps", "true", "zero_count"], ["spun"], body=body),
            helper.make_node("Mul", ["spun", "zero_count"], ["spun_zero"]),
            helper.make_node("Add", ["unstalled_logits", "spun_zero"], ["logits"]),
        ]
        busy += [
            numpy_helper.from_array(np.array(4_000_000_000, dtype=np.int64), "steps_per_level"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_count"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ]
    if busy_matmuls:
        # Tied to the input, so ONNX Runtime cannot fold the products into a constant at load time.
        nodes[-1:-1] = [
            helper.make_node("ReduceMean", ["scaled"], ["level"], keepdims=0),
            helper.make_node("Mul", ["level", "zero"], ["input_zero"]),
            helper.make_node("Add", ["square", "input_zero"], ["busy0"]),
            *(helper.make_node("MatMul", [f"busy{i}", "square"], [f"busy{i + 1}"]) for i in range(busy_matmuls)),
            helper.make_node("ReduceSum", [f"busy{busy_matmuls}"], ["busy_total"], keepdims=0),
            helper.make_node("Mul", ["busy_total", "zero"], ["busy_zero"]),
            helper.make_node("Add", ["plain_logits", "busy_zero"], ["logits"]),
        ]
        busy = [
            numpy_helper.from_array(np.eye(1024, dtype=np.float32), "square"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
    graph = helper.make_graph(
        nodes,
        "color_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", out_dim])],
        initializer=[
            numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.full((out_dim,), bias, dtype=np.float32), "bias"),
            *busy,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def color_metadata(
    *,
    size: int = 16,
    kind: str = "softmax",
    input_name: str = "image",
    output_name: str = "probabilities",
    labels: list[str] | None = None,
    accuracy: float = 1.0,
) -> dict[str, Any]:
    if labels is None:
        labels = ["red", "green", "blue"] if kind == "softmax" else ["red", "green"]
    return {
        "contract": {
            "input": {"name": input_name, "shape": [None, size, size, 3], "dtype": "uint8"},
            "output": {"name": output_name, "kind": kind},
            "labels": labels,
            "preprocessing": {"size": [size, size], "resize_method": "bilinear", "color_mode": "rgb"},
        },
        "metrics": {"accuracy": accuracy},
        "params": {"kind": "test-color-classifier"},
        "library_versions": {"onnx": onnx.__version__},
    }
