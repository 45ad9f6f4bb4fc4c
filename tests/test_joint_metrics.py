"""Entity and end-to-end relation metrics on hand-made documents (glidre_core.joint_metrics).

Every expected number is worked out by hand in the comments (tp / n_pred / n_gold).
"""

from __future__ import annotations

import re

import pytest

from glidre_core import DocumentError, parse_document
from glidre_core.joint_metrics import end_to_end_relation_scores, entity_scores, match_entities, snap_to_tokens


def _doc(doc_id, text, entities, relations=()):
    """entities: {id: (type, [surface | (surface, nth occurrence) | (start, end)])}; relations [(h, r, t)]."""
    ents = []
    for eid, (etype, surfaces) in entities.items():
        ms = []
        for s in surfaces:
            if isinstance(s[0], int):  # explicit character span
                ms.append({"start": s[0], "end": s[1]})
                continue
            surface, nth = (s, 0) if isinstance(s, str) else s
            # whole-word occurrences only ("he" must not hit "She" or "there")
            start = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(surface)}(?!\w)", text)][nth]
            ms.append({"start": start, "end": start + len(surface)})
        ents.append({"id": eid, "type": etype, "mentions": ms})
    rels = [{"head": h, "label": r, "tail": t} for h, r, t in relations]
    return parse_document({"doc_id": doc_id, "text": text, "entities": ents, "relations": rels})


def _prf(tp, n_pred, n_gold):
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _check(res, tp, n_pred, n_gold):
    assert (res["tp"], res["n_pred"], res["n_gold"]) == (tp, n_pred, n_gold)
    p, r, f = _prf(tp, n_pred, n_gold)
    assert res["precision"] == pytest.approx(p)
    assert res["recall"] == pytest.approx(r)
    assert res["f1"] == pytest.approx(f)


# ----------------------------------------------------------------------------- entity recognition

TEXT1 = "Alice works for Acme in Paris ."
GOLD1 = _doc("d1", TEXT1, {"e0": ("PER", ["Alice"]), "e1": ("ORG", ["Acme"]), "e2": ("LOC", ["Paris"])})


def test_ner_perfect_prediction_is_one():
    res = entity_scores([GOLD1], [GOLD1])
    _check(res, 3, 3, 3)
    assert res["f1"] == 1.0 and res["untyped"]["f1"] == 1.0
    assert {t: v["f1"] for t, v in res["per_type"].items()} == {"PER": 1.0, "ORG": 1.0, "LOC": 1.0}


def test_wrong_type_counts_for_strict_but_not_untyped():
    pred = _doc("d1", TEXT1, {"a": ("PER", ["Alice"]), "b": ("ORG", ["Acme"]), "c": ("ORG", ["Paris"])})
    res = entity_scores([GOLD1], [pred])
    _check(res, 2, 3, 3)                      # Paris/ORG is wrong: P = R = F = 2/3
    assert res["f1"] == pytest.approx(2 / 3)
    assert res["untyped"]["precision"] == res["untyped"]["recall"] == res["untyped"]["f1"] == 1.0
    # per type: LOC never predicted -> 0; ORG predicted twice, right once: P 1/2, R 1/1, F 2/3
    assert res["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert res["per_type"]["ORG"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert res["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}


def test_boundary_off_by_one_char_is_a_miss():
    # "Alice" is [0, 5) and "Paris" [24, 29): predict [0, 4) and [24, 30)
    pred = _doc("d1", TEXT1, {"a": ("PER", [(0, 4)]), "b": ("ORG", ["Acme"]), "c": ("LOC", [(24, 30)])})
    res = entity_scores([GOLD1], [pred])
    _check(res, 1, 3, 3)                      # only Acme right
    assert res["untyped"]["f1"] == pytest.approx(1 / 3)   # spans wrong whatever the type


def test_duplicate_mentions_counted_once():
    # Alice listed twice in one entity and again as a separate entity with the same type
    pred = _doc("d1", TEXT1, {"a": ("PER", ["Alice", "Alice"]), "a2": ("PER", ["Alice"]),
                              "b": ("LOC", ["Acme"])})
    res = entity_scores([GOLD1], [pred])
    _check(res, 1, 2, 3)                      # units: (Alice, PER) once, (Acme, LOC) wrong type
    assert res["untyped"]["tp"] == 2 and res["untyped"]["n_pred"] == 2


def test_missing_predicted_document_is_all_missed():
    gold2 = _doc("d2", "Bob met Carol .", {"x": ("PER", ["Bob"]), "y": ("PER", ["Carol"])})
    res = entity_scores([GOLD1, gold2], [GOLD1])
    _check(res, 3, 3, 5)                      # d2's 2 mentions missed: P 1, R 3/5, F 3/4
    assert res["f1"] == pytest.approx(0.75)
    assert res["per_type"]["PER"]["recall"] == pytest.approx(1 / 3)  # 1 of 3 PER mentions


def test_unknown_predicted_doc_id_raises():
    stray = _doc("nope", TEXT1, {"a": ("PER", ["Alice"])})
    with pytest.raises(ValueError, match="nope"):
        entity_scores([GOLD1], [stray])
    with pytest.raises(ValueError, match="nope"):
        end_to_end_relation_scores([GOLD1], [stray])


def test_duplicate_or_mismatched_predictions_raise():
    with pytest.raises(DocumentError, match="twice"):
        entity_scores([GOLD1], [GOLD1, GOLD1])
    other_text = _doc("d1", "Alice works for Acme in Rome .", {"a": ("PER", ["Alice"])})
    with pytest.raises(DocumentError, match="text"):
        entity_scores([GOLD1], [other_text])


def test_per_type_numbers_by_hand_over_two_documents():
    gold2 = _doc("d2", "Bob left Oslo for Rome .",
                 {"b": ("PER", ["Bob"]), "o": ("LOC", ["Oslo"]), "r": ("LOC", ["Rome"])})
    pred1 = _doc("d1", TEXT1, {"a": ("PER", ["Alice"]), "c": ("LOC", ["Paris"])})      # Acme missed
    pred2 = _doc("d2", "Bob left Oslo for Rome .",
                 {"b": ("LOC", ["Bob"]), "o": ("LOC", ["Oslo"]), "l": ("LOC", ["left"])})
    res = entity_scores([GOLD1, gold2], [pred1, pred2])
    # gold: PER {Alice, Bob}, ORG {Acme}, LOC {Paris, Oslo, Rome} = 6
    # pred: PER {Alice}, LOC {Paris, Bob, Oslo, left} = 5; tp = Alice, Paris, Oslo = 3
    _check(res, 3, 5, 6)
    per = res["per_type"]
    assert per["PER"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # LOC: 2 right of 4 predicted, of 3 gold: P 1/2, R 2/3, F 4/7
    assert per["LOC"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    # untyped: spans pred {Alice, Paris, Bob, Oslo, left}, gold 6 spans -> 4 right
    assert res["untyped"]["tp"] == 4
    assert res["untyped"]["f1"] == pytest.approx(_prf(4, 5, 6)[2])


def test_type_name_maps_raw_types_before_comparing():
    pred = _doc("d1", TEXT1, {"a": ("Peop", ["Alice"]), "b": ("Org", ["Acme"]), "c": ("Loc", ["Paris"])})
    assert entity_scores([GOLD1], [pred])["tp"] == 0
    names = {"Peop": "PER", "Org": "ORG", "Loc": "LOC"}
    res = entity_scores([GOLD1], [pred], type_name=lambda t: names.get(t, t))
    _check(res, 3, 3, 3)


# ---------------------------------------------------------------------- end-to-end relations

CONLL_TEXT = "John Smith lives in Boston . Acme is based in Boston too ."


def _conll_gold():
    return _doc("c1", CONLL_TEXT,
                {"j": ("Peop", ["John Smith"]), "b1": ("Loc", ["Boston"]),
                 "a": ("Org", ["Acme"]), "b2": ("Loc", [("Boston", 1)])},
                [("j", "Live_In", "b1"), ("a", "OrgBased_In", "b2")])


def test_relations_perfect_prediction_is_one():
    g = _conll_gold()
    for match in ("strict", "relaxed"):
        for typed in (False, True):
            res = end_to_end_relation_scores([g], [g], match=match, typed=typed)
            _check(res, 2, 2, 2)
            assert res["match"] == match and res["typed"] is typed


def test_conll04_strict_typed_type_error_makes_relation_wrong():
    # different predicted ids on purpose: matching is by spans, not ids
    pred = _doc("c1", CONLL_TEXT,
                {"p": ("Org", ["John Smith"]), "q": ("Loc", ["Boston"]),
                 "r": ("Org", ["Acme"]), "s": ("Loc", [("Boston", 1)])},
                [("p", "Live_In", "q"), ("r", "OrgBased_In", "s")])
    untyped = end_to_end_relation_scores([_conll_gold()], [pred], typed=False)
    _check(untyped, 2, 2, 2)
    typed = end_to_end_relation_scores([_conll_gold()], [pred], typed=True)
    _check(typed, 1, 2, 2)                    # John typed Org: Live_In wrong; P = R = F = 1/2
    assert typed["per_relation"]["Live_In"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert typed["per_relation"]["OrgBased_In"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}


def test_conll04_span_error_makes_relation_wrong_and_is_false_positive():
    pred = _doc("c1", CONLL_TEXT,
                {"p": ("Peop", ["John"]), "q": ("Loc", ["Boston"]),
                 "r": ("Org", ["Acme"]), "s": ("Loc", [("Boston", 1)])},
                [("p", "Live_In", "q"), ("r", "OrgBased_In", "s"), ("r", "OrgBased_In", "q")])
    res = end_to_end_relation_scores([_conll_gold()], [pred], typed=True)
    # "John" != "John Smith": Live_In is an FP (unmatched head); Acme->first Boston is a plain FP
    _check(res, 1, 3, 2)
    assert res["per_relation"]["OrgBased_In"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})


def test_type_name_applies_to_typed_relation_matching():
    names = {"PER": "Peop", "LOC": "Loc", "ORG": "Org"}
    pred = _doc("c1", CONLL_TEXT,
                {"p": ("PER", ["John Smith"]), "q": ("LOC", ["Boston"])}, [("p", "Live_In", "q")])
    assert end_to_end_relation_scores([_conll_gold()], [pred], typed=True)["tp"] == 0
    res = end_to_end_relation_scores([_conll_gold()], [pred], typed=True,
                                     type_name=lambda t: names.get(t, t))
    _check(res, 1, 1, 2)


def test_relations_missing_document_and_multi_doc_counts():
    g2 = _doc("c2", "Mary lives in Rome .", {"m": ("Peop", ["Mary"]), "r": ("Loc", ["Rome"])},
              [("m", "Live_In", "r")])
    res = end_to_end_relation_scores([_conll_gold(), g2], [_conll_gold()])
    _check(res, 2, 2, 3)                      # c2's fact missed: P 1, R 2/3, F 4/5
    assert res["f1"] == pytest.approx(0.8)
    assert res["per_relation"]["Live_In"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})


def test_unknown_match_rule_raises():
    with pytest.raises(ValueError, match="fuzzy"):
        end_to_end_relation_scores([_conll_gold()], [_conll_gold()], match="fuzzy")


# Re-DocRED-like: entities are coreference clusters
RD_TEXT = "Alice met Bob in Paris . She lives there and he works there ."


def _rd_gold(order=("e0", "e1", "e2")):
    ents = {"e0": ("PER", ["Alice", "She"]), "e1": ("PER", ["Bob", "he"]), "e2": ("LOC", ["Paris", "there"])}
    return _doc("r1", RD_TEXT, {k: ents[k] for k in order},
                [("e0", "lives_in", "e2"), ("e1", "works_in", "e2")])


def test_cluster_missing_one_mention_fails_strict_but_passes_relaxed():
    pred = _doc("r1", RD_TEXT,
                {"a": ("PER", ["Alice"]),               # misses "She"
                 "b": ("PER", ["Bob", "he"]),
                 "p": ("LOC", ["Paris", "there"])},
                [("a", "lives_in", "p"), ("b", "works_in", "p")])
    strict = end_to_end_relation_scores([_rd_gold()], [pred], match="strict")
    _check(strict, 1, 2, 2)                   # lives_in lost: its head cluster is incomplete
    relaxed = end_to_end_relation_scores([_rd_gold()], [pred], match="relaxed")
    _check(relaxed, 2, 2, 2)
    assert relaxed["f1"] == 1.0


def test_relaxed_tie_breaks_to_first_gold_entity():
    # wrongly merged cluster {She, he}: one shared span with e0 and one with e1 -> tie
    pred = _doc("r1", RD_TEXT,
                {"x": ("PER", ["She", "he"]), "p": ("LOC", ["Paris", "there"])},
                [("x", "lives_in", "p"), ("x", "works_in", "p")])
    res = end_to_end_relation_scores([_rd_gold()], [pred], match="relaxed")
    _check(res, 1, 2, 2)                      # x -> e0: lives_in right, works_in wrong
    assert res["per_relation"]["lives_in"]["f1"] == 1.0
    assert res["per_relation"]["works_in"]["f1"] == 0.0
    swapped = end_to_end_relation_scores([_rd_gold(("e1", "e0", "e2"))], [pred], match="relaxed")
    _check(swapped, 1, 2, 2)                  # now x -> e1: the other way round
    assert swapped["per_relation"]["lives_in"]["f1"] == 0.0
    assert swapped["per_relation"]["works_in"]["f1"] == 1.0
    assert match_entities(_rd_gold(), pred, match="relaxed") == {"x": "e0", "p": "e2"}
    assert match_entities(_rd_gold(), pred, match="strict") == {"x": None, "p": "e2"}


def test_relaxed_prefers_most_shared_mentions_over_gold_order():
    pred = _doc("r1", RD_TEXT, {"x": ("PER", ["She", "Bob", "he"]), "p": ("LOC", ["Paris"])})
    assert match_entities(_rd_gold(), pred, match="relaxed") == {"x": "e1", "p": "e2"}


def test_relaxed_typed_prefers_tied_candidate_of_right_type_else_unmatched():
    gold = _doc("t1", "Alice founded Acme . She runs it .",
                {"e0": ("PER", ["Alice", "She"]), "e1": ("ORG", ["Acme", "it"])})
    merged_org = _doc("t1", gold.text, {"x": ("ORG", ["She", "it"])})
    assert match_entities(gold, merged_org, match="relaxed") == {"x": "e0"}
    assert match_entities(gold, merged_org, match="relaxed", typed=True) == {"x": "e1"}
    wrong_type = _doc("t1", gold.text, {"y": ("LOC", ["Alice", "She"])})
    assert match_entities(gold, wrong_type, match="relaxed", typed=True) == {"y": None}
    assert match_entities(gold, wrong_type, match="strict", typed=True) == {"y": None}
    assert match_entities(gold, wrong_type, match="strict", typed=False) == {"y": "e0"}


def test_two_predicted_entities_of_one_gold_entity_dedupe():
    # Alice's cluster split in two; the same fact predicted through both halves
    pred = _doc("r1", RD_TEXT,
                {"a1": ("PER", ["Alice"]), "a2": ("PER", ["She"]), "p": ("LOC", ["Paris", "there"])},
                [("a1", "lives_in", "p"), ("a2", "lives_in", "p")])
    relaxed = end_to_end_relation_scores([_rd_gold()], [pred], match="relaxed")
    _check(relaxed, 1, 1, 2)                  # one TP, the duplicate is not an FP: P 1, R 1/2
    strict = end_to_end_relation_scores([_rd_gold()], [pred], match="strict")
    _check(strict, 0, 2, 2)                   # both halves unmatched: two distinct FPs


def test_self_relation_after_mapping_is_dropped():
    pred = _doc("r1", RD_TEXT,
                {"a1": ("PER", ["Alice"]), "a2": ("PER", ["She"]), "p": ("LOC", ["Paris", "there"])},
                [("a1", "lives_in", "p"), ("a1", "knows", "a2")])
    relaxed = end_to_end_relation_scores([_rd_gold()], [pred], match="relaxed")
    _check(relaxed, 1, 1, 2)                  # a1, a2 -> e0: "e0 knows e0" dropped
    assert "knows" not in relaxed["per_relation"]
    strict = end_to_end_relation_scores([_rd_gold()], [pred], match="strict")
    _check(strict, 0, 2, 2)                   # unmatched a1 != a2: not a self-relation, an FP
    assert strict["per_relation"]["knows"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_label_normalisation():
    gold = _doc("n1", "Ann lives in Lima .", {"a": ("Peop", ["Ann"]), "l": ("Loc", ["Lima"])},
                [("a", "Live_In", "l")])
    pred = _doc("n1", gold.text, {"x": ("Peop", ["Ann"]), "y": ("Loc", ["Lima"])},
                [("x", "live in", "y")])
    _check(end_to_end_relation_scores([gold], [pred]), 0, 1, 1)
    norm = lambda s: s.lower().replace("_", " ")  # noqa: E731
    res = end_to_end_relation_scores([gold], [pred], normalize_label=norm)
    _check(res, 1, 1, 1)
    assert list(res["per_relation"]) == ["live in"]


# ----------------------------------------------------------------------------- token-level spans

TEXT_TOK = "Smith of Acme-Corp lives in Dallas."  # corpus tokens: Smith|of|Acme-Corp|lives|in|Dallas.


def test_snap_to_tokens_widens_partial_tokens_only():
    pred = _doc("t", TEXT_TOK, {"p": ("Peop", ["Smith"]), "o": ("Org", ["Acme"]), "l": ("Loc", [(28, 34)])})
    snapped = snap_to_tokens([pred])[0]
    spans = {e.id: [(m.start, m.end) for m in e.mentions] for e in snapped.entities}
    assert TEXT_TOK[slice(*spans["p"][0])] == "Smith"          # already whole: unchanged
    assert TEXT_TOK[slice(*spans["o"][0])] == "Acme-Corp"      # inside a hyphenated token
    assert TEXT_TOK[slice(*spans["l"][0])] == "Dallas."        # the glued period
    assert pred.entities[2].mentions[0].end == 34              # the input is not modified


def test_token_level_scores_count_the_glued_period_as_right():
    gold = _doc("t", TEXT_TOK, {"p": ("Peop", ["Smith"]), "l": ("Loc", ["Dallas."])}, [("p", "Live_In", "l")])
    pred = _doc("t", TEXT_TOK, {"a": ("Peop", ["Smith"]), "b": ("Loc", [(28, 34)])}, [("a", "Live_In", "b")])
    # characters: "Dallas" != "Dallas.": 1 of 2 mentions (tp 1, pred 2, gold 2), no relation right
    _check(entity_scores([gold], [pred]), 1, 2, 2)
    _check(end_to_end_relation_scores([gold], [pred], typed=True), 0, 1, 1)
    # tokens: both mentions and the relation are right
    _check(entity_scores([gold], snap_to_tokens([pred])), 2, 2, 2)
    _check(end_to_end_relation_scores([gold], snap_to_tokens([pred]), typed=True), 1, 1, 1)


def test_evaluate_cli_scores_conll04_over_tokens_by_default(tmp_path):
    import json

    import torch
    from click.testing import CliRunner

    from conftest import tiny_config
    from glidre_core import GLiDRE
    from glidre_core.cli import main

    torch.manual_seed(0)
    GLiDRE(tiny_config(span_head=True, entity_labels=["person", "location"])).save_pretrained(tmp_path / "m")
    data = tmp_path / "c.json"
    data.write_text(json.dumps([
        {"tokens": ["Smith", "lives", "in", "Dallas."], "tags": ["U-Peop", "O", "O", "U-Loc"],
         "relations": [{"head": 0, "tail": 1, "type": "Live_In"}], "orig_id": 1},
        {"tokens": ["Jones", "visited", "Acme-Corp", "in", "Paris", "."], "tags": ["U-Peop", "O", "U-Org", "O", "U-Loc", "O"],
         "relations": [], "orig_id": 2},
    ]))
    out = {}
    for spans in (None, "chars"):
        path = tmp_path / f"{spans}.json"
        args = ["evaluate", "--task", "ner", "--model", str(tmp_path / "m"), "--data", str(data), "--format", "conll04",
                "--entity-threshold", "0.01", "--output-json", str(path)] + (["--spans", spans] if spans else [])
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        out[spans] = json.loads(path.read_text())
    assert out[None]["spans"] == "tokens" and out["chars"]["spans"] == "chars"
    # widened to corpus tokens, predictions can only gain true positives (and merge duplicates)
    assert out[None]["tp"] >= out["chars"]["tp"]
    assert out[None]["n_pred"] <= out["chars"]["n_pred"]
    assert out[None]["n_gold"] == out["chars"]["n_gold"] == 5
