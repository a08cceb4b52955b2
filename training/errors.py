"""Errors of the training job, each with its exit code.

TrainingError            base class: a run directory that cannot be made          (exit 1)
├── DataError            missing folder, fewer than 2 classes, an empty class   (exit 3)
├── ParityError          ONNX Runtime disagrees with Keras; nothing registered  (exit 4)
└── NotPromotedError     registered, but accuracy is below --min-accuracy       (exit 5)
"""

from __future__ import annotations


class TrainingError(Exception):
    exit_code = 1


class DataError(TrainingError):
    exit_code = 3


class ParityError(TrainingError):
    exit_code = 4


class NotPromotedError(TrainingError):
    exit_code = 5
