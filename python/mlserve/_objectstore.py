"""Object storage under a shared model registry or feature store: S3 and S3-compatible stores
(AWS S3, MinIO, SeaweedFS, Cloudflare R2, ...) through boto3.

Only what :mod:`mlserve.registry.remote`, :mod:`mlserve._shareddb` and
:mod:`mlserve.features.remote` need: download (conditional on an ETag), upload, put (create-only or
compare-and-swap on an ETag, the S3 conditional writes ``If-None-Match: *`` / ``If-Match``),
head, touch, list and delete, with every failure turned into mlserve's typed errors. Endpoint,
region and credentials come from boto3's standard chain: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (a MinIO or SeaweedFS server), ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``, instance roles.

Thread-safe (boto3 clients are); a client is made per process, so a store survives ``fork``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlserve.errors import InvalidInput, Unavailable

SCHEME = "s3://"
_CHUNK_BYTES = 1 << 20


def is_uri(location: object) -> bool:
    """Whether a registry or feature store location names an object store
    (``s3://BUCKET[/PREFIX]``) rather than a directory. A ``Path`` made from such a string
    (``s3:/BUCKET``) counts too."""
    text = os.fspath(location) if isinstance(location, os.PathLike) else location
    return isinstance(text, str) and text.startswith("s3:/")


def normalize_uri(location: str | os.PathLike[str], what: str = "registry location") -> str:
    """``s3://BUCKET/PREFIX`` without a trailing slash; InvalidInput (naming ``what``) for a
    malformed one."""
    text = os.fspath(location)
    if text.startswith("s3:/") and not text.startswith(SCHEME):  # Path() folded the '//'
        text = SCHEME + text[len("s3:/"):]
    rest = text[len(SCHEME):].rstrip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket or any(p in ("", ".", "..") for p in prefix.split("/") if prefix):
        raise InvalidInput(f"{what} {text!r}: expected s3://BUCKET or "
                           "s3://BUCKET/PREFIX (no empty, '.' or '..' parts)")
    return SCHEME + rest


def cache_dir_for(uri: str, base: Path) -> Path:
    """Where a machine caches what it reads of ``uri`` under the cache folder ``base``:
    ``<base>/<bucket>/<prefix with / as _>-<hash>``, readable and collision-free."""
    text = normalize_uri(uri)
    bucket, _, prefix = text[len(SCHEME):].partition("/")
    tag = hashlib.sha256(text.encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", prefix)[:60] or "_"
    return base / bucket / f"{readable}-{tag}"


class PreconditionFailed(Exception):
    """A conditional upload lost: the object changed (or appeared) since it was read."""


class NotModified(Exception):
    """A conditional download found the object unchanged."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime
    etag: str
    #: User metadata (``x-amz-meta-*``); only :meth:`S3Store.head` fills it.
    metadata: dict[str, str] = field(default_factory=dict)


class S3Store:
    """Objects under ``s3://BUCKET/PREFIX``; every name given to a method is relative to it."""

    def __init__(self, uri: str, what: str = "a registry") -> None:
        self.uri = normalize_uri(uri)
        self.bucket, _, self.prefix = self.uri[len(SCHEME):].partition("/")
        self._clients: dict[int, Any] = {}
        self._lock = threading.Lock()
        try:
            import boto3  # noqa: F401  (checked here so the error comes before any work)
        except ImportError:
            raise InvalidInput(
                f"{what} on object storage ({self.uri}) needs boto3: pip install "
                "'mlserve[s3]'") from None

    def _client(self) -> Any:
        pid = os.getpid()
        client = self._clients.get(pid)
        if client is None:
            with self._lock:
                client = self._clients.get(pid)
                if client is None:
                    import boto3
                    from botocore.config import Config

                    client = boto3.session.Session().client("s3", config=Config(
                        retries={"max_attempts": 5, "mode": "standard"},
                        connect_timeout=5, read_timeout=60))
                    self._clients = {pid: client}
        return client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.key(name)}"

    # ------------------------------------------------------------------ errors

    def _error(self, exc: BaseException, what: str) -> Exception:
        """The typed error for a boto3 failure of ``what``."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return InvalidInput(
                f"{what}: no usable credentials for {self.uri} ({exc}); set AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "RequestTimeTooSkewed":
                return InvalidInput(f"{what}: this machine's clock is more than 15 minutes off "
                                    "the object store's; fix the clock (NTP)")
            if code == "NoSuchBucket":
                return InvalidInput(f"{what}: the bucket {self.bucket!r} does not exist at the "
                                    "object store; create it first")
            if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId",
                                         "SignatureDoesNotMatch"):
                return InvalidInput(
                    f"{what}: access denied to {self.uri} ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket "
                    "policy")
            return Unavailable(f"{what}: the object store answered {status} {code}: "
                               f"{err.get('Message', '')}".rstrip(": "))
        if isinstance(exc, BotoCoreError):
            return Unavailable(
                f"{what}: the object store for {self.uri} is unreachable ({exc}); check "
                "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and the network")
        return Unavailable(f"{what}: {exc}")

    def _bucket_error(self, exc: BaseException, what: str) -> Exception:
        """Like :meth:`_error`, but first asks whether the bucket exists: some stores answer a
        write into a missing bucket with a 500 rather than NoSuchBucket."""
        error = self._error(exc, what)
        if isinstance(error, Unavailable):
            try:
                self._client().head_bucket(Bucket=self.bucket)
            except Exception as head_exc:
                status = getattr(head_exc, "response", {}).get(
                    "ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    return InvalidInput(f"{what}: the bucket {self.bucket!r} does not exist at "
                                        "the object store; create it first")
        return error

    @staticmethod
    def _status(exc: BaseException) -> int | None:
        response = getattr(exc, "response", None)
        if not isinstance(response, dict):
            return None
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None

    @staticmethod
    def _code(exc: BaseException) -> str:
        response = getattr(exc, "response", None)
        return str(response.get("Error", {}).get("Code", "")) if isinstance(response,
                                                                          dict) else ""

    # ------------------------------------------------------------------ operations

    def download(self, name: str, dest: Path, *, if_none_match: str | None = None,
                 sha256: str | None = None, repair_hint: str = "") -> str | None:
        """Writes object ``name`` to ``dest`` (created or truncated); returns its ETag, or None
        when there is no such object. ``if_none_match``: raises :class:`NotModified` when the
        object still has that ETag. ``sha256``: the bytes must hash to it (InvalidInput
        otherwise, with ``repair_hint``, and ``dest`` is removed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(name)}
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        what = f"reading {self.url(name)}"
        try:
            response = self._client().get_object(**kwargs)
            digest = hashlib.sha256()
            with open(dest, "wb") as out:
                for chunk in response["Body"].iter_chunks(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except ClientError as exc:
            if self._status(exc) == 304:
                raise NotModified(name) from None
            if self._code(exc) == "NoSuchKey":
                return None
            if self._status(exc) == 404 and self._code(exc) in ("", "404", "NotFound"):
                # S3 names a missing key; a bare 404 is an endpoint that is not S3 at all.
                raise InvalidInput(
                    f"{what}: the endpoint answered 404 without an S3 error code: is "
                    "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) an S3 endpoint?") from None
            raise self._error(exc, what) from None
        except BotoCoreError as exc:
            raise self._error(exc, what) from None
        if sha256 is not None and digest.hexdigest() != sha256:
            dest.unlink(missing_ok=True)
            raise InvalidInput(
                f"{self.url(name)} is damaged: its bytes hash to {digest.hexdigest()}, its "
                f"writer recorded {sha256}{'; ' + repair_hint if repair_hint else ''}")
        return str(response["ETag"])

    def upload(self, name: str, source: Path, *, metadata: dict[str, str] | None = None
               ) -> None:
        """Stores the file ``source`` as object ``name`` (boto3's managed transfer: multipart
        for large files), with user ``metadata``."""
        what = f"writing {self.url(name)}"
        try:
            self._client().upload_file(str(source), self.bucket, self.key(name),
                                       ExtraArgs={"Metadata": metadata or {}})
        except Exception as exc:  # boto3's S3UploadFailedError wraps a ClientError
            raise self._write_error(exc, what) from None

    def put(self, name: str, source: Path, *, if_match: str | None = None,
            metadata: dict[str, str] | None = None) -> str:
        """Stores the file ``source`` (at most 5 GB: one request) as object ``name`` only if
        the object still has the ETag ``if_match`` (None: only if there is no such object),
        with user ``metadata``; returns the new ETag. The condition failing raises
        :class:`PreconditionFailed`."""
        condition = {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"}
        try:
            with open(source, "rb") as body:
                response = self._client().put_object(Bucket=self.bucket, Key=self.key(name),
                                                     Body=body, Metadata=metadata or {},
                                                     **condition)
        except Exception as exc:
            # 412: the condition failed; 409: a concurrent conditional write won the race.
            if self._status(exc) in (409, 412):
                raise PreconditionFailed(name) from None
            raise self._write_error(exc, f"writing {self.url(name)}") from None
        return str(response["ETag"])

    def _write_error(self, exc: Exception, what: str) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError

        cause = exc if isinstance(exc, (ClientError, BotoCoreError)) else (
            exc.__cause__ or exc.__context__)
        if isinstance(cause, ClientError):
            return self._bucket_error(cause, what)
        if isinstance(cause, BotoCoreError):
            return self._error(cause, what)
        return exc

    def head(self, name: str) -> ObjectInfo | None:
        """The object's size, time and ETag; None when there is no such object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self._client().head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as exc:
            if self._status(exc) == 404:
                return None
            raise self._error(exc, f"reading {self.url(name)}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"reading {self.url(name)}") from None
        return ObjectInfo(name, int(r["ContentLength"]), r["LastModified"], str(r["ETag"]),
                          dict(r.get("Metadata") or {}))

    def touch(self, name: str, metadata: dict[str, str]) -> None:
        """Renews the object's time (and sets its metadata) without moving its bytes: a copy
        onto itself, which S3 allows when the metadata is replaced."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client().copy_object(
                Bucket=self.bucket, Key=self.key(name),
                CopySource={"Bucket": self.bucket, "Key": self.key(name)},
                Metadata=metadata, MetadataDirective="REPLACE")
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"renewing {self.url(name)}") from None

    def list(self, under: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``under`` (names relative to the prefix)."""
        from botocore.exceptions import BotoCoreError, ClientError

        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(under))
            for page in pages:
                for c in page.get("Contents", []):
                    yield ObjectInfo(c["Key"][strip:], int(c["Size"]), c["LastModified"],
                                     str(c.get("ETag", "")))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"listing {self.url(under)}") from None

    def check_listable(self, under: str) -> bool:
        """Whether this store can be listed under ``under`` (one key asked for): raises the
        typed error for a missing bucket, unusable credentials or an unreachable store; False
        when the credentials may not list (write-only roles), True otherwise."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client().list_objects_v2(Bucket=self.bucket, Prefix=self.key(under),
                                           MaxKeys=1)
        except ClientError as exc:
            if self._code(exc) == "AccessDenied":
                return False
            raise self._error(exc, f"listing {self.url(under)}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"listing {self.url(under)}") from None
        return True

    def delete(self, name: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client().delete_object(Bucket=self.bucket, Key=self.key(name))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"deleting {self.url(name)}") from None
