"""Open relation labels from dependency paths (glidre_core/training/syntactic_labels.py), with the
real offline spaCy pipeline (the [spacy] extra, installed with the test extra)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from glidre_core.cli import main
from glidre_core.documents import parse_document
from glidre_core.readers import read_documents
from glidre_core.training.syntactic_labels import SyntacticLabeller, load_spacy_parser, write_syntax_corpus
from paths import SHARED_DATA


@pytest.fixture(scope="module")
def nlp():
    return load_spacy_parser()


def make_doc(doc_id: str, sentences: list[str], entities: dict[str, list[str]]) -> dict:
    """A document from sentences and entity surface forms (every occurrence is a mention)."""
    text, spans = "", []
    for s in sentences:
        start = len(text) + (1 if text else 0)
        text = f"{text} {s}" if text else s
        spans.append((start, len(text)))
    ents = []
    for eid, names in entities.items():
        mentions = []
        for name in names:
            at = text.find(name)
            while at >= 0:
                sid = next(k for k, (s, e) in enumerate(spans) if s <= at < e)
                mentions.append({"start": at, "end": at + len(name), "sent_id": sid})
                at = text.find(name, at + 1)
        ents.append({"id": eid, "type": "X", "mentions": mentions})
    return {"doc_id": doc_id, "text": text, "sentences": spans, "entities": ents,
            "relations": [{"head": next(iter(entities)), "label": "gold label", "tail": list(entities)[-1]}]}


def facts(doc) -> set[tuple[str, str, str]]:
    return {(r.head, r.label, r.tail) for r in doc.relations}


def test_the_path_words_become_the_label_in_sentence_order(nlp):
    doc = parse_document(make_doc("d1", [
        "Angela Merkel was born in Hamburg.",
        "Paris is the capital of France.",
        "The company was founded by Steve Jobs.",
    ], {"merkel": ["Angela Merkel"], "hamburg": ["Hamburg"], "paris": ["Paris"], "france": ["France"],
        "company": ["The company"], "jobs": ["Steve Jobs"]}))
    (out,), stats = SyntacticLabeller(nlp).label_documents([doc])
    got = facts(out)
    assert ("merkel", "born in", "hamburg") in got
    assert ("paris", "capital of", "france") in got
    assert ("company", "founded by", "jobs") in got
    # the gold relations are replaced, and only pairs within one sentence are labelled
    assert not any(lab == "gold label" for _, lab, _ in got)
    assert not any({h, t} == {"merkel", "paris"} for h, _, t in got)
    assert stats.documents == 1 and stats.sentences == 3 and stats.paths_kept == len(got)


def test_coordinated_entities_are_not_related_by_their_conjunction(nlp):
    doc = parse_document(make_doc("d2", ["Alice and Bob visited Rome."],
                                  {"alice": ["Alice"], "bob": ["Bob"], "rome": ["Rome"]}))
    (out,), stats = SyntacticLabeller(nlp).label_documents([doc])
    got = facts(out)
    assert not any({h, t} == {"alice", "bob"} for h, _, t in got)
    assert ("alice", "visited", "rome") in got
    assert stats.dropped["coordination"] >= 1


def test_excluded_names_and_rare_labels_never_reach_the_corpus(nlp):
    docs = [parse_document(make_doc(f"d{k}", ["Paris is the capital of France.", "Angela Merkel was born in Hamburg."],
                                    {"paris": ["Paris"], "france": ["France"], "merkel": ["Angela Merkel"],
                                     "hamburg": ["Hamburg"]}))
            for k in range(2)]
    docs.append(parse_document(make_doc("d9", ["Lyon is the capital of Rhone."], {"lyon": ["Lyon"], "rhone": ["Rhone"]})))
    labelled, stats = SyntacticLabeller(nlp, exclude=["Born In"], min_count=3).label_documents(docs)
    labels = {lab for d in labelled for _, lab, _ in facts(d)}
    assert labels == {"capital of"}  # 3 times; "born in" is excluded whatever its casing
    assert stats.dropped["excluded name"] == 2
    assert stats.label_counts["capital of"] == 3
    # documents left without relations are kept: every input document is in the output
    assert [d.doc_id for d in labelled] == ["d0", "d1", "d9"]


def test_a_document_without_sentence_spans_is_named_in_the_error(nlp):
    raw = make_doc("no-sentences", ["Paris is the capital of France."], {"paris": ["Paris"], "france": ["France"]})
    raw.pop("sentences")
    for ent in raw["entities"]:
        for m in ent["mentions"]:
            m.pop("sent_id")
    with pytest.raises(ValueError, match="'no-sentences'.*'sentences'"):
        SyntacticLabeller(nlp).label_documents([parse_document(raw)])


def test_the_corpus_reads_back_as_training_data_with_its_manifest(nlp, tmp_path):
    docs = [parse_document(make_doc("a", ["Paris is the capital of France."], {"paris": ["Paris"], "france": ["France"]})),
            parse_document(make_doc("b", ["It rained."], {"it": ["It"], "rain": ["rained"]}))]
    out = tmp_path / "corpus.jsonl"
    manifest = write_syntax_corpus(docs, out, SyntacticLabeller(nlp))
    back = read_documents(out, "jsonl")
    assert [d.doc_id for d in back] == ["a", "b"]
    assert facts(back[0]) == {("paris", "capital of", "france")}
    assert manifest["documents_written"] == 2 and manifest["relations_written"] == 1
    assert json.loads((tmp_path / "corpus.jsonl.manifest.json").read_text())["labels"] == 1
    with pytest.raises(FileExistsError):
        write_syntax_corpus(docs, out, SyntacticLabeller(nlp))


def test_cli_writes_a_corpus_from_docred_documents(tmp_path):
    out = tmp_path / "c.jsonl"
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("born in\n")
    res = CliRunner().invoke(main, ["syntax-labels", "--data", str(SHARED_DATA / "docred" / "test.json"), "--limit", "20",
                                    "--output", str(out), "--exclude", str(exclude)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[: res.output.rindex("}") + 1])
    assert summary["documents_written"] == 20 and summary["relations_written"] > 0
    labels = {r.label for d in read_documents(out, "jsonl") for r in d.relations}
    assert labels and "born in" not in labels
