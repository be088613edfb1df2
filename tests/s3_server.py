"""A real S3 HTTP endpoint on loopback for the offsite tests: moto's S3 server in a thread of the
test process, which a test can stop (its port closed: connections refused) and start again on
the same port, with the same buckets and objects (moto keeps them per process).

Measured with moto 5.2.6 and boto3 1.44: it keeps the ``x-amz-checksum-sha256`` a client sends
with ``ChecksumAlgorithm=SHA256`` and reports it on ``head_object`` with ``ChecksumMode=ENABLED``,
the composite one (sha256 of the parts' sha256s) for a multipart upload, without S3's ``-N``.
It does not check a body against the checksum sent, as S3 does: these tests prove the service's
comparison of what the store reports with the record, not the store's own check.
"""

from __future__ import annotations

import threading

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from tests.processes import free_port

ACCESS_KEY_ID, SECRET_ACCESS_KEY, REGION = "test-offsite-key", "test-offsite-secret-never-logged", "us-east-1"


class S3Server:
    def __init__(self, bucket: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self._server = None
        self.start()
        self.client().create_bucket(Bucket=bucket)

    def start(self) -> None:
        """Listen (again) on the server's port; returns once it accepts connections."""
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=MotoRequestHandler)
        threading.Thread(target=self._server.serve_forever, name=f"s3-{self.port}", daemon=True).start()

    def stop(self) -> None:
        """Stop answering and close the port, as a store that is down."""
        self._server.shutdown()
        self._server.server_close()

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
        )  # fmt: skip

    def environment(self, prefix: str = "erpmax/backups") -> dict[str, str]:
        """The OFFSITE_* settings of a service that copies backups here."""
        return {
            "OFFSITE_S3_BUCKET": self.bucket,
            "OFFSITE_S3_PREFIX": prefix,
            "OFFSITE_S3_ENDPOINT_URL": self.url,
            "OFFSITE_S3_REGION": REGION,
            "OFFSITE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "OFFSITE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        }

    def objects(self, prefix: str) -> dict[str, dict]:
        """The objects under ``prefix``: each key's size and the SHA256 checksum the store reports."""
        client = self.client()
        found = {}
        for listed in client.list_objects_v2(Bucket=self.bucket, Prefix=prefix).get("Contents", []):
            head = client.head_object(Bucket=self.bucket, Key=listed["Key"], ChecksumMode="ENABLED")
            found[listed["Key"]] = {"size": head["ContentLength"], "sha256": head.get("ChecksumSHA256")}
        return found
