"""Resolving a ``MODEL`` reference (one code path for the CLI, the jobs and the tests).

Accepted: a saved model directory, or ``default`` for the model embedded in the package.
"""

from __future__ import annotations

import logging
from pathlib import Path

from glidre_core.modeling import GLiDRE

logger = logging.getLogger(__name__)


def resolve_model_dir(ref: str) -> Path:
    """Directory of a MODEL reference."""
    from glidre_core.modeling.glidre import DEFAULT_MODEL_DIR

    if ref == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise FileNotFoundError(f"the embedded default model is missing from {DEFAULT_MODEL_DIR}")
        return DEFAULT_MODEL_DIR
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model {ref!r}: not a directory and not 'default'")
    return path


def load_model(ref: str, device: str = "cpu") -> GLiDRE:
    return GLiDRE.from_pretrained(resolve_model_dir(ref), device=device)
