"""spaCy as the entity recognizer: type mapping, char->word spans, and the Predictor's spaCy path
with a real spaCy pipeline (the [spacy] extra, installed with the test extra)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from glidre_core import GLiDRE
from glidre_core.spacy_ner import SpacyRecognizer, type_map, word_span
from glidre_core.text import split_words

TEXT = "Angela Merkel was born in Hamburg . Merkel visited Hamburg in 2005 ."


def test_type_map_follows_the_task_types():
    conll = type_map(["person", "organization", "location", "other"])
    assert (conll["PERSON"], conll["ORG"], conll["GPE"], conll["NORP"]) == ("person", "organization", "location", "other")
    assert "DATE" not in conll and "CARDINAL" not in conll  # CoNLL04 has no time or number type
    folded = type_map(["person", "other"], fold_into_misc=True)
    assert folded["DATE"] == folded["CARDINAL"] == folded["ORG"] == "other"
    docred = type_map(["person", "organization", "location", "time", "number", "miscellaneous"])
    assert (docred["DATE"], docred["MONEY"], docred["EVENT"]) == ("time", "number", "miscellaneous")


def test_word_span_covers_the_characters():
    words = split_words("New York is big .")
    assert word_span(words, 0, 8) == (0, 2) and word_span(words, 4, 8) == (1, 2)
    assert word_span(words, 8, 9) is None  # only whitespace


def test_predictor_spacy_path_finds_entities_and_scores_their_pairs():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config())  # no span head: spaCy does not need one
    model.eval()
    types = ["person", "location", "time"]
    pred = model.predictor(relation_labels=["born in", "visited"], entity_labels=types, threshold=0.001, top_k=1,
                           entity_recognizer="spacy", need_entity_types=True)
    result = pred.extract([TEXT])[0]
    by_text = {e["text"]: e for e in result.entities}
    assert by_text["Angela Merkel"]["type"] == "person" and by_text["Hamburg"]["type"] == "location"
    # the same coreference rules as the span head: both "Hamburg" mentions are one entity, and
    # "Merkel" is attached to "Angela Merkel" as a partial name
    assert len(by_text["Hamburg"]["mentions"]) == 2
    assert [m["text"] for m in by_text["Angela Merkel"]["mentions"]] == ["Angela Merkel", "Merkel"]
    assert all(e["score"] is None and all(m["score"] is None for m in e["mentions"]) for e in result.entities)
    n = len(result.entities)
    assert len(result.relations) == n * (n - 1)  # threshold 0.001, top_k 1: one row per ordered pair
    ids = {e["id"] for e in result.entities}
    assert all(r["head_id"] in ids and r["tail_id"] in ids for r in result.relations)
    assert result.document.entities and len(result.document.relations) == len(result.relations)


def test_spacy_needs_entity_types():
    model = GLiDRE(tiny_config())
    with pytest.raises(ValueError, match="needs entity types"):
        model.predictor(entity_recognizer="spacy", need_entity_types=True)
    with pytest.raises(ValueError, match="unknown entity_recognizer"):
        model.predictor(entity_recognizer="stanza")


def test_recognizer_maps_and_groups():
    rec = SpacyRecognizer(["person", "location"])
    (mentions,) = rec.mentions([TEXT])
    assert ("Hamburg", "location") in {(TEXT[s:e], t) for s, e, t in mentions}


def test_auto_picks_the_span_head_when_the_model_has_one_and_spacy_otherwise():
    """The job's ``entity_recognizer: auto``: the span head (measured better end to end on both
    benchmarks' dev sets once it saw word shapes), spaCy only for a model without a span head."""
    from glidre_core.extraction.pipeline import resolve_recognizer

    assert resolve_recognizer("auto", has_span_head=True) == "model"
    assert resolve_recognizer("auto", has_span_head=False) == "spacy"
    assert resolve_recognizer("spacy", has_span_head=True) == "spacy"
    assert resolve_recognizer("model", has_span_head=False) == "model"
