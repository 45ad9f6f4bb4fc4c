"""Span enumeration, flat/nested decoding on hand-made cases, the factorised span head against
its plain reference, span targets and the joint loss."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from glidre_core import GLiDRE
from glidre_core.documents import parse_document
from glidre_core.modeling.spans import SpanHead, SpanPrediction, decode_spans, enumerate_spans


def test_enumerate_spans_covers_every_width_up_to_the_limit():
    spans = enumerate_spans(4, 2).tolist()
    assert spans == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [2, 4], [3, 4]]
    assert enumerate_spans(2, 5).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert enumerate_spans(0, 3).shape == (0, 2)
    with pytest.raises(ValueError, match="max_width"):
        enumerate_spans(3, 0)


def _probs(spans, table, num_types=2):
    """probs [S, T] from {(start, end): (type, p)}; everything else 0.01."""
    probs = torch.full((len(spans), num_types), 0.01)
    for i, (s, e) in enumerate(spans.tolist()):
        if (s, e) in table:
            t, p = table[(s, e)]
            probs[i, t] = p
    return probs


def test_flat_decoding_overlapping_spans_keep_the_higher_score():
    spans = enumerate_spans(6, 3)
    probs = _probs(spans, {(0, 2): (0, 0.9), (1, 3): (1, 0.8), (4, 5): (0, 0.7)})
    out = decode_spans(spans, probs, 0.5)
    assert out == [SpanPrediction(0, 2, 0, pytest.approx(0.9)), SpanPrediction(4, 5, 0, pytest.approx(0.7))]


def test_flat_decoding_adjacent_spans_both_survive():
    spans = enumerate_spans(4, 2)
    probs = _probs(spans, {(0, 2): (0, 0.9), (2, 3): (1, 0.6)})
    out = decode_spans(spans, probs, 0.5)
    assert [(p.start, p.end, p.type_index) for p in out] == [(0, 2, 0), (2, 3, 1)]


def test_nested_spans_flat_vs_nested_mode():
    spans = enumerate_spans(5, 4)
    # "University of Paris" [0, 3) contains "Paris" [2, 3); a crossing span [2, 4) too
    probs = _probs(spans, {(0, 3): (0, 0.95), (2, 3): (1, 0.85), (2, 4): (1, 0.8)})
    flat = decode_spans(spans, probs, 0.5, flat=True)
    assert [(p.start, p.end) for p in flat] == [(0, 3)]
    nested = decode_spans(spans, probs, 0.5, flat=False)
    # the nested one stays, the crossing one (overlaps [0, 3) partially) goes
    assert [(p.start, p.end) for p in nested] == [(0, 3), (2, 3)]


def test_best_type_per_span_and_per_type_thresholds():
    spans = enumerate_spans(2, 1)
    probs = torch.tensor([[0.6, 0.7], [0.55, 0.2]])
    out = decode_spans(spans, probs, 0.5)
    assert [(p.start, p.type_index) for p in out] == [(0, 1), (1, 0)]
    # type 1 needs 0.8: span 0 falls back to type 0
    out = decode_spans(spans, probs, torch.tensor([0.5, 0.8]))
    assert [(p.start, p.type_index) for p in out] == [(0, 0), (1, 0)]
    assert decode_spans(spans, probs, 0.9) == []


def test_factorised_span_head_equals_plain_ffn_reference():
    torch.manual_seed(0)
    head = SpanHead(dim=8, expansion=2, dropout=0.0, max_width=3, chunk_size=5)
    words = torch.randn(7, 8)
    types = torch.randn(4, 8)
    spans = enumerate_spans(7, 3)
    fast = head.logits(words, spans, types)
    ref = head.naive_logits(words, spans, types)
    assert fast.shape == (spans.shape[0], 4)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def _typed_doc():
    text = "Marie Curie worked in Paris with Pierre Curie ."
    return parse_document({
        "doc_id": "d1", "text": text,
        "entities": [
            {"id": "a", "type": "PER", "mentions": [{"start": 0, "end": 11}, {"start": 33, "end": 45}]},
            {"id": "b", "type": "LOC", "mentions": [{"start": 22, "end": 27}]},
        ],
        "relations": [{"head": "a", "label": "residence", "tail": "b"}],
    })


def test_span_targets_mark_gold_mentions_with_their_type():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(span_head=True, max_span_width=3))
    p = model.prepare(_typed_doc())
    types = model.encode_entity_types(["location", "person"])
    target = model.span_targets(p, p.tokens.num_words, types)
    spans = enumerate_spans(p.tokens.num_words, 3).tolist()
    on = {(tuple(spans[i]), t) for i, t in target.nonzero().tolist()}
    # words: Marie Curie worked in Paris with Pierre Curie .
    assert on == {((0, 2), 1), ((6, 8), 1), ((4, 5), 0)}
    # an untyped entity: the document cannot supervise the span head
    raw = _typed_doc().model_dump()
    raw["entities"][1]["type"] = None
    assert model.span_targets(model.prepare(parse_document(raw)), p.tokens.num_words, types) is None


def test_joint_loss_is_the_weighted_sum_and_trains_the_span_head():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(span_head=True, max_span_width=3, span_loss_weight=0.5))
    model.eval()  # the random encoder's own dropout would make the three losses incomparable
    p = [model.prepare(_typed_doc())]
    labels = model.encode_labels(["residence", "spouse"])
    types = model.encode_entity_types(["person", "location"])
    joint = model.loss(p, labels, entity_types=types)
    rel_only = model.loss(p, labels)
    model.config.relation_loss_weight = 0.0
    span_only = model.loss(p, labels, entity_types=types)
    torch.testing.assert_close(joint, rel_only + span_only, rtol=1e-5, atol=1e-6)
    span_only.backward()
    assert model.span_head.span_ffn[0].weight.grad.abs().sum() > 0
    # span loss only: the relation heads get no gradient
    assert model.scorer.pair_ffn[0].weight.grad is None


def test_model_without_span_head_refuses_entity_extraction_clearly(tiny_model):
    with pytest.raises(ValueError, match="no entity \\(span\\) head"):
        tiny_model.extract("Marie Curie lived in Paris.", ["person"], ["residence"])


def test_span_loss_only_covers_the_types_the_documents_corpus_annotates():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(span_head=True, max_span_width=3))
    model.eval()
    p = model.prepare(_typed_doc())
    labels = model.encode_labels(["residence"])
    both = model.encode_entity_types(["location", "person"])
    extra = model.encode_entity_types(["location", "person", "time"])
    model.config.relation_loss_weight = 0.0
    unscoped = model.loss([p], labels, entity_types=extra)
    p.entity_type_scope = frozenset({"person", "location"})
    scoped = model.loss([p], labels, entity_types=extra)
    # scoped to its corpus's types, the extra "time" column adds nothing
    torch.testing.assert_close(scoped, model.loss([p], labels, entity_types=both), rtol=1e-5, atol=1e-7)
    assert float(unscoped) > float(scoped)


def test_sentence_breaks_and_spans_that_cross_them():
    from glidre_core.modeling.spans import sentence_breaks, within_sentences
    from glidre_core.text import split_words

    words = split_words("Curie was born in Warsaw . Curie moved to St. Louis , U.S. in 1900 .").tokens
    breaks = sentence_breaks(words)
    # only the "." after Warsaw ends a sentence: not "St." or "U.S." or the final one
    assert [words[i - 1] for i in breaks.nonzero().flatten().tolist()] == ["Warsaw"]
    w = {t: i for i, t in reversed(list(enumerate(words)))}
    spans = torch.tensor([[w["Warsaw"], w["Warsaw"] + 1], [w["Warsaw"], w["moved"]],  # crosses
                          [w["Warsaw"], w["Warsaw"] + 2],  # "Warsaw ." ends on the break: kept
                          [w["St"], w["Louis"] + 1], [w["U"], w["U"] + 4]])
    assert within_sentences(spans, breaks).tolist() == [True, False, True, True, True]
    # annotated sentence ends add breaks
    assert sentence_breaks(words, [1])[1]


def test_extract_never_returns_a_mention_across_sentences():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(span_head=True, max_span_width=12, entity_threshold=0.01))
    model.eval()
    text = "Marie Curie was born in Warsaw . Curie later worked in Paris ."
    out = model.extract(text, ["person", "location"], ["residence"], coreference="none")
    assert out["entities"], "a random head with a 0.01 threshold finds spans"
    for e in out["entities"]:
        for m in e["mentions"]:
            assert ". Curie" not in text[m["start"] : m["end"]]
