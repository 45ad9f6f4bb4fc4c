"""Corpus-scale relation extraction with Ray Data: object storage in, Parquet triplet tables out.

Entry point: :func:`run_extraction` with an :class:`ExtractConfig` (from YAML via
:func:`load_extract_config`). See :mod:`glidre_core.extraction.pipeline` for the plan and
:mod:`glidre_core.extraction.output` for the output layout and the resume protocol.

Names load on first use: the Ray worker processes that only pre-process documents import
:mod:`glidre_core.extraction.udf` and must not pay for the driver's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glidre_core.lazy import lazy_exports

_EXPORTS = {
    "ExtractConfig": "glidre_core.extraction.config",
    "cli_values": "glidre_core.extraction.config",
    "load_extract_config": "glidre_core.extraction.config",
    "ExtractionError": "glidre_core.extraction.errors",
    "InputError": "glidre_core.extraction.errors",
    "LabelError": "glidre_core.extraction.errors",
    "ModelLoadError": "glidre_core.extraction.errors",
    "OutputError": "glidre_core.extraction.errors",
    "JobInterrupted": "glidre_core.extraction.session",
    "ResourceError": "glidre_core.extraction.resources",
    "StallError": "glidre_core.extraction.progress",
    "run_extraction": "glidre_core.extraction.pipeline",
    "summary_text": "glidre_core.extraction.pipeline",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from glidre_core.extraction.config import ExtractConfig, cli_values, load_extract_config
    from glidre_core.extraction.errors import ExtractionError, InputError, LabelError, ModelLoadError, OutputError
    from glidre_core.extraction.pipeline import run_extraction, summary_text
    from glidre_core.extraction.progress import StallError
    from glidre_core.extraction.resources import ResourceError
    from glidre_core.extraction.session import JobInterrupted


__getattr__ = lazy_exports(__name__, _EXPORTS)
