"""Inference backends: the protocol the batcher calls, and ONNX Runtime behind it."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import logging
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from registry import ModelContract
from registry.check import ContractMismatchError, check_graph

log = logging.getLogger("app.backend")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class InferenceBackend(Protocol):
    """Runs one batch: uint8 [N, H, W, 3] in, the model's raw output [N, K] (or [N, 1]) out.

    Called from a worker thread, never from the event loop.
    """

    @property
    def providers(self) -> list[str]: ...

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only
    return trim


def release_freed_memory() -> bool:
    """Hand the heap that closed sessions freed back to the OS; False where the C library cannot.

    A session's memory is allocated in whichever thread loads it and freed on close, and glibc
    keeps freed heap in its per-thread arenas, so without this RSS ratchets up with every swap
    (tests/app/test_memory.py)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class GpuUnavailableError(RuntimeError):
    """A GPU was required but ONNX Runtime cannot use one."""


# ONNX Runtime is imported where a session or its providers are needed, not with this module: the
# front ends of a multi-worker host import it for the types only, and it costs each ~20 MB.


def choose_providers(preference: str, *, require_gpu: bool) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if require_gpu and CUDA not in available:
        raise GpuUnavailableError(
            f"a GPU is required (SERVE_REQUIRE_GPU) but ONNX Runtime {ort.__version__} offers only "
            f"{', '.join(available)}: install onnxruntime-gpu and the CUDA/cuDNN libraries it needs"
        )
    if preference == "cpu" or CUDA not in available:
        return [CPU]
    load_cuda_libraries()
    return [CUDA, CPU]


@functools.cache
def load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from NVIDIA's pip packages before the first CUDA session, where they are.

    With `onnxruntime-gpu[cuda,cudnn]` those libraries live in site-packages, off the loader's
    path, and ONNX Runtime's CUDA provider finds them only once loaded (`preload_dlls`). In a
    CUDA base image they are on the path already and this changes nothing. Failures are logged,
    not raised: the session then reports which provider it really got.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime-gpu before 1.21
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # preload_dlls reports on stdout
        try:
            preload()
        except Exception as exc:  # best effort: creating the session reports what matters
            log.warning("could not preload CUDA libraries: %s", exc)
    for line in printed.getvalue().splitlines():
        log.info("preload_dlls: %s", line)


class OrtBackend:
    """One ONNX Runtime session, checked against the model contract when created."""

    def __init__(
        self,
        model: bytes,
        contract: ModelContract,
        *,
        providers: list[str],
        require_gpu: bool = False,
        intra_op_threads: int = 0,
        pad_to: int = 0,
        pad: Literal["auto", "always", "never"] = "auto",
    ) -> None:
        """``pad_to``: run every batch padded up to a multiple of this many rows (see `run`). ``pad``
        says when: ``auto`` only when the session really runs on CUDA."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        # Idle ONNX Runtime threads spin-wait for the next run by default, burning the cores the
        # event loop and the decoders need between batches; a server is never idle long enough to gain.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own (unexported) types for bad graphs
            raise ContractMismatchError(f"ONNX Runtime cannot load the graph: {exc}") from exc
        self._providers = self._session.get_providers()
        if require_gpu and CUDA not in self._providers:
            raise GpuUnavailableError(
                f"a GPU is required but the session fell back to {', '.join(self._providers)} "
                "(CUDA or cuDNN libraries missing, or no usable device)"
            )
        self._input = contract.input.name
        self._output = contract.output.name
        check_graph(self._session, contract)
        use_padding = pad == "always" or (pad == "auto" and self._providers[0] == CUDA)
        self._pad_to = pad_to if use_padding else 0

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    @property
    def pad_to(self) -> int:
        return self._pad_to

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch. With padding, the session sees only a few batch shapes: ONNX Runtime's
        CUDA convolutions redo their set-up whenever the input shape changes (docs/decisions/0005).
        On CPU there is no such cost and padding would only waste compute, hence off there by default."""
        rows = len(batch)
        if self._pad_to and rows % self._pad_to:
            padded = np.zeros((-(-rows // self._pad_to) * self._pad_to, *batch.shape[1:]), dtype=batch.dtype)
            padded[:rows] = batch
            batch = padded
        result = self._session.run([self._output], {self._input: batch})[0]
        return np.asarray(result[:rows], dtype=np.float32)

    def close(self) -> None:
        # ONNX Runtime frees the session when the last reference goes.
        del self._session
