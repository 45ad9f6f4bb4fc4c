"""The public inference API: predict_relations / predict_documents / encode_labels."""

from __future__ import annotations

import pytest
import torch

from glidre_core import Entity, GLiDRE, LabelEmbeddings, Mention, parse_document

from conftest import tiny_config

TEXT = "Marie Curie was born in Warsaw . She worked in Paris , France , with Pierre Curie ."
NAMES = ["Marie Curie", "Warsaw", "Paris", "France", "Pierre Curie"]


def _entities():
    ents = []
    for i, n in enumerate(NAMES):
        s = TEXT.index(n)
        ents.append({"id": f"e{i}", "type": "PER" if "Curie" in n else "LOC",
                     "mentions": [{"start": s, "end": s + len(n)}]})
    # a second mention for Marie Curie ("She")
    s = TEXT.index("She")
    ents[0]["mentions"].append({"start": s, "end": s + 3})
    return ents


LABELS = ["place of birth", "country", "spouse"]
ROW_KEYS = {"head_id", "head_text", "head_type", "relation", "tail_id", "tail_text", "tail_type", "score"}


def _scores(rows):
    return {(r["head_id"], r["relation"], r["tail_id"]): r["score"] for r in rows}


def test_rows_have_documented_keys_and_no_self_pairs(tiny_model: GLiDRE):
    rows = tiny_model.predict_relations(TEXT, _entities(), LABELS, threshold=1e-9)
    n = len(NAMES)
    assert len(rows) == n * (n - 1) * len(LABELS)  # every ordered pair x label passes a ~0 threshold
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["head_id"] != r["tail_id"]
        assert r["relation"] in LABELS
        assert 0.0 < r["score"] < 1.0
    by_id = {r["head_id"]: (r["head_text"], r["head_type"]) for r in rows}
    assert by_id["e0"] == ("Marie Curie", "PER")  # longest mention, not "She"
    assert by_id["e1"] == ("Warsaw", "LOC")
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_threshold_none_uses_config_threshold(tiny_model: GLiDRE):
    all_rows = tiny_model.predict_relations(TEXT, _entities(), LABELS, threshold=1e-9)
    scores = sorted(r["score"] for r in all_rows)
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # median between two scores
    tiny_model.config.threshold = cut
    rows = tiny_model.predict_relations(TEXT, _entities(), LABELS)  # threshold=None
    expected = {k for k, v in _scores(all_rows).items() if v > cut}
    assert set(_scores(rows)) == expected
    assert 0 < len(rows) < len(all_rows)
    # an explicit float overrides the stored one
    rows = tiny_model.predict_relations(TEXT, _entities(), LABELS, threshold=0.999999)
    assert rows == []


def test_per_label_threshold_dict(tiny_model: GLiDRE):
    all_rows = tiny_model.predict_relations(TEXT, _entities(), LABELS, threshold=1e-9)
    tiny_model.config.threshold = 0.999999  # labels missing from the dict use the stored threshold
    country = [r["score"] for r in all_rows if r["relation"] == "country"]
    cut = sorted(country)[len(country) // 2]
    rows = tiny_model.predict_relations(
        TEXT, _entities(), LABELS, threshold={"place of birth": 1e-9, "country": cut}
    )
    got = _scores(rows)
    expected = {k for k, v in _scores(all_rows).items()
                if (k[1] == "place of birth") or (k[1] == "country" and v > cut)}
    assert set(got) == expected
    assert not any(k[1] == "spouse" for k in got)
    assert any(k[1] == "country" for k in got) and len([k for k in got if k[1] == "country"]) < len(country)


def test_label_casing_normalisation(tiny_model: GLiDRE):
    assert tiny_model.config.label_casing == "lower"
    a = tiny_model.predict_relations(TEXT, _entities(), ["Country", "Place_of  Birth"], threshold=1e-9)
    b = tiny_model.predict_relations(TEXT, _entities(), ["country", "place of birth"], threshold=1e-9)
    sa = {(r["head_id"], r["relation"].lower().replace("_", " ").replace("  ", " "), r["tail_id"]): r["score"]
          for r in a}
    sb = _scores(b)
    assert sa.keys() == sb.keys()
    for k in sb:
        assert sa[k] == pytest.approx(sb[k], abs=1e-6)
    # rows report the label as the caller spelled it
    assert {r["relation"] for r in a} == {"Country", "Place_of  Birth"}


def test_labels_that_collide_after_normalisation_are_rejected(tiny_model: GLiDRE):
    with pytest.raises(ValueError, match="distinct"):
        tiny_model.encode_labels(["Country", "country"])
    with pytest.raises(ValueError):
        tiny_model.encode_labels([])


def test_encode_labels_result_is_reusable(tiny_model: GLiDRE):
    emb = tiny_model.encode_labels(LABELS)
    assert isinstance(emb, LabelEmbeddings)
    assert emb.labels == LABELS and emb.vectors.shape == (3, tiny_model.dim)
    calls = []
    hook = tiny_model.label_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        cached = tiny_model.predict_relations(TEXT, _entities(), emb, threshold=1e-9)
        assert calls == []  # cached embeddings: the label encoder is not run again
        fresh = tiny_model.predict_relations(TEXT, _entities(), LABELS, threshold=1e-9)
        assert calls == [1]
    finally:
        hook.remove()
    sc, sf = _scores(cached), _scores(fresh)
    assert sc.keys() == sf.keys()
    for k in sc:
        assert sc[k] == pytest.approx(sf[k], abs=1e-6)


def test_labels_default_to_stored_labels(tiny_model: GLiDRE):
    with pytest.raises(ValueError, match="no relation labels"):
        tiny_model.predict_relations(TEXT, _entities())
    tiny_model.config.labels = ["country"]
    rows = tiny_model.predict_relations(TEXT, _entities(), threshold=1e-9)
    assert {r["relation"] for r in rows} == {"country"}


def test_entity_objects_equal_dicts(tiny_model: GLiDRE):
    objs = [Entity(id=e["id"], type=e["type"], mentions=[Mention(**m) for m in e["mentions"]])
            for e in _entities()]
    a = _scores(tiny_model.predict_relations(TEXT, objs, LABELS, threshold=1e-9))
    b = _scores(tiny_model.predict_relations(TEXT, _entities(), LABELS, threshold=1e-9))
    assert a.keys() == b.keys()
    assert all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a)


def test_top_k_keeps_best_labels_per_pair(tiny_model: GLiDRE):
    doc = parse_document({"doc_id": "d", "text": TEXT, "entities": _entities()})
    full = tiny_model.predict_documents([doc], LABELS, threshold=1e-9)[0]
    top1 = tiny_model.predict_documents([doc], LABELS, threshold=1e-9, top_k=1)[0]
    assert len(top1) == len(NAMES) * (len(NAMES) - 1)
    best = {}
    for r in full:
        key = (r["head_id"], r["tail_id"])
        best[key] = max(best.get(key, 0.0), r["score"])
    for r in top1:
        assert r["score"] == pytest.approx(best[(r["head_id"], r["tail_id"])])


def test_fewer_than_two_entities_give_no_rows(tiny_model: GLiDRE):
    assert tiny_model.predict_relations(TEXT, _entities()[:1], LABELS, threshold=1e-9) == []
    assert tiny_model.predict_relations(TEXT, [], LABELS, threshold=1e-9) == []


def test_batch_prediction_equals_one_by_one():
    """Documents of different lengths in one batch (padding, several windows) score as alone."""
    torch.manual_seed(4)
    model = GLiDRE(tiny_config(max_length=16, window_overlap=4))
    model.eval()
    docs = [
        parse_document({"doc_id": "long", "text": TEXT, "entities": _entities()}),
        parse_document({"doc_id": "short", "text": "Bern is in Switzerland .", "entities": [
            {"id": "b", "mentions": [{"start": 0, "end": 4}]},
            {"id": "s", "mentions": [{"start": 11, "end": 22}]}]}),
        parse_document({"doc_id": "mid", "text": TEXT[:33],
                        "entities": [dict(e, mentions=e["mentions"][:1]) for e in _entities()[:2]]}),
    ]
    together = model.predict_documents(docs, LABELS, threshold=1e-9, batch_size=3)
    alone = [model.predict_documents([d], LABELS, threshold=1e-9)[0] for d in docs]
    assert [len(r) for r in together] == [60, 6, 6]
    for a, b in zip(together, alone):
        sa, sb = _scores(a), _scores(b)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k] == pytest.approx(sb[k], abs=1e-5)


def test_predict_restores_training_mode(tiny_model: GLiDRE):
    tiny_model.train()
    tiny_model.predict_relations(TEXT, _entities(), LABELS, threshold=0.5)
    assert tiny_model.training


def test_every_public_name_resolves_lazily():
    import glidre_core
    import glidre_core.extraction
    import glidre_core.modeling

    for package in (glidre_core, glidre_core.modeling, glidre_core.extraction):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
        with pytest.raises(AttributeError, match="has no attribute 'missing_name'"):
            getattr(package, "missing_name")
