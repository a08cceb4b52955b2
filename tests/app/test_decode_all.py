"""Where the server decodes: a request's images on the event loop when they are small together, else in threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.errors import UnavailableError
from app.limits import DecodeBudget
from app.service import decode_all
from app.settings import LimitSettings
from core.imaging import ImageError, ImageTooLargeError, decode_image
from registry import ModelContract
from tests.images import noise_png, photo, solid
from tests.onnx_models import color_metadata

CONTRACT = ModelContract.model_validate(color_metadata()["contract"])
SIZE = tuple(CONTRACT.preprocessing.size)


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2)
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def pool():
    with CountingPool() as p:
        yield p


@pytest.mark.parametrize(
    ("data", "in_thread"),
    [
        (noise_png((64, 64)), False),  # 4,096 pixels: at the default threshold
        (noise_png((65, 64)), True),
        (photo(), True),
    ],
)
async def test_a_lone_image_is_decoded_inline_only_when_small(pool: CountingPool, data: bytes, in_thread: bool) -> None:
    out = await decode_all([data], CONTRACT, LimitSettings(), pool, inline_pixels=4096)
    assert pool.jobs == (1 if in_thread else 0)
    # The same pixels either way, and the same as training's decoder.
    assert np.array_equal(out[0], decode_image(data, size=SIZE))


async def test_several_images_are_decoded_inline_when_small_together(pool: CountingPool) -> None:
    images = [noise_png((40, 40), seed) for seed in range(3)]  # 4,800 pixels together
    out = await decode_all(images, CONTRACT, LimitSettings(), pool, inline_pixels=4800)
    assert pool.jobs == 0
    assert all(np.array_equal(out[i], decode_image(data, size=SIZE)) for i, data in enumerate(images))
    out = await decode_all(images, CONTRACT, LimitSettings(), pool, inline_pixels=4799)
    assert pool.jobs >= 1
    assert all(np.array_equal(out[i], decode_image(data, size=SIZE)) for i, data in enumerate(images))


async def test_a_jpeg_counts_the_pixels_it_stores_not_those_it_is_scaled_to(pool: CountingPool) -> None:
    """A 640x427 JPEG for a 16x16 model decodes at 1/8 scale to 80x54 pixels, but reading its data
    is most of the work, and that is not scaled down."""
    await decode_all([photo()], CONTRACT, LimitSettings(), pool, inline_pixels=10_000)
    assert pool.jobs == 1
    out = await decode_all([photo()], CONTRACT, LimitSettings(), pool, inline_pixels=640 * 480)
    assert pool.jobs == 1  # inline: the threshold of a front end on a multi-worker host
    assert np.array_equal(out[0], decode_image(photo(), size=SIZE))


async def test_zero_means_always_in_a_thread(pool: CountingPool) -> None:
    await decode_all([solid("red")], CONTRACT, LimitSettings(), pool, inline_pixels=0)
    assert pool.jobs == 1


async def test_broken_and_oversized_images_fail_the_same_way_inline(pool: CountingPool) -> None:
    with pytest.raises(ImageError, match="not a recognised image"):
        await decode_all([b"not an image"], CONTRACT, LimitSettings(), pool, inline_pixels=4096)
    truncated = noise_png((32, 32))[:-200]
    with pytest.raises(ImageError, match="truncated or corrupt"):
        await decode_all([truncated], CONTRACT, LimitSettings(), pool, inline_pixels=4096)
    # The pixel limit is checked from the header, before any decoding, wherever it would run.
    with pytest.raises(ImageTooLargeError, match="limit is 1000"):
        await decode_all(
            [solid("red", (40, 40))], CONTRACT, LimitSettings(max_image_pixels=1000), pool, inline_pixels=4096
        )
    assert pool.jobs == 0


async def test_decoding_inline_takes_nothing_from_the_budget_but_keeps_the_request_limit(pool: CountingPool) -> None:
    """The server-wide budget bounds pixels waiting for decoding threads; what the loop decodes
    itself cannot pile up. The per-request pixel limit holds wherever the decoding runs."""
    spent = DecodeBudget(capacity=0)
    small = noise_png((40, 40))
    out = await decode_all([small], CONTRACT, LimitSettings(), pool, inline_pixels=4096, budget=spent)
    assert out.shape == (1, *SIZE, 3) and pool.jobs == 0
    with pytest.raises(UnavailableError, match="busy decoding"):
        await decode_all([small], CONTRACT, LimitSettings(), pool, inline_pixels=0, budget=spent)
    with pytest.raises(ImageTooLargeError, match="1600 pixels together"):
        await decode_all([small], CONTRACT, LimitSettings(max_request_pixels=1000), pool, inline_pixels=4096)
    with pytest.raises(ImageTooLargeError, match="3200 pixels together"):
        await decode_all([small, small], CONTRACT, LimitSettings(max_request_pixels=3000), pool, inline_pixels=10**6)
    assert pool.jobs == 0
