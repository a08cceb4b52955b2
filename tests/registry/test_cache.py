"""The local read-through artifact cache (`registry.cache.CachedStore`) shared by processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from registry.artifacts import LocalArtifactStore
from registry.cache import CachedStore


def test_a_blob_another_process_evicts_between_read_and_touch_is_still_a_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several inference processes (one per GPU) or replicas may share one cache directory: one
    can remove a blob in the instant after another read it. The read stands."""
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx bytes" * 100)
    store = LocalArtifactStore(tmp_path / "store")
    sha256, _ = store.put_file(source)
    cache = CachedStore(store, tmp_path / "cache", max_bytes=1 << 20)
    assert cache.read(sha256, what="model") == source.read_bytes()  # a miss: now cached

    def evicted_meanwhile(path: os.PathLike[str], *args: object, **kwargs: object) -> None:
        Path(path).unlink()
        raise FileNotFoundError(path)

    monkeypatch.setattr(os, "utime", evicted_meanwhile)
    assert cache.read(sha256, what="model") == source.read_bytes()
    assert (cache.counts.hits, cache.counts.misses) == (1, 1)
