"""Object-storage settings, in a module of their own.

Split out of :mod:`glidre_core.extraction.config` so that the LLM configs
(:mod:`glidre_core.llm.config`, which need it for ``glidre distill``) and the extract config
(which needs the LLM backend configs for its ``verify`` section) can import each other's pieces
without an import cycle. ``glidre_core.extraction.config.StorageConfig`` remains the public name.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StorageConfig(BaseModel):
    """How to reach object storage. Secrets never live here: credentials come from the environment.

    ``endpoint_url`` makes any S3-compatible store work (MinIO, Ceph, moto, ...). When it is
    ``None`` the ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` environment variables are used,
    because ``pyarrow.fs.S3FileSystem`` itself ignores them.
    """

    model_config = ConfigDict(extra="forbid")
    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000; None = env or AWS")
    region: str | None = Field(None, description="None = AWS_REGION / AWS_DEFAULT_REGION, else us-east-1")
    anonymous: bool = Field(False, description="unsigned requests (public buckets)")
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="S3 retry attempts per request")
