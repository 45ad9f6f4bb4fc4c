"""Label augmentation: several phrasings per relation label in training (issue 12, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glidre_core.config import GLiDREConfig
from glidre_core.readers import DATA_DIR
from glidre_core.training import Trainer
from glidre_core.training.label_phrasings import LabelPhraser, load_label_phrasings
from test_ray_train import tiny_training_config


def test_bundled_docred_phrasings_cover_every_docred_type_without_collisions():
    phrasings = load_label_phrasings("docred")
    names = set(json.loads((DATA_DIR / "rel_info.json").read_text()).values())
    assert set(phrasings) == names
    norm = GLiDREConfig().normalize_label
    canonical = {norm(n) for n in names}
    flat = [norm(p) for ps in phrasings.values() for p in ps]
    assert all(len(ps) >= 2 for ps in phrasings.values())
    assert len(flat) == len(set(flat)), "one phrasing serves two types"
    assert not canonical & set(flat), "a phrasing is another type's name"


def test_malformed_phrasings_name_the_file_and_entry(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("place of birth: born in\n")
    with pytest.raises(ValueError, match=r"p\.yaml.*'place of birth'"):
        load_label_phrasings(bad)
    with pytest.raises(ValueError, match="no such file.*docred"):
        load_label_phrasings(tmp_path / "missing.json")


def test_draw_is_deterministic_per_micro_batch_keeps_order_and_never_collides():
    labels = ["place of birth", "born in", "spouse", "father"]
    phraser = LabelPhraser({"place of birth": ["born in", "birthplace"], "spouse": ["married to"]},
                           probability=1.0, seed=3)
    draws = [phraser.draw(labels, m) for m in range(50)]
    assert draws == [phraser.draw(labels, m) for m in range(50)]  # resume-safe: no hidden state
    for d in draws:
        assert len(d) == len(labels) and len({s.lower() for s in d}) == len(d)
        assert d[1:] == ["born in", "married to", "father"]  # "born in" is taken by a real label
        assert d[0] in {"place of birth", "birthplace"}
    assert {d[0] for d in draws} == {"birthplace"}  # never encoded as another label's name
    assert LabelPhraser({"spouse": ["married to"]}, 0.0, seed=3).draw(labels, 7) == labels
    half = LabelPhraser({"spouse": ["married to"]}, 0.5, seed=3)
    assert {half.draw(labels, m)[2] for m in range(40)} == {"spouse", "married to"}


def test_training_encodes_phrasings_but_keeps_targets_and_saved_labels_canonical(tmp_path: Path):
    cfg = tiny_training_config(tmp_path, epochs=1, label_phrasings={"source": "docred", "probability": 1.0})
    trainer = Trainer(cfg)
    encoded: list[list[str]] = []
    real = trainer.model.encode_labels

    def spy(labels, descriptions=None):
        encoded.append(list(labels))
        return real(labels, descriptions)

    trainer.model.encode_labels = spy  # records what the loss encodes; the model runs as usual
    result = trainer.train()
    training_sets = [e for e in encoded if e != trainer.labels]  # dev evaluation uses the names
    assert training_sets, "no batch was encoded under phrasings"
    phrasings = load_label_phrasings("docred")
    for enc in training_sets:
        assert len(enc) == len(trainer.labels)
        for name, used in zip(trainer.labels, enc):
            assert used in phrasings[name]  # probability 1: every covered label is rephrased
    saved = GLiDREConfig.load(result.best_dir)
    assert saved.labels == trainer.labels


def test_phrasings_that_match_no_training_label_are_refused(tmp_path: Path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"chemical induces disease": ["causes"]}))
    cfg = tiny_training_config(tmp_path, label_phrasings={"source": str(other)})
    with pytest.raises(ValueError, match="none of the .* training labels"):
        Trainer(cfg)
