"""Export to ONNX and check that ONNX Runtime computes what Keras computes."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort

from training.errors import TrainingError

OPSET = 17
OUTPUT_NAME = "probabilities"
PARITY_TOLERANCE = 1e-4
PARITY_MIN_SAMPLES = 64
PARITY_BATCH_SIZES = (1, 7)


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    input_name: str
    output_name: str
    opset: int


def export_onnx(model: keras.Model, path: Path) -> ExportedGraph:
    path.parent.mkdir(parents=True, exist_ok=True)
    # tf2onnx prints a page of conversion chatter; keep the job's output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(path), format="onnx", opset_version=OPSET, verbose=False)
    proto = onnx.load(str(path))
    _rename_output(proto, OUTPUT_NAME)
    onnx.save(proto, str(path))
    onnx.checker.check_model(proto)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    dims = graph_input.type.tensor_type.shape.dim
    if graph_input.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise TrainingError("exported graph input is not uint8")
    if dims[0].HasField("dim_value"):
        raise TrainingError("exported graph has a fixed batch dimension; it must be dynamic")
    return ExportedGraph(path, graph_input.name, graph_output.name, opset)


def _rename_output(proto: onnx.ModelProto, name: str) -> None:
    """tf2onnx names the output after a TensorFlow op (`Identity:0`); give it a name that says what it is."""
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        node.output[:] = [name if out == old else out for out in node.output]
        node.input[:] = [name if inp == old else inp for inp in node.input]
    proto.graph.output[0].name = name


def top1(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.shape[1] == 1:
        return np.asarray(probabilities[:, 0] > 0.5, dtype=np.int64)
    return np.asarray(probabilities.argmax(axis=1), dtype=np.int64)


def parity_check(model: keras.Model, graph: ExportedGraph, images: np.ndarray) -> dict[str, object]:
    """Compare ONNX Runtime with Keras on ``images`` as one batch and in batches of 1 and 7."""
    session = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    expected = model.predict(images, batch_size=64, verbose=0)
    runs = [session.run([graph.output_name], {graph.input_name: images})[0]]
    for batch in PARITY_BATCH_SIZES:
        parts = [
            session.run([graph.output_name], {graph.input_name: images[i : i + batch]})[0]
            for i in range(0, len(images), batch)
        ]
        runs.append(np.concatenate(parts))
    max_diff = max(float(np.abs(run - expected).max()) for run in runs)
    agreement = min(float((top1(run) == top1(expected)).mean()) for run in runs)
    return {
        "passed": max_diff <= PARITY_TOLERANCE and agreement == 1.0,
        "max_abs_diff": max_diff,
        "top1_agreement": agreement,
        "samples": len(images),
        "batch_sizes": [len(images), *PARITY_BATCH_SIZES],
    }
