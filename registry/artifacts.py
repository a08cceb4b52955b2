"""Content-addressed artifact store on the local filesystem (or a shared volume).

A blob lives at ``<root>/sha256/<first two hex digits>/<sha256>``. Writes go to a
temporary file in the same filesystem, are fsynced, then renamed into place, so a
reader never sees a partial blob. Identical content is stored once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from registry.errors import IntegrityError, NotFoundError

CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def put_file(self, source: Path) -> tuple[str, int]:
        """Store a file's content; returns (sha256, size)."""
        with open(source, "rb") as fh:
            return self.put_stream(fh)

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path_for(sha)
            if final.exists() and self._hash_file(final) == sha:
                os.unlink(tmp_name)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, final)
                _fsync_dir(final.parent)
            return sha, size
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def read(self, sha256: str, *, what: str) -> bytes:
        """Return the blob's bytes after checking them against ``sha256``.

        ``what`` names the owner (e.g. ``digits v3``) in error messages.
        """
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"artifact of {what} is missing from the store ({path})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise IntegrityError(f"artifact of {what} is corrupted: sha256 is {actual}, expected {sha256} ({path})")
        return data

    def verify(self, sha256: str) -> str | None:
        """None when the blob is intact, else what is wrong with it."""
        path = self.path_for(sha256)
        if not path.exists():
            return f"missing ({path})"
        actual = self._hash_file(path)
        if actual != sha256:
            return f"sha256 mismatch: found {actual} ({path})"
        return None

    def iter_blobs(self) -> Iterator[str]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if sub.is_dir():
                for blob in sorted(sub.iterdir()):
                    yield blob.name

    def delete(self, sha256: str) -> int:
        path = self.path_for(sha256)
        size = path.stat().st_size
        path.unlink()
        return size

    @staticmethod
    def _hash_file(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
