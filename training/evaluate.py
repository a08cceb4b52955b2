"""Held-out metrics and the plots kept with a version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    k = len(class_names)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(class_names):
        tp = matrix[i, i]
        predicted_i = matrix[:, i].sum()
        actual_i = matrix[i, :].sum()
        per_class[name] = {
            "precision": float(tp / predicted_i) if predicted_i else 0.0,
            "recall": float(tp / actual_i) if actual_i else 0.0,
            "support": int(actual_i),
        }
    return {"confusion_matrix": matrix.tolist(), "per_class": per_class}


def plot_curves(history: dict[str, list[float]], path: Path, *, title: str) -> None:
    """Loss and accuracy per epoch; ``title`` names the model and the run."""
    fig = curves_figure(history, title=title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_figure(history: dict[str, list[float]], *, title: str) -> Figure:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        ax.plot(epochs, history[key], marker="o", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label="held-out")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path, *, title: str) -> None:
    """The held-out confusion matrix; ``title`` names the model and the run."""
    data = np.asarray(matrix)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = data.max() / 2 if data.size else 0
    for (i, j), value in np.ndenumerate(data):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    ax.set_title(f"{title}\nconfusion matrix (held-out)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
