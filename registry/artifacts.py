"""Content-addressed artifact stores: the local filesystem (or a shared volume) here, an
S3-compatible bucket in `registry.s3`; `open_store` picks one from a path or URL.

Every store keeps a blob under ``sha256/<first two hex digits>/<sha256>`` and checks it
against its name on every read. The locally stored blob lives at ``<root>/sha256/…``. Writes go to a
temporary file in ``<root>/tmp`` on the same filesystem, are fsynced, then renamed
into place, so a reader never sees a partial blob. Identical content is stored once.

Two rules keep `gc` from losing data or leaving it behind:
- every write renames a fresh file into place, even when the blob is already there,
  so a blob that a registration is about to reference is always young, and gc's
  grace period protects it until the registration commits;
- a writer holds an exclusive ``flock`` on its temporary file until it is renamed or
  removed, so gc can tell an upload in progress from one whose process died.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from registry.errors import IntegrityError, InvalidInputError, NotFoundError, StorageError

CHUNK = 1 << 20
UPLOAD_PREFIX = "upload-"  # locked by its writer for as long as it lives
CREATING_PREFIX = "creating-"  # not locked yet: only for the moment between creating and locking


class ArtifactStore(Protocol):
    """What the registry needs of a store. ``read`` always checks the bytes against their sha256."""

    def describe(self) -> str: ...

    def put_file(self, source: Path) -> tuple[str, int]: ...

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]: ...

    def read(self, sha256: str, *, what: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def verify(self, sha256: str) -> str | None: ...

    def iter_blobs(self) -> Iterator[str]: ...

    def size_of(self, sha256: str) -> int: ...

    def modified_at(self, sha256: str) -> float: ...

    def delete_if_stale(self, sha256: str, *, older_than: float) -> int | None: ...

    def remove_leftovers(self, *, older_than: float) -> list[str]: ...


def open_store(location: str | Path) -> ArtifactStore:
    """The store at ``location``: ``s3://bucket/prefix`` (any S3-compatible service, configured by the
    standard AWS_* variables), or a local directory."""
    text = str(location)
    if text.startswith("s3://"):
        from registry.s3 import S3ArtifactStore

        return S3ArtifactStore(text)
    if "://" in text and not text.startswith("file://"):
        raise InvalidInputError(f"unsupported artifact store {text!r}: use a directory or s3://bucket/prefix")
    return LocalArtifactStore(Path(text.removeprefix("file://")))


def write_replacing(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all: written under a temporary name beside it, then
    renamed over it. A temporary left by a failed write is removed."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def open_source(source: Path) -> BinaryIO:
    """A file to store, opened for reading; a StorageError naming it if it cannot be."""
    try:
        return open(source, "rb")
    except OSError as exc:
        raise StorageError(f"cannot read {str(source)!r} to store it: {exc.strerror or exc}") from None


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def put_file(self, source: Path) -> tuple[str, int]:
        """Store a file's content; returns (sha256, size)."""
        with open_source(source) as fh:
            return self.put_stream(fh)

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = self._create_locked_tmp()
        except OSError as exc:
            raise self._storage_error("create an upload file", exc) from None
        digest = hashlib.sha256()
        size = 0
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
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp_name, 0o644)
                # Replace even an identical blob: the new file's age is what protects it from gc.
                os.replace(tmp_name, final)
                _fsync_dir(final.parent)
            return sha, size
        except OSError as exc:
            raise self._storage_error("write an artifact", exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)

    def _create_locked_tmp(self) -> tuple[int, str]:
        """An upload file that is locked from the moment it carries the `upload-` name."""
        unique = f"{os.getpid()}-{uuid.uuid4().hex}"
        creating = self.tmp_dir / f"{CREATING_PREFIX}{unique}"
        name = str(self.tmp_dir / f"{UPLOAD_PREFIX}{unique}")
        fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(creating, name)  # the lock belongs to the open file and survives the rename
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(creating)
            raise
        return fd, name

    def read(self, sha256: str, *, what: str) -> bytes:
        """Return the blob's bytes after checking them against ``sha256``.

        ``what`` names the owner (e.g. ``digits v3``) in error messages.
        """
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"artifact of {what} is missing from the store ({path})") from None
        except OSError as exc:
            raise self._storage_error(f"read the artifact of {what}", exc) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise IntegrityError(f"artifact of {what} is corrupted: sha256 is {actual}, expected {sha256} ({path})")
        return data

    def verify(self, sha256: str) -> str | None:
        """None when the blob is intact, else what is wrong with it."""
        path = self.path_for(sha256)
        try:
            actual = self._hash_file(path)
        except FileNotFoundError:
            return f"missing ({path})"
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc} ({path})"
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

    def size_of(self, sha256: str) -> int:
        return self.path_for(sha256).stat().st_size

    def modified_at(self, sha256: str) -> float:
        return self.path_for(sha256).stat().st_mtime

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def delete_if_stale(self, sha256: str, *, older_than: float) -> int | None:
        """Delete the blob unless it was written after ``older_than`` (a time.time()); returns its size
        if deleted.

        The blob is first renamed aside and checked again: a registration may rename a fresh copy
        into place between our look and our delete, and that copy must survive."""
        path = self.path_for(sha256)
        try:
            seen = path.stat()
            if seen.st_mtime >= older_than:
                return None
            aside = self.tmp_dir / f"gc-{sha256}-{uuid.uuid4().hex}"
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            os.rename(path, aside)
            moved = aside.stat()
            if moved.st_ino != seen.st_ino:  # a fresh copy arrived meanwhile: put it back
                os.replace(aside, path)
                return None
            aside.unlink()
            return seen.st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._storage_error(f"delete blob {sha256}", exc) from None

    def remove_leftovers(self, *, older_than: float) -> list[str]:
        """Delete what dead processes left in ``tmp/``; returns the paths removed.

        An upload whose lock is free has lost its writer, whatever its age. Anything else there (a
        file killed between creation and locking, a blob a killed gc had moved aside) goes once it
        is older than ``older_than`` (a time.time())."""
        removed: list[str] = []
        try:
            entries = list(self.tmp_dir.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            try:
                if entry.name.startswith(UPLOAD_PREFIX):
                    dead = self._writer_is_gone(entry)
                else:
                    dead = entry.stat().st_mtime < older_than
                if dead:
                    entry.unlink()
                    removed.append(entry.name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._storage_error(f"clean up {entry.name}", exc) from None
        return removed

    @staticmethod
    def _writer_is_gone(path: Path) -> bool:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        finally:
            os.close(fd)
        return True

    def _storage_error(self, operation: str, exc: OSError) -> StorageError:
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        return StorageError(f"artifact store {self.root}: cannot {operation}: {reason}{where}")

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
