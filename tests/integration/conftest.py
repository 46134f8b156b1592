"""Fixtures shared by the integration tests: the S3-compatible server (s3_fixtures.py)."""

from s3_fixtures import s3_server, s3_uri

__all__ = ["s3_server", "s3_uri"]
