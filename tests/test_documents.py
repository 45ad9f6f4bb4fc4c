"""Bad documents give a DocumentError naming the document and the field (glidre_core.documents)."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from glidre_core import Document, DocumentError, GLiDRE, parse_document

TEXT = "Alice met Bob in Paris ."
GOOD = {
    "doc_id": "doc-1",
    "text": TEXT,
    "entities": [
        {"id": "a", "type": "PER", "mentions": [{"start": 0, "end": 5}]},
        {"id": "b", "type": "PER", "mentions": [{"start": 10, "end": 13}]},
        {"id": "p", "type": "LOC", "mentions": [{"start": 17, "end": 22, "sent_id": 0}]},
    ],
    "relations": [{"head": "a", "label": "knows", "tail": "b"}],
    "sentences": [[0, 24]],
}


def _bad(**changes) -> dict:
    raw = copy.deepcopy(GOOD)
    raw.update(changes)
    return raw


def _error(raw, fallback_id=None) -> DocumentError:
    with pytest.raises(DocumentError) as ei:
        parse_document(raw, fallback_id)
    return ei.value


def test_good_document_parses():
    doc = parse_document(GOOD)
    assert doc.doc_id == "doc-1"
    assert [doc.mention_text(e.mentions[0]) for e in doc.entities] == ["Alice", "Bob", "Paris"]
    assert doc.relations[0].label == "knows"
    assert doc.sentences == [(0, 24)]


def test_document_error_carries_id_field_and_message():
    err = DocumentError("d9", "entities[0].id", "duplicate")
    assert isinstance(err, ValueError)
    assert (err.doc_id, err.field, err.message) == ("d9", "entities[0].id", "duplicate")
    assert "d9" in str(err) and "entities[0].id" in str(err) and "duplicate" in str(err)


@pytest.mark.parametrize(
    "mention, field, words",
    [
        ({"start": 17, "end": 99}, "entities[2].mentions[0]", "outside the text"),
        ({"start": -1, "end": 3}, "entities[2].mentions[0]", "outside the text"),
        ({"start": 5, "end": 5}, "entities[2].mentions[0]", "empty or reversed"),
        ({"start": 9, "end": 4}, "entities[2].mentions[0]", "empty or reversed"),
        ({"start": 5, "end": 6}, "entities[2].mentions[0]", "only whitespace"),
        ({"start": 17, "end": 22, "sent_id": 3}, "entities[2].mentions[0].sent_id", "no sentence 3"),
    ],
)
def test_bad_mention_offsets(mention, field, words):
    raw = copy.deepcopy(GOOD)
    raw["entities"][2]["mentions"] = [mention]
    err = _error(raw)
    assert err.doc_id == "doc-1"
    assert err.field == field
    assert words in err.message


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text(text):
    raw = _bad(text=text, entities=[], relations=[])
    err = _error(raw)
    assert (err.doc_id, err.field) == ("doc-1", "text")
    assert "empty text" in err.message


def test_missing_or_null_text():
    raw = copy.deepcopy(GOOD)
    del raw["text"]
    assert (_error(raw).doc_id, _error(raw).field) == ("doc-1", "text")
    assert _error(_bad(text=None)).field == "text"


@pytest.mark.parametrize("mentions", [[], None])
def test_entity_without_mentions(mentions):
    raw = copy.deepcopy(GOOD)
    raw["entities"][1]["mentions"] = mentions
    err = _error(raw)
    assert (err.doc_id, err.field) == ("doc-1", "entities[1].mentions")
    assert "'b'" in err.message


def test_entity_without_mentions_key():
    raw = copy.deepcopy(GOOD)
    del raw["entities"][0]["mentions"]
    err = _error(raw)
    assert (err.doc_id, err.field) == ("doc-1", "entities[0].mentions")


def test_duplicate_entity_ids():
    raw = copy.deepcopy(GOOD)
    raw["entities"][2]["id"] = "a"
    err = _error(raw)
    assert (err.doc_id, err.field) == ("doc-1", "entities[2].id")
    assert "duplicate entity id 'a'" in err.message


@pytest.mark.parametrize(
    "relation, field",
    [
        ({"head": "a", "label": "knows", "tail": "zz"}, "relations[1].tail"),
        ({"head": "q", "label": "knows", "tail": "b"}, "relations[1].head"),
        ({"head": "a", "label": "", "tail": "b"}, "relations[1].label"),
    ],
)
def test_bad_relations(relation, field):
    raw = copy.deepcopy(GOOD)
    raw["relations"].append(relation)
    err = _error(raw)
    assert (err.doc_id, err.field) == ("doc-1", field)


def test_relation_label_aliases():
    raw = _bad(relations=[{"head": "a", "type": "knows", "tail": "b"},
                          {"head": "b", "relation": "met", "tail": "a"}])
    doc = parse_document(raw)
    assert [r.label for r in doc.relations] == ["knows", "met"]


def test_entity_ids_default_to_index_and_are_strings():
    raw = _bad(entities=[{"mentions": [{"start": 0, "end": 5}]}, {"id": 7, "mentions": [{"start": 10, "end": 13}]}],
               relations=[{"head": 0, "label": "knows", "tail": 7}])
    doc = parse_document(raw)
    assert [e.id for e in doc.entities] == ["0", "7"]
    assert (doc.relations[0].head, doc.relations[0].tail) == ("0", "7")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"text": 123}, "text"),
        ({"text": ["Alice"]}, "text"),
        ({"entities": {"a": 1}}, "entities"),
        ({"entities": ["Alice"]}, "entities[0]"),
    ],
)
def test_wrong_types(changes, field):
    err = _error(_bad(**changes))
    assert (err.doc_id, err.field) == ("doc-1", field)
    assert "expected" in err.message


def test_wrong_type_inside_a_mention_names_the_path():
    raw = copy.deepcopy(GOOD)
    raw["entities"][1]["mentions"][0]["start"] = "ten"
    err = _error(raw)
    assert err.doc_id == "doc-1"
    assert "entities" in err.field and "mentions" in err.field and "start" in err.field


def test_not_an_object():
    err = _error(["not", "a", "dict"], fallback_id="file.jsonl:3")
    assert (err.doc_id, err.field) == ("file.jsonl:3", "<root>")


def test_missing_document_id_uses_fallback_or_fails():
    raw = copy.deepcopy(GOOD)
    del raw["doc_id"]
    assert parse_document(raw, "fallback-9").doc_id == "fallback-9"
    err = _error(raw)
    assert err.field == "doc_id"
    assert _error(_bad(doc_id="  ")).field == "doc_id"


def test_direct_construction_is_validated_too():
    with pytest.raises((ValidationError, DocumentError)):
        Document(doc_id="x", text="  ")


def test_prepare_and_predict_report_bad_documents(tiny_model: GLiDRE):
    with pytest.raises(DocumentError) as ei:
        tiny_model.predict_relations(
            TEXT, [{"id": "a", "mentions": [{"start": 0, "end": 50}]}], labels=["knows"], doc_id="user-doc"
        )
    assert (ei.value.doc_id, ei.value.field) == ("user-doc", "entities[0].mentions[0]")


def test_entity_text_is_longest_mention():
    raw = copy.deepcopy(GOOD)
    raw["entities"][0]["mentions"] = [{"start": 0, "end": 1}, {"start": 0, "end": 5}]
    doc = parse_document(raw)
    assert doc.entity_text(doc.entities[0]) == "Alice"
    assert doc.entity("p").type == "LOC"
    with pytest.raises(KeyError):
        doc.entity("nope")
