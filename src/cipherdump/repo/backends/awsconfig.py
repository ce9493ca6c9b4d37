"""Credentials, region and endpoint as AWS's own tools find them.

Order (as the AWS CLI and SDKs): ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
(``AWS_SESSION_TOKEN``) in the environment; then the profile ``AWS_PROFILE`` (or
``AWS_DEFAULT_PROFILE``, else ``default``) in the shared credentials file
(``AWS_SHARED_CREDENTIALS_FILE``, default ``~/.aws/credentials``), then in the shared
config file (``AWS_CONFIG_FILE``, default ``~/.aws/config``, where it is
``[profile NAME]``).  Region: ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's
``region``, else ``us-east-1``.  Endpoint: ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL``, the profile's ``endpoint_url``.

Credentials, in the order AWS's tools try them: static keys (environment, then the
profile); a profile's ``credential_process`` (a program printing AWS's JSON, run again
when its credentials expire; run here, not by the S3 client, so that a failure is one
line naming the profile); a web identity token or container credentials address named
in the environment (the S3 client uses them); then an EC2 instance role, if the
instance-metadata address answers within a second (``AWS_EC2_METADATA_DISABLED=true``
skips the question, ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` moves the address), as the AWS
CLI asks it.  A profile that assumes a role (``role_arn``) or uses SSO needs AWS's STS
or SSO service; it is named as unsupported instead of being half done.
"""

from __future__ import annotations

import configparser
import datetime
import json
import os
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cipherdump.errors import BackendError

DEFAULT_REGION = "us-east-1"
# Variables under which the S3 client finds credentials by itself (EKS, ECS).
_DELEGATED = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_UNSUPPORTED = ("role_arn", "sso_session", "sso_start_url")
IMDS_ENDPOINT = "http://169.254.169.254"
_IMDS_WAIT = 1.0  # seconds, as the AWS CLI waits for the metadata address
_PROCESS_WAIT = 60  # seconds a credential_process may take


@dataclass(frozen=True)
class AwsSettings:
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    region: str
    endpoint: str | None  # None: AWS itself
    source: str  # where the credentials came from, for messages
    credential_process: ProcessCredentials | None = None
    metadata_endpoint: str | None = None  # an instance role's, when that is the source


class ProcessCredentials:
    """A profile's ``credential_process``: run (without a shell, its words split as a
    shell would) whenever credentials are needed and the last ones have expired; its
    output is AWS's JSON (``Version`` 1, ``AccessKeyId``, ``SecretAccessKey``, optional
    ``SessionToken`` and ``Expiration``).  Called by the S3 client for fresh ones."""

    def __init__(self, command: str, profile: str) -> None:
        self.command = command
        self.profile = profile

    def __call__(self) -> dict[str, Any]:
        what = f"credential_process of AWS profile {self.profile!r}"
        try:
            argv = shlex.split(self.command)
            if not argv:
                raise ValueError("it is empty")
            done = subprocess.run(
                argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=_PROCESS_WAIT
            )
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"{what} cannot run: {exc}") from None
        if done.returncode != 0:
            raise BackendError(f"{what} failed with exit status {done.returncode}")
        try:
            out = json.loads(done.stdout[:65536])
            if not isinstance(out, dict) or out.get("Version") != 1:
                raise ValueError("not Version 1 JSON")
            key, secret = out["AccessKeyId"], out["SecretAccessKey"]
            token, expiration = out.get("SessionToken"), out.get("Expiration")
            if not (isinstance(key, str) and key and isinstance(secret, str) and secret):
                raise ValueError("no AccessKeyId and SecretAccessKey")
            expires = None
            if expiration is not None:
                expires = datetime.datetime.fromisoformat(str(expiration))
                if expires.tzinfo is None:
                    raise ValueError("Expiration has no time zone")
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"{what} printed no usable credentials: {exc}") from None
        return {
            "access_key_id": key,
            "secret_access_key": secret,
            "token": token if isinstance(token, str) and token else None,
            "expires_at": expires,
        }


def instance_metadata(env: Mapping[str, str]) -> str | None:
    """The instance-metadata address if it answers an IMDSv2 token request within a
    second (an EC2 instance, or a stand-in at ``AWS_EC2_METADATA_SERVICE_ENDPOINT``),
    else None."""
    if env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_ENDPOINT).rstrip("/")
    request = urllib.request.Request(
        endpoint + "/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    # No proxy: the address is link-local, and a proxy would answer for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=_IMDS_WAIT) as answer:
            return endpoint if answer.status == 200 else None
    except (OSError, ValueError):
        return None


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
    process = None
    metadata = None
    if key is None:
        command = conf.get("credential_process") or (creds or {}).get("credential_process")
        odd = [k for k in _UNSUPPORTED if k in conf or (creds and k in creds)]
        if command:
            process = ProcessCredentials(command, profile)
            fresh = process()  # now: a broken one is one line before anything is done
            key, secret = fresh["access_key_id"], fresh["secret_access_key"]
            token = fresh["token"]
            source = f"the credential_process of profile {profile}"
        elif odd:
            raise BackendError(
                f"AWS profile {profile!r} uses {odd[0]}, which cipherdump does not support: "
                "give static keys (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or a "
                "credential_process"
            )
        elif any(env.get(v) for v in _DELEGATED):
            source = "the web identity or container credentials"
        elif (metadata := instance_metadata(env)) is not None:
            source = f"the instance role (metadata at {metadata})"
        else:
            raise BackendError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                f"AWS_PROFILE to a profile with keys or a credential_process in {cred_path} "
                "or the config file"
            )
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or conf.get("region")
    endpoint = (
        env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or conf.get("endpoint_url")
    )
    return AwsSettings(
        key, secret, token, region or DEFAULT_REGION, endpoint or None, source, process, metadata
    )
