"""Credentials that are not static keys, against the real S3 server (SeaweedFS): a
profile's ``credential_process``, and an EC2 instance role, answered by a stand-in for
the instance-metadata service on loopback (the S3 client asks it as it would on EC2)."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from test_s3_cli import SAMPLE, run

import seaweed


def _process_profile(tmp_path: Path, endpoint: str, script: str) -> dict[str, str]:
    program = tmp_path / "creds"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "config").write_text(
        f"[profile fleet]\nregion = us-east-1\nendpoint_url = {endpoint}\n"
        f"credential_process = {program} --role 'night backup'\n"
    )
    return {
        "AWS_PROFILE": "fleet",
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "HOME": str(tmp_path),
    }


def _env(seaweedfs: seaweed.SeaweedFS, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = seaweedfs.env(
        CIPHERDUMP_REPOSITORY=f"s3:{seaweed.BUCKET}/creds-{tmp_path.name[-8:]}",
        AWS_ENDPOINT_URL=seaweedfs.endpoint,
        **extra,
    )
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return env


def test_credential_process(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    answer = json.dumps(
        {
            "Version": 1,
            "AccessKeyId": seaweed.ACCESS_KEY,
            "SecretAccessKey": seaweed.SECRET_KEY,
            "Expiration": "2999-01-01T00:00:00Z",
        }
    )
    calls = tmp_path / "calls"
    script = f"echo \"$@\" >> {calls}\necho '{answer}'\n"
    env = _env(seaweedfs, tmp_path, **_process_profile(tmp_path, seaweedfs.endpoint, script))
    assert run("init", env=env).code == 0
    assert run("backup", SAMPLE, env=env).code == 0
    listed = run("snapshots", "--json", env=env)
    assert listed.code == 0 and len(json.loads(listed.stdout)) == 1, listed
    # Its words split as a shell would, without a shell.
    assert calls.read_text().splitlines()[0] == "--role night backup"


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("exit 3\n", "failed with exit status 3"),
        ("echo not json\n", "printed no usable credentials"),
        ("echo '{\"Version\": 2}'\n", "not Version 1 JSON"),
        ('echo \'{"Version": 1, "AccessKeyId": "k"}\'\n', "printed no usable credentials"),
    ],
)
def test_a_broken_credential_process_is_one_line(
    seaweedfs: seaweed.SeaweedFS, tmp_path: Path, script: str, says: str
) -> None:
    env = _env(seaweedfs, tmp_path, **_process_profile(tmp_path, seaweedfs.endpoint, script))
    line = run("snapshots", env=env).one_line_error(6)
    assert "credential_process of AWS profile 'fleet'" in line and says in line, line


class _Metadata(BaseHTTPRequestHandler):
    """IMDSv2 as EC2 answers it: a token for a PUT, then the role and its credentials
    for GETs carrying that token."""

    TOKEN = "imds-token"
    ROLE = "backup-role"
    asked: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        self.asked.append("PUT " + self.path)
        if self.path == "/latest/api/token":
            self._send(200, self.TOKEN)
        else:
            self._send(404, "")

    def do_GET(self) -> None:
        self.asked.append("GET " + self.path)
        if self.headers.get("X-aws-ec2-metadata-token") != self.TOKEN:
            self._send(401, "")
        elif self.path == "/latest/meta-data/iam/security-credentials/":
            self._send(200, self.ROLE)
        elif self.path == f"/latest/meta-data/iam/security-credentials/{self.ROLE}":
            body = {
                "Code": "Success",
                "AccessKeyId": seaweed.ACCESS_KEY,
                "SecretAccessKey": seaweed.SECRET_KEY,
                "Token": "",
                "Expiration": "2999-01-01T00:00:00Z",
            }
            self._send(200, json.dumps(body))
        else:
            self._send(404, "")


@pytest.fixture
def metadata_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Metadata.asked = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_instance_role(seaweedfs: seaweed.SeaweedFS, tmp_path: Path, metadata_service: str) -> None:
    env = _env(
        seaweedfs,
        tmp_path,
        HOME=str(tmp_path),
        AWS_EC2_METADATA_SERVICE_ENDPOINT=metadata_service,
    )
    assert run("init", env=env).code == 0
    assert run("backup", SAMPLE, env=env).code == 0
    assert any("security-credentials/backup-role" in a for a in _Metadata.asked)
    # Told not to ask, it does not, and there is nothing else to use.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    _Metadata.asked = []
    assert "no S3 credentials" in run("snapshots", env=env).one_line_error(6)
    assert _Metadata.asked == []
