"""The artifact store in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2): ``s3://bucket/prefix``.

Configured by the standard variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, or any other source boto3 reads). Keys are content-addressed like the
local store's, ``<prefix>/sha256/<ab>/<sha256>``, and every read is checked against the sha256.

A blob is hashed while it is spooled to a local temporary file, then uploaded under its final
key; boto3 uploads large files in parts, and S3 shows a multipart object only once the upload
completes, so a killed upload leaves nothing visible. Its parts stay billed until aborted: `gc`
aborts the incomplete uploads under the prefix that are older than its grace period.

boto3 is imported only when an ``s3://`` store is opened (`pip install boto3`, the `s3` extra).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from registry.artifacts import open_source
from registry.errors import IntegrityError, InvalidInputError, NotFoundError, StorageError

CHUNK = 1 << 20
MULTIPART_THRESHOLD = 8 * 1024 * 1024


class S3ArtifactStore:
    def __init__(self, url: str, *, client: Any = None) -> None:
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise InvalidInputError(f"artifact store URL {url!r} names no bucket: use s3://bucket[/prefix]")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise InvalidInputError(
                    f"artifact store {url!r} needs boto3: install the `s3` extra (pip install 'imgserve[s3]')"
                ) from None
            from botocore.exceptions import BotoCoreError

            try:
                client = boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))
            except (ValueError, BotoCoreError) as exc:  # AWS_ENDPOINT_URL that is no URL, a malformed region
                raise InvalidInputError(f"artifact store {url!r}: cannot make an S3 client: {exc}") from None
        self.client = client

    def describe(self) -> str:
        return self.url

    def key_for(self, sha256: str) -> str:
        return f"{self.prefix}sha256/{sha256[:2]}/{sha256}"

    # -- writing -------------------------------------------------------------------------------

    def put_file(self, source: Path) -> tuple[str, int]:
        with open_source(source) as fh:
            return self.put_stream(fh)

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        """Hash while spooling to a temporary file, then upload under the final key (in parts when
        large). Uploading again what is there already refreshes its age, which protects it from a gc
        running before the registration that references it commits."""
        from boto3.s3.transfer import TransferConfig

        digest = hashlib.sha256()
        size = 0
        with tempfile.TemporaryFile(prefix="imgserve-upload-") as spool:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                spool.write(chunk)
                size += len(chunk)
            spool.seek(0)
            sha = digest.hexdigest()
            config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
            self._call(
                "upload an artifact",
                self.client.upload_fileobj,
                spool,
                self.bucket,
                self.key_for(sha),
                ExtraArgs={"Metadata": {"sha256": sha}},
                Config=config,
            )
        return sha, size

    # -- reading -------------------------------------------------------------------------------

    def read(self, sha256: str, *, what: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key_for(sha256))
            data: bytes = response["Body"].read()
        except Exception as exc:
            if _missing(exc):
                raise NotFoundError(f"artifact of {what} is missing from the store ({self._where(sha256)})") from None
            raise self._error(f"read the artifact of {what}", exc) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise IntegrityError(
                f"artifact of {what} is corrupted: sha256 is {actual}, expected {sha256} ({self._where(sha256)})"
            )
        return data

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def verify(self, sha256: str) -> str | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key_for(sha256))
            digest = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
        except Exception as exc:
            if _missing(exc):
                return f"missing ({self._where(sha256)})"
            return f"unreadable: {exc} ({self._where(sha256)})"
        if digest.hexdigest() != sha256:
            return f"sha256 mismatch: found {digest.hexdigest()} ({self._where(sha256)})"
        return None

    def iter_blobs(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}sha256/"):
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if len(name) == 64:
                        yield name
        except Exception as exc:
            raise self._error("list the artifacts", exc) from None

    def size_of(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise NotFoundError(f"blob {sha256} is missing from {self.url}")
        return int(head["ContentLength"])

    def modified_at(self, sha256: str) -> float:
        head = self._head(sha256)
        if head is None:
            raise NotFoundError(f"blob {sha256} is missing from {self.url}")
        return float(head["LastModified"].timestamp())

    # -- deleting ------------------------------------------------------------------------------

    def delete_if_stale(self, sha256: str, *, older_than: float) -> int | None:
        head = self._head(sha256)
        if head is None or head["LastModified"].timestamp() >= older_than:
            return None
        self._call(f"delete blob {sha256}", self.client.delete_object, Bucket=self.bucket, Key=self.key_for(sha256))
        return int(head["ContentLength"])

    def remove_leftovers(self, *, older_than: float) -> list[str]:
        """Abort the incomplete multipart uploads (of killed registrations) begun before ``older_than``."""
        aborted: list[str] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < older_than:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted.append(upload["Key"])
        except Exception as exc:
            raise self._error("clean up incomplete uploads", exc) from None
        return aborted

    # -- helpers -------------------------------------------------------------------------------

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.key_for(sha256))
        except Exception as exc:
            if _missing(exc):
                return None
            raise self._error(f"look up blob {sha256}", exc) from None
        return head

    def _call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self._error(operation, exc) from None

    def _where(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key_for(sha256)}"

    def _error(self, operation: str, exc: Exception) -> StorageError:
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        at = f" at {endpoint}" if endpoint else ""
        return StorageError(f"artifact store {self.url}{at}: cannot {operation}: {_reason(exc)}")


def _missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchKey", "404", "NotFound")


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response:
        error = response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '') or exc}".rstrip(": ")
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
