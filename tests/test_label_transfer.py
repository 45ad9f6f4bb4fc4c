"""Neighbour transfer for relation labels a model never trained on (glidre_core.modeling.label_transfer):
an unseen label's probability is borrowed from its nearest trained labels, inside the batched scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glidre_core import GLiDRE, parse_document
from glidre_core.modeling.label_transfer import neighbour_weights

from conftest import tiny_config

TEXT = "Marie Curie was born in Warsaw . She worked in Paris , France , with Pierre Curie ."
NAMES = ["Marie Curie", "Warsaw", "Paris", "France", "Pierre Curie"]
TRAINED = ["place of birth", "country", "spouse", "employer"]
UNSEEN = ["sibling", "head of state"]


def _doc():
    ents = []
    for i, n in enumerate(NAMES):
        s = TEXT.index(n)
        ents.append({"id": f"e{i}", "type": "PER" if "Curie" in n else "LOC",
                     "mentions": [{"start": s, "end": s + len(n)}]})
    return parse_document({"doc_id": "d", "text": TEXT, "entities": ents})


def _model(**overrides) -> GLiDRE:
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(labels=TRAINED, **overrides))
    model.eval()
    return model


def _probs(model: GLiDRE, labels: list[str]) -> np.ndarray:
    return model.predictor(relation_labels=labels).score_relations([_doc()])[0].probs


def _nearest(model: GLiDRE, label: str) -> list[str]:
    with torch.no_grad():
        sim = model.label_sentence_vectors([label]) @ model.label_sentence_vectors(TRAINED).T
    return [TRAINED[i] for i in sim[0].argsort(descending=True).tolist()]


def test_neighbour_weights_are_a_softmax_over_the_top_k():
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.0, 0.2, 0.1, 0.8]])
    w = neighbour_weights(sim, k=2, temperature=0.1)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert (w > 0).sum(1).tolist() == [2, 2]
    assert w[0, 0] > w[0, 2] > 0 and w[0, 1] == 0 and w[0, 3] == 0
    expected = torch.softmax(torch.tensor([0.9, 0.5]) / 0.1, dim=0)
    assert torch.allclose(w[0, [0, 2]], expected)
    assert (neighbour_weights(sim, k=10, temperature=1.0) > 0).all()  # k is capped at the trained labels


def test_off_by_default_and_for_trained_labels():
    model = _model()
    predictor = model.predictor(relation_labels=UNSEEN)
    assert predictor.scored_labels.labels == UNSEEN  # nothing extra is scored
    transfer = _model(unseen_label_transfer="neighbours")
    # only trained labels requested: no plan, the same probabilities as without transfer
    assert transfer.predictor(relation_labels=TRAINED[:2]).scored_labels.labels == TRAINED[:2]
    np.testing.assert_array_equal(_probs(transfer, TRAINED[:2]), _probs(model, TRAINED[:2]))


def test_k1_neighbours_copies_the_nearest_trained_label():
    plain = _model()
    model = _model(unseen_label_transfer="neighbours", unseen_label_neighbours=1)
    got = _probs(model, UNSEEN)
    assert got.shape[1] == len(UNSEEN)
    for j, label in enumerate(UNSEEN):
        nearest = _nearest(model, label)[0]
        np.testing.assert_allclose(got[:, j], _probs(plain, [nearest])[:, 0], rtol=1e-5, atol=1e-7)


def test_geomean_mixes_own_and_borrowed_and_trained_labels_keep_theirs():
    plain = _model()
    model = _model(unseen_label_transfer="geomean", unseen_label_neighbours=1)
    labels = [UNSEEN[0], "country"]  # an unseen and a trained label in one request
    got = _probs(model, labels)
    own = _probs(plain, labels)
    nearest = _probs(plain, [_nearest(model, UNSEEN[0])[0]])[:, 0]
    np.testing.assert_allclose(got[:, 0], np.sqrt(own[:, 0] * nearest), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[:, 1], own[:, 1], rtol=1e-6, atol=1e-7)
    # the trained label requested is not scored twice
    predictor = model.predictor(relation_labels=labels)
    assert predictor.scored_labels.labels.count("country") == 1
    assert len(predictor.scored_labels.labels) == len(TRAINED) + 1


def test_rows_name_only_requested_labels_and_config_round_trips(tmp_path):
    model = _model(unseen_label_transfer="neighbours", unseen_label_neighbours=2, unseen_label_temperature=0.05)
    rows = model.predict_documents([_doc()], UNSEEN, threshold=1e-9)[0]
    assert {r["relation"] for r in rows} == set(UNSEEN)
    model.save_pretrained(tmp_path / "m")
    loaded = GLiDRE.from_pretrained(tmp_path / "m")
    assert (loaded.config.unseen_label_transfer, loaded.config.unseen_label_neighbours,
            loaded.config.unseen_label_temperature) == ("neighbours", 2, 0.05)
    np.testing.assert_allclose(_probs(loaded, UNSEEN), _probs(model, UNSEEN), rtol=1e-5, atol=1e-7)


def test_joint_extraction_applies_the_transfer():
    plain = _model(span_head=True, entity_labels=["person", "location"])
    model = _model(span_head=True, entity_labels=["person", "location"], unseen_label_transfer="neighbours",
                   unseen_label_neighbours=1)
    kw = dict(entity_labels=["person", "location"], entity_threshold=1e-9, threshold=1e-9)
    got = model.extract(TEXT, relation_labels=[UNSEEN[0]], **kw)["relations"]
    nearest = _nearest(model, UNSEEN[0])[0]
    ref = plain.extract(TEXT, relation_labels=[nearest], **kw)["relations"]
    assert got and len(got) == len(ref)
    assert sorted(r["score"] for r in got) == pytest.approx(sorted(r["score"] for r in ref), rel=1e-5)


def test_zero_shot_rules_keep_and_threshold_by_the_chosen_score():
    """benchmarks/zero_shot_rules.py: the gate keeps only candidates whose pair a trained label
    relates, and the threshold sweep ranks by the rule's score (P(u|p), or P(u|p) * related)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "zero_shot_rules.py"
    spec = importlib.util.spec_from_file_location("zero_shot_rules", path)
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    prob = np.array([0.9, 0.8, 0.6, 0.3])
    best_seen = np.array([0.01, 0.02, 0.9, 0.7])  # the two likeliest are on unrelated pairs
    hit = np.array([False, False, True, True])
    c = {"prob": prob, "best_seen": best_seen, "related": prob * best_seen, "ratio": prob / best_seen,
         "top1": np.ones(4, bool), "hit": hit, "gold": np.array(2)}
    assert rules.keep_mask(c, False, None, 0.5).tolist() == [False, False, True, True]
    tau, f1 = rules.best_threshold(c, rules.keep_mask(c, False, None))
    assert tau == pytest.approx(0.3) and f1 == pytest.approx(2 * 2 / (4 + 2))  # by P(u|p): all four
    tau, f1 = rules.best_threshold(c, rules.keep_mask(c, False, None), "related")
    assert f1 == pytest.approx(1.0) and tau == pytest.approx(0.21)
    assert rules.score(c, rules.keep_mask(c, False, None), tau, "related")["tp"] == 2
    assert {r[3] for r in rules.RULES} == {"prob", "related"}


def test_zero_shot_rules_evidence_scores_and_spans():
    """--evidence: ev(u|p) is a softmax over the unseen labels of a pair's span cosines (0 for a
    pair without a common sentence), multiplied by the model's relatedness; top1 is per pair; the
    span runs from one closest same-sentence mention to the other."""
    import importlib.util
    from pathlib import Path

    from glidre_core.documents import parse_document

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "zero_shot_rules.py"
    spec = importlib.util.spec_from_file_location("zero_shot_rules_ev", path)
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    # 2 pairs x 2 unseen labels; pair 0 has a sentence (cosines 0.3, 0.1), pair 1 has none
    sim = np.array([0.3, 0.1, np.nan, np.nan], dtype=np.float32)
    c = {"prob": np.array([0.2, 0.4, 0.9, 0.9]), "best_seen": np.array([0.5, 0.5, 0.9, 0.9]),
         "best_unseen": np.array([0.4, 0.4, 0.9, 0.9]), "sim": sim, "n_labels": np.array(2),
         "hit": np.array([True, False, False, False]), "gold": np.array(1)}
    e = rules.add_evidence_scores(c, temperature=0.1)
    ev0 = np.exp(2.0) / (np.exp(2.0) + 1.0)  # softmax of (3, 1)
    np.testing.assert_allclose(e["related*ev"], [0.5 * ev0, 0.5 * (1 - ev0), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(e["prob*ev"], [0.2 * ev0, 0.4 * (1 - ev0), 0, 0], rtol=1e-6)
    assert e["top1:related*ev"].tolist() == [True, False, False, False]  # no label for the sentence-less pair
    tau, f1 = rules.best_threshold(e, e["top1:unseen*ev"], "unseen*ev")
    assert f1 == pytest.approx(1.0) and tau == pytest.approx(0.4 * ev0, rel=1e-6)
    text = "Alpha met Beta . Gamma ."
    doc = parse_document({"doc_id": "d", "text": text, "sentences": [[0, 15], [16, 23]], "entities": [
        {"id": "a", "type": "X", "mentions": [{"start": 0, "end": 5}]},
        {"id": "b", "type": "X", "mentions": [{"start": 10, "end": 14}]},
        {"id": "g", "type": "X", "mentions": [{"start": 17, "end": 22}]}], "relations": []})
    assert rules.pair_spans(doc, ["b", "a", "g"], np.array([0, 1, 2]), np.array([1, 0, 0])) == [
        "Alpha met Beta", "Alpha met Beta", None]


def test_unseen_pair_overlap_counts_facts_on_pairs_that_hold_a_trained_fact():
    import importlib.util
    from pathlib import Path

    from glidre_core.documents import parse_document

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "unseen_pair_overlap.py"
    spec = importlib.util.spec_from_file_location("unseen_pair_overlap", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = "A B C ."
    doc = parse_document({"doc_id": "d", "text": text, "entities": [
        {"id": e, "type": "X", "mentions": [{"start": i * 2, "end": i * 2 + 1}]} for i, e in enumerate("abc")],
        "relations": [{"head": "a", "label": "country", "tail": "b"}, {"head": "a", "label": "located in", "tail": "b"},
                      {"head": "b", "label": "country", "tail": "c"}, {"head": "c", "label": "mother", "tail": "a"}]})
    got = mod.overlap([doc], held_out={"country", "mother"}, types={"country"})
    assert got["facts"] == 2 and got["share_on_a_trained_pair"] == 0.5  # (a, b) holds "located in"
    assert got["ordered_pairs"] == 6 and got["share_of_pairs_with_a_trained_fact"] == pytest.approx(1 / 6)
