"""The training job: data → fit → evaluate → export → parity check → register → promote."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from registry import Registry, VersionMetadata
from training.data import Dataset, load_dataset, write_digits
from training.errors import NotPromotedError, ParityError, TrainingError

BUILTIN_DATASETS = ("digits",)


@dataclass
class TrainConfig:
    data: Path | None = None
    dataset: str | None = None
    test_data: Path | None = None
    epochs: int = 25
    batch_size: int | None = None  # None: 32 as the legacy training job, 16 for digits
    image_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 42
    validation_split: float = 0.2
    augment: bool | None = None  # None: on for image folders, off for digits
    early_stopping: bool = False
    patience: int = 3
    max_per_class: int | None = None
    runs_dir: Path = Path("var/runs")
    register: str | None = None
    promote: str | None = None
    min_accuracy: float = 0.0
    actor: str | None = None
    description: str | None = None

    @property
    def name(self) -> str:
        if self.register:
            return self.register
        if self.dataset:
            return self.dataset
        return self.data.name if self.data else "model"

    def effective_batch_size(self) -> int:
        # Digits has 1,437 training images: batch 16 gives 90 updates an epoch and reaches
        # >= 0.96 held-out accuracy in 5 epochs across seeds; batch 32 varied from 0.94 to 0.97.
        if self.batch_size is not None:
            return self.batch_size
        return 16 if self.dataset == "digits" else 32

    def effective_augment(self) -> bool:
        # Digits must not be flipped or sheared (a mirrored 2 is not a 2): off by default.
        return self.augment if self.augment is not None else self.dataset != "digits"


@dataclass
class JobResult:
    run_dir: Path
    accuracy: float
    parity: dict[str, Any]
    version: int | None = None
    promoted: bool = False
    report: dict[str, Any] = field(default_factory=dict)


def run(config: TrainConfig, *, registry: Registry | None = None) -> JobResult:
    started = time.monotonic()
    if config.register:
        _check_registry(config, registry)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = config.runs_dir / f"{stamp}-{config.name}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot make the run directory {run_dir}: {exc.strerror or exc}") from None

    data_root = config.data
    if config.dataset == "digits":
        data_root = run_dir / "dataset"
        write_digits(data_root)
    assert data_root is not None
    size = (config.image_size, config.image_size)
    dataset = load_dataset(
        data_root,
        size=size,
        test_root=config.test_data,
        validation_split=config.validation_split,
        seed=config.seed,
        max_per_class=config.max_per_class,
    )
    _print_data_summary(dataset)

    # TensorFlow loads only once the data is known to be usable.
    import keras

    from training import evaluate, export
    from training.model import augmentation, compile_model, make_dataset, make_model

    keras.utils.set_random_seed(config.seed)
    k = len(dataset.class_names)
    model = make_model((config.image_size, config.image_size, 3), k)
    compile_model(model, num_classes=k, learning_rate=config.learning_rate)
    augment = augmentation(config.seed) if config.effective_augment() else None
    train_ds = make_dataset(
        dataset.train.images,
        dataset.train.labels,
        batch_size=config.effective_batch_size(),
        num_classes=k,
        shuffle=True,
        seed=config.seed,
        augment=augment,
    )
    test_ds = make_dataset(
        dataset.test.images,
        dataset.test.labels,
        batch_size=config.effective_batch_size(),
        num_classes=k,
        shuffle=False,
        seed=config.seed,
    )
    callbacks = []
    if config.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        )
    fit_started = time.monotonic()
    history = model.fit(
        train_ds, validation_data=test_ds, epochs=config.epochs, callbacks=callbacks, shuffle=False, verbose=2
    )
    fit_seconds = time.monotonic() - fit_started

    loss, accuracy = (float(v) for v in model.evaluate(test_ds, verbose=0))
    probabilities = model.predict(dataset.test.images, batch_size=64, verbose=0)
    predicted = export.top1(probabilities)
    metrics: dict[str, Any] = {"accuracy": accuracy, "loss": loss}
    metrics.update(evaluate.classification_metrics(dataset.test.labels, predicted, dataset.class_names))
    curves = run_dir / "curves.png"
    confusion = run_dir / "confusion_matrix.png"
    title = f"{config.name}, run {run_dir.name}"
    evaluate.plot_curves(
        {key: [float(v) for v in values] for key, values in history.history.items()}, curves, title=title
    )
    evaluate.plot_confusion(metrics["confusion_matrix"], dataset.class_names, confusion, title=title)

    model.save(run_dir / "model.keras")
    graph = export.export_onnx(model, run_dir / "model.onnx")
    parity_images = _parity_images(dataset)
    parity = export.parity_check(model, graph, parity_images)

    metadata = VersionMetadata.model_validate(
        {
            "contract": {
                "input": {"name": graph.input_name, "shape": [None, *size, 3], "dtype": "uint8"},
                "output": {"name": graph.output_name, "kind": "sigmoid" if k == 2 else "softmax"},
                "labels": dataset.class_names,
                "preprocessing": {"size": list(size), "resize_method": "bilinear", "color_mode": "rgb"},
            },
            "metrics": metrics,
            "params": {
                "epochs": config.epochs,
                "epochs_run": len(history.history["loss"]),
                "batch_size": config.effective_batch_size(),
                "learning_rate": config.learning_rate,
                "image_size": config.image_size,
                "seed": config.seed,
                "augment": config.effective_augment(),
                "early_stopping": config.early_stopping,
                "train_images": len(dataset.train),
                "test_images": len(dataset.test),
                "test_source": dataset.test_source,
                "training_seconds": round(fit_seconds, 2),
                "opset": graph.opset,
            },
            "dataset_fingerprint": dataset.fingerprint,
            "library_versions": _library_versions(),
            "parity": parity,
            "description": config.description or f"CNN trained on {config.dataset or config.data}",
        }
    )
    (run_dir / "meta.json").write_text(json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n")
    result = JobResult(run_dir=run_dir, accuracy=accuracy, parity=parity)
    report: dict[str, Any] = {
        "config": {k_: str(v) if isinstance(v, Path) else v for k_, v in asdict(config).items()},
        "classes": dataset.class_names,
        "skipped_files": [{"path": p, "reason": r} for p, r in dataset.skipped],
        "metadata": metadata.model_dump(mode="json"),
        "fit_seconds": round(fit_seconds, 2),
    }
    result.report = report
    try:
        if not parity["passed"]:
            raise ParityError(
                f"parity check failed: max |ONNX - Keras| = {parity['max_abs_diff']:.2e} "
                f"(limit 1e-4), top-1 agreement {parity['top1_agreement']:.4f}; nothing registered"
            )
        if config.register:
            result.version, result.promoted = _register(config, metadata, run_dir, registry)
    finally:
        report["registered_version"] = result.version
        report["promoted"] = result.promoted
        report["total_seconds"] = round(time.monotonic() - started, 2)
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        _print_summary(config, dataset, metrics, parity, result, fit_seconds)
    if config.promote and not result.promoted:
        raise NotPromotedError(
            f"registered {config.register} v{result.version} but did not promote it to {config.promote!r}: "
            f"held-out accuracy {accuracy:.4f} < --min-accuracy {config.min_accuracy}"
        )
    return result


def _check_registry(config: TrainConfig, registry: Registry | None) -> None:
    """What would only fail at the end, after the training: a name or alias the registry refuses, a
    database that does not answer or has no schema yet."""
    from registry import NotFoundError
    from registry.service import validate_alias, validate_model_name

    assert config.register is not None
    validate_model_name(config.register)
    if config.promote:
        validate_alias(config.promote)
    with _opened(registry) as reg, suppress(NotFoundError):  # a new model: the registration creates it
        reg.get_model(config.register)


@contextmanager
def _opened(registry: Registry | None) -> Iterator[Registry]:
    """``registry``, or one opened from the REGISTRY_* settings and closed after use."""
    if registry is not None:
        yield registry
        return
    with Registry.from_settings() as opened:
        yield opened


def _register(
    config: TrainConfig, metadata: VersionMetadata, run_dir: Path, registry: Registry | None
) -> tuple[int, bool]:
    assert config.register is not None
    with _opened(registry) as reg:
        info = reg.register(
            name=config.register,
            onnx_path=run_dir / "model.onnx",
            metadata=metadata,
            extras={
                "curves.png": run_dir / "curves.png",
                "confusion_matrix.png": run_dir / "confusion_matrix.png",
            },
            actor=config.actor,
            description=config.description,
        )
        promoted = False
        if config.promote and metadata.metrics["accuracy"] >= config.min_accuracy:
            reg.promote(
                name=config.register,
                version=info.version,
                alias=config.promote,
                actor=config.actor,
                reason=f"training run {run_dir.name}: held-out accuracy {metadata.metrics['accuracy']:.4f}",
            )
            promoted = True
        return info.version, promoted


def _parity_images(dataset: Dataset) -> np.ndarray:
    from training.export import PARITY_MIN_SAMPLES

    images = dataset.test.images[:PARITY_MIN_SAMPLES]
    if len(images) < PARITY_MIN_SAMPLES:  # a small test set is topped up from the training images
        images = np.concatenate([images, dataset.train.images[: PARITY_MIN_SAMPLES - len(images)]])
    return images


def _library_versions() -> dict[str, str]:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def _print_data_summary(dataset: Dataset) -> None:
    print(
        f"data: {len(dataset.class_names)} classes, {len(dataset.train)} training images, "
        f"{len(dataset.test)} held-out ({dataset.test_source}), {len(dataset.skipped)} unreadable files skipped",
        flush=True,
    )


def _print_summary(
    config: TrainConfig,
    dataset: Dataset,
    metrics: dict[str, Any],
    parity: dict[str, Any],
    result: JobResult,
    fit_seconds: float,
) -> None:
    lines = [
        "",
        f"== {config.name}: summary",
        f"run directory   {result.run_dir}",
        f"training        {len(dataset.train)} images, {fit_seconds:.1f} s",
        f"held-out        {len(dataset.test)} images: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}",
        f"skipped files   {len(dataset.skipped)}",
        "per class       "
        + ", ".join(f"{name} P={m['precision']:.2f} R={m['recall']:.2f}" for name, m in metrics["per_class"].items()),
        f"parity          {'passed' if parity['passed'] else 'FAILED'} "
        f"(max |diff| {parity['max_abs_diff']:.1e} on {parity['samples']} images)",
    ]
    if result.version is not None:
        state = f"promoted to {config.promote}" if result.promoted else "not promoted"
        lines.append(f"registry        {config.register} v{result.version}, {state}")
    print("\n".join(lines), flush=True)
