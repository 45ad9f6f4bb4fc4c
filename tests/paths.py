"""Where the shared benchmark data lives: ``../shared/data`` beside the repository (as on the
developers' machines and in CI), overridable with ``GLIDRE_SHARED_DATA``."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GLIDRE_SHARED_DATA", REPO.parent / "shared" / "data"))
if not SHARED_DATA.exists() and Path("/work/shared/data").exists():
    SHARED_DATA = Path("/work/shared/data")
