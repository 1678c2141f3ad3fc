"""An S3 object store for tests: a moto server speaking the real S3 protocol on 127.0.0.1.

Used through the `s3_store` fixture (conftest.py). Its objects live in this process's memory
(moto's backends), so a server stopped and started again on the same port (`outage`) still holds
them: a store that was unreachable for a while.
"""

from __future__ import annotations

import json
import threading

from began_dist import storage

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class MotoStore:
    bucket = "runs"

    def __init__(self):
        import boto3
        from moto.server import ThreadedMotoServer

        self._server_class = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{self.port}"
        self.client = boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1")
        self.client.create_bucket(Bucket=self.bucket)
        self.uri = f"s3://{self.bucket}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def under(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def deny_writes(self, prefix: str = "") -> None:
        """A bucket policy refusing PutObject (and multipart uploads) under `prefix`: AccessDenied."""
        statement = {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                     "Resource": f"arn:aws:s3:::{self.bucket}/{prefix}*"}
        self.client.put_bucket_policy(Bucket=self.bucket,
                                      Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))

    def allow_writes(self) -> None:
        self.client.delete_bucket_policy(Bucket=self.bucket)

    def outage(self, seconds: float) -> threading.Thread:
        """Stop the server now and start it again on the same port after `seconds` (in a thread)."""
        self.server.stop()

        def restart() -> None:
            threading.Event().wait(seconds)
            self.server = self._server_class(ip_address="127.0.0.1", port=self.port)
            self.server.start()

        thread = threading.Thread(target=restart, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.server.stop()


def moto_available() -> bool:
    from importlib.util import find_spec

    return find_spec("moto") is not None and find_spec("boto3") is not None
