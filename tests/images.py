"""Images for tests, generated on the fly, plus scikit-learn's bundled photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import sklearn
from PIL import Image

COLORS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
SAMPLE_PHOTOS = Path(sklearn.__file__).parent / "datasets" / "images"


def solid(color: str, size: tuple[int, int] = (16, 16), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    img = Image.new("RGB", size, COLORS[color])
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def photo(name: str = "china.jpg") -> bytes:
    """A real 640x427 JPEG photo bundled with scikit-learn."""
    return (SAMPLE_PHOTOS / name).read_bytes()


def noise_png(size: tuple[int, int], seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
