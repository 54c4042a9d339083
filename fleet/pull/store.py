"""Where published files go: a folder (served by any web server) or an S3 bucket (or any
S3-compatible store through ``--endpoint-url``). Every write replaces a whole object at
once, so a reader never sees half of one: a folder's files are renamed into place, and an
S3 PUT is atomic by S3's own contract."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fleet import atomic
from fleet.errors import UsageError

# Content-addressed files never change: a CDN may keep them forever. The timestamp
# changes at every refresh, so caches must hold it only briefly.
IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=30"


class StoreError(UsageError):
    """The store cannot be reached or written."""


class Store(Protocol):
    @property
    def url(self) -> str: ...

    def exists(self, name: str) -> int | None:
        """The size of ``name``, or None when it is not there."""

    def put_bytes(self, name: str, data: bytes, cache: str) -> None: ...

    def put_file(self, name: str, path: Path, cache: str) -> None: ...

    def get(self, name: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes of ``name`` (more is an error), or None if absent."""

    def list(self, prefix: str) -> Iterator[str]: ...


def _check_name(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"bad object name {name!r}")
    return name


@dataclass
class DirStore:
    root: Path

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def exists(self, name: str) -> int | None:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            return None

    def put_bytes(self, name: str, data: bytes, cache: str) -> None:
        atomic.write_bytes(self._path(name), data)

    def put_file(self, name: str, path: Path, cache: str) -> None:
        with atomic.open_atomic(self._path(name)) as out, path.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)

    def get(self, name: str, limit: int) -> bytes | None:
        try:
            with self._path(name).open("rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise StoreError(f"{name}: larger than {limit} bytes")
        return data

    def list(self, prefix: str) -> Iterator[str]:
        folder = self._path(prefix.rstrip("/"))
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                    yield f"{prefix.rstrip('/')}/{entry.name}"


@dataclass
class S3Store:
    bucket: str
    prefix: str
    client: Any
    acl: str | None = None  # e.g. public-read, for a bucket that boards read directly

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{_check_name(name)}" if self.prefix else _check_name(name)

    def exists(self, name: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreError(f"{self.url}: {exc}") from exc
        return int(head["ContentLength"])

    def put_bytes(self, name: str, data: bytes, cache: str) -> None:
        extra = {"ACL": self.acl} if self.acl else {}
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(name), Body=data, CacheControl=cache, **extra
        )

    def put_file(self, name: str, path: Path, cache: str) -> None:
        extra = {"ACL": self.acl} if self.acl else {}
        self.client.upload_file(
            str(path), self.bucket, self._key(name), ExtraArgs={"CacheControl": cache, **extra}
        )

    def get(self, name: str, limit: int) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreError(f"{self.url}: {exc}") from exc
        data: bytes = obj["Body"].read(limit + 1)
        if len(data) > limit:
            raise StoreError(f"{name}: larger than {limit} bytes")
        return data

    def list(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/")) + "/"
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"])[strip:]

    def presigned_post(self, name: str, max_bytes: int, expires_in: int) -> dict[str, Any]:
        """A grant to write exactly ``name`` (at most ``max_bytes``), until it expires."""
        grant: dict[str, Any] = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=self._key(name),
            Conditions=[["content-length-range", 1, max_bytes]],
            ExpiresIn=expires_in,
        )
        return grant


def open_store(url: str, endpoint_url: str | None = None, acl: str | None = None) -> Store:
    """A folder path or s3://BUCKET[/PREFIX]; ``acl`` is a canned S3 ACL for every object
    put (a bucket read through a CDN with its own access needs none)."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise UsageError(f"--to {url!r}: give s3://BUCKET/PREFIX")
        try:
            import boto3
        except ImportError as exc:  # pragma: no cover - boto3 is a dependency
            raise UsageError("s3:// stores need boto3 (pip install boto3)") from exc
        client = boto3.client("s3", endpoint_url=endpoint_url)
        return S3Store(bucket, prefix.strip("/"), client, acl)
    if "://" in url:
        raise UsageError(f"--to {url!r}: a folder or s3://BUCKET/PREFIX")
    if endpoint_url or acl:
        raise UsageError("--endpoint-url and --acl are for s3:// stores")
    return DirStore(Path(url))
