"""The ONNX Runtime backend on its own: provider choice and batch padding, on a real session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from app.backend import CPU, CUDA, GpuUnavailableError, OrtBackend, choose_providers
from registry import ModelContract
from tests.onnx_models import color_classifier, color_metadata


@pytest.fixture
def model(tmp_path: Path) -> tuple[bytes, ModelContract]:
    path = color_classifier(tmp_path / "m.onnx")
    return path.read_bytes(), ModelContract.model_validate(color_metadata()["contract"])


class ShapeRecorder:
    """Stands between the backend and its real session to see the shapes ONNX Runtime is given."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.shapes: list[tuple[int, ...]] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.shapes += [x.shape for x in feeds.values()]
        return self.session.run(outputs, feeds)


def images(count: int) -> np.ndarray:
    rng = np.random.default_rng(count)
    return rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)


def test_padding_runs_fixed_shapes_and_returns_only_the_real_rows(model: tuple[bytes, ModelContract]) -> None:
    data, contract = model
    plain = OrtBackend(data, contract, providers=[CPU])
    padded = OrtBackend(data, contract, providers=[CPU], pad_to=8, pad="always")
    recorder = ShapeRecorder(padded._session)
    padded._session = recorder

    for count in (1, 3, 8, 11):
        x = images(count)
        np.testing.assert_allclose(padded.run(x), plain.run(x), rtol=1e-5, atol=1e-6)
    assert [shape[0] for shape in recorder.shapes] == [8, 8, 8, 16]


def test_auto_padding_is_off_on_cpu_and_never_means_never(model: tuple[bytes, ModelContract]) -> None:
    data, contract = model
    assert OrtBackend(data, contract, providers=[CPU], pad_to=32).pad_to == 0
    assert OrtBackend(data, contract, providers=[CPU], pad_to=32, pad="never").pad_to == 0
    assert OrtBackend(data, contract, providers=[CPU], pad_to=32, pad="always").pad_to == 32


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="checks the CPU-only install")
def test_provider_choice_without_a_gpu() -> None:
    assert choose_providers("auto", require_gpu=False) == [CPU]
    assert choose_providers("cuda", require_gpu=False) == [CPU]  # falls back; the session reports it
    with pytest.raises(GpuUnavailableError, match="onnxruntime-gpu"):
        choose_providers("auto", require_gpu=True)


@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_session_pads_and_agrees_with_cpu(model: tuple[bytes, ModelContract]) -> None:
    data, contract = model
    gpu = OrtBackend(data, contract, providers=choose_providers("auto", require_gpu=True), require_gpu=True, pad_to=8)
    assert gpu.providers[0] == CUDA
    assert gpu.pad_to == 8  # auto padding is on where the session really runs on CUDA
    cpu = OrtBackend(data, contract, providers=[CPU])
    for count in (1, 5, 8, 13):
        x = images(count)
        on_gpu, on_cpu = gpu.run(x), cpu.run(x)
        assert on_gpu.shape == on_cpu.shape == (count, 3)
        np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-3)  # CUDA may use TF32 arithmetic
        assert (on_gpu.argmax(axis=1) == on_cpu.argmax(axis=1)).all()
