"""Official DocRED-style metrics on hand-made documents (glidre_core.metrics).

Expected numbers are worked out by hand in the comments.
"""

from __future__ import annotations

import pytest

from glidre_core import parse_document
from glidre_core.metrics import evaluate_facts, gold_facts, sweep_threshold, train_fact_names


def _doc(doc_id, sentences, entities, relations):
    """Build a document from sentences and entities given as [(surface, sent_id, name?), ...]."""
    text = " ".join(sentences)
    sent_spans, pos = [], 0
    for s in sentences:
        sent_spans.append((pos, pos + len(s)))
        pos += len(s) + 1
    ents = []
    for eid, mentions in entities.items():
        ms = []
        for surface, sent_id, *name in mentions:
            a, b = sent_spans[sent_id]
            start = text.index(surface, a, b)
            m = {"start": start, "end": start + len(surface), "sent_id": sent_id}
            if name:
                m["name"] = name[0]
            ms.append(m)
        ents.append({"id": eid, "mentions": ms})
    rels = [{"head": h, "label": r, "tail": t} for h, r, t in relations]
    return parse_document({"doc_id": doc_id, "text": text, "entities": ents, "relations": rels,
                           "sentences": sent_spans})


@pytest.fixture
def docs():
    d1 = _doc(
        "d1",
        ["Alice lives in Paris .", "Bob works for Acme in Paris ."],
        {"e0": [("Alice", 0)], "e1": [("Paris", 0), ("Paris", 1)], "e2": [("Bob", 1)], "e3": [("Acme", 1)]},
        [("e0", "lives_in", "e1"), ("e2", "works_for", "e3"), ("e3", "located_in", "e1"),
         ("e0", "knows", "e2")],
    )
    d2 = _doc(
        "d2",
        ["Carol met Dave .", "Dave founded Zeta ."],
        # Dave's second mention carries an annotated name different from its surface
        {"e0": [("Carol", 0)], "e1": [("Dave", 0), ("Dave", 1, "David")], "e2": [("Zeta", 1)]},
        [("e1", "founded", "e2"), ("e0", "met", "e1"), ("e0", "knows", "e2")],
    )
    return [d1, d2]


# 4 correct out of 6 scored predictions; 7 gold facts
PREDICTIONS = [
    ("d1", "e0", "lives_in", "e1"),    # correct, intra
    ("d1", "e2", "works_for", "e3"),   # correct, intra
    ("d1", "e0", "knows", "e2"),       # correct, inter
    ("d1", "e1", "lives_in", "e0"),    # wrong, intra (Paris and Alice share sentence 0)
    ("d2", "e1", "founded", "e2"),     # correct, intra
    ("d2", "e2", "founded", "e0"),     # wrong, inter
    ("zz", "e0", "knows", "e1"),       # unknown document: ignored
    ("d1", "e0", "lives_in", "e1"),    # duplicate: counted once
]


def test_gold_facts(docs):
    gold = gold_facts(docs)
    assert len(gold) == 7
    assert ("d2", "e0", "knows", "e2") in gold


def test_precision_recall_f1(docs):
    res = evaluate_facts(docs, PREDICTIONS)
    assert (res["correct"], res["predicted"], res["gold"]) == (4, 6, 7)
    assert res["precision"] == pytest.approx(4 / 6)
    assert res["recall"] == pytest.approx(4 / 7)
    assert res["f1"] == pytest.approx(8 / 13)
    # without training facts, Ign F1 equals F1
    assert res["ign_f1"] == pytest.approx(res["f1"])
    assert res["correct_in_train"] == 0


def test_perfect_and_empty_predictions(docs):
    gold = sorted(gold_facts(docs))
    perfect = evaluate_facts(docs, gold)
    assert perfect["f1"] == pytest.approx(1.0) and perfect["ign_f1"] == pytest.approx(1.0)
    empty = evaluate_facts(docs, [])
    assert (empty["precision"], empty["recall"], empty["f1"], empty["ign_f1"]) == (0.0, 0.0, 0.0, 0.0)


def test_train_fact_names_uses_every_mention_name_pair():
    train = _doc(
        "t1",
        ["Alice Smith lives in Paris .", "Smith likes the French capital ."],
        {"a": [("Alice Smith", 0), ("Smith", 1)], "p": [("Paris", 0), ("French capital", 1, "Paris, France")]},
        [("a", "lives_in", "p")],
    )
    assert train_fact_names([train]) == {
        ("Alice Smith", "Paris", "lives_in"), ("Alice Smith", "Paris, France", "lives_in"),
        ("Smith", "Paris", "lives_in"), ("Smith", "Paris, France", "lives_in"),
    }


def test_ign_f1_official_formula(docs):
    train_docs = [
        _doc("t1", ["Alice moved to Paris ."], {"a": [("Alice", 0)], "p": [("Paris", 0)]},
             [("a", "lives_in", "p")]),
        # "David" (an annotated mention name of d2's e1) founded Zeta
        _doc("t2", ["David founded Zeta ."], {"d": [("David", 0)], "z": [("Zeta", 0)]},
             [("d", "founded", "z")]),
        # same names as the correct (Bob, works_for, Acme) but a different relation: not counted
        _doc("t3", ["Bob knows Acme ."], {"b": [("Bob", 0)], "a": [("Acme", 0)]}, [("b", "knows", "a")]),
        # matches the *wrong* prediction (Paris, lives_in, Alice): wrong predictions never count
        _doc("t4", ["Paris lives in Alice ."], {"p": [("Paris", 0)], "a": [("Alice", 0)]},
             [("p", "lives_in", "a")]),
    ]
    train = train_fact_names(train_docs)
    res = evaluate_facts(docs, PREDICTIONS, train_facts=train)
    # correct in train: d1 (Alice, Paris, lives_in) and d2 (David, Zeta, founded)
    assert res["correct_in_train"] == 2
    ign_p = (4 - 2) / (6 - 2)
    recall = 4 / 7
    assert res["ign_precision"] == pytest.approx(ign_p)
    assert res["recall"] == pytest.approx(recall)  # unchanged
    assert res["ign_f1"] == pytest.approx(2 * ign_p * recall / (ign_p + recall))
    assert res["ign_f1"] < res["f1"]
    assert res["f1"] == pytest.approx(8 / 13)  # plain F1 unaffected


def test_per_relation(docs):
    per = evaluate_facts(docs, PREDICTIONS)["per_relation"]
    assert set(per) == {"lives_in", "works_for", "located_in", "knows", "founded", "met"}
    expect = {  # (correct, predicted, gold)
        "lives_in": (1, 2, 1), "works_for": (1, 1, 1), "located_in": (0, 0, 1),
        "knows": (1, 1, 2), "founded": (1, 2, 1), "met": (0, 0, 1),
    }
    for rel, (c, p, g) in expect.items():
        assert (per[rel]["correct"], per[rel]["predicted"], per[rel]["gold"]) == (c, p, g), rel
    assert per["lives_in"]["precision"] == pytest.approx(0.5)
    assert per["lives_in"]["recall"] == pytest.approx(1.0)
    assert per["lives_in"]["f1"] == pytest.approx(2 / 3)
    assert per["knows"]["recall"] == pytest.approx(0.5)
    assert per["located_in"]["f1"] == 0.0


def test_intra_vs_inter_sentence(docs):
    res = evaluate_facts(docs, PREDICTIONS)
    # gold intra: lives_in, works_for, located_in (d1), founded, met (d2); inter: the two knows
    intra, inter = res["intra"], res["inter"]
    assert (intra["correct"], intra["predicted"], intra["gold"]) == (3, 4, 5)
    assert (inter["correct"], inter["predicted"], inter["gold"]) == (1, 2, 2)
    assert intra["f1"] == pytest.approx(2 * 3 / (4 + 5))
    assert inter["f1"] == pytest.approx(0.5)


def test_intra_inter_absent_without_sentence_ids():
    text = "Alice lives in Paris ."
    doc = parse_document({"doc_id": "x", "text": text, "entities": [
        {"id": "a", "mentions": [{"start": 0, "end": 5}]},
        {"id": "p", "mentions": [{"start": 15, "end": 20}]},
    ], "relations": [{"head": "a", "label": "lives_in", "tail": "p"}]})
    res = evaluate_facts([doc], [("x", "a", "lives_in", "p")])
    assert res["f1"] == pytest.approx(1.0)
    assert "intra" not in res and "inter" not in res


def test_frequent_vs_long_tail(docs):
    res = evaluate_facts(docs, PREDICTIONS, frequent_top_k=1)
    # "knows" is the only relation with 2 gold facts
    assert (res["frequent"]["correct"], res["frequent"]["predicted"], res["frequent"]["gold"]) == (1, 1, 2)
    assert (res["long_tail"]["correct"], res["long_tail"]["predicted"], res["long_tail"]["gold"]) == (3, 5, 5)


def _f1_at(scored, gold, threshold):
    kept = {f for f, s in scored if s > threshold}
    c = len(kept & gold)
    return 2 * c / (len(kept) + len(gold))


def test_sweep_threshold_best_cut():
    f = [("d", "a", f"r{i}", "b") for i in range(6)]
    scored = [(f[0], 0.9), (f[1], 0.8), (f[2], 0.7), (f[3], 0.6), (f[4], 0.3), (f[5], 0.02)]
    gold = {f[0], f[1], f[3], f[5]}  # f5 is below the floor: never predictable
    # cuts: k=1 2/5, k=2 4/6, k=3 4/7, k=4 6/8 (best), k=5 6/9
    sweep = sweep_threshold(scored, gold)
    assert sweep.best_f1 == pytest.approx(0.75)
    assert sweep.best_threshold == pytest.approx(0.45)  # midpoint of 0.6 and 0.3
    assert _f1_at(scored, gold, sweep.best_threshold) == pytest.approx(sweep.best_f1)
    curve = dict(sweep.curve)
    assert curve[0.5] == pytest.approx(0.75)
    assert curve[0.95] == pytest.approx(0.0)


def test_sweep_threshold_does_not_cut_between_ties():
    f = [("d", "a", f"r{i}", "b") for i in range(4)]
    scored = [(f[0], 0.9), (f[1], 0.5), (f[2], 0.5), (f[3], 0.1)]
    gold = {f[0], f[1]}
    # keeping only f0, f1 (F1 = 1.0) would need a cut inside the 0.5 tie: unreachable.
    # reachable: k=1 -> 2/3, k=3 -> 4/5 (best), k=4 -> 4/6
    sweep = sweep_threshold(scored, gold)
    assert sweep.best_f1 == pytest.approx(0.8)
    assert sweep.best_threshold == pytest.approx(0.3)
    assert _f1_at(scored, gold, sweep.best_threshold) == pytest.approx(0.8)


def test_sweep_threshold_last_candidate_cut_uses_floor():
    f = [("d", "a", f"r{i}", "b") for i in range(2)]
    scored = [(f[0], 0.9), (f[1], 0.4)]
    gold = set(f)
    sweep = sweep_threshold(scored, gold, floor=0.2)
    assert sweep.best_f1 == pytest.approx(1.0)
    assert sweep.best_threshold == pytest.approx(0.3)  # midpoint of 0.4 and the floor
    assert _f1_at(scored, gold, sweep.best_threshold) == pytest.approx(1.0)


def test_evaluation_candidates_are_the_datasets_labels_not_the_models():
    import torch

    from glidre_core import GLiDRE, parse_document
    from glidre_core.evaluation import evaluate_model, evaluation_labels

    from conftest import tiny_config

    text = "Ada Lovelace met Charles Babbage in London ."
    ents = [{"id": n, "mentions": [{"start": text.index(n), "end": text.index(n) + len(n)}]}
            for n in ("Ada Lovelace", "Charles Babbage", "London")]
    doc = parse_document({"doc_id": "d", "text": text, "entities": ents,
                          "relations": [{"head": "Ada Lovelace", "label": "colleague", "tail": "Charles Babbage"}]})
    assert evaluation_labels([doc], "jsonl") == ["colleague"]
    docred = evaluation_labels([doc], "docred")
    assert len(docred) == 96 and "country" in docred and "colleague" not in docred
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(labels=["colleague", "spouse", "works for", "born in"]))
    model.eval()
    res = evaluate_model(model, [doc], threshold=1e-9)  # every candidate passes: counts show the label set
    assert res["labels"] == 1
    assert res["precision"] == pytest.approx(1 / 6)  # 6 ordered pairs x 1 label, one of them gold
