"""Span enumeration, flat/nested decoding on hand-made cases, the factorised batched span head
against its plain per-document reference, span targets and the joint loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config
from glidre_core import GLiDRE
from glidre_core.documents import parse_document
from glidre_core.modeling.batch import span_grid
from glidre_core.modeling.losses import relation_loss, span_loss
from glidre_core.modeling.spans import (
    SPAN_REPRESENTATIONS, WORD_SHAPES, SpanHead, SpanPrediction, decode_spans, enumerate_spans, word_shape, word_shapes,
)
from glidre_core.modeling.targets import document_span_targets, joint_loss, span_target_arrays, training_batch


def test_enumerate_spans_covers_every_width_up_to_the_limit():
    spans = enumerate_spans(4, 2)
    assert isinstance(spans, np.ndarray) and spans.dtype == np.int64
    assert spans.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [2, 4], [3, 4]]
    assert enumerate_spans(2, 5).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert enumerate_spans(0, 3).shape == (0, 2)
    with pytest.raises(ValueError, match="max_width"):
        enumerate_spans(3, 0)


@pytest.mark.parametrize("num_words, width", [(1, 1), (4, 2), (7, 3), (5, 12)])
def test_batch_span_grid_restricted_to_a_document_is_enumerate_spans(num_words, width):
    starts, ends = span_grid(9, width)
    assert np.all(np.diff(starts) >= 0)  # start-major
    valid = ends <= num_words
    assert np.stack([starts[valid], ends[valid]], -1).tolist() == enumerate_spans(num_words, width).tolist()


def _probs(spans, table, num_types=2):
    """probs [S, T] from {(start, end): (type, p)}; everything else 0.01."""
    probs = np.full((len(spans), num_types), 0.01, dtype=np.float32)
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
    # torch CPU tensors are accepted and decode the same
    assert decode_spans(torch.from_numpy(spans), torch.from_numpy(probs), 0.5) == out


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
    probs = np.array([[0.6, 0.7], [0.55, 0.2]], dtype=np.float32)
    out = decode_spans(spans, probs, 0.5)
    assert [(p.start, p.type_index) for p in out] == [(0, 1), (1, 0)]
    # type 1 needs 0.8: span 0 falls back to type 0
    out = decode_spans(spans, probs, np.array([0.5, 0.8]))
    assert [(p.start, p.type_index) for p in out] == [(0, 0), (1, 0)]
    assert [p.score for p in out] == [pytest.approx(0.6), pytest.approx(0.55)]
    assert decode_spans(spans, probs, 0.9) == []
    assert decode_spans(np.zeros((0, 2), dtype=np.int64), np.zeros((0, 2), dtype=np.float32), 0.5) == []


@pytest.mark.parametrize("representation", SPAN_REPRESENTATIONS)
@pytest.mark.parametrize("chunk", [5, 16384])
def test_batched_span_head_equals_plain_ffn_reference_per_document(chunk, representation):
    torch.manual_seed(0)
    width = 3
    head = SpanHead(dim=8, expansion=2, dropout=0.0, max_width=width, chunk_size=chunk, representation=representation)
    for extra in (head.width, head.content_proj):  # zero-initialised: randomise so they count
        if extra is not None:
            torch.nn.init.normal_(extra.weight)
    head.eval()
    lengths = [7, 2, 5]
    wmax = max(lengths)
    words = torch.randn(len(lengths), wmax, 8)
    types = torch.randn(4, 8)
    starts, ends = span_grid(wmax, width)
    with torch.no_grad():
        fast = head(words, torch.from_numpy(starts), torch.from_numpy(ends), types)
    assert fast.shape == (len(lengths), len(starts), 4)
    for b, n in enumerate(lengths):
        spans = enumerate_spans(n, width)
        with torch.no_grad():
            ref = head.naive_logits(words[b, :n], torch.from_numpy(spans), types)
        torch.testing.assert_close(fast[b][torch.from_numpy(ends <= n)], ref, rtol=1e-5, atol=1e-5)
    # no spans: an empty result, not an error
    empty = torch.zeros(0, dtype=torch.long)
    assert head(words, empty, empty, types).shape == (len(lengths), 0, 4)


def _typed_doc(doc_id: str = "d1"):
    text = "Marie Curie worked in Paris with Pierre Curie ."
    return parse_document({
        "doc_id": doc_id, "text": text,
        "entities": [
            {"id": "a", "type": "PER", "mentions": [{"start": 0, "end": 11}, {"start": 33, "end": 45}]},
            {"id": "b", "type": "LOC", "mentions": [{"start": 22, "end": 27}]},
        ],
        "relations": [{"head": "a", "label": "residence", "tail": "b"}],
    })


def _second_doc():
    text = "The University of Warsaw hired Ada ."
    return parse_document({
        "doc_id": "d2", "text": text,
        "entities": [
            # four words: longer than max_span_width 3, so not a candidate (never a target)
            {"id": "u", "type": "ORG", "mentions": [{"start": 0, "end": 24}]},
            {"id": "w", "type": "LOC", "mentions": [{"start": 18, "end": 24}]},
            {"id": "p", "type": "PER", "mentions": [{"start": 31, "end": 34}]},
        ],
        "relations": [{"head": "p", "label": "employer", "tail": "u"}],
    })


def _untyped(doc):
    raw = doc.model_dump()
    raw["entities"][1]["type"] = None
    raw["doc_id"] = raw["doc_id"] + "-untyped"
    return parse_document(raw)


def _span_model(**overrides) -> GLiDRE:
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(span_head=True, max_span_width=3, **overrides))
    model.eval()  # the random encoder's own dropout would make the losses incomparable
    return model


def test_model_span_logits_per_document_equal_the_document_alone():
    model = _span_model()
    prepared = [model.prepare(_typed_doc()), model.prepare(_second_doc())]
    types = model.encode_entity_types(["person", "location"])
    with torch.no_grad():
        batch, _ = model.collate(prepared)
        out = model(batch, None, types)
    assert out.relation_logits is None
    assert out.span_logits.shape == (2, len(batch.span_grid), 2)
    for b, p in enumerate(prepared):
        n = p.tokens.num_words
        assert batch.span_grid[batch.span_valid[b]].tolist() == enumerate_spans(n, 3).tolist()
        with torch.no_grad():
            alone, _ = model.collate([p])
            ref = model(alone, None, types).span_logits[0]
            # the head itself against its plain reference on the model's word vectors
            words = model.encode(alone).words[0]
            naive = model.span_head.naive_logits(words, torch.from_numpy(enumerate_spans(n, 3)), types.vectors)
        torch.testing.assert_close(out.span_logits[b][torch.from_numpy(batch.span_valid[b])], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref, naive, rtol=1e-5, atol=1e-5)


def test_span_targets_mark_gold_mentions_with_their_type():
    model = _span_model()
    cfg = model.config
    p = model.prepare(_typed_doc())
    spans = enumerate_spans(p.tokens.num_words, 3)
    target = document_span_targets(cfg, p, ["location", "person"], spans)
    assert target.shape == (len(spans), 2)
    on = {(tuple(spans[i].tolist()), int(t)) for i, t in zip(*np.nonzero(target))}
    # words: Marie Curie worked in Paris with Pierre Curie .
    assert on == {((0, 2), 1), ((6, 8), 1), ((4, 5), 0)}
    # a type outside the set: its mentions are negatives for every type
    only_loc = document_span_targets(cfg, p, ["location"], spans)
    assert {tuple(spans[i].tolist()) for i in np.nonzero(only_loc)[0]} == {(4, 5)}
    # an untyped entity: the document cannot supervise the span head
    assert document_span_targets(cfg, model.prepare(_untyped(_typed_doc())), ["location", "person"], spans) is None


def test_span_target_arrays_of_a_batch():
    model = _span_model()
    docs = [_typed_doc(), _untyped(_typed_doc()), _second_doc()]
    prepared = [model.prepare(d) for d in docs]
    types = ["location", "person", "organization"]
    arrays = span_target_arrays(model.config, prepared, types)
    assert bool(arrays["span_supervised"])
    wmax = max(p.tokens.num_words for p in prepared)
    starts, ends = span_grid(wmax, 3)
    targets, mask = arrays["span_targets"], arrays["span_loss_mask"]
    assert targets.shape == mask.shape == (3, len(starts), 3)
    grid = [(int(s), int(e)) for s, e in zip(starts, ends)]
    on = {(b, grid[i], int(t)) for b, i, t in zip(*np.nonzero(targets))}
    # doc 2: "The University of Warsaw hired Ada ." -- the 4-word organisation is not a candidate
    assert on == {(0, (0, 2), 1), (0, (6, 8), 1), (0, (4, 5), 0), (2, (3, 4), 0), (2, (5, 6), 1)}
    # weights: 1 / (the document's spans * 2 supervised documents) on its real spans; the
    # untyped document and the spans past a document's end weigh nothing
    for b in (0, 2):
        n = prepared[b].tokens.num_words
        real = ends <= n
        assert np.allclose(mask[b][real], 1.0 / (real.sum() * 2))
        assert not mask[b][~real].any()
    assert not mask[1].any() and not targets[1].any()
    assert float(mask.sum()) == pytest.approx(2 * 3 / 2)  # every type, two documents of weight 1/2
    # nothing supervised: the batch says so
    none = span_target_arrays(model.config, [prepared[1]], types)
    assert not bool(none["span_supervised"]) and not none["span_loss_mask"].any()


def _relation_loss_by_hand(model, prepared, labels):
    terms = []
    for p in prepared:
        batch = training_batch(model, [p], list(labels.labels), None)
        out = model(batch, labels)
        if out.relation_logits.shape[0]:
            terms.append(relation_loss(model.config.loss, out.relation_logits, batch.entities.relation_targets,
                                       alpha=model.config.focal_alpha, gamma=model.config.focal_gamma))
    return torch.stack(terms).mean()


def _span_loss_by_hand(model, prepared, types):
    """Per document: sum over the in-scope types, mean over its candidate spans; mean over the
    documents that can supervise the span head."""
    cfg = model.config
    terms = []
    for k, p in enumerate(prepared):
        n = p.tokens.num_words
        spans = enumerate_spans(n, cfg.max_span_width)
        gold = document_span_targets(cfg, p, list(types.labels), spans)
        if gold is None:
            continue
        alone, _ = model.collate([p])
        logits = model(alone, None, types).span_logits[0]
        cols = list(range(len(types.labels)))
        if p.entity_type_scope is not None:
            cols = [i for i, t in enumerate(types.labels) if t in p.entity_type_scope]
        terms.append(span_loss(cfg.span_loss, logits[:, cols], torch.from_numpy(gold)[:, cols],
                               alpha=cfg.focal_alpha, gamma=cfg.focal_gamma))
    return torch.stack(terms).mean()


def _joint(model, prepared, labels, types):
    batch = training_batch(model, prepared, list(labels.labels) if labels is not None else None,
                           list(types.labels) if types is not None else None)
    return joint_loss(model, batch, model(batch, labels, types))


def test_joint_loss_is_the_weighted_sum_of_per_document_losses():
    model = _span_model(span_loss_weight=0.5, relation_loss_weight=0.75)
    prepared = [model.prepare(d) for d in (_typed_doc(), _untyped(_typed_doc()), _second_doc())]
    labels = model.encode_labels(["residence", "employer"])
    types = model.encode_entity_types(["person", "location"])
    with torch.no_grad():
        joint = _joint(model, prepared, labels, types)
        rel_only = _joint(model, prepared, labels, None)
        span_only = _joint(model, prepared, None, types)
        rel_ref = _relation_loss_by_hand(model, prepared, labels)
        span_ref = _span_loss_by_hand(model, prepared, types)
    torch.testing.assert_close(rel_only, 0.75 * rel_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(span_only, 0.5 * span_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(joint, 0.75 * rel_ref + 0.5 * span_ref, rtol=1e-5, atol=1e-6)
    assert float(span_ref) > 0 and float(rel_ref) > 0


def test_span_loss_alone_trains_the_span_head_only():
    model = _span_model()
    prepared = [model.prepare(_typed_doc())]
    types = model.encode_entity_types(["person", "location"])
    model.config.relation_loss_weight = 0.0
    # what the trainer does when the relation weight is 0: no relation labels at all
    loss = _joint(model, prepared, None, types)
    loss.backward()
    assert model.span_head.span_ffn[0].weight.grad.abs().sum() > 0
    assert model.span_head.type_ffn[0].weight.grad.abs().sum() > 0
    # span loss only: the relation heads get no gradient
    assert model.scorer.pair_ffn[0].weight.grad is None


def test_model_without_span_head_refuses_entity_extraction_clearly(tiny_model):
    with pytest.raises(ValueError, match="no entity \\(span\\) head"):
        tiny_model.extract("Marie Curie lived in Paris.", ["person"], ["residence"])
    with pytest.raises(ValueError, match="no entity \\(span\\) head"):
        tiny_model.encode_entity_types(["person"])


def test_span_loss_only_covers_the_types_the_documents_corpus_annotates():
    model = _span_model()
    model.config.relation_loss_weight = 0.0
    p = model.prepare(_typed_doc())
    both = model.encode_entity_types(["location", "person"])
    extra = model.encode_entity_types(["location", "person", "time"])
    with torch.no_grad():
        unscoped = _joint(model, [p], None, extra)
        p.entity_type_scope = frozenset({"person", "location"})
        scoped = _joint(model, [p], None, extra)
        # scoped to its corpus's types, the extra "time" column adds nothing
        torch.testing.assert_close(scoped, _joint(model, [p], None, both), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(scoped, _span_loss_by_hand(model, [p], extra), rtol=1e-5, atol=1e-7)
        # in a batch, each document keeps its own scope
        q = model.prepare(_second_doc())
        mixed = _joint(model, [p, q], None, extra)
        torch.testing.assert_close(mixed, _span_loss_by_hand(model, [p, q], extra), rtol=1e-5, atol=1e-7)
    assert float(unscoped) > float(scoped)


def test_sentence_breaks_and_spans_that_cross_them():
    from glidre_core.modeling.spans import sentence_breaks, within_sentences
    from glidre_core.text import split_words

    words = split_words("Curie was born in Warsaw . Curie moved to St. Louis , U.S. in 1900 .").tokens
    breaks = sentence_breaks(words)
    # only the "." after Warsaw ends a sentence: not "St." or "U.S." or the final one
    assert breaks.dtype == np.bool_ and breaks.shape == (len(words),)
    assert [words[i - 1] for i in np.flatnonzero(breaks).tolist()] == ["Warsaw"]
    w = {t: i for i, t in reversed(list(enumerate(words)))}
    spans = np.array([[w["Warsaw"], w["Warsaw"] + 1], [w["Warsaw"], w["moved"]],  # crosses
                          [w["Warsaw"], w["Warsaw"] + 2],  # "Warsaw ." ends on the break: kept
                          [w["St"], w["Louis"] + 1], [w["U"], w["U"] + 4]])
    assert within_sentences(spans, breaks).tolist() == [True, False, True, True, True]
    assert within_sentences(torch.from_numpy(spans), breaks).tolist() == [True, False, True, True, True]
    assert within_sentences(np.zeros((0, 2), dtype=np.int64), breaks).shape == (0,)
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



def test_span_representations_start_as_the_endpoints_head_and_round_trip(tmp_path):
    """The extra terms are zero-initialised (a new representation starts as the endpoints head),
    and a model with them saves and loads strictly."""
    torch.manual_seed(0)
    base = SpanHead(dim=8, expansion=2, dropout=0.0, max_width=3)
    rich = SpanHead(dim=8, expansion=2, dropout=0.0, max_width=3, representation="endpoints_content_width")
    rich.load_state_dict(base.state_dict(), strict=False)
    words, types = torch.randn(1, 6, 8), torch.randn(2, 8)
    starts, ends = span_grid(6, 3)
    args = (words, torch.from_numpy(starts), torch.from_numpy(ends), types)
    with torch.no_grad():
        torch.testing.assert_close(rich(*args), base(*args))
    model = GLiDRE(tiny_config(span_head=True, max_span_width=3, span_representation="endpoints_width"))
    torch.nn.init.normal_(model.span_head.width.weight)
    model.save_pretrained(tmp_path / "m")
    again = GLiDRE.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again.span_head.width.weight, model.span_head.width.weight.to(again.span_head.width.weight.dtype))
    with pytest.raises(ValueError, match="unknown span representation"):
        SpanHead(dim=8, expansion=2, dropout=0.0, max_width=3, representation="markerV1")


def test_word_shapes_tell_capitalisation_that_an_uncased_encoder_loses():
    words = ["The", "United", "Kingdom", "and", "IBM", "sold", "3", "iPhones", ".", "Apple", "A", "-"]
    names = [WORD_SHAPES[i] for i in word_shapes(words)]
    assert names == ["title_initial", "title", "title", "lower", "upper", "lower", "digit", "mixed", "punct",
                     "title_initial", "letter", "punct"]
    assert word_shapes([]).shape == (0,)
    # the per-document memo gives what classifying each word in place gives
    text = "The cat saw The Cat . The end ! THE 1990s x-Ray ?".split() * 3
    initial = [True] + [w in {".", "!", "?"} for w in text[:-1]]
    assert word_shapes(text).tolist() == [word_shape(w, i) for w, i in zip(text, initial)]


@pytest.mark.parametrize("chunk", [5, 16384])
def test_word_shape_terms_equal_the_per_span_reference_and_start_at_zero(chunk):
    """The factorised shape terms (per-word start/end/boundary embeddings, in-span shares from
    prefix sums) equal a span-by-span reference, padding included; zero-initialised, the head
    first computes exactly what it did without them."""
    torch.manual_seed(0)
    width = 3
    base = SpanHead(dim=8, expansion=2, dropout=0.0, max_width=width, chunk_size=chunk, representation="endpoints_width")
    head = SpanHead(dim=8, expansion=2, dropout=0.0, max_width=width, chunk_size=chunk,
                    representation="endpoints_width", word_shape=True)
    head.load_state_dict(base.state_dict(), strict=False)
    head.eval(), base.eval()
    lengths = [7, 2, 5]
    wmax = max(lengths)
    words, types = torch.randn(len(lengths), wmax, 8), torch.randn(4, 8)
    shapes = torch.randint(1, len(WORD_SHAPES), (len(lengths), wmax))
    for b, n in enumerate(lengths):
        shapes[b, n:] = 0  # padding, as collate writes it
    starts, ends = (torch.from_numpy(a) for a in span_grid(wmax, width))
    with torch.no_grad():
        torch.testing.assert_close(head(words, starts, ends, types, shapes), base(words, starts, ends, types))
        for m in (head.shape_start, head.shape_before, head.shape_end, head.shape_after, head.shape_content, head.width):
            torch.nn.init.normal_(m.weight)
        fast = head(words, starts, ends, types, shapes)
        assert not torch.allclose(fast, base(words, starts, ends, types))
        for b, n in enumerate(lengths):
            ref = head.naive_logits(words[b, :n], torch.from_numpy(enumerate_spans(n, width)), types, shapes[b, :n])
            torch.testing.assert_close(fast[b][ends <= n], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="word shapes"):
        head(words, starts, ends, types)


def test_a_model_with_word_shapes_tells_apple_from_apple_and_round_trips(tmp_path):
    """Through the model: collate ships the shapes, so two texts that differ only in case (the
    same sub-words for an uncased tokenizer) get different span scores; save/load is strict."""
    model = _span_model(span_word_shape=True, span_representation="endpoints_width")
    for m in (model.span_head.shape_start, model.span_head.shape_end, model.span_head.shape_content):
        torch.nn.init.normal_(m.weight)
    types = model.encode_entity_types(["person", "organization"])
    texts = ["they met apple in paris .", "they met Apple in Paris ."]
    with torch.no_grad():
        batch, _ = model.collate([model.prepare(parse_document({"doc_id": str(i), "text": t})) for i, t in enumerate(texts)])
        assert batch.word_shapes.tolist() == [[1, 1, 1, 1, 1, 6], [1, 1, 2, 1, 2, 6]]
        logits = model(batch, None, types).span_logits
    assert not torch.allclose(logits[0], logits[1])
    model.save_pretrained(tmp_path / "m")
    again = GLiDRE.from_pretrained(tmp_path / "m")
    assert again.config.span_word_shape
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(again.collate(batch.documents)[0], None, again.encode_entity_types(["person", "organization"])).span_logits,
                                   logits, rtol=2e-3, atol=2e-3)
