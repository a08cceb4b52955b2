"""The network and its input pipeline (Keras 3, TensorFlow backend)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

INPUT_NAME = "image"


def make_model(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The legacy training job's CNN (the Django app this service replaced). Input is uint8 RGB;
    scaling to [0, 1] is the graph's first layer.

    Two classes get the legacy job's sigmoid head (the score of class index 1);
    more get a softmax over all classes.
    """
    inputs = keras.Input(shape=input_shape, dtype="uint8", name=INPUT_NAME)
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(pool_size=2, strides=2)(x)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(pool_size=2, strides=2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    if num_classes == 2:
        outputs = layers.Dense(1, activation="sigmoid", name="probabilities")(x)
    else:
        outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def compile_model(model: keras.Model, *, num_classes: int, learning_rate: float) -> None:
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])


def augmentation(seed: int) -> keras.Sequential:
    """The legacy training job's shear 0.2, zoom 0.2 and horizontal flip, as preprocessing layers.

    They run in the tf.data pipeline only: they have no ONNX equivalent and must not
    reach the exported graph.
    """
    return keras.Sequential(
        [
            layers.RandomShear(x_factor=0.2, y_factor=0.2, seed=seed),
            layers.RandomZoom(0.2, seed=seed + 1),
            layers.RandomFlip("horizontal", seed=seed + 2),
        ],
        name="augmentation",
    )


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    num_classes: int,
    shuffle: bool,
    seed: int,
    augment: keras.Sequential | None = None,
) -> tf.data.Dataset:
    targets = labels.astype(np.float32) if num_classes == 2 else labels
    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:

        def _augment(x: Any, y: Any) -> tuple[Any, Any]:
            out = augment(tf.cast(x, tf.float32), training=True)
            return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8), y

        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
