"""An S3-compatible server for the tests: moto's server mode in a thread of the test process, on loopback only.

Every client finds it through the standard AWS variables (botocore reads ``AWS_ENDPOINT_URL``), so the code
under test runs with no test-only setting: what a user of MinIO, Ceph or R2 sets is what the tests set.
"""

from __future__ import annotations

import logging
from typing import Any


class S3Server:
    """``start()``, then ``env`` for any client (this process or a child), then ``stop()``."""

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not one line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        assert host == "127.0.0.1", host  # never another interface
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def make_bucket(self, name: str) -> str:
        """A new empty bucket; ``s3://<name>``."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_credentials()).create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def _credentials() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
