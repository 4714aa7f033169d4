"""An S3-compatible object store for tests: moto's S3 server, run as its own process on a free port (the
Delta writer holds the GIL while it waits on HTTP, so a server thread in the test process would never
answer). No real object store is reachable from CI; this speaks the S3 HTTP protocol to delta-rs and
pyarrow like one would."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from redis_servers import free_port

BUCKET = "gristmill-test"


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def storage_options(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert self.process.poll() is None, "moto's S3 server exited at start (is moto[server] installed?)"
                assert time.monotonic() < deadline, "moto's S3 server did not listen within 30 s"
                time.sleep(0.05)
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
