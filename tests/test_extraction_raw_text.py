"""The extraction job on documents WITHOUT entities: with a span-head model they take the joint
path (entities predicted, then relations), with a relation-only model they become clear
``NoEntities`` error rows, and in both cases the documents given with entities are unaffected.

Models are tiny with random weights: a random span head scores every span near 0.5, so with
``entity_threshold`` 0.3 it predicts entities in every raw text; that is enough to check the
plumbing (offsets, sources, counts) and that the job's rows equal the library's own
``GLiDRE.extract_documents`` output for the same settings.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from conftest import tiny_config
from extraction_support import (
    LABELS, base_values, expected_pairs, read_table, sample_records, save_tiny_model, write_jsonl,
)
from glidre_core import GLiDRE
from glidre_core.documents import parse_document
from glidre_core.extraction import LabelError, load_extract_config, run_extraction
from glidre_core.extraction.labels import entity_threshold_spec, resolve_entity_labels
from glidre_core.extraction.schemas import PREPARED, RESULT
from glidre_core.extraction.udf import Extractor, TokenizerSpec, preprocess_record
from glidre_core.model_loading import load_model

TYPES = ["person", "location"]
ENTITY_THRESHOLD = 0.3
RAW = [
    {"doc_id": "raw-1", "text": "Marie Curie lived in Paris . Curie liked Paris ."},
    {"doc_id": "raw-2", "text": "Niels Bohr was born in Copenhagen .", "entities": []},
    {"doc_id": "raw-3", "text": "Lise Meitner worked in Berlin and later moved to Stockholm .", "title": "Meitner"},
]
BROKEN = '{"doc_id": "broken", "text": "Paris'  # not JSON


@pytest.fixture(scope="module")
def span_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(span_head=True, max_span_width=3, entity_labels=TYPES))
    model.eval()
    return model.save_pretrained(tmp_path_factory.mktemp("span") / "model")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Given-entity documents with the raw texts and one broken line spread between them."""
    given = sample_records(5)
    lines = [json.dumps(given[0]), json.dumps(RAW[0]), json.dumps(given[1]), BROKEN, json.dumps(RAW[1]),
             *(json.dumps(r) for r in given[2:]), json.dumps(RAW[2])]
    return write_jsonl(tmp_path_factory.mktemp("in") / "mixed.jsonl", lines), given


def _run(**values):
    return run_extraction(load_extract_config(None, values=values))


def _by_doc(table: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["doc_id"], []).append(row)
    return out


def _check_mentions(text: str, entity: dict) -> None:
    assert entity["mention_count"] == len(entity["mentions"]) >= 1
    for m in entity["mentions"]:
        assert text[m["start"] : m["end"]] == m["text"] and m["text"].strip()


# -- the job on a span-head model -----------------------------------------------------------------
def test_raw_text_documents_get_predicted_entities_and_relations(ray_session, span_dir, corpus, tmp_path):
    path, given = corpus
    out = tmp_path / "out"
    manifest = _run(input=str(path), output=str(out), entity_threshold=ENTITY_THRESHOLD,
                    **base_values(span_dir, entity_labels=TYPES))
    n_docs = len(given) + len(RAW) + 1
    assert manifest["docs_read"] == n_docs == manifest["docs_extracted"] + manifest["docs_failed"]
    assert (manifest["docs_extracted"], manifest["docs_failed"], manifest["reconciled"]) == (n_docs - 1, 1, True)
    assert manifest["docs_with_predicted_entities"] == len(RAW) == manifest["this_run"]["docs_with_predicted_entities"]
    assert manifest["entity_labels"] == TYPES and manifest["entity_threshold"] == ENTITY_THRESHOLD
    assert manifest["coreference"] == "rules" and manifest["schema_version"] == 4

    fs = pa.fs.LocalFileSystem()
    errors = read_table(fs, str(out / "errors")).to_pylist()
    assert [(e["doc_id"], e["error_type"]) for e in errors] == [("mixed.jsonl:4", "invalid_json")]
    ledger = {r["doc_id"]: r for r in read_table(fs, str(out / "documents")).to_pylist()}
    assert {d for d, r in ledger.items() if r["entity_source"] == "predicted"} == {r["doc_id"] for r in RAW}
    assert {d for d, r in ledger.items() if r["entity_source"] == "given"} == {r["doc_id"] for r in given}

    entities = _by_doc(read_table(fs, str(out / "entities")))
    texts = {r["doc_id"]: r["text"] for r in given + RAW}
    for rec in given:
        rows = entities[rec["doc_id"]]
        assert [e["entity_id"] for e in rows] == [e["id"] for e in rec["entities"]]
        assert all(e["entity_source"] == "given" and e["score"] is None for e in rows)
        for e in rows:
            _check_mentions(texts[rec["doc_id"]], e)
            assert all(m["score"] is None for m in e["mentions"])
    # the end-of-run counts of what rests on predicted entities
    assert manifest["entities_predicted"] == sum(len(entities[r["doc_id"]]) for r in RAW)
    triplets = read_table(fs, str(out / "triplets"))
    raw_ids = {r["doc_id"] for r in RAW}
    assert manifest["triplets_from_predicted_entities"] == sum(d in raw_ids for d in triplets.column("doc_id").to_pylist())
    for rec in RAW:
        rows = entities[rec["doc_id"]]
        assert rows and all(e["entity_source"] == "predicted" and e["type"] in TYPES for e in rows)
        assert ledger[rec["doc_id"]]["num_entities"] == len(rows)
        for e in rows:
            _check_mentions(texts[rec["doc_id"]], e)
            assert ENTITY_THRESHOLD < e["score"] < 1 and e["score"] == max(m["score"] for m in e["mentions"])

    # Triplets: given documents exactly as before (one per ordered pair); raw documents exactly
    # what the library's joint extraction returns for the same model and settings.
    triplets = read_table(fs, str(out / "triplets"))
    per_doc = Counter(triplets.column("doc_id").to_pylist())
    assert sum(per_doc[r["doc_id"]] for r in given) == expected_pairs(given)
    model = load_model(str(span_dir))
    want = model.extract_documents([parse_document(r) for r in RAW], TYPES, LABELS, entity_threshold=ENTITY_THRESHOLD,
                                   threshold=base_values(span_dir)["threshold"], top_k=1)
    got_trip = {(r["doc_id"], r["head_id"], r["relation"], r["tail_id"]) for r in triplets.to_pylist()
                if r["doc_id"] in texts and r["doc_id"].startswith("raw-")}
    want_trip = {(res.document.doc_id, r["head_id"], r["relation"], r["tail_id"]) for res in want for r in res.relations}
    assert got_trip == want_trip and len(got_trip) == sum(len(res.relations) for res in want)
    for res in want:
        rows = entities[res.document.doc_id]
        assert [(e["entity_id"], e["type"], [(m["start"], m["end"]) for m in e["mentions"]]) for e in rows] == [
            (e["id"], e["type"], [(m["start"], m["end"]) for m in e["mentions"]]) for e in res.entities]


# -- the job on a model without a span head ---------------------------------------------------------
def test_raw_text_without_span_head_fails_those_documents_only(ray_session, tiny_dir, corpus, tmp_path):
    path, given = corpus
    out = tmp_path / "out"
    manifest = _run(input=str(path), output=str(out), **base_values(tiny_dir))
    assert manifest["docs_read"] == len(given) + len(RAW) + 1 == manifest["docs_extracted"] + manifest["docs_failed"]
    assert (manifest["docs_extracted"], manifest["docs_failed"]) == (len(given), len(RAW) + 1)
    assert manifest["docs_with_predicted_entities"] == 0 and manifest["entity_labels"] is None
    assert manifest["reconciled"]

    fs = pa.fs.LocalFileSystem()
    errors = {e["doc_id"]: e for e in read_table(fs, str(out / "errors")).to_pylist()}
    assert errors.keys() == {"mixed.jsonl:4"} | {r["doc_id"] for r in RAW}
    for rec in RAW:
        e = errors[rec["doc_id"]]
        assert (e["stage"], e["error_type"], e["field"]) == ("extract", "NoEntities", "entities")
        assert repr(rec["doc_id"]) in e["message"] and "field 'entities'" in e["message"]
        assert "the model has no entity head; give entities or use a model with span_head" in e["message"]
    triplets = read_table(fs, str(out / "triplets"))
    assert triplets.num_rows == expected_pairs(given)
    assert set(triplets.column("doc_id").to_pylist()) == {r["doc_id"] for r in given}
    entities = read_table(fs, str(out / "entities"))
    assert set(entities.column("entity_source").to_pylist()) == {"given"}


# -- the actor in-process: one failing raw document does not take the others down -----------------
def test_extractor_isolates_a_failing_raw_document(span_dir):
    spec = TokenizerSpec.from_model(load_model(str(span_dir)))
    records = [sample_records(1)[0], *RAW]
    rows = [preprocess_record("s.jsonl", i + 1, json.dumps(r).encode(), spec, max_entities=100, max_text_chars=10**6)
            for i, r in enumerate(records)]
    tokens = json.loads(rows[2]["tokens"])
    tokens["ids"][0] = 10**7  # out of the vocabulary: this document's forward pass fails
    rows[2] = {**rows[2], "tokens": json.dumps(tokens)}
    ex = Extractor(model_ref=str(span_dir), labels=LABELS, threshold=0.001, top_k=1, entity_threshold=ENTITY_THRESHOLD)
    out = ex(pa.Table.from_pylist(rows, schema=PREPARED))
    assert out.schema == RESULT
    res = out.to_pylist()
    assert [(r["status"], r["entity_source"]) for r in res] == [
        ("extracted", "given"), ("extracted", "predicted"), ("failed", None), ("extracted", "predicted")]
    assert res[2]["stage"] == "extract" and "raw-2" in res[2]["message"]
    assert all(r["num_entities"] == len(r["entities"]) > 0 for r in (res[1], res[3]))


# -- settings: fail fast on the driver ---------------------------------------------------------------
def test_entity_settings_are_validated(tmp_path, span_dir, corpus):
    assert resolve_entity_labels("conll04") == ["person", "organization", "location", "other"]
    assert resolve_entity_labels(None, TYPES) == TYPES
    f = tmp_path / "types.txt"
    f.write_text("# entity types\nperson\n\nlocation\n")
    assert resolve_entity_labels(str(f)) == TYPES
    f.write_text("Person\nperson\n")
    with pytest.raises(LabelError, match="duplicate entity type"):
        resolve_entity_labels(str(f), normalize=str.lower)
    assert entity_threshold_spec(TYPES, {"person": 0.4}) == {"person": 0.4}
    with pytest.raises(LabelError, match="not in the entity types"):
        entity_threshold_spec(TYPES, {"city": 0.4})
    with pytest.raises(ValueError, match="entity_threshold"):
        load_extract_config(None, values={"input": "x", "output": "y", "entity_threshold": 1.5})
    with pytest.raises(ValueError):
        load_extract_config(None, values={"input": "x", "output": "y", "coreference": "magic"})
    # an unknown type in the per-type threshold fails before any Ray work or output is written
    path, _ = corpus
    with pytest.raises(LabelError, match="city"):
        _run(input=str(path), output=str(tmp_path / "o"), **base_values(span_dir, entity_threshold={"city": 0.4}))
    assert not (tmp_path / "o").exists()


# -- spaCy as the entity recognizer (the optional [spacy] extra) ------------------------------------
def test_spacy_recognizer_gives_raw_text_entities_to_a_model_without_span_head(ray_session, tiny_dir, corpus, tmp_path):
    """Same corpus and the same model without a span head that fails raw documents above: with
    ``entity_recognizer: spacy`` they are extracted, their entities found by spaCy."""
    path, given = corpus
    out = tmp_path / "out"
    manifest = _run(input=str(path), output=str(out), **base_values(tiny_dir, entity_recognizer="spacy",
                                                                   entity_labels=TYPES))
    assert manifest["entity_recognizer"] == "spacy" and manifest["reconciled"]
    assert (manifest["docs_extracted"], manifest["docs_failed"]) == (len(given) + len(RAW), 1)
    assert manifest["docs_with_predicted_entities"] == len(RAW)
    fs = pa.fs.LocalFileSystem()
    entities = [e for e in read_table(fs, str(out / "entities")).to_pylist() if e["entity_source"] == "predicted"]
    texts = {r["doc_id"]: r["text"] for r in RAW}
    assert entities and all(e["type"] in TYPES and e["score"] is None for e in entities)
    for e in entities:
        _check_mentions(texts[e["doc_id"]], e)
