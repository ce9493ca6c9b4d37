"""Repository locations: the text of ``-r``/``CIPHERDUMP_REPOSITORY`` made a backend.

* ``s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX]``: an S3 endpoint of one's own;
* ``s3:BUCKET[/PREFIX]``: the endpoint of ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``
  (or the AWS profile's ``endpoint_url``), else AWS itself;
* anything else that starts like a URL (``sftp:``, ``rest:``, ``b2:``, ``rclone:``, any
  ``word:``, anything with ``://``) is refused (exit 2): taken for a local path it
  would quietly make a directory named ``sftp:host`` on the machine being backed up;
* everything else is a local directory, and so is every absolute path.  A local name
  with a colon is written ``./a:b`` or as an absolute path.

Addressing: path-style (``http://HOST/BUCKET/key``) is the default for ``http://``
endpoints, virtual-hosted (``https://BUCKET.HOST/key``) for ``https://`` ones;
``CIPHERDUMP_S3_ADDRESSING=path`` or ``virtual`` chooses.  ``CIPHERDUMP_S3_CONNECTIONS``
(default 5) bounds the uploads in flight; ``CIPHERDUMP_S3_RETRY_SECONDS`` (default 120)
how long a transient failure is retried; ``CIPHERDUMP_S3_TIMEOUT`` (default 300) how
many seconds one request may take before it counts as such a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cipherdump.errors import CipherdumpError, NotFoundError
from cipherdump.repo.backends.base import Backend

ENV_ADDRESSING = "CIPHERDUMP_S3_ADDRESSING"
ENV_CONNECTIONS = "CIPHERDUMP_S3_CONNECTIONS"
ENV_RETRY_SECONDS = "CIPHERDUMP_S3_RETRY_SECONDS"
ENV_TIMEOUT = "CIPHERDUMP_S3_TIMEOUT"

# A URL scheme (RFC 3986) followed by a colon, at the very start.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# S3 bucket names (with the underscore older Ceph and SeaweedFS buckets may have).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,61}[a-z0-9]$")


class LocationError(CipherdumpError):
    """A repository location that names no supported storage: a usage error."""

    exit_code = 2


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint: str | None  # from the location; None: from the environment, or AWS
    path_style: bool | None  # None: by the endpoint's scheme


def parse(text: str) -> Path | S3Location:
    """A local directory or an S3 location; :class:`LocationError` for anything else."""
    if text.startswith("/"):
        return Path(text)  # an absolute path is local, whatever colons it has
    if text.startswith("s3:"):
        return _parse_s3(text, text[3:])
    scheme = _SCHEME.match(text)
    if "://" in text or scheme is not None:
        name = scheme.group(1) if scheme else text.split("://", 1)[0]
        raise LocationError(
            f"repository location {text!r}: {name}: is not a storage cipherdump knows "
            f"(local directories and s3: only); a local directory whose name has a colon "
            f"is written ./{text}"
        )
    return Path(text)


def _parse_s3(text: str, rest: str) -> S3Location:
    endpoint: str | None = None
    if rest.startswith("//"):
        raise LocationError(
            f"repository location {text!r}: write s3:BUCKET/PREFIX, or "
            "s3:https://HOST[:PORT]/BUCKET/PREFIX for an endpoint of your own"
        )
    if "://" in rest:
        url = urlsplit(rest)
        if url.scheme not in ("http", "https"):
            raise LocationError(
                f"repository location {text!r}: the endpoint must be http:// or https:// "
                "(s3:https://HOST[:PORT]/BUCKET[/PREFIX], or s3:BUCKET/PREFIX)"
            )
        if not url.hostname or url.username is not None or url.query or url.fragment:
            raise LocationError(
                f"repository location {text!r}: give s3:{url.scheme}://HOST[:PORT]/BUCKET"
                "[/PREFIX] (credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        try:
            _ = url.port
        except ValueError:
            raise LocationError(f"repository location {text!r}: bad port") from None
        endpoint = f"{url.scheme}://{url.netloc}"
        rest = url.path
    bucket, _, prefix = rest.strip("/").partition("/")
    if not bucket:
        raise LocationError(f"repository location {text!r} names no bucket")
    if not _BUCKET.match(bucket):
        raise LocationError(f"repository location {text!r}: {bucket!r} is not a bucket name")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts) or "//" in prefix.strip("/"):
        raise LocationError(f"repository location {text!r}: bad prefix {prefix!r}")
    return S3Location(bucket, "/".join(parts), endpoint, None)


def _s3_backend(where: S3Location, env: Mapping[str, str], *, create: bool) -> Backend:
    from cipherdump.repo.backends import awsconfig
    from cipherdump.repo.backends.retry import DEFAULT_MAX_SECONDS, RetryBackend
    from cipherdump.repo.backends.s3 import DEFAULT_CONNECTIONS, S3Backend, S3Target

    settings = awsconfig.resolve(env)
    endpoint = where.endpoint or settings.endpoint
    if endpoint is not None:
        endpoint = endpoint.rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise LocationError(f"S3 endpoint {endpoint!r} must be http:// or https://")
    addressing = env.get(ENV_ADDRESSING, "").strip().lower()
    if addressing not in ("", "path", "virtual"):
        raise LocationError(f"{ENV_ADDRESSING} must be path or virtual, not {addressing!r}")
    if addressing:
        path_style = addressing == "path"
    else:
        path_style = endpoint is None or endpoint.startswith("http://")
    target = S3Target(where.bucket, where.prefix, endpoint, path_style)
    connections = _number(env, ENV_CONNECTIONS, DEFAULT_CONNECTIONS, 1, 64)
    retry_seconds = _number(env, ENV_RETRY_SECONDS, DEFAULT_MAX_SECONDS, 0, 86400)
    timeout = f"{int(_number(env, ENV_TIMEOUT, 300, 0.1, 86400) * 1000)}ms"
    if create:
        s3 = S3Backend.create(target, settings, connections=int(connections), timeout=timeout)
    else:
        s3 = S3Backend(target, settings, connections=int(connections), timeout=timeout)
    backend: Backend = RetryBackend(s3, max_seconds=retry_seconds)
    from cipherdump.repo.cache import CachingBackend, default_cache_root

    root = default_cache_root(env)
    return backend if root is None else CachingBackend(backend, root)


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise LocationError(f"{name} must be a number from {low:g} to {high:g}, not {text!r}")
    return value


def open_backend(text: str, env: Mapping[str, str] | None = None) -> Backend:
    """The backend of an existing repository at ``text``."""
    where = parse(text)
    if isinstance(where, S3Location):
        return _s3_backend(where, os.environ if env is None else env, create=False)
    from cipherdump.repo.backends.local import LocalBackend

    if not where.is_dir():
        raise NotFoundError(f"no repository at {text}")
    return LocalBackend(where)


def create_backend(text: str, env: Mapping[str, str] | None = None) -> Backend:
    """An empty backend for a new repository at ``text`` (``init``)."""
    where = parse(text)
    if isinstance(where, S3Location):
        return _s3_backend(where, os.environ if env is None else env, create=True)
    from cipherdump.repo.backends.local import LocalBackend

    return LocalBackend.create(where)
