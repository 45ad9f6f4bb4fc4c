"""Corpus-scale relation extraction with Ray Data: object storage in, Parquet triplet tables out.

Entry point: :func:`run_extraction` with an :class:`ExtractConfig` (from YAML via
:func:`load_extract_config`). See :mod:`glidre_core.extraction.pipeline` for the plan and
:mod:`glidre_core.extraction.output` for the output layout and the resume protocol.
"""

from glidre_core.extraction.config import ExtractConfig, cli_values, load_extract_config
from glidre_core.extraction.errors import (
    ExtractionError, InputError, LabelError, ModelLoadError, OutputError,
)
from glidre_core.extraction.pipeline import run_extraction, summary_text

__all__ = [
    "ExtractConfig", "ExtractionError", "InputError", "LabelError", "ModelLoadError", "OutputError",
    "cli_values", "load_extract_config", "run_extraction", "summary_text",
]
