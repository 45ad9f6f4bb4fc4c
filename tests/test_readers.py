"""Readers for DocRED, the GLiDRE authors' format, CoNLL04 and JSONL (glidre_core.readers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from glidre_core import DocumentError, read_documents
from glidre_core.readers import load_rel_info, relation_labels
from paths import SHARED_DATA

DATA = SHARED_DATA
DOCRED_DEV = DATA / "redocred" / "dev_revised.json"
CONLL_TRAIN = DATA / "conll04" / "conll04_train.json"

needs_data = pytest.mark.skipif(not DOCRED_DEV.exists(), reason="benchmark data not present")


# -- DocRED ----------------------------------------------------------------------------------------

@needs_data
def test_docred_first_three_documents():
    raw_docs = json.loads(DOCRED_DEV.read_text(encoding="utf-8"))[:3]
    docs = read_documents(DOCRED_DEV, "docred", limit=3)
    rel_info = load_rel_info()
    assert len(docs) == 3
    assert docs[0].title == "Willi Schneider (skeleton racer)"
    plain_names = 0
    for doc, raw in zip(docs, raw_docs):
        assert doc.doc_id == raw["title"] and doc.title == raw["title"]
        # sentences: one char span per sentence, reproducing its tokens
        assert len(doc.sentences) == len(raw["sents"])
        for (a, b), sent in zip(doc.sentences, raw["sents"]):
            assert doc.text[a:b] == " ".join(sent)
        # entities: one per vertexSet cluster, mentions keep sent id, name and exact tokens
        assert len(doc.entities) == len(raw["vertexSet"])
        for ent, cluster in zip(doc.entities, raw["vertexSet"]):
            assert ent.type == cluster[0]["type"]
            assert len(ent.mentions) == len(cluster)
            for m, rm in zip(ent.mentions, cluster):
                assert m.sent_id == rm["sent_id"]
                assert m.name == rm["name"]
                tokens = raw["sents"][rm["sent_id"]][rm["pos"][0] : rm["pos"][1]]
                assert doc.mention_text(m) == " ".join(tokens)
                sa, sb = doc.sentences[m.sent_id]
                assert sa <= m.start < m.end <= sb
                if rm["name"] == " ".join(tokens):
                    assert doc.mention_text(m) == rm["name"]
                    plain_names += 1
        # relations: P-ids mapped to names, head/tail are vertexSet indices
        assert len(doc.relations) == len(raw["labels"])
        for rel, lab in zip(doc.relations, raw["labels"]):
            assert rel.label == rel_info[lab["r"]]
            assert not rel.label.startswith("P")
            assert (rel.head, rel.tail) == (str(lab["h"]), str(lab["t"]))
    assert plain_names > 50
    # a known first fact: P580 -> "start time"
    assert docs[0].relations[0].label == "start time"
    assert "start time" in relation_labels(docs)
    assert relation_labels(docs) == sorted(set(relation_labels(docs)))


def _write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


DOCRED_RECORD = {
    "title": "Tiny",
    "sents": [["Ada", "Lovelace", "was", "born", "in", "London", "."], ["She", "died", "there", "."]],
    "vertexSet": [
        [{"name": "Ada Lovelace", "pos": [0, 2], "sent_id": 0, "type": "PER"},
         {"name": "She", "pos": [0, 1], "sent_id": 1, "type": "PER"}],
        [{"name": "London", "pos": [5, 6], "sent_id": 0, "type": "LOC"},
         {"name": "there", "pos": [2, 3], "sent_id": 1, "type": "LOC"}],
    ],
    "labels": [{"h": 0, "t": 1, "r": "P19", "evidence": [0]}, {"h": 0, "t": 1, "r": "P20", "evidence": [1]}],
}


def test_docred_small_record_offsets(tmp_path):
    (doc,) = read_documents(_write(tmp_path, "d.json", [DOCRED_RECORD]), "docred")
    assert doc.text == "Ada Lovelace was born in London . She died there ."
    assert doc.sentences == [(0, 33), (34, 50)]
    assert [doc.mention_text(m) for m in doc.entities[0].mentions] == ["Ada Lovelace", "She"]
    assert [doc.mention_text(m) for m in doc.entities[1].mentions] == ["London", "there"]
    assert [m.sent_id for m in doc.entities[1].mentions] == [0, 1]
    assert [r.label for r in doc.relations] == ["place of birth", "place of death"]


def test_docred_custom_rel_info_and_unknown_relation(tmp_path):
    path = _write(tmp_path, "d.json", [DOCRED_RECORD])
    (doc,) = read_documents(path, "docred", rel_info={"P19": "born in", "P20": "died in"})
    assert [r.label for r in doc.relations] == ["born in", "died in"]
    with pytest.raises(DocumentError) as ei:
        read_documents(path, "docred", rel_info={"P19": "born in"})
    assert ei.value.doc_id == "Tiny" and ei.value.field == "labels[1].r"


def test_docred_bad_mention_position_names_field(tmp_path):
    bad = json.loads(json.dumps(DOCRED_RECORD))
    bad["vertexSet"][1][0]["pos"] = [5, 40]
    with pytest.raises(DocumentError) as ei:
        read_documents(_write(tmp_path, "d.json", [bad]), "docred")
    assert ei.value.doc_id == "Tiny"
    assert ei.value.field == "vertexSet[1][0].pos"


def test_docred_not_a_docred_record(tmp_path):
    with pytest.raises(DocumentError) as ei:
        read_documents(_write(tmp_path, "d.json", [{"text": "hello"}]), "docred")
    assert ei.value.doc_id == "d.json[0]" and ei.value.field == "<root>"


# -- GLiDRE authors' format --------------------------------------------------------------------

GLIDRE_RECORDS = [
    {
        "id": 7,
        "tokenized_text": ["Marie", "Curie", "was", "born", "in", "Warsaw", ",", "Poland", "."],
        "mentions": [
            # mention order inside an entity is not sorted; `end` is inclusive
            {"id": 0, "type": "PER", "mentions": [{"value": "Marie Curie", "start": 0, "end": 1}]},
            {"id": 1, "type": "LOC", "mentions": [{"value": "Warsaw", "start": 5, "end": 5}]},
            {"id": 2, "type": "LOC", "mentions": [{"value": "Poland", "start": 7, "end": 7}]},
        ],
        "relations": [[0, "place of birth", 1], [1, "country", 2]],
    },
    {
        "id": 8,
        "tokenized_text": ["Bern", "is", "in", "Switzerland", ".", "Bern", "is", "its", "capital", "."],
        "mentions": [
            {"id": 0, "type": "LOC", "mentions": [{"value": "Bern", "start": 5, "end": 5},
                                                   {"value": "Bern", "start": 0, "end": 0}]},
            {"id": 1, "type": "LOC", "mentions": [{"value": "Switzerland", "start": 3, "end": 3}]},
        ],
        "relations": [[1, "capital", 0]],
    },
]


def test_glidre_format(tmp_path):
    docs = read_documents(_write(tmp_path, "g.json", GLIDRE_RECORDS), "glidre")
    assert [d.doc_id for d in docs] == ["7", "8"]
    d = docs[0]
    assert d.text == "Marie Curie was born in Warsaw , Poland ."
    assert [e.id for e in d.entities] == ["0", "1", "2"]
    assert [e.type for e in d.entities] == ["PER", "LOC", "LOC"]
    assert [d.mention_text(e.mentions[0]) for e in d.entities] == ["Marie Curie", "Warsaw", "Poland"]
    assert d.entities[0].mentions[0].name == "Marie Curie"
    assert [(r.head, r.label, r.tail) for r in d.relations] == [
        ("0", "place of birth", "1"), ("1", "country", "2")]
    bern = docs[1].entities[0]
    assert [(m.start, m.end) for m in bern.mentions] == [(25, 29), (0, 4)]
    assert {docs[1].mention_text(m) for m in bern.mentions} == {"Bern"}


def test_glidre_format_bad_offsets_and_relations(tmp_path):
    bad = json.loads(json.dumps(GLIDRE_RECORDS[0]))
    bad["mentions"][2]["mentions"][0]["end"] = 9  # one past the last token (inclusive end)
    with pytest.raises(DocumentError) as ei:
        read_documents(_write(tmp_path, "g.json", [bad]), "glidre")
    assert ei.value.doc_id == "7" and ei.value.field == "mentions[2].mentions[0]"

    bad = json.loads(json.dumps(GLIDRE_RECORDS[0]))
    bad["relations"] = [[0, "place of birth"]]
    with pytest.raises(DocumentError) as ei:
        read_documents(_write(tmp_path, "g.json", [bad]), "glidre")
    assert ei.value.field == "relations[0]"

    bad = json.loads(json.dumps(GLIDRE_RECORDS[0]))
    bad["relations"] = [[0, "place of birth", 9]]
    with pytest.raises(DocumentError) as ei:
        read_documents(_write(tmp_path, "g.json", [bad]), "glidre")
    assert ei.value.doc_id == "7" and ei.value.field == "relations[0].tail"


# -- CoNLL04 ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not CONLL_TRAIN.exists(), reason="benchmark data not present")
def test_conll04_first_documents():
    docs = read_documents(CONLL_TRAIN, "conll04", limit=2)
    assert len(docs) == 2
    d0, d1 = docs
    assert d0.doc_id == "3255"
    ents = [(d0.mention_text(e.mentions[0]), e.type) for e in d0.entities]
    assert ents == [("U.S.", "Loc"), ("Havana", "Loc"), ("Radio Reloj Network", "Org"),
                    ("2100 GMT", "Other"), ("13 Feb 94", "Other")]
    assert [(r.head, r.label, r.tail) for r in d0.relations] == [("2", "OrgBased_In", "1")]
    assert d1.doc_id == "95"
    assert [d1.mention_text(e.mentions[0]) for e in d1.entities] == [
        "150 , 000 hectares", "370 , 500 acres", "rice", "Bruno Pusterla", "Italian Agricultural Confederation"]
    rel = d1.relations[0]
    assert rel.label == "Work_For"
    assert d1.mention_text(d1.entity(rel.head).mentions[0]) == "Bruno Pusterla"
    assert d1.mention_text(d1.entity(rel.tail).mentions[0]) == "Italian Agricultural Confederation"


@pytest.mark.parametrize(
    "tags, field",
    [
        (["O", "L-Peop", "O"], "tags[1]"),          # L without B
        (["B-Org", "L-Peop", "O"], "tags[1]"),      # L of another type
        (["X-Peop", "O", "O"], "tags[0]"),          # unknown prefix
        (["B-Peop", "O", "O"], "tags[1]"),          # B never closed (would shift entity indices)
        (["O", "O", "B-Peop"], "tags[2]"),          # B never closed at the end
        (["B-Peop", "U-Loc", "O"], "tags[1]"),      # U inside an open span
        (["O", "I-Peop", "L-Peop"], "tags[1]"),     # I without B
        (["B-Peop", "I-Org", "L-Peop"], "tags[1]"), # I of another type
    ],
)
def test_conll04_bad_bilou(tmp_path, tags, field):
    rec = {"tokens": ["Bob", "is", "here"], "tags": tags, "relations": [], "orig_id": 1}
    with pytest.raises(DocumentError) as ei:
        read_documents(_write(tmp_path, "c.json", [rec]), "conll04")
    assert ei.value.doc_id == "1" and ei.value.field == field


@pytest.mark.skipif(not CONLL_TRAIN.exists(), reason="benchmark data not present")
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_conll04_all_splits_read_strictly(split):
    path = DATA / "conll04" / f"conll04_{split}.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    docs = read_documents(path, "conll04")
    assert len(docs) == len(raw)
    assert sum(len(d.relations) for d in docs) == sum(len(r["relations"]) for r in raw)


def test_conll04_tag_count_mismatch(tmp_path):
    rec = {"tokens": ["Bob", "is", "here"], "tags": ["U-Peop"], "relations": [], "orig_id": 4}
    with pytest.raises(DocumentError) as ei:
        read_documents(_write(tmp_path, "c.json", [rec]), "conll04")
    assert ei.value.doc_id == "4" and ei.value.field == "tags"


def test_conll04_multi_token_spans_and_relation(tmp_path):
    rec = {
        "tokens": ["John", "Smith", "of", "New", "York", "City", "Bank", "visited", "Rome"],
        "tags": ["B-Peop", "L-Peop", "O", "B-Org", "I-Org", "I-Org", "L-Org", "O", "U-Loc"],
        "relations": [{"head": 0, "tail": 1, "type": "Work_For"}, {"head": 1, "tail": 2, "type": "OrgBased_In"}],
        "orig_id": 42,
    }
    (doc,) = read_documents(_write(tmp_path, "c.json", [rec]), "conll04")
    assert [(doc.mention_text(e.mentions[0]), e.type) for e in doc.entities] == [
        ("John Smith", "Peop"), ("New York City Bank", "Org"), ("Rome", "Loc")]
    assert [(r.head, r.label, r.tail) for r in doc.relations] == [("0", "Work_For", "1"), ("1", "OrgBased_In", "2")]


# -- JSONL -----------------------------------------------------------------------------------------

def _jsonl(tmp_path: Path) -> Path:
    good1 = {"doc_id": "a", "text": "Alice met Bob .", "entities": [
        {"id": "x", "type": "PER", "mentions": [{"start": 0, "end": 5}]},
        {"id": "y", "mentions": [{"start": 10, "end": 13}]}],
        "relations": [{"head": "x", "type": "knows", "tail": "y"}]}
    good2 = {"doc_id": "b", "text": "No entities here ."}
    bad_doc = {"doc_id": "c", "text": "Short", "entities": [{"id": "z", "mentions": [{"start": 0, "end": 50}]}]}
    p = tmp_path / "docs.jsonl"
    p.write_text(
        json.dumps(good1) + "\n" + "{not json at all\n" + "\n" + json.dumps(good2) + "\n" + json.dumps(bad_doc) + "\n",
        encoding="utf-8",
    )
    return p


def test_jsonl_valid_lines(tmp_path):
    p = tmp_path / "ok.jsonl"
    p.write_text('{"doc_id": "a", "text": "Hello there ."}\n\n{"text": "No id given ."}\n', encoding="utf-8")
    docs = read_documents(p, "jsonl")
    assert [d.doc_id for d in docs] == ["a", "ok.jsonl:3"]  # missing id -> file:line
    assert docs[1].text == "No id given ."


def test_jsonl_bad_line_raises_naming_the_line(tmp_path):
    with pytest.raises(DocumentError) as ei:
        read_documents(_jsonl(tmp_path), "jsonl", on_error="raise")
    assert ei.value.doc_id == "docs.jsonl:2"
    assert ei.value.field == "<line>"
    assert "not valid JSON" in str(ei.value)


def test_jsonl_bad_lines_skipped(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="glidre_core.readers"):
        docs = read_documents(_jsonl(tmp_path), "jsonl", on_error="skip")
    assert [d.doc_id for d in docs] == ["a", "b"]
    assert docs[0].relations[0].label == "knows"  # "type" accepted for the label
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "docs.jsonl:2" in messages and "'c'" in messages  # both skips are logged


def test_jsonl_limit(tmp_path):
    docs = read_documents(_jsonl(tmp_path), "jsonl", limit=1)
    assert [d.doc_id for d in docs] == ["a"]


def test_duplicate_document_ids_in_input(tmp_path):
    p = tmp_path / "dup.jsonl"
    p.write_text('{"doc_id": "a", "text": "one"}\n{"doc_id": "a", "text": "two"}\n', encoding="utf-8")
    with pytest.raises(DocumentError) as ei:
        read_documents(p, "jsonl")
    assert ei.value.doc_id == "a" and ei.value.field == "doc_id"
    assert [d.text for d in read_documents(p, "jsonl", on_error="skip")] == ["one"]


# -- general ---------------------------------------------------------------------------------------

def test_unknown_format_raises(tmp_path):
    p = _write(tmp_path, "x.json", [])
    with pytest.raises(ValueError, match="unknown format 'csv'.*docred"):
        read_documents(p, "csv")


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_documents(tmp_path / "nope.json", "docred")


def test_json_formats_need_an_array(tmp_path):
    p = _write(tmp_path, "obj.json", {"title": "x"})
    with pytest.raises(ValueError, match="JSON array"):
        read_documents(p, "glidre")
