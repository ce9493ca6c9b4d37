"""A repository in an S3 bucket (AWS, SeaweedFS, Ceph RGW, MinIO, Garage, ...).

Each repository file is one object, keyed ``<prefix>/<local path>`` (the local
backend's layout: ``config``, ``keys/<id>``, ``data/<id[:2]>/<id>``, ...).  Through
``obstore`` (Rust's object_store): it measured about 1.9× boto3's GET throughput on
SeaweedFS, and it lets go of the GIL while it waits.

* A save is one ``PUT`` of the whole file, never a multipart upload: S3 makes a
  single PUT visible whole or not at all, which is the protocol's atomic save, and
  leaves no hidden unfinished parts behind a failed run.  (A single PUT takes up to
  5 GiB; packs are at most 1 GiB.)
* Reads check their length themselves: S3 silently shortens a range that ends past
  the object, where the protocol asks for an error (:class:`ShortFile`).
* Listing follows S3's pagination (object_store asks for every page).
* Errors become :class:`BackendError` naming the operation, the file and the location
  in one line; those that may pass (5xx, 499, throttling, timeouts, connection
  failures) are :class:`TransientError`, for :class:`RetryBackend` to try again.
  This client itself never retries, so the bound on retrying is the wrapper's.
* S3 (AWS since December 2020, SeaweedFS, Ceph, MinIO) lists and reads what a
  completed PUT wrote: the lock protocol's "save, then list again" needs that.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn

import obstore
from obstore.exceptions import (
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from cipherdump.errors import BackendError
from cipherdump.repo.backends.awsconfig import AwsSettings
from cipherdump.repo.backends.base import (
    COPY_CHUNK,
    FileInfo,
    FileType,
    Handle,
    ObjectMissing,
    ShortFile,
    TempFileSpool,
    TransientError,
    check_range,
)
from cipherdump.repo.ids import is_hex_id

DEFAULT_CONNECTIONS = 5
# obstore raises its own errors, and Python's for some (FileNotFoundError for a 404,
# TimeoutError, ConnectionError).
_ERRORS = (BaseError, OSError)
_STATUS = re.compile(r"status code: (\d{3})([^:\n]*)")
_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")
_KIND = re.compile(r"kind: (\w+)")


@dataclass(frozen=True)
class S3Target:
    """Where a repository is: ``endpoint`` None is AWS itself."""

    bucket: str
    prefix: str
    endpoint: str | None
    path_style: bool

    @property
    def location(self) -> str:
        where = f"{self.endpoint}/{self.bucket}" if self.endpoint else self.bucket
        return f"s3:{where}/{self.prefix}" if self.prefix else f"s3:{where}"


class S3Backend:
    """Repository files as objects of one bucket, under one prefix."""

    # obstore's I/O runtime has threads a forked process would not have (a request
    # from a fork hangs); a backup's workers ask the coordinator (backends/relay.py).
    shared_between_processes = False
    relay_from_forks = True
    # A blob is read with what follows it in its pack, to this many bytes (see
    # BlobStore._read): a request costs more than the bytes.
    read_ahead = 4 << 20

    def __init__(
        self,
        target: S3Target,
        settings: AwsSettings,
        *,
        connections: int = DEFAULT_CONNECTIONS,
        connect_timeout: str = "10s",
        timeout: str = "300s",
    ) -> None:
        self.target = target
        self.connections = max(1, connections)
        self._settings = settings
        config: dict[str, str | bool] = {"region": settings.region}
        if settings.access_key_id and settings.secret_access_key:
            config["access_key_id"] = settings.access_key_id
            config["secret_access_key"] = settings.secret_access_key
        if settings.session_token:
            config["session_token"] = settings.session_token
        endpoint = target.endpoint
        if endpoint is not None and not target.path_style:
            scheme, rest = endpoint.split("://", 1)
            endpoint = f"{scheme}://{target.bucket}.{rest}"
        if endpoint is not None:
            config["endpoint"] = endpoint
        if settings.metadata_endpoint is not None:
            config["metadata_endpoint"] = settings.metadata_endpoint
        provider: dict[str, Any] = {}
        if settings.credential_process is not None:
            config.pop("access_key_id", None)
            config.pop("secret_access_key", None)
            config.pop("session_token", None)
            provider["credential_provider"] = settings.credential_process
        config["virtual_hosted_style_request"] = endpoint is not None and not target.path_style
        try:
            self._store = S3Store(
                target.bucket,
                prefix=target.prefix or None,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": True,
                    "connect_timeout": connect_timeout,
                    "timeout": timeout,
                    "pool_max_idle_per_host": str(self.connections),
                },
                retry_config={"max_retries": 0},  # RetryBackend retries, with its bound
                **provider,
            )
        except _ERRORS as exc:
            raise BackendError(f"cannot use {target.location}: {_first_line(exc)}") from None

    @classmethod
    def create(cls, target: S3Target, settings: AwsSettings, **kwargs: int | str) -> S3Backend:
        """For ``init``: the prefix must hold nothing yet (the bucket must exist)."""
        backend = cls(target, settings, **kwargs)  # type: ignore[arg-type]
        try:
            for batch in obstore.list(backend._store, chunk_size=1):
                if batch:
                    raise BackendError(f"{target.location} is not empty")
                break
        except _ERRORS as exc:
            backend._fail(exc, "list", "")
        return backend

    @property
    def location(self) -> str:
        return self.target.location

    def _key(self, handle: Handle) -> str:
        return str(handle)

    # -- the protocol ---------------------------------------------------------------
    def save(self, handle: Handle, source: BinaryIO) -> None:
        # The whole file first: a source that fails half-way has sent nothing.
        parts = []
        while chunk := source.read(COPY_CHUNK):
            parts.append(chunk)
        self.put(handle, b"".join(parts))

    def put(self, handle: Handle, data: bytes) -> None:
        try:
            obstore.put(self._store, self._key(handle), data, use_multipart=False)
        except _ERRORS as exc:
            self._fail(exc, "write", handle)

    def open_spool(self, file_type: FileType) -> S3Spool:
        """A local temporary file the pack is assembled in, uploaded by ``commit``."""
        return S3Spool(self)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(handle)
        try:
            if offset == 0 and length is None:
                return bytes(obstore.get(self._store, key).bytes())
            if length is None or length <= 0 or offset < 0:
                length = check_range(handle, self.stat(handle), offset, length)
                if length == 0:
                    return b""
            data = bytes(obstore.get_range(self._store, key, start=offset, length=length))
        except _ERRORS as exc:
            if _status(exc) == 416:  # the range starts at or past the end
                raise ShortFile(
                    f"short file {handle} in {self.location}: nothing at offset {offset}"
                ) from None
            self._fail(exc, "read", handle)
        if len(data) != length:
            raise ShortFile(
                f"short file {handle} in {self.location}: wanted {length} bytes at "
                f"{offset}, got {len(data)}"
            )
        return data

    def stat(self, handle: Handle) -> int:
        try:
            return int(obstore.head(self._store, self._key(handle))["size"])
        except _ERRORS as exc:
            self._fail(exc, "stat", handle)

    def remove(self, handle: Handle) -> None:
        # S3 answers a DELETE of a missing key with success: ask first.
        self.stat(handle)
        try:
            obstore.delete(self._store, self._key(handle))
        except _ERRORS as exc:
            self._fail(exc, "remove", handle)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            try:
                size = self.stat(Handle(FileType.CONFIG))
            except ObjectMissing:
                return
            yield FileInfo("", size)
            return
        top = f"{file_type.value}/"
        found: list[FileInfo] = []
        try:
            for batch in obstore.list(self._store, top, chunk_size=1000):
                for meta in batch:
                    path = meta["path"]
                    rest = path[len(top) :] if path.startswith(top) else ""
                    if file_type is FileType.PACK:
                        sub, _, name = rest.partition("/")
                        if sub != name[:2]:
                            continue  # not where its name puts it
                    else:
                        name = rest
                    if is_hex_id(name):
                        modified = meta.get("last_modified")
                        mtime_ns = None if modified is None else _ns(modified)
                        found.append(FileInfo(name, int(meta["size"]), mtime_ns))
        except _ERRORS as exc:
            self._fail(exc, "list", file_type.value)
        yield from found

    def close(self) -> None:
        pass

    # -- errors ---------------------------------------------------------------------
    def _fail(self, exc: Exception, verb: str, what: Handle | str) -> NoReturn:
        name = f"{what} " if str(what) else ""
        where = f"{name}in {self.location}" if name else self.location
        status = _status(exc)
        text = str(exc)
        code = _CODE.search(text)
        code_name = code.group(1) if code else ""
        why = _reason(exc, status, code_name)
        if code_name == "NoSuchBucket":
            raise BackendError(
                f"cannot {verb} {where}: no bucket {self.target.bucket!r} at "
                f"{self.target.endpoint or 'AWS'}"
            ) from None
        if isinstance(exc, NotFoundError | FileNotFoundError) or status == 404:
            raise ObjectMissing(f"{what} does not exist in {self.location}") from None
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
            raise BackendError(
                f"cannot {verb} {where}: access denied ({why}; credentials from "
                f"{self._settings.source})"
            ) from None
        if isinstance(exc, PreconditionError) or status in (412, 416):
            raise BackendError(f"cannot {verb} {where}: {why}") from None
        if status is None or status >= 500 or status in (408, 429, 499) or code_name == "SlowDown":
            raise TransientError(f"cannot {verb} {where}: {why}") from None
        raise BackendError(f"cannot {verb} {where}: {why}") from None


class S3Spool(TempFileSpool):
    """A pack assembled in a local temporary file; ``commit`` uploads it in one PUT.
    Until :meth:`discard` the file stays, so a failed commit can be tried again."""

    def __init__(self, backend: S3Backend) -> None:
        super().__init__()
        self._backend = backend

    def commit(self, handle: Handle) -> None:
        try:
            self._file.flush()
            self._file.seek(0)
            data = self._file.read()
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read back the pack {handle}: {exc}") from exc
        self._backend.put(handle, data)


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0].strip()[:300]


def _status(exc: Exception) -> int | None:
    found = _STATUS.search(str(exc))
    return int(found.group(1)) if found else None


def _reason(exc: Exception, status: int | None, code: str) -> str:
    text = str(exc)
    if status is not None:
        found = _STATUS.search(text)
        label = found.group(2).strip() if found else ""
        message = _MESSAGE.search(text)
        out = f"HTTP {status}{' ' + label if label else ''}"
        if code:
            out += f", {code}"
        if message:
            out += f": {message.group(1).strip()}"
        return out
    kind = _KIND.search(text)
    first = _first_line(exc)
    if " - " in first:
        first = first.rsplit(" - ", 1)[1]
    return f"{first} ({kind.group(1).lower()})" if kind else first


def _ns(when: datetime.datetime) -> int:
    """A listing's ``last_modified`` in ns since the epoch (the storage's clock)."""
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1_000
