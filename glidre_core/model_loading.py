"""Resolving a ``MODEL`` reference (one code path for the CLI, the jobs and the tests).

Accepted: a saved model directory, ``default`` for the model embedded in the package, or a
registered MLflow version ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (downloaded once into
a local cache; the tracking URI is the ``tracking_uri`` argument, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///mlflow.db``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from glidre_core.modeling import GLiDRE

logger = logging.getLogger(__name__)


def resolve_model_dir(ref: str, tracking_uri: str | None = None) -> Path:
    """Directory of a MODEL reference."""
    from glidre_core.modeling.persistence import DEFAULT_MODEL_DIR

    if ref.startswith("models:/"):
        from glidre_core.registry import download_model_dir

        return download_model_dir(ref, tracking_uri)

    if ref == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise FileNotFoundError(f"the embedded default model is missing from {DEFAULT_MODEL_DIR}")
        return DEFAULT_MODEL_DIR
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model {ref!r}: not a directory, not 'default' and not models:/NAME@ALIAS")
    return path


def load_model(ref: str, device: str = "cpu", tracking_uri: str | None = None) -> GLiDRE:
    return GLiDRE.from_pretrained(resolve_model_dir(ref, tracking_uri), device=device)
