"""A local read-through cache in front of an artifact store (a bucket, usually).

A server reads a version's artifact once from the store and keeps it on local disk, so a
restart or a version pinned again does not download it again. Every read, from the cache
too, is checked against the sha256: a damaged cache file is dropped and fetched anew. The
cache is bounded: past `max_bytes`, the least recently read blobs go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.artifacts import ArtifactStore, write_replacing


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0  # read from the store
    corrupt: int = 0  # cache files that failed their sha256 check (dropped, fetched anew)
    evicted: int = 0


class CachedStore:
    """An ArtifactStore whose reads go through a local directory; everything else goes to the store."""

    def __init__(self, store: ArtifactStore, directory: Path, *, max_bytes: int) -> None:
        self.store = store
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.counts = CacheCounts()
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.store.describe()} (cached in {self.directory})"

    def path_for(self, sha256: str) -> Path:
        return self.directory / "sha256" / sha256[:2] / sha256

    def read(self, sha256: str, *, what: str) -> bytes:
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None:
            if hashlib.sha256(data).hexdigest() == sha256:
                with contextlib.suppress(FileNotFoundError):  # evicted meanwhile by another process
                    os.utime(path)  # most recently read: evicted last
                with self._lock:
                    self.counts.hits += 1
                return data
            with self._lock:
                self.counts.corrupt += 1
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        data = self.store.read(sha256, what=what)  # checked by the store
        with self._lock:
            self.counts.misses += 1
        self._keep(sha256, data)
        return data

    def _keep(self, sha256: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self.path_for(sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_replacing(path, data)
        except OSError:
            return  # a cache that cannot be written only costs downloads
        self._evict()

    def _evict(self) -> None:
        entries = []
        for blob in (self.directory / "sha256").glob("*/*"):
            with contextlib.suppress(FileNotFoundError):
                stat = blob.stat()
                entries.append((stat.st_mtime, stat.st_size, blob))
        total = sum(size for _, size, _ in entries)
        for _, size, blob in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                blob.unlink()
                total -= size
                with self._lock:
                    self.counts.evicted += 1

    # -- everything else is the store's ----------------------------------------------------------

    def put_file(self, source: Path) -> tuple[str, int]:
        return self.store.put_file(source)

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        return self.store.put_stream(stream)

    def exists(self, sha256: str) -> bool:
        return self.store.exists(sha256)

    def verify(self, sha256: str) -> str | None:
        return self.store.verify(sha256)

    def iter_blobs(self) -> Iterator[str]:
        return self.store.iter_blobs()

    def size_of(self, sha256: str) -> int:
        return self.store.size_of(sha256)

    def modified_at(self, sha256: str) -> float:
        return self.store.modified_at(sha256)

    def delete_if_stale(self, sha256: str, *, older_than: float) -> int | None:
        return self.store.delete_if_stale(sha256, older_than=older_than)

    def remove_leftovers(self, *, older_than: float) -> list[str]:
        return self.store.remove_leftovers(older_than=older_than)
