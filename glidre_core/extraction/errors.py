"""Whole-run failures of an extraction job.

These are raised by the driver *before* any Ray work starts (or when the output cannot be
finalised) so that a wrong bucket, an empty input or an unreadable model fails in seconds with a
message, instead of a hang or a pile of per-document errors. Per-document problems are never
exceptions at this level: they become rows of ``errors/``.
"""

from __future__ import annotations


class ExtractionError(RuntimeError):
    """Base class: the run cannot proceed; ``str()`` is a message for the user."""


class InputError(ExtractionError):
    """The input as a whole is unusable (bucket missing, no files, mixed formats, ...)."""


class OutputError(ExtractionError):
    """The output location cannot be used (exists without --resume/--overwrite, mismatch, ...)."""


class ModelLoadError(ExtractionError):
    """The model reference cannot be resolved or loaded."""


class LabelError(ExtractionError):
    """The relation labels or thresholds are invalid."""
