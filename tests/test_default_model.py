"""The embedded default model: loads offline from the package, is small, and extracts sensibly.

This is the test path that runs the real pretrained encoder with trained heads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from glidre_core.model_loading import load_model, resolve_model_dir

pytestmark = pytest.mark.slow

TEXT = (
    "Angela Merkel was born in Hamburg , West Germany , in 1954 . "
    "She served as Chancellor of Germany from 2005 to 2021 ."
)
ENTITIES = [
    {"id": "merkel", "type": "PER", "mentions": [{"start": 0, "end": 13}, {"start": 61, "end": 64}]},
    {"id": "hamburg", "type": "LOC", "mentions": [{"start": 26, "end": 33}]},
    {"id": "germany", "type": "LOC", "mentions": [{"start": 36, "end": 48}, {"start": 89, "end": 96}]},
    {"id": "1954", "type": "TIME", "mentions": [{"start": 54, "end": 58}]},
]


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


def test_default_model_is_small_safetensors_delta():
    directory = resolve_model_dir("default")
    weights = directory / "model.safetensors"
    assert weights.stat().st_size < 25 * 1024 * 1024
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    # only what differs from the pip-installed base encoder is stored
    assert not any(k.startswith("encoder.model.embeddings") for k in keys)
    assert not any(k.startswith("label_encoder.model.") for k in keys)
    assert any(k.startswith("scorer.") for k in keys)
    cfg = json.loads((directory / "config.json").read_text())
    assert 0 < cfg["threshold"] < 1 and len(cfg["labels"]) >= 90
    assert (directory / "README.md").exists(), "model card missing"


def test_default_model_extracts_known_facts(default_model):
    labels = ["place of birth", "country", "date of birth", "capital", "spouse", "country of citizenship"]
    rows = default_model.predict_relations(TEXT, ENTITIES, labels, threshold=0.4)
    assert all(r["head_id"] != r["tail_id"] for r in rows)
    facts = {(r["head_id"], r["relation"], r["tail_id"]) for r in rows}
    # exactly the four true facts of the text, nothing else, above 0.4
    assert facts == {
        ("merkel", "country of citizenship", "germany"),
        ("merkel", "place of birth", "hamburg"),
        ("hamburg", "country", "germany"),
        ("merkel", "date of birth", "1954"),
    }
    scores = default_model.predict_relations(TEXT, ENTITIES, labels, threshold=0.0)
    by = {(r["head_id"], r["relation"], r["tail_id"]): r["score"] for r in scores}
    # a true fact outranks its reversal and an unrelated label
    assert by[("merkel", "place of birth", "hamburg")] > by[("hamburg", "place of birth", "merkel")]
    assert by[("merkel", "place of birth", "hamburg")] > by[("merkel", "spouse", "hamburg")]


def test_default_model_uses_stored_labels_and_threshold(default_model):
    rows = default_model.predict_relations(TEXT, ENTITIES)  # labels=None -> training labels
    assert rows and all(r["score"] > default_model.config.threshold for r in rows)
    assert {r["relation"] for r in rows} <= set(default_model.config.labels)
