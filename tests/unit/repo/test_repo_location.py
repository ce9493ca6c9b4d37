"""Repository locations (repo/location.py) and AWS settings (backends/awsconfig.py):
what a location string becomes, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from cipherdump.errors import BackendError
from cipherdump.repo.backends import awsconfig
from cipherdump.repo.backends.retry import RetryBackend
from cipherdump.repo.backends.s3 import S3Backend
from cipherdump.repo.cache import CachingBackend
from cipherdump.repo.location import (
    LocationError,
    S3Location,
    create_backend,
    open_backend,
    parse,
)


@pytest.mark.parametrize(
    ("text", "bucket", "prefix", "endpoint"),
    [
        ("s3:http://127.0.0.1:8333/bucket/fleet", "bucket", "fleet", "http://127.0.0.1:8333"),
        ("s3:https://s3.example.com/b-1/a/b/c/", "b-1", "a/b/c", "https://s3.example.com"),
        ("s3:http://[::1]:9000/bucket", "bucket", "", "http://[::1]:9000"),
        ("s3:bucket/prefix/x", "bucket", "prefix/x", None),
        ("s3:my.bucket", "my.bucket", "", None),
    ],
)
def test_s3_locations(text: str, bucket: str, prefix: str, endpoint: str | None) -> None:
    assert parse(text) == S3Location(bucket, prefix, endpoint, None)


@pytest.mark.parametrize(
    "text", ["repo", "./a:b", "/srv/backups/a:b", "/x/s3:http://y", "/sftp:h:/x", "../r", "a/b:c"]
)
def test_local_paths(text: str) -> None:
    assert parse(text) == Path(text)


@pytest.mark.parametrize(
    "text",
    [
        "sftp:host:/srv/repo",
        "sftp://host/srv/repo",
        "rest:http://host:8000/",
        "b2:bucket:path",
        "azure:container:/path",
        "gs:bucket:/path",
        "rclone:remote:path",
        "s3://bucket/prefix",
        "http://host/bucket",
        "a:b",
        "backup:2024",
        "./x://y",
    ],
)
def test_other_schemes_are_refused(text: str) -> None:
    with pytest.raises(LocationError) as caught:
        parse(text)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "s3:",
        "s3:http://127.0.0.1:8333",
        "s3:http://127.0.0.1:8333/",
        "s3:ftp://host/bucket",
        "s3:http://user:secret@host/bucket",
        "s3:http://host/bucket?x=1",
        "s3:http://host:port/bucket",
        "s3:Bucket/x",
        "s3:b/x",
        "s3:bucket/../x",
        "s3:bucket/a//b",
    ],
)
def test_bad_s3_locations(text: str) -> None:
    with pytest.raises(LocationError):
        parse(text)


def test_refused_location_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for text in ("sftp:host:/x", "rest:http://h/", "s3://b/p"):
        with pytest.raises(LocationError):
            create_backend(text)
    assert list(tmp_path.iterdir()) == []


def test_local_location_opens_a_directory(tmp_path: Path) -> None:
    create_backend(str(tmp_path / "r"))
    assert (tmp_path / "r" / "data").is_dir()
    assert open_backend(str(tmp_path / "r")).location == f"local:{tmp_path / 'r'}"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
    }
    env.update(extra)
    return env


def _s3(backend: object) -> S3Backend:
    assert isinstance(backend, CachingBackend)
    backend = backend.inner
    assert isinstance(backend, RetryBackend)
    assert isinstance(backend.inner, S3Backend)
    return backend.inner


def test_addressing_style(tmp_path: Path) -> None:
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    # (Making a backend sends nothing: no server is needed.)
    assert _s3(open_backend("s3:http://127.0.0.1:1/bk1/p", env)).target.path_style
    assert not _s3(open_backend("s3:https://s3.example.invalid/bk1/p", env)).target.path_style
    env["CIPHERDUMP_S3_ADDRESSING"] = "path"
    s3 = _s3(open_backend("s3:https://s3.example.invalid/bk1/p", env))
    assert s3.target.path_style
    assert s3.location == "s3:https://s3.example.invalid/bk1/p"
    env["CIPHERDUMP_S3_ADDRESSING"] = "sideways"
    with pytest.raises(LocationError):
        open_backend("s3:https://s3.example.invalid/bk1/p", env)


def test_endpoint_from_the_environment(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_ENDPOINT_URL="http://127.0.0.1:1",
        AWS_ENDPOINT_URL_S3="http://127.0.0.1:2/",
    )
    s3 = _s3(open_backend("s3:bucket/fleet", env))
    assert s3.target.endpoint == "http://127.0.0.1:2"
    assert s3.target.path_style
    assert s3.location == "s3:http://127.0.0.1:2/bucket/fleet"
    del env["AWS_ENDPOINT_URL_S3"], env["AWS_ENDPOINT_URL"]
    s3 = _s3(open_backend("s3:bucket/fleet", env))
    assert s3.target.endpoint is None
    assert s3.location == "s3:bucket/fleet"


def test_connections_and_retry_settings(tmp_path: Path) -> None:
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    env["CIPHERDUMP_S3_CONNECTIONS"] = "8"
    assert _s3(open_backend("s3:http://127.0.0.1:1/bk1", env)).connections == 8
    for bad in ("0", "x", "65"):
        env["CIPHERDUMP_S3_CONNECTIONS"] = bad
        with pytest.raises(LocationError):
            open_backend("s3:http://127.0.0.1:1/bk1", env)


# -- AWS settings ---------------------------------------------------------------------------


def test_environment_credentials_come_first(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id=F\naws_secret_access_key=G\n"
    )
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="E", AWS_SECRET_ACCESS_KEY="S", AWS_SESSION_TOKEN="T")
    s = awsconfig.resolve(env)
    assert (s.access_key_id, s.secret_access_key, s.session_token) == ("E", "S", "T")
    assert s.region == "us-east-1" and s.endpoint is None


def test_profiles_from_the_shared_files(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n"
        "[fleet]\naws_access_key_id = F\naws_secret_access_key = FS\naws_session_token = FT\n"
    )
    (tmp_path / "config").write_text(
        "[default]\nregion = eu-west-1\n"
        "[profile fleet]\nregion = eu-central-1\nendpoint_url = http://127.0.0.1:9\n"
        "[profile inconfig]\naws_access_key_id = C\naws_secret_access_key = CS\n"
    )
    s = awsconfig.resolve(_env(tmp_path))
    assert (s.access_key_id, s.secret_access_key, s.region) == ("D", "DS", "eu-west-1")
    s = awsconfig.resolve(_env(tmp_path, AWS_PROFILE="fleet"))
    assert (s.access_key_id, s.session_token, s.region) == ("F", "FT", "eu-central-1")
    assert s.endpoint == "http://127.0.0.1:9"
    assert "fleet" in s.source
    s = awsconfig.resolve(_env(tmp_path, AWS_PROFILE="inconfig", AWS_REGION="ap-south-1"))
    assert (s.access_key_id, s.region) == ("C", "ap-south-1")
    s = awsconfig.resolve(_env(tmp_path, AWS_DEFAULT_PROFILE="fleet", AWS_DEFAULT_REGION="x-1"))
    assert (s.access_key_id, s.region) == ("F", "x-1")


def test_missing_or_unsupported_credentials(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no S3 credentials"):
        awsconfig.resolve(_env(tmp_path))
    with pytest.raises(BackendError, match="'nosuch' is in neither"):
        awsconfig.resolve(_env(tmp_path, AWS_PROFILE="nosuch"))
    (tmp_path / "config").write_text("[profile sso]\nsso_session = corp\n")
    with pytest.raises(BackendError, match="sso_session"):
        awsconfig.resolve(_env(tmp_path, AWS_PROFILE="sso"))
    (tmp_path / "credentials").write_text("not an ini file")
    with pytest.raises(BackendError, match="cannot read AWS settings"):
        awsconfig.resolve(_env(tmp_path))
    # EKS and ECS credentials are the S3 client's to fetch.
    s = awsconfig.resolve(
        {"HOME": str(tmp_path), "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token")}
    )
    assert s.access_key_id is None


def test_the_cache_can_be_turned_off(tmp_path: Path) -> None:
    env = _env(tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    env["CIPHERDUMP_NO_CACHE"] = "1"
    assert isinstance(open_backend("s3:http://127.0.0.1:1/bk1", env), RetryBackend)
