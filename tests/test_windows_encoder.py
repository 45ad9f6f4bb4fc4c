"""Sub-word windows (modeling/windows.py) and the document encoder (modeling/encoder.py).

The encoder recomputes only the last layer's attention by hand (the other layers run with SDPA);
these tests pin the batched encoder (all windows of all documents in one padded run, then one
gather and one scatter-add into word vectors ``[B, W, H]`` and word attention ``[B, W, W]``) to
Hugging Face's eager attention run one window at a time and stitched with loops; they also check
that long documents are windowed instead of truncated, that documents in a batch do not mix, and
that cached frozen layers change nothing.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModel

from glidre_core import GLiDRE, parse_document
from glidre_core.modeling.cache import EncoderCache
from glidre_core.modeling.windows import plan_windows, tokenize_words
from glidre_core.pretrained import load_tokenizer
from glidre_core.text import split_words

from conftest import TINY_BERT, tiny_config

LONG_TEXT = (
    "Tokenization of Zürich's municipal archives began in 1998 , when the council of 東京 "
    "asked Dr. Hämäläinen to digitise everything . The unbelievably heterogeneous collection "
    "included maps , letters , photographs and recordings ; cataloguing them took eleven years "
    "and cost roughly 4.5 million francs . Finally the archive opened in Winterthur ."
)


# -- plan_windows -------------------------------------------------------------------------------

def _check_plan(n: int, body: int, overlap: int):
    wins = plan_windows(n, body, overlap)
    owners = [0] * n
    for w in wins:
        assert 0 <= w.tok_start < w.tok_end <= n
        assert w.tok_start <= w.own_start < w.own_end <= w.tok_end  # owns only what it encodes
        assert w.tok_end - w.tok_start == min(body, n)
        for t in range(w.own_start, w.own_end):
            owners[t] += 1
    assert owners == [1] * n  # every token owned exactly once
    # own ranges are contiguous and in order
    assert wins[0].own_start == 0 and wins[-1].own_end == n
    for a, b in zip(wins, wins[1:]):
        assert a.own_end == b.own_start
        assert b.tok_start > a.tok_start
    return wins


@pytest.mark.parametrize(
    "n, body, overlap",
    [(1, 14, 4), (14, 14, 4), (15, 14, 4), (25, 10, 4), (100, 14, 4), (101, 30, 0), (57, 8, 7), (500, 510, 128)],
)
def test_plan_windows_partition(n, body, overlap):
    _check_plan(n, body, overlap)


def test_plan_windows_hand_computed():
    wins = _check_plan(25, 10, 4)
    assert [(w.tok_start, w.tok_end) for w in wins] == [(0, 10), (6, 16), (12, 22), (15, 25)]
    assert [(w.own_start, w.own_end) for w in wins] == [(0, 8), (8, 14), (14, 18), (18, 25)]
    # regular windows overlap by exactly `overlap`; the last one is aligned to the end
    assert wins[0].tok_end - wins[1].tok_start == 4
    assert wins[1].tok_end - wins[2].tok_start == 4
    assert wins[2].tok_end - wins[3].tok_start == 7


def test_plan_windows_overlap_capped_at_half_body():
    wins = _check_plan(40, 10, 9)  # overlap 9 > body // 2 -> 5
    assert [w.tok_start for w in wins] == [0, 5, 10, 15, 20, 25, 30]
    for a, b in zip(wins[:-1], wins[1:]):
        assert a.tok_end - b.tok_start == 5


def test_plan_windows_single_window_when_short():
    assert len(plan_windows(14, 14, 4)) == 1
    (w,) = plan_windows(5, 14, 4)
    assert (w.tok_start, w.tok_end, w.own_start, w.own_end) == (0, 5, 0, 5)


def test_plan_windows_rejects_empty_body():
    with pytest.raises(ValueError):
        plan_windows(10, 0, 0)


# -- tokenize_words ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_tokenize_words_alignment(tokenizer):
    words = split_words(LONG_TEXT).tokens
    doc = tokenize_words(words, tokenizer, max_length=16, overlap=4)
    assert doc.num_words == len(words)
    assert doc.word_first_token[0] == 0
    assert doc.word_token_end[-1] == len(doc.token_ids)
    for w, word in enumerate(words):
        a, b = doc.word_first_token[w], doc.word_token_end[w]
        assert b > a
        # the sub-words of each word are exactly what the tokenizer makes of it alone
        assert doc.token_ids[a:b] == tokenizer(word, add_special_tokens=False)["input_ids"]
        if w + 1 < len(words):
            assert b == doc.word_first_token[w + 1]  # contiguous, no gaps, no overlaps
    assert any(doc.word_token_end[w] - doc.word_first_token[w] > 1 for w in range(len(words)))
    # windows exclude the two specials: body = max_length - 2
    assert len(doc.windows) > 3
    assert all(w.tok_end - w.tok_start == 14 for w in doc.windows)


def test_tokenize_words_dropped_word_borrows_next_subword(tokenizer):
    # U+FFFD is a word for split_words but the BERT tokenizer drops it entirely
    words = ["alpha", "\ufffd", "beta", "\ufffd"]
    doc = tokenize_words(words, tokenizer, max_length=16, overlap=4)
    assert doc.num_words == 4
    beta_first = doc.word_first_token[2]
    assert doc.word_first_token[1] == beta_first
    assert doc.word_token_end[1] == beta_first + 1
    # a dropped last word takes the last sub-word
    assert doc.word_first_token[3] == len(doc.token_ids) - 1
    assert doc.word_token_end[3] == len(doc.token_ids)


def test_tokenize_words_rejects_empty(tokenizer):
    with pytest.raises(ValueError):
        tokenize_words([], tokenizer, 16, 4)


# -- encoder on windows -------------------------------------------------------------------------

SHORT_TEXT = "A short one about Paris \ufffd and Bern ."  # U+FFFD: a word the tokenizer drops


@pytest.fixture(scope="module")
def windowed_model() -> GLiDRE:
    torch.manual_seed(1)
    model = GLiDRE(tiny_config(max_length=16, window_overlap=4))
    model.eval()
    return model


def _prepare(model: GLiDRE, text: str, doc_id: str = "d", names: tuple[str, ...] = ()):
    ents = []
    for i, name in enumerate(names):
        s = text.index(name)
        ents.append({"id": str(i), "mentions": [{"start": s, "end": s + len(name)}]})
    return model.prepare(parse_document({"doc_id": doc_id, "text": text, "entities": ents}))


def _eager_copy(hf_model):
    """The same weights with Hugging Face's eager attention (which can return attentions)."""
    cfg = copy.deepcopy(hf_model.config)
    eager = AutoModel.from_config(cfg, attn_implementation="eager")
    missing, unexpected = eager.load_state_dict(hf_model.state_dict(), strict=False)
    assert not unexpected and all("pooler" in k for k in missing)
    eager.eval()
    return eager


def _reference_document(model: GLiDRE, eager, tdoc):
    """Word vectors ``[n, H]`` and dense word attention ``[n, n]`` of one document, with loops:
    each window encoded alone (no padding) by the eager model, a word's vector and row taken
    from the window that owns its first sub-word, columns summed over each word's sub-words,
    [CLS]/[SEP] dropped. Also returns, per word, (owning window, its attention mass on the
    specials, the document sub-words that window sees)."""
    cls_id, sep_id, _ = model.encoder.special_ids
    num_words = tdoc.num_words
    token_word = {}
    for w in range(num_words):  # a later word takes a sub-word it shares (a dropped word's)
        for t in range(tdoc.word_first_token[w], tdoc.word_token_end[w]):
            token_word[t] = w
    vectors = torch.zeros(num_words, model.encoder.hidden_size)
    dense = torch.zeros(num_words, num_words)
    info = {}
    for k, win in enumerate(tdoc.windows):
        ids = [cls_id] + tdoc.token_ids[win.tok_start : win.tok_end] + [sep_id]
        with torch.no_grad():
            out = eager(input_ids=torch.tensor([ids]), output_attentions=True)
        hidden, att = out.last_hidden_state[0], out.attentions[-1][0].float().mean(0)
        for w in range(num_words):
            first = tdoc.word_first_token[w]
            if not win.own_start <= first < win.own_end:
                continue
            assert w not in info, "a word owned by two windows"
            pos = first - win.tok_start + 1
            vectors[w] = hidden[pos]
            for t in range(win.tok_start, win.tok_end):
                dense[w, token_word[t]] += att[pos, t - win.tok_start + 1]
            info[w] = (k, float(att[pos, 0] + att[pos, len(ids) - 1]), range(win.tok_start, win.tok_end))
    assert sorted(info) == list(range(num_words)), "a word owned by no window"
    return vectors, dense, info


def test_long_document_is_windowed_not_truncated(windowed_model):
    model = windowed_model
    p = _prepare(model, LONG_TEXT)
    tdoc = p.tokens
    num_words = tdoc.num_words
    assert len(tdoc.token_ids) > 3 * 14
    assert len(tdoc.windows) >= 4
    batch, _ = model.collate([p])
    # one encoder row per window, none longer than max_length
    assert batch.input_ids.shape == (len(tdoc.windows), 16)
    assert batch.window_lengths == [w.tok_end - w.tok_start + 2 for w in tdoc.windows]
    assert batch.window_doc == [0] * len(tdoc.windows)
    with torch.no_grad():
        words, att = model.encoder(batch)
    assert words.shape == (1, num_words, model.encoder.hidden_size)
    assert att.shape == (1, num_words, num_words)

    # every word owned once: one computed attention row and one source state per word
    real_rows = batch.row_target[batch.row_target < num_words].tolist()
    assert sorted(real_rows) == list(range(num_words))
    assert len(set(batch.word_source.tolist())) == num_words  # no dropped words in this text

    ref_words, ref_att, info = _reference_document(model, _eager_copy(model.encoder.model), tdoc)
    torch.testing.assert_close(words[0], ref_words, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att[0], ref_att, atol=1e-6, rtol=1e-5)
    assert (words[0].abs().sum(-1) > 0).all()  # the last words get real vectors too
    seen_windows = set()
    for w in range(num_words):
        k, specials, seen = info[w]
        seen_windows.add(k)
        # specials dropped: the row sums to 1 minus the mass on [CLS] and [SEP]
        s = float(att[0, w].sum())
        assert s == pytest.approx(1.0 - specials, abs=1e-5)
        assert 0.3 < s < 1.0
        # columns outside the owning window are 0: a window sees only part of the document
        visible = {j for j in range(num_words) if any(t in seen for t in range(tdoc.word_first_token[j], tdoc.word_token_end[j]))}
        assert len(visible) < num_words
        outside = [j for j in range(num_words) if j not in visible]
        assert float(att[0, w, outside].abs().sum()) == 0.0
    assert seen_windows == set(range(len(tdoc.windows)))  # every window owns some word
    # the word at the very end of the document is encoded in the last window
    assert info[num_words - 1][0] == len(tdoc.windows) - 1


def test_batched_encoder_matches_eager_reference_per_document(windowed_model):
    """Documents of different lengths in one batch (padded windows, padded words, a dropped
    word sharing its neighbour's sub-word) against the per-window eager reference."""
    model = windowed_model
    prepared = [_prepare(model, LONG_TEXT, "a"), _prepare(model, SHORT_TEXT, "b"), _prepare(model, LONG_TEXT[:120], "c")]
    batch, _ = model.collate(prepared)
    assert len(set(batch.window_lengths)) > 1  # some windows are padded
    with torch.no_grad():
        words, att = model.encoder(batch)
    eager = _eager_copy(model.encoder.model)
    wmax = batch.max_words
    for b, p in enumerate(prepared):
        n = p.tokens.num_words
        ref_words, ref_att, _ = _reference_document(model, eager, p.tokens)
        torch.testing.assert_close(words[b, :n], ref_words, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(att[b, :n, :n], ref_att, atol=1e-6, rtol=1e-5)
        # padded words: zero vectors, zero rows, and no real word attends to them
        assert float(words[b, n:].abs().sum()) == 0.0
        assert float(att[b, n:].abs().sum()) == 0.0
        assert float(att[b, :, n:].abs().sum()) == 0.0
        assert n < wmax or b == 0
    # the dropped word (U+FFFD) borrows "and"'s first sub-word: same vector, same row, and the
    # shared sub-word's column counts for "and"
    short = prepared[1].tokens
    words_b = split_words(SHORT_TEXT).tokens
    i = words_b.index("\ufffd")
    assert short.word_first_token[i] == short.word_first_token[i + 1]
    torch.testing.assert_close(words[1, i], words[1, i + 1])
    torch.testing.assert_close(att[1, i], att[1, i + 1])
    assert float(att[1, :, i].abs().sum()) == 0.0 and float(att[1, :6, i + 1].sum()) > 0


def test_windows_match_eager_on_padded_batch(windowed_model):
    """The encoder's windows (hidden states and the attention rows of the words' first
    sub-words) against the eager model on the same padded input."""
    model = windowed_model
    prepared = [_prepare(model, LONG_TEXT, "a"), _prepare(model, SHORT_TEXT, "b")]
    batch, _ = model.collate(prepared)
    eager = _eager_copy(model.encoder.model)
    with torch.no_grad():
        hidden, rows = model.encoder.windows(batch)
        out = eager(input_ids=batch.input_ids, attention_mask=batch.key_mask.long(), output_attentions=True)
    ref = out.attentions[-1].float().mean(1)  # [K, L, L]
    valid = batch.key_mask
    assert not bool(valid.all())  # padding is exercised
    torch.testing.assert_close(hidden[valid], out.last_hidden_state[valid], atol=1e-5, rtol=1e-5)
    used = batch.row_target < batch.size * batch.max_words
    expected = ref.gather(1, batch.row_positions[:, :, None].expand(-1, -1, ref.shape[-1]))
    torch.testing.assert_close(rows[used], expected[used], atol=1e-6, rtol=1e-5)
    # no attention on padded keys, and each computed row is a distribution over the real tokens
    assert float(rows[used][~valid[:, None, :].expand_as(rows)[used]].abs().sum()) == 0.0
    torch.testing.assert_close(rows[used].sum(-1), torch.ones(int(used.sum())))


def test_generic_last_layer_path_equals_hand_written_one(windowed_model, monkeypatch):
    """Encoders whose last layer is not plain BERT run it through the HF layer and compute the
    attention rows separately: the same numbers."""
    model = windowed_model
    batch, _ = model.collate([_prepare(model, LONG_TEXT, "a"), _prepare(model, SHORT_TEXT, "b")])
    assert model.encoder._hand_last_layer()
    with torch.no_grad():
        words, att = model.encoder(batch)
        monkeypatch.setattr(type(model.encoder), "_hand_last_layer", lambda self: False)
        words2, att2 = model.encoder(batch)
    torch.testing.assert_close(words, words2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att, att2, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("multiple", [1, 8, 64])
def test_batching_and_length_buckets_do_not_mix_documents(multiple):
    torch.manual_seed(1)
    model = GLiDRE(tiny_config(max_length=16, window_overlap=4, length_multiple=multiple))
    model.eval()
    prepared = [_prepare(model, LONG_TEXT, "a"), _prepare(model, SHORT_TEXT, "b"), _prepare(model, LONG_TEXT[:120], "c")]
    with torch.no_grad():
        batch, _ = model.collate(prepared)
        assert batch.window_length % multiple == 0 and batch.window_length >= 16
        together = model.encoder(batch)
        alone = [model.encoder(model.collate([p])[0]) for p in prepared]
    for b, (p, (w, a)) in enumerate(zip(prepared, alone)):
        n = p.tokens.num_words
        assert w.shape[1] == n
        torch.testing.assert_close(together[0][b, :n], w[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together[1][b, :n, :n], a[0], atol=1e-6, rtol=1e-5)


def test_entity_at_end_of_long_document_is_scored(windowed_model):
    text = LONG_TEXT
    start_a = text.index("Tokenization")
    start_b = text.index("Winterthur")
    doc = parse_document({
        "doc_id": "long",
        "text": text,
        "entities": [
            {"id": "a", "mentions": [{"start": start_a, "end": start_a + len("Tokenization")}]},
            {"id": "b", "mentions": [{"start": start_b, "end": start_b + len("Winterthur")}]},
        ],
    })
    prep = windowed_model.prepare(doc)
    assert prep.mention_spans[1][0][0] == len(split_words(text)) - 2  # "Winterthur ."
    assert len(prep.tokens.windows) >= 4
    rows = windowed_model.predict_documents([doc], ["located in"], threshold=1e-9)[0]
    assert {(r["head_id"], r["tail_id"]) for r in rows} == {("a", "b"), ("b", "a")}


# -- cached frozen layers -------------------------------------------------------------------------

CACHE_TEXTS = {
    "long": (LONG_TEXT, ("Tokenization", "Zürich's", "Hämäläinen", "Winterthur")),
    "short": ("Anna Schmidt works for Siemens in Munich and lives near Augsburg .",
              ("Anna Schmidt", "Siemens", "Munich", "Augsburg")),
    "tiny": ("Bern and Basel .", ("Bern", "Basel")),
}


def _cache_model(**overrides) -> GLiDRE:
    torch.manual_seed(2)
    model = GLiDRE(tiny_config(max_length=16, window_overlap=4, **overrides))
    model.eval()
    return model


@pytest.mark.parametrize("num_layers, trainable", [(2, 1), (3, 2), (3, 1)])
def test_lower_states_equal_running_every_layer(num_layers, trainable):
    model = _cache_model(trainable_encoder_layers=trainable,
                         encoder_config={**TINY_BERT, "num_hidden_layers": num_layers})
    split = num_layers - trainable
    assert model.frozen_split == split
    # the lower layers and the embeddings are frozen, the upper ones are not
    enc = model.encoder.model
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    for i, layer in enumerate(enc.encoder.layer):
        assert all(p.requires_grad == (i >= split) for p in layer.parameters())
    batch, _ = model.collate([_prepare(model, t, i, n) for i, (t, n) in CACHE_TEXTS.items()])
    with torch.no_grad():
        lower = model.encoder.lower(batch, model.frozen_split)
        assert lower.shape == (*batch.input_ids.shape, model.encoder.hidden_size)
        with pytest.raises(ValueError, match="lower-layer states"):
            model.encoder.windows(batch, model.frozen_split)
        direct = model.encoder(batch)
        from_lower = model.encoder(dataclasses.replace(batch, lower_states=lower), model.frozen_split)
    torch.testing.assert_close(from_lower[0], direct[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_lower[1], direct[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode, layers", [("lower", 1), ("encoded", 0)])
def test_cached_logits_equal_uncached_logits(mode, layers):
    model = _cache_model(trainable_encoder_layers=layers)
    assert model.frozen_split == (1 if mode == "lower" else 2)
    prepared = {i: _prepare(model, t, i, n) for i, (t, n) in CACHE_TEXTS.items()}
    # cached in batches of two sorted by length: each document is padded differently from the
    # batch it is scored in
    cache = EncoderCache(model, prepared, mode, batch_size=2)
    assert set(cache.entries) == set(prepared)
    if mode == "lower":
        for doc_id, p in prepared.items():  # unpadded states, one per window
            states = cache.entries[doc_id]
            assert [s.shape[0] for s in states] == [w.tok_end - w.tok_start + 2 for w in p.tokens.windows]
    else:
        for doc_id, p in prepared.items():
            words, att = cache.entries[doc_id]
            n = p.tokens.num_words
            assert words.shape == (n, model.encoder.hidden_size) and att.shape == (n, n)
    labels = model.encode_labels(["employer", "residence"])
    docs = [prepared["short"], prepared["long"], prepared["tiny"]]
    with torch.no_grad():
        batch, _ = model.collate(docs)
        cached_batch = cache.attach(batch)
        assert (cached_batch.lower_states is not None) == (mode == "lower")
        assert (cached_batch.encoded is not None) == (mode == "encoded")
        a = model(cached_batch, labels).relation_logits
        b = model(batch, labels).relation_logits
    assert a.shape == b.shape == (12 + 12 + 2, 2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the inference layer takes the cache too (training's dev evaluation)
    with_cache = model.predictor(relation_labels=labels, encoder_cache=cache, batch_size=2).score_relations(docs)
    without = model.predictor(relation_labels=labels, batch_size=2).score_relations(docs)
    for x, y in zip(with_cache, without):
        np.testing.assert_allclose(x.probs, y.probs, atol=1e-6)
        assert x.heads.tolist() == y.heads.tolist() and x.tails.tolist() == y.tails.tolist()
    # a document the cache does not hold is an error, not a silent recomputation
    other = _prepare(model, "Zug and Chur .", "other", ("Zug", "Chur"))
    with pytest.raises(KeyError, match="other"):
        cache.attach(model.collate([other])[0])


# -- the real MiniLM ------------------------------------------------------------------------------

@pytest.mark.slow
def test_encoder_matches_eager_minilm(minilm_model):
    model = minilm_model
    text = (
        "Marie Curie was a Polish and naturalised-French physicist and chemist who conducted "
        "pioneering research on radioactivity . She was the first woman to win a Nobel Prize ."
    )
    prepared = [_prepare(model, text, "a"), _prepare(model, "Curie won a Nobel Prize .", "b")]
    batch, _ = model.collate(prepared)
    assert not bool(batch.key_mask.all())  # the second window is padded
    eager = _eager_copy(model.encoder.model)
    with torch.no_grad():
        hidden, rows = model.encoder.windows(batch)
        words, att = model.encoder(batch)
        ref = eager(input_ids=batch.input_ids, attention_mask=batch.key_mask.long(), output_attentions=True)
        plain = model.encoder.model(input_ids=batch.input_ids, attention_mask=batch.key_mask.long())
    valid = batch.key_mask
    torch.testing.assert_close(hidden[valid], plain.last_hidden_state[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hidden[valid], ref.last_hidden_state[valid], atol=1e-4, rtol=1e-4)
    ref_att = ref.attentions[-1].float().mean(1)
    used = batch.row_target < batch.size * batch.max_words
    expected = ref_att.gather(1, batch.row_positions[:, :, None].expand(-1, -1, ref_att.shape[-1]))
    torch.testing.assert_close(rows[used], expected[used], atol=1e-5, rtol=1e-4)
    for b, p in enumerate(prepared):
        n = p.tokens.num_words
        ref_words, ref_dense, _ = _reference_document(model, eager, p.tokens)
        torch.testing.assert_close(words[b, :n], ref_words, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(att[b, :n, :n], ref_dense, atol=1e-5, rtol=1e-4)
