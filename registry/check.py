"""Can a version be served? What a promotion checks before it moves an alias, and what a
server checks before it swaps a version in.

- `check_graph`: an ONNX Runtime session's inputs and outputs against the version's contract.
- `check_servable`: the whole check on a version's bytes: ONNX Runtime loads them on CPU, the
  graph matches the contract, and one row of zeros comes back with the contract's shape.

ONNX Runtime is imported only by `check_servable`, so the rest of the registry (and its CLI)
works without it.
"""

from __future__ import annotations

from typing import Any

from core.contract import ModelContract


class ContractMismatchError(Exception):
    """The ONNX graph cannot be loaded, or does not match the contract recorded in the registry."""


def check_graph(session: Any, contract: ModelContract) -> None:
    """Raise ContractMismatchError unless ``session`` (an ONNX Runtime InferenceSession) has the
    contract's input (uint8, NHWC, its height and width) and output (its width)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    spec = contract.input
    if spec.name not in inputs:
        raise ContractMismatchError(f"graph has no input {spec.name!r} (it has {sorted(inputs)})")
    if contract.output.name not in outputs:
        raise ContractMismatchError(f"graph has no output {contract.output.name!r} (it has {sorted(outputs)})")
    graph_input = inputs[spec.name]
    if graph_input.type != "tensor(uint8)":
        raise ContractMismatchError(f"graph input {spec.name!r} is {graph_input.type}, the contract says uint8")
    shape = graph_input.shape
    if len(shape) != 4:
        raise ContractMismatchError(f"graph input has rank {len(shape)}, the contract says 4 (NHWC)")
    for axis, (got, want) in enumerate(zip(shape[1:], spec.shape[1:], strict=True), start=1):
        if isinstance(got, int) and got != want:
            raise ContractMismatchError(f"graph input dimension {axis} is {got}, the contract says {want}")
    out_shape = outputs[contract.output.name].shape
    if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != contract.num_outputs:
        raise ContractMismatchError(
            f"graph output has {out_shape[1]} columns, the contract ({contract.output.kind}, "
            f"{len(contract.labels)} labels) needs {contract.num_outputs}"
        )


def check_servable(data: bytes, contract: ModelContract) -> None:
    """Load ``data`` in ONNX Runtime on CPU, check it against ``contract`` and run one row through it.

    Raises ContractMismatchError with what is wrong; ImportError without ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own (unexported) types for bad graphs
        raise ContractMismatchError(f"ONNX Runtime cannot load the graph: {exc}") from None
    check_graph(session, contract)
    row = np.zeros((1, contract.input.height, contract.input.width, 3), dtype=np.uint8)
    try:
        (out,) = session.run([contract.output.name], {contract.input.name: row})
    except Exception as exc:
        raise ContractMismatchError(f"running one image through the graph failed: {exc}") from None
    if getattr(out, "shape", None) != (1, contract.num_outputs):
        raise ContractMismatchError(
            f"one image gave an output of shape {getattr(out, 'shape', None)}, "
            f"the contract needs {(1, contract.num_outputs)}"
        )
