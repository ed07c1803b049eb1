"""A store in an S3-compatible bucket (AWS, MinIO, R2, moto) through boto3."""

from __future__ import annotations

from urllib.parse import urlparse

from farm.errors import InfrastructureError, NotFound
from farm.storage import check_key


class S3Store:
    def __init__(self, url: str, *, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        parsed = urlparse(url)
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": 8},
                signature_version="s3v4",  # presigned URLs carry X-Amz-Expires; every S3 server speaks it
                # non-AWS servers (MinIO, R2, older moto) reject the newer default checksums
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=10,
                read_timeout=60,
            ),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> None:
        import base64
        import hashlib

        from botocore.exceptions import BotoCoreError, ClientError

        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # the server checks it on write
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type,
                Metadata=metadata or {}, ContentMD5=md5,
            )
        except (BotoCoreError, ClientError) as exc:
            raise InfrastructureError(f"upload of {key} to {self.url} failed: {exc}") from None

    def put_file(self, key: str, path, content_type: str, metadata: dict[str, str] | None = None) -> None:
        """Streamed in parts (boto3's managed transfer), each part checked by the server."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(path), self.bucket, self._key(key),
                                    ExtraArgs={"ContentType": content_type, "Metadata": metadata or {}})
        except (BotoCoreError, ClientError) as exc:
            raise InfrastructureError(f"upload of {key} to {self.url} failed: {exc}") from None

    def get(self, key: str) -> bytes:
        return self.get_raw(self._key(key))

    def presigned_get(self, key: str, expires_s: int) -> str:
        """A URL that allows GET of one object, nothing else, for ``expires_s`` seconds."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=int(expires_s))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (relative to the bucket, not to this store's prefix)."""
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise InfrastructureError(f"listing s3://{self.bucket}/{prefix} failed: {exc}") from None
        return keys

    def get_raw(self, key: str) -> bytes:
        """An object by its full key in the bucket."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound(f"no object s3://{self.bucket}/{key}") from None
            raise InfrastructureError(f"download of s3://{self.bucket}/{key} failed: {exc}") from None
        except BotoCoreError as exc:
            raise InfrastructureError(f"download of s3://{self.bucket}/{key} failed: {exc}") from None
