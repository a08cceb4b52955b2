"""Turn encoded image bytes into the uint8 RGB array a model expects.

Pure PIL and NumPy, no web framework: the training job uses the same function, so
what a model sees in training is exactly what the server feeds it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})
DEFAULT_MAX_PIXELS = 40_000_000
# What decoding really costs is the pixels decoded: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
# when that still covers the model's size, other formats at full size. A 40 MP 1-bit PNG is
# 5 KB and over a second of CPU.
DEFAULT_MAX_DECODED_PIXELS = 16_000_000

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_SOURCE_PIXELS = "imgserve.source_pixels"  # kept in an opened image's info by `open_image`


class ImageError(ValueError):
    """The bytes are not a usable image (HTTP 400)."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (HTTP 413)."""


def decode_image(
    data: bytes,
    *,
    size: tuple[int, int],
    resize_method: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
) -> np.ndarray:
    """Decode, orient, convert to RGB and resize to ``size`` (height, width).

    JPEGs are decoded in draft mode at the smallest of 1/1, 1/2, 1/4 or 1/8 scale that
    still covers the target size, which is most of the cost of a large photo.
    """
    img = open_image(data, max_pixels=max_pixels, size=size, max_decoded_pixels=max_decoded_pixels)
    return to_array(img, size=size, resize_method=resize_method)


def decoded_pixels(img: Image.Image) -> int:
    """Pixels the decoder will produce for an image from `open_image` (after JPEG draft scaling)."""
    width, height = img.size
    return width * height


def source_pixels(img: Image.Image) -> int:
    """Pixels of an image from `open_image` as stored, before JPEG draft scaling: what decoding it
    costs follows these (a JPEG's entropy decoding is not scaled down)."""
    stored = img.info.get(_SOURCE_PIXELS)
    return stored if isinstance(stored, int) else decoded_pixels(img)


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: tuple[int, int] | None = None,
    max_decoded_pixels: int | None = None,
) -> Image.Image:
    """Read the header only: format and size, checked. Cheap (tens of µs) whatever the image's size;
    `to_array` does the pixel work and closes the image.

    With ``size`` (height, width), a JPEG is set to decode at the smallest scale that covers it,
    and ``max_decoded_pixels`` bounds what decoding will produce (ImageTooLargeError past it)."""
    if not data:
        raise ImageError("empty image: the upload has no bytes")
    # The pixel limit is checked below, right after the header is read. PIL raises on its own only
    # for images past twice its built-in limit, before we see their size.
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not a recognised image: supported formats are JPEG, PNG, WebP, BMP, GIF and TIFF") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large to decode: {exc}") from None
    except OSError as exc:
        raise ImageError(f"unreadable image: {exc}") from None
    try:
        if img.format not in SUPPORTED_FORMATS:
            raise ImageError(f"unsupported image format {img.format}")
        src_w, src_h = img.size
        if src_w * src_h > max_pixels:
            raise ImageTooLargeError(f"image is {src_w}x{src_h} = {src_w * src_h} pixels, the limit is {max_pixels}")
        if src_w == 0 or src_h == 0:
            raise ImageError("image has no pixels")
        img.info[_SOURCE_PIXELS] = src_w * src_h
        if size is not None and img.format in ("JPEG", "MPO"):
            side = max(size)  # EXIF rotation may swap the axes after decoding
            img.draft("RGB", (side, side))
        if max_decoded_pixels is not None and decoded_pixels(img) > max_decoded_pixels:
            w, h = img.size
            raise ImageTooLargeError(
                f"image decodes to {w}x{h} = {w * h} pixels, the limit is {max_decoded_pixels} "
                "(JPEGs count at the reduced scale they are decoded at)"
            )
    except ImageError:
        img.close()
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        img.close()
        raise ImageError(f"unreadable image: {exc}") from None
    return img


def to_array(img: Image.Image, *, size: tuple[int, int], resize_method: str = "bilinear") -> np.ndarray:
    """The pixel work for an image from `open_image`: uint8 RGB [height, width, 3]."""
    height, width = size
    with img:
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), RESAMPLING[resize_method])
            return np.asarray(rgb, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"truncated or corrupt image data: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.uint32)
        return Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        floats = np.asarray(img, dtype=np.float32)
        return Image.fromarray(floats.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")
