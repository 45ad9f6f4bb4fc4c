"""One explicit pyarrow filesystem per run, built from config, used for every read and write.

Why explicit: ``pyarrow.fs.S3FileSystem()`` ignores ``AWS_ENDPOINT_URL``, and letting each
library (Ray Data, pyarrow, boto) infer a filesystem from a URI gives each of them a different
idea of the endpoint and credentials. Here the endpoint, region and timeouts come from
:class:`~glidre_core.extraction.config.StorageConfig` and the resulting filesystem object is
pickled into every Ray task.

Decision: pyarrow's ``S3FileSystem``, not s3fs (checked with pyarrow 25.0.1, s3fs 2026.9.0):

- Ray Data and Ray Train take a ``pyarrow.fs.FileSystem`` natively; an fsspec filesystem is
  wrapped in ``PyFileSystem(FSSpecHandler(...))``, every read going through Python and its GIL.
- s3fs cannot be installed next to our pins: s3fs 2026.9.0 needs aiobotocore 3.10, which pins
  ``botocore<1.43.118`` while ``boto3==1.44.5`` needs ``botocore>=1.44.5`` (pip's resolver falls
  back to s3fs 0.4.2, from 2020). So s3fs is not a dependency.
- Credentials: without explicit keys pyarrow uses the AWS C++ SDK's default chain, which reads
  ``AWS_PROFILE``, ``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_CONFIG_FILE``, including a
  profile's ``credential_process`` (the chain also has web identity and the EC2/ECS metadata
  service). A user with a profile exports ``AWS_PROFILE=name`` and nothing else;
  ``tests/test_storage_profiles.py`` proves profiles and ``credential_process`` against a moto
  server that checks signatures. The order is the AWS one: ``AWS_ACCESS_KEY_ID``
  and ``AWS_SECRET_ACCESS_KEY`` in the environment win over any profile. The region, when not
  configured, is ``AWS_REGION``, ``AWS_DEFAULT_REGION``, then the profile's ``region``.
- Where the credentials travel: keys from the environment are explicit and pickled with the
  filesystem, so workers on other nodes need nothing. Profile (chain) credentials are NOT pickled:
  each Ray worker resolves the chain again on its own node. A local Ray started by the driver
  inherits ``AWS_PROFILE`` and finds the same files; on a remote cluster the nodes use their own
  identity (instance profile / IAM role of the node, or IRSA on Kubernetes), which is the usual
  set-up, or the job is given keys (``aws configure export-credentials --profile name --format
  env`` prints them).
- Requester-pays buckets are not supported: pyarrow has no option to send
  ``x-amz-request-payer: requester`` (no such parameter in 25.0.1; apache/arrow#34253 open,
  #38492 closed unresolved). Copy the data once into a bucket of
  your own (``aws s3 sync s3://src/... s3://mine/... --request-payer requester``), which also
  avoids paying the transfer again on every resume or rerun.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from glidre_core.extraction.config import StorageConfig
from glidre_core.extraction.errors import InputError

logger = logging.getLogger(__name__)


def _endpoint(cfg: StorageConfig) -> tuple[str | None, str | None]:
    """``(host[:port], scheme)`` of the configured or environment S3 endpoint."""
    url = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, None
    parsed = urlparse(url if "://" in url else f"https://{url}")
    return parsed.netloc, parsed.scheme or "https"


def _profile_region() -> str | None:
    """The ``region`` of the active AWS profile (``AWS_PROFILE`` / ``AWS_CONFIG_FILE``), if any."""
    try:
        import botocore.session

        return botocore.session.Session().get_config_variable("region") or None
    except Exception:  # no botocore, a broken config file: fall back to the default region
        return None


def build_s3_filesystem(cfg: StorageConfig) -> pafs.S3FileSystem:
    """The S3 filesystem for ``cfg``: credentials from ``AWS_ACCESS_KEY_ID`` etc. if set, else
    the AWS default chain (``AWS_PROFILE``, shared credentials/config files, instance role)."""
    endpoint, scheme = _endpoint(cfg)
    region = (cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or _profile_region() or "us-east-1")
    kwargs: dict = dict(
        region=region,
        connect_timeout=cfg.connect_timeout_s,
        request_timeout=cfg.request_timeout_s,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.max_attempts),
    )
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = scheme
    if cfg.anonymous:
        kwargs["anonymous"] = True
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    # Otherwise pyarrow's default AWS credential chain (instance profile, ~/.aws) applies.
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A URI resolved to ``(filesystem, path)``; ``path`` has no scheme (``bucket/key`` for S3)."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def is_s3(self) -> bool:
        return isinstance(self.fs, pafs.S3FileSystem)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def child(self, *parts: str) -> "Location":
        sub = posixpath.join(*parts)
        return Location(posixpath.join(self.uri.rstrip("/"), sub), self.fs, self.join(sub))

    @property
    def bucket(self) -> str | None:
        return self.path.split("/", 1)[0] if self.is_s3 else None


class Storage:
    """Builds filesystems from one :class:`StorageConfig` (one S3 filesystem per run)."""

    def __init__(self, cfg: StorageConfig):
        self.cfg = cfg
        self._s3: pafs.S3FileSystem | None = None
        self._local = pafs.LocalFileSystem()

    @property
    def s3(self) -> pafs.S3FileSystem:
        if self._s3 is None:
            self._s3 = build_s3_filesystem(self.cfg)
        return self._s3

    def location(self, uri: str) -> Location:
        """``s3://bucket/prefix``, ``file:///abs/path`` or a plain local path."""
        if "://" in uri:
            scheme, rest = uri.split("://", 1)
            scheme = scheme.lower()
            if scheme in ("s3", "s3a"):
                path = rest.strip("/")
                if not path:
                    raise InputError(f"{uri!r}: no bucket in the S3 URI")
                return Location(uri, self.s3, path)
            if scheme == "file":
                return Location(uri, self._local, str(Path("/" + rest.lstrip("/")).resolve()))
            raise InputError(f"{uri!r}: unsupported URI scheme {scheme!r} (use s3:// or a local path)")
        return Location(uri, self._local, str(Path(uri).expanduser().resolve()))


def check_bucket(loc: Location) -> None:
    """Fail fast, with a message naming the bucket and endpoint, when the bucket is not there."""
    if not loc.is_s3:
        return
    try:
        info = loc.fs.get_file_info(loc.bucket)
    except OSError as exc:
        hint = ""
        if "ACCESS_DENIED" in str(exc):
            hint = (" (check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE;"
                    " requester-pays buckets are not supported, copy the data first)")
        raise InputError(f"{loc.uri}: cannot reach S3 bucket {loc.bucket!r}: {exc}{hint}") from exc
    if info.type == pafs.FileType.NotFound:
        raise InputError(
            f"{loc.uri}: S3 bucket {loc.bucket!r} does not exist (or is not visible with these credentials)"
        )


def list_files(loc: Location) -> list[pafs.FileInfo]:
    """Every file at or under ``loc`` (a single file counts), sorted by path."""
    check_bucket(loc)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:
        return [info]
    if info.type == pafs.FileType.NotFound:
        return []
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def is_empty(loc: Location) -> bool:
    """True when nothing (no file) exists at or under ``loc``."""
    return not list_files(loc)


def delete_tree(loc: Location) -> None:
    """Remove everything under ``loc`` (the directory itself may stay, e.g. as an S3 marker)."""
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:
        loc.fs.delete_file(loc.path)
    elif info.type == pafs.FileType.Directory:
        loc.fs.delete_dir_contents(loc.path, missing_dir_ok=True)


def ensure_dir(fs: pafs.FileSystem, path: str) -> None:
    """Create a directory on a local filesystem (object stores have no directories)."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path, recursive=True)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a small file whole; on a local disk via a temporary name and an atomic rename."""
    ensure_dir(fs, posixpath.dirname(path))
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    else:
        with fs.open_output_stream(path) as f:  # an S3 PUT is atomic
            f.write(data)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes | None:
    """File contents, or None if the file does not exist."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()
