"""Every shipped training config (configs/*.yaml with a ``train`` section) validates, so a typo
or a key the schema dropped fails here, not after a user's cluster has started. Configs that
start from a run directory (``init_from: runs/...``, absent from a fresh clone) are checked with
``init_from=default`` (the same schema; only the base weights differ)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from glidre_core.training.config import load_training_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TRAINING = sorted(p for p in CONFIGS.glob("*.yaml") if "train" in (yaml.safe_load(p.read_text()) or {}))


def test_the_training_configs_are_found():
    assert {"default_model.yaml", "conll04_mpnet_refit.yaml"} <= {p.name for p in TRAINING}


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_shipped_training_config_validates(path: Path):
    raw = yaml.safe_load(path.read_text())
    overrides = ["init_from=default"] if str(raw.get("init_from", "")).startswith("runs/") else []
    cfg = load_training_config(path, overrides)
    assert cfg.train.path and cfg.epochs >= 1
    if cfg.refit is not None:  # the refit example: dev joins training, with the dev-chosen thresholds
        assert cfg.dev is not None and 0 < cfg.refit.threshold < 1
