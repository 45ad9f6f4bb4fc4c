"""Label descriptions: a relation label encoded as "name: description" (issue 12, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_config

from glidre_core import GLiDRE
from glidre_core.cli import main
from glidre_core.config import GLiDREConfig
from glidre_core.readers import DATA_DIR
from glidre_core.training import Trainer
from glidre_core.modeling.label_text import describe_labels, load_label_descriptions
from test_ray_train import REDOCRED_DEV, tiny_training_config


def test_bundled_docred_descriptions_cover_every_docred_type_in_short_lines():
    descriptions = load_label_descriptions("docred")
    names = set(json.loads((DATA_DIR / "rel_info.json").read_text()).values())
    assert set(descriptions) == names
    # the label encoder reads at most 64 sub-words: "name: description" must fit with room
    assert all(3 <= len(d.split()) <= 20 for d in descriptions.values())
    assert len(set(descriptions.values())) == len(descriptions), "two types share one description"


def test_malformed_descriptions_name_the_file_and_entry(tmp_path: Path):
    bad = tmp_path / "d.yaml"
    bad.write_text("place of birth: [born in]\n")
    with pytest.raises(ValueError, match=r"d\.yaml.*'place of birth'"):
        load_label_descriptions(bad)
    with pytest.raises(ValueError, match="no such file.*docred"):
        load_label_descriptions(tmp_path / "missing.json")


def test_texts_put_the_name_first_match_after_normalisation_and_let_the_call_override():
    norm = GLiDREConfig().normalize_label
    assert describe_labels(["country", "spouse"], {"Country": "sovereign state"}, norm) == [
        "country: sovereign state", "spouse"]
    assert describe_labels(["country"], {}, norm) == ["country"]
    model = GLiDRE(tiny_config(label_descriptions={"country": "sovereign state"}))
    assert model.label_texts(["Country", "mother"]) == ["country: sovereign state", "mother"]
    assert model.label_texts(["Country", "mother"], {"mother": "female parent", "country": "nation"}) == [
        "country: nation", "mother: female parent"]


def test_encoding_reads_the_described_string_and_names_alone_are_unchanged(tiny_model):
    with torch.no_grad():
        plain = tiny_model.encode_labels(["country", "mother"]).vectors
        assert torch.equal(plain, tiny_model.label_encoder(["country", "mother"]))  # no descriptions: as before
        described = tiny_model.encode_labels(["country", "mother"], {"country": "sovereign state"}).vectors
        assert torch.equal(described[1], plain[1])
        assert not torch.allclose(described[0], plain[0])
        # padded beside a longer string or alone: equal up to summation order
        torch.testing.assert_close(described[0], tiny_model.label_encoder(["country: sovereign state"])[0])
        predictor = tiny_model.predictor(relation_labels=["country", "mother"],
                                         label_descriptions={"country": "sovereign state"})
        assert torch.equal(predictor.relations.vectors, described)


def test_training_encodes_descriptions_and_the_saved_model_keeps_them(tmp_path: Path):
    cfg = tiny_training_config(tmp_path, epochs=1, label_descriptions="docred")
    trainer = Trainer(cfg)
    read: list[str] = []
    real = trainer.model.label_encoder.forward

    def spy(texts):
        read.extend(texts)
        return real(texts)

    trainer.model.label_encoder.forward = spy  # records what the label encoder reads; runs as usual
    result = trainer.train()
    docred = load_label_descriptions("docred")
    assert read and all(": " in t for t in read)  # every Re-DocRED label has a description
    assert f"{trainer.labels[0]}: {docred[trainer.labels[0]]}" in read
    saved = GLiDRE.from_pretrained(result.best_dir)
    assert saved.config.labels == trainer.labels  # targets and outputs keep the names
    assert saved.config.label_descriptions == docred  # all 96, so unseen types are described too
    assert saved.label_texts(["sibling"]) == ["sibling: brother or sister of the person"]


def test_descriptions_that_match_no_training_label_are_refused(tmp_path: Path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"chemical induces disease": "the chemical causes the disease"}))
    with pytest.raises(ValueError, match="describes none of the .* training labels"):
        Trainer(tiny_training_config(tmp_path, label_descriptions=str(other)))


def test_evaluate_cli_takes_descriptions_and_names_a_bad_file(tmp_path: Path, tiny_model):
    tiny_model.config.labels = ["country", "mother"]
    tiny_model.save_pretrained(tmp_path / "m")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"country": ""}))
    res = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "m"), "--data", REDOCRED_DEV,
                                    "--limit", "2", "--label-descriptions", str(bad)])
    assert res.exit_code != 0 and "bad.json" in res.output and "'country'" in res.output
    res = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "m"), "--data", REDOCRED_DEV,
                                    "--limit", "2", "--label-descriptions", "docred",
                                    "--output-json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["docs"] == 2


def test_mean_mode_averages_the_name_and_description_embeddings(tiny_model):
    tiny_model.config.label_descriptions = {"country": "sovereign state"}
    tiny_model.config.label_description_mode = "mean"
    assert tiny_model.label_texts(["country", "mother"]) == [("country", "sovereign state"), "mother"]
    with torch.no_grad():
        enc = tiny_model.label_encoder
        pooled = enc.pooled(["country", "sovereign state", "mother"])
        torch.testing.assert_close(enc.pooled(tiny_model.label_texts(["country", "mother"])),
                                   torch.stack([pooled[:2].mean(0), pooled[2]]))
        described = tiny_model.encode_labels(["country", "mother"]).vectors
        assert not torch.allclose(described[0], enc(["country"])[0])
        torch.testing.assert_close(described[1], enc(["mother"])[0])
    with pytest.raises(ValueError, match="unknown label description mode"):
        describe_labels(["country"], {"country": "x"}, str.lower, mode="concat")
