"""Token chunks kept in an S3 bucket (`data.chunks_url: s3://BUCKET/PREFIX`), which litdata then streams from.

boto3 reads the credentials and the endpoint the usual way (AWS_ACCESS_KEY_ID..., AWS_ENDPOINT_URL for an
S3-compatible store such as MinIO), as litdata's own reader does.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from genlab.errors import GenlabError


def index_at(url: str) -> dict | None:
    """The litdata index of the chunks at `url`, or None when there are none (yet)."""
    client, bucket, prefix = _bucket(url)
    try:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/index.json")["Body"].read()
    except Exception as err:  # no bucket, no credentials, no endpoint: the user's to fix, said in one line
        # a missing key is 403 to a principal that may not list the bucket: the upload then says if it is more
        if getattr(err, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404", "403", "AccessDenied"):
            return None
        raise GenlabError(f"data.chunks_url: {url}: {type(err).__name__}: {err}") from None
    return json.loads(body)


def upload(folder: Path, url: str) -> None:
    """Every file of `folder` to `url`, the index last: a reader that finds it finds every chunk it lists."""
    client, bucket, prefix = _bucket(url)
    try:
        for path in sorted(folder.iterdir(), key=lambda p: (p.name == "index.json", p.name)):
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    except Exception as err:
        raise GenlabError(f"data.chunks_url: uploading to {url}: {type(err).__name__}: {err}") from None


def _bucket(url: str):
    import boto3

    parsed = urlparse(url)
    return boto3.client("s3"), parsed.netloc, parsed.path.strip("/")
