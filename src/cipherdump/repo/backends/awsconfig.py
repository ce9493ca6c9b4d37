"""Credentials, region and endpoint as AWS's own tools find them.

Order (as the AWS CLI and SDKs): ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
(``AWS_SESSION_TOKEN``) in the environment; then the profile ``AWS_PROFILE`` (or
``AWS_DEFAULT_PROFILE``, else ``default``) in the shared credentials file
(``AWS_SHARED_CREDENTIALS_FILE``, default ``~/.aws/credentials``), then in the shared
config file (``AWS_CONFIG_FILE``, default ``~/.aws/config``, where it is
``[profile NAME]``).  Region: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's
``region``, else ``us-east-1``.  Endpoint: ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL``, the profile's ``endpoint_url``.

Only static keys are read from the files.  Why not more: a profile that assumes a
role, uses SSO or runs a ``credential_process`` needs AWS's STS or a program; those are
named as unsupported instead of being half done.  Without any credentials the run
stops with one line rather than asking the instance-metadata address (which hangs
until a timeout anywhere but on EC2), unless the environment names a web identity
token or a container credentials address, which the S3 client then uses.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cipherdump.errors import BackendError

DEFAULT_REGION = "us-east-1"
# Variables under which the S3 client finds credentials by itself (EKS, ECS).
_DELEGATED = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_UNSUPPORTED = ("role_arn", "sso_session", "sso_start_url", "credential_process")


@dataclass(frozen=True)
class AwsSettings:
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    region: str
    endpoint: str | None  # None: AWS itself
    source: str  # where the credentials came from, for messages


def _read_ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(default_section="\0none")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise BackendError(f"cannot read AWS settings {path}: {exc}") from None
    return parser


def _section(parser: configparser.RawConfigParser, name: str) -> dict[str, str] | None:
    if parser.has_section(name):
        return {k.lower(): v.strip() for k, v in parser.items(name)}
    return None


def resolve(env: Mapping[str, str] | None = None) -> AwsSettings:
    """The settings the environment and the shared files give."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    explicit = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    profile = explicit or "default"
    cred_path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials")
    conf_path = Path(env.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    creds = _section(_read_ini(cred_path), profile)
    conf_parser = _read_ini(conf_path)
    conf = _section(conf_parser, "default" if profile == "default" else f"profile {profile}")
    if conf is None and profile == "default":
        conf = _section(conf_parser, "profile default")
    if explicit and creds is None and conf is None:
        raise BackendError(f"AWS profile {profile!r} is in neither {cred_path} nor {conf_path}")
    conf = conf or {}

    key, secret, token = (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
        env.get("AWS_SESSION_TOKEN"),
    )
    source = "the environment"
    if not (key and secret):
        key = secret = token = None
        for where, values in ((cred_path, creds), (conf_path, conf)):
            if values and values.get("aws_access_key_id") and values.get("aws_secret_access_key"):
                key = values["aws_access_key_id"]
                secret = values["aws_secret_access_key"]
                token = values.get("aws_session_token") or None
                source = f"profile {profile} in {where}"
                break
    if key is None:
        odd = [k for k in _UNSUPPORTED if k in conf or (creds and k in creds)]
        if odd:
            raise BackendError(
                f"AWS profile {profile!r} uses {odd[0]}, which cipherdump does not support: "
                "give static keys (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        if not any(env.get(v) for v in _DELEGATED):
            raise BackendError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                f"AWS_PROFILE to a profile with keys in {cred_path}"
            )
        source = "the web identity or container credentials"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or conf.get("region")
    endpoint = (
        env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or conf.get("endpoint_url")
    )
    return AwsSettings(key, secret, token, region or DEFAULT_REGION, endpoint or None, source)
